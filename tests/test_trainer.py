import pytest
import torch
from engine_helpers import TINY_MODEL, Interrupting, tiny_config, tiny_data

from benchmark.core.errors import TrainingError
from benchmark.engine.backbone import build_unet
from benchmark.engine.checkpoint import latest_checkpoint, load
from benchmark.engine.trainer import _seeds, train
from methods import get_method

DATA = tiny_data()


def _train(run_dir, name="ddpm", cfg=None, method=None, seed=0):
    cfg = cfg or tiny_config()
    method = method or get_method(name, class_counts=DATA.counts, options=cfg.method)
    return train(cfg=cfg, dataset=DATA, method=method, run_dir=run_dir, seed=seed, device="cpu", progress=False)


def _init_weights(seed=0):
    torch.manual_seed(_seeds(seed)[0])
    return build_unet(TINY_MODEL, channels=1, resolution=8, num_classes=3).state_dict()


@pytest.mark.parametrize(
    "name,train_kw",
    [("ddpm", {}), ("cbdm+resample", {"label_drop_mode": "sample", "label_drop": 0.3})],
)
def test_exact_resume(tmp_path, name, train_kw):
    from dataclasses import replace

    from methods import method_options

    cfg = tiny_config(**train_kw)
    cfg = replace(cfg, method=method_options(resample={"schedule": "progressive"}))
    full = _train(tmp_path / "full", name, cfg)
    method = get_method(name, class_counts=DATA.counts, options=cfg.method)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "cut", cfg=cfg, method=Interrupting(method, at=4))
    assert latest_checkpoint(tmp_path / "cut" / "checkpoints").name == "ckpt_00000003.pt"
    resumed = _train(tmp_path / "cut", name, cfg)
    a, b = load(full), load(resumed)
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])
    ca, cb = (load(latest_checkpoint(p / "checkpoints")) for p in (tmp_path / "full", tmp_path / "cut"))
    assert all(torch.equal(ca["model"][k], cb["model"][k]) for k in ca["model"])
    assert torch.equal(ca["gen_device"], cb["gen_device"])
    logs = [(p / "train_log.csv").read_text() for p in (tmp_path / "full", tmp_path / "cut")]
    steps = lambda text: [line.split(",")[0] for line in text.splitlines()]
    assert steps(logs[0]) == steps(logs[1])  # no duplicated rows after resuming


def test_skips_finished_run(tmp_path):
    path = _train(tmp_path)
    mtime = path.stat().st_mtime_ns
    assert _train(tmp_path, method=Interrupting(get_method("ddpm", class_counts=DATA.counts), at=0)) == path
    assert path.stat().st_mtime_ns == mtime


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path):
    inner = get_method("ddpm", class_counts=DATA.counts)

    class Exploding(Interrupting):
        def __init__(self):
            super().__init__(inner, at=-1)
            self.step = 0

        def class_probs(self, step, total_steps):
            self.step = step
            return None

        def loss_terms(self, model, diffusion, x0, labels, generator):
            terms = inner.loss_terms(model, diffusion, x0, labels, generator)
            return {"ddpm": terms["ddpm"] * float("nan")} if self.step >= 4 else terms

    with pytest.raises(TrainingError, match="non-finite.*ckpt_00000003.pt"):
        _train(tmp_path, method=Exploding())
    assert latest_checkpoint(tmp_path / "checkpoints").name == "ckpt_00000003.pt"
    assert not (tmp_path / "model.pt").exists()


def test_init_from_and_config_mismatch(tmp_path):
    first = _train(tmp_path / "a")
    cfg = tiny_config(init_from=str(first), steps=2)
    _train(tmp_path / "b", "cbdm", cfg)
    (tmp_path / "b" / "model.pt").unlink()
    with pytest.raises(TrainingError, match="different run configuration"):
        _train(tmp_path / "b", "cbdm", tiny_config(init_from=str(first), steps=2, lr=1e-3))
