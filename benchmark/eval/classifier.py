"""Small image classifiers: the domain evaluator (feature space ``classifier``) and the downstream nets.

Recipes are fixed, seeded and named (the name and its hyper-parameters enter every cache key):
- ``smallcnn`` for gray or sub-32 px images (Fashion-MNIST, MNIST, digits): three stride-2
  3x3 conv blocks (32-64-128 channels, BatchNorm, ReLU), global average pool, a 128-d
  penultimate layer (the evaluator's features) and a linear head.  ~4 MFLOP per 28 px
  image, so a Fashion-MNIST epoch takes well under a minute on a laptop CPU.
- ``resnet32`` for RGB images of CIFAR size and larger: the He et al. CIFAR ResNet-32
  (3 stages x 5 basic blocks, 16-32-64 channels), 64-d penultimate features.
Training: Adam (lr 1e-3, weight decay 5e-4), cosine decay to 0, batch 128, horizontal flips
when the dataset allows them, plus 4-px random-shift crops for RGB; the seed fixes the
initialisation and the batch order without touching the global RNG.

The domain evaluator (``train_evaluator``) is trained on every real image of the train pool
(no balanced cap unless ``eval.classifier_per_class`` asks for one): batches are drawn
class-balanced (each class equally likely, images with replacement; an epoch is
max(pool size, ``EPOCH_MIN_DRAWS``) draws, so a small folder still gets enough steps), every
image is flipped (when allowed) and shifted by up to ``resolution // 8`` pixels on its own;
``EVALUATOR_VAL_FRACTION`` of every class (at least one image of a class with three or more)
is held out of training for early stopping: training stops when the validation balanced
accuracy has not improved for ``eval.classifier_patience`` epochs, or at
``eval.classifier_epochs``, and the best epoch's weights are kept.  Its accuracy is then
measured on the source's test split (never used for stopping) and judged by the trust gate
(:mod:`benchmark.eval.trust`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmark.core.errors import DataError
from benchmark.core.files import write_atomic
from benchmark.core.progress import progress as progress_bar
from benchmark.data.reference import EVALUATOR_VAL_FRACTION, validation_split
from benchmark.eval.trust import evaluator_trust

RECIPE = dict(optimizer="adam", lr=1e-3, weight_decay=5e-4, batch_size=128, schedule="cosine", version=2)
EVALUATOR_SEED = 0  # one evaluator per data source: every cell and seed of a grid is scored by the same network
EPOCH_MIN_DRAWS = 4096
EVALUATOR_RECIPE = dict(RECIPE, version=3, sampling="class-balanced", val_fraction=EVALUATOR_VAL_FRACTION,
                        epoch_min_draws=EPOCH_MIN_DRAWS, shift="resolution//8", stop="val-balanced-acc")


class SmallCNN(nn.Module):
    def __init__(self, *, channels: int, num_classes: int, width: int = 32, feat_dim: int = 128) -> None:
        super().__init__()
        layers, c_in = [], channels
        for c_out in (width, 2 * width, 4 * width):
            # stride-2 convs instead of conv + max-pool: half the CPU time for the same accuracy
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out),
                       nn.ReLU(inplace=True)]
            c_in = c_out
        self.body = nn.Sequential(*layers)
        self.penultimate = nn.Sequential(nn.Flatten(), nn.Linear(c_in, feat_dim), nn.ReLU(inplace=True))
        self.head = nn.Linear(feat_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.penultimate(F.adaptive_avg_pool2d(self.body(x), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class _Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.skip = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.skip = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.skip(x))


class ResNet32(nn.Module):
    def __init__(self, *, channels: int, num_classes: int, width: int = 16, blocks: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        stages, c_in = [], width
        for i, c_out in enumerate((width, 2 * width, 4 * width)):
            for b in range(blocks):
                stages.append(_Block(c_in, c_out, 2 if (i > 0 and b == 0) else 1))
                c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(c_in, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.stages(self.stem(x)), 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def arch_for(*, channels: int, resolution: int) -> str:
    return "smallcnn" if (channels == 1 or resolution < 32) else "resnet32"


def build_net(arch: str, *, channels: int, num_classes: int) -> nn.Module:
    if arch == "smallcnn":
        return SmallCNN(channels=channels, num_classes=num_classes)
    if arch == "resnet32":
        return ResNet32(channels=channels, num_classes=num_classes)
    raise ValueError(f"unknown classifier arch {arch!r}")


def _prep(images: torch.Tensor) -> torch.Tensor:
    return images.float().div(127.5).sub(1.0)


def _augment(x: torch.Tensor, gen: torch.Generator, *, hflip: bool, shift: bool) -> torch.Tensor:
    if hflip:
        flip = torch.rand(len(x), generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    if shift:
        h, w = x.shape[2:]
        padded = F.pad(x, (4, 4, 4, 4), mode="reflect")
        dy, dx = torch.randint(0, 9, (2,), generator=gen).tolist()  # one shift per batch keeps it cheap
        x = padded[:, :, dy:dy + h, dx:dx + w]
    return x


def _sgd_step(net: nn.Module, opt, sched, x: torch.Tensor, y: torch.Tensor, device) -> None:
    """One cross-entropy step of either recipe: the optimiser, then the learning-rate schedule."""
    loss = F.cross_entropy(net(x.to(device)), y.to(device))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()


def train_classifier(images: torch.Tensor, labels: torch.Tensor, *, num_classes: int, epochs: int, seed: int,
                     device: torch.device, hflip: bool = False, arch: str | None = None,
                     progress: bool = False, desc: str = "classifier") -> nn.Module:
    """Train a classifier with the fixed recipe; deterministic for a given seed and data."""
    if len(images) == 0:
        raise DataError("cannot train a classifier on an empty image set; generate or select images first")
    channels, resolution = images.shape[1], images.shape[2]
    arch = arch or arch_for(channels=channels, resolution=resolution)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_net(arch, channels=channels, num_classes=num_classes).to(device)
    gen = torch.Generator().manual_seed(seed)
    bs = RECIPE["batch_size"]
    steps_per_epoch = max(1, -(-len(images) // bs))
    opt = torch.optim.Adam(net.parameters(), lr=RECIPE["lr"], weight_decay=RECIPE["weight_decay"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    net.train()
    bar = progress_bar(total=epochs * steps_per_epoch, desc=desc, enabled=progress, transient=True, unit="step")
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=gen)
        for idx in order.split(bs):
            if len(idx) < 2 and len(images) >= 2:
                continue  # BatchNorm cannot train on a single image
            x = _augment(_prep(images[idx]), gen, hflip=hflip, shift=(channels == 3))
            _sgd_step(net, opt, sched, x, labels[idx], device)
            bar.update()
    bar.close()
    return net.eval()


@torch.no_grad()
def predict(net: nn.Module, images: torch.Tensor, *, device: torch.device, batch_size: int = 512,
            features: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Class probabilities (and penultimate features) in eval mode: independent of batch size."""
    net.eval()
    probs, feats = [], []
    for i in range(0, len(images), batch_size):
        x = _prep(images[i:i + batch_size]).to(device)
        f = net.features(x)
        probs.append(torch.softmax(net.head(f).double(), 1).cpu().numpy())
        if features:
            feats.append(f.double().cpu().numpy())
    p = np.concatenate(probs) if probs else np.zeros((0, net.head.out_features))
    if not features:
        return p, None
    return p, np.concatenate(feats) if feats else np.zeros((0, net.head.in_features))


def balanced_pool(labels: np.ndarray, *, seed: int, per_class: int | None = None) -> np.ndarray:
    """Indices of a class-balanced subset (every class cut to the smallest class, or to
    ``per_class`` when that is smaller) of a pool."""
    counts = np.bincount(labels)
    present = counts[counts > 0]
    size = int(present.min()) if len(present) else 0
    if per_class is not None:
        size = min(size, int(per_class))
    if len(present) and present.min() == present.max() == size:
        return np.arange(len(labels))
    rng = np.random.RandomState(seed)
    keep = [rng.permutation(np.flatnonzero(labels == c))[:size] for c in np.flatnonzero(counts)]
    return np.sort(np.concatenate(keep))


def _shift_each(x: torch.Tensor, gen: torch.Generator, max_shift: int) -> torch.Tensor:
    """Translate every image by its own random offset in [-max_shift, max_shift] (reflect padding)."""
    n, c, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, mode="reflect")
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
    return padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]


def _val_balanced_acc(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> float:
    probs, _ = predict(net, images, device=device)
    pred, true = probs.argmax(1), labels.numpy()
    return float(np.mean([(pred[true == c] == c).mean() for c in np.unique(true)]))


def train_evaluator(images: torch.Tensor, labels: torch.Tensor, *, num_classes: int, max_epochs: int, patience: int,
                    seed: int, device: torch.device, hflip: bool = False, arch: str | None = None,
                    progress: bool = False) -> tuple[nn.Module, dict]:
    """The domain evaluator's recipe (module docstring); returns the net and how training went."""
    if len(images) == 0:
        raise DataError("cannot train the evaluator on an empty image set; the dataset's train pool is empty")
    channels, resolution = images.shape[1], images.shape[2]
    arch = arch or arch_for(channels=channels, resolution=resolution)
    train_idx, val_idx = validation_split(labels.numpy(), seed=seed)
    x_train, y_train = images[torch.from_numpy(train_idx)], labels[torch.from_numpy(train_idx)]
    x_val, y_val = images[torch.from_numpy(val_idx)], labels[torch.from_numpy(val_idx)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_net(arch, channels=channels, num_classes=num_classes).to(device)
    gen = torch.Generator().manual_seed(seed)
    bs = RECIPE["batch_size"]
    draws = max(len(x_train), EPOCH_MIN_DRAWS)
    steps_per_epoch = max(1, draws // bs)
    weights = 1.0 / torch.bincount(y_train, minlength=num_classes).double()[y_train]  # each class equally likely
    opt = torch.optim.Adam(net.parameters(), lr=RECIPE["lr"], weight_decay=RECIPE["weight_decay"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max_epochs * steps_per_epoch)
    max_shift = max(1, resolution // 8)
    best, best_acc, best_epoch, stale, epochs, history = None, -1.0, 0, 0, 0, []
    bar = progress_bar(total=max_epochs * steps_per_epoch, desc="evaluator", enabled=progress, transient=True, unit="step")
    for epoch in range(1, max_epochs + 1):
        net.train()
        order = torch.multinomial(weights, steps_per_epoch * bs, replacement=True, generator=gen)
        for idx in order.split(bs):
            x = _prep(x_train[idx])
            if hflip:
                x = _augment(x, gen, hflip=True, shift=False)
            x = _shift_each(x, gen, max_shift)
            _sgd_step(net, opt, sched, x, y_train[idx], device)
            bar.update()
        epochs = epoch
        if len(x_val) == 0:
            continue  # nothing to stop on: run every epoch
        acc = _val_balanced_acc(net, x_val, y_val, device)
        history.append(round(acc, 4))
        if acc > best_acc + 1e-4:
            best, best_acc, best_epoch, stale = {k: v.detach().clone() for k, v in net.state_dict().items()}, acc, epoch, 0
        else:
            stale += 1
            if stale >= patience:
                break
    bar.close()
    if best is not None:
        net.load_state_dict(best)
    stop = ("no validation images" if len(x_val) == 0 else
            f"plateau ({patience} epochs without gain)" if epochs < max_epochs else "max epochs")
    info = dict(epochs=epochs, best_epoch=best_epoch if best is not None else epochs, stop=stop,
                val_balanced_acc=best_acc if best is not None else float("nan"), val_history=history,
                n_train=int(len(x_train)), n_val=int(len(x_val)),
                train_per_class=torch.bincount(y_train, minlength=num_classes).tolist())
    return net.eval(), info


def weights_digest(net: nn.Module) -> str:
    """12 hex of the SHA-256 of a network's weights: every state_dict entry (parameters and
    BatchNorm buffers) in the order of its name, each as name, dtype, shape and the raw bytes of
    its values on the CPU.  It depends on the numbers alone, never on object ids, devices or the
    dict's insertion order, so the same weights give the same digest in every process; a
    retrained or replaced evaluator gives another (its recipe fingerprint alone would not)."""
    h = hashlib.sha256()
    state = net.state_dict()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{str(t.dtype).removeprefix('torch.')}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:12]


def evaluator_fingerprint(*, source_id: str, resolution: int, seed: int, epochs: int, arch: str,
                          per_class: int | None = None, patience: int | None = None) -> str:
    extra = {} if per_class is None else {"per_class": int(per_class)}  # old fingerprints stay valid
    recipe = RECIPE if patience is None else dict(EVALUATOR_RECIPE, patience=int(patience))
    blob = json.dumps(dict(source=source_id, resolution=resolution, seed=seed, epochs=epochs, arch=arch, **recipe,
                           **extra),
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_or_train_evaluator(source, *, seed: int, epochs: int, cache_dir: Path, device: torch.device,
                            progress: bool = False, per_class: int | None = None,
                            patience: int = 3) -> tuple[nn.Module, dict]:
    """The domain evaluator of a source, trained once on its train pool (see ``train_evaluator``),
    tested on its test split and judged by the trust gate; cached by fingerprint."""
    arch = arch_for(channels=source.channels, resolution=source.resolution)
    fp = evaluator_fingerprint(source_id=source.source_id, resolution=source.resolution, seed=seed,
                               epochs=epochs, arch=arch, per_class=per_class, patience=patience)
    path = Path(cache_dir) / f"evaluator-{fp}.pt"
    num_classes = len(source.class_names)
    if path.exists():
        blob = torch.load(path, map_location="cpu", weights_only=True)
        net = build_net(arch, channels=source.channels, num_classes=num_classes)
        net.load_state_dict(blob["state_dict"])
        return net.to(device).eval(), json.loads(blob["info"])
    labels = source.train.labels.numpy()
    pool = np.arange(len(labels)) if per_class is None else balanced_pool(labels, seed=seed, per_class=per_class)
    net, trained = train_evaluator(source.train.images[pool], source.train.labels[pool], num_classes=num_classes,
                                   max_epochs=epochs, patience=patience, seed=seed, device=device,
                                   hflip=bool(source.hflip), arch=arch, progress=progress)
    probs, _ = predict(net, source.test.images, device=device)
    test_labels = source.test.labels.numpy()
    pred = probs.argmax(1) if len(probs) else np.zeros(0, dtype=np.int64)
    acc = float((pred == test_labels).mean()) if len(probs) else float("nan")
    verdict = evaluator_trust(test_labels, pred, num_classes=num_classes, seed=seed)
    test_n = np.bincount(test_labels, minlength=num_classes)
    test_correct = np.bincount(test_labels[pred == test_labels], minlength=num_classes)
    info = dict(fingerprint=fp, arch=arch, test_acc=acc, n_test=int(len(probs)), seed=seed,
                source_id=source.source_id, resolution=int(source.resolution), max_epochs=epochs, patience=patience,
                test_per_class=test_n.tolist(), test_correct_per_class=test_correct.tolist(),
                trust=verdict.as_dict(), **trained)
    # a half-written file never counts as a trained evaluator
    state = dict(state_dict={k: v.cpu() for k, v in net.state_dict().items()}, info=json.dumps(info))
    write_atomic(path, lambda tmp: torch.save(state, tmp))  # (eval loads nothing of the training engine)
    return net, info
