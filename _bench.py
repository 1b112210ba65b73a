import torch, time, sys
from benchmark.config import MODEL_SIZES
from benchmark.backbone import build_unet
def run(cl, mkl, B=64, n=4):
    torch.backends.mkldnn.enabled = mkl
    torch.manual_seed(0)
    m = build_unet(MODEL_SIZES["small"], channels=3, resolution=32, num_classes=10)
    if cl: m = m.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(m.parameters(), foreach=True)
    x = torch.randn(B,3,32,32)
    if cl: x = x.contiguous(memory_format=torch.channels_last)
    t = torch.randint(1000,(B,)); y = torch.randint(10,(B,))
    def step():
        opt.zero_grad(); m(x,t,y).square().mean().backward(); opt.step()
    for _ in range(2): step()
    t0=time.perf_counter()
    for _ in range(n): step()
    return n*B/(time.perf_counter()-t0)
for r in range(2):
    for cl in (False, True):
        for mkl in (True, False):
            print(r, "cl" if cl else "nc", "mkldnn" if mkl else "native", round(run(cl, mkl),1), flush=True)
