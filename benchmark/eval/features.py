"""Feature spaces (inception | classifier | dinov2) and the atomic per-image-set feature cache.

A feature space turns uint8 images [N, C, H, W] into float64 features [N, D] (plus class
probabilities for the domain classifier, or Inception's unbiased logits for IS).  Its
``identity`` names the network, a digest of the weights and the resize, and enters every cache
key and every results row; cached features are keyed by it, the images' content and the numeric
settings extraction runs under (``numerics``, pinned by :func:`extract_cached`).  Pretrained
weights are never downloaded silently and never replaced by another network: when they are
missing the error names the file, where to put it, and the options that point to it.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from cleanfid.resize import make_resizer
from torch_fidelity.feature_extractor_dinov2 import FeatureExtractorDinoV2
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

from benchmark.core.config import EvalConfig, choices
from benchmark.core.device import pinned_numerics
from benchmark.core.distributed import broadcast, current, gather_to_main
from benchmark.core.errors import ConfigError
from benchmark.core.files import save_npz_atomic
from benchmark.core.progress import progress as progress_bar
from benchmark.core.registry import Registry
from benchmark.eval.classifier import EVALUATOR_SEED, load_or_train_evaluator, predict, weights_digest

FEATURE_SPACES: Registry = Registry("feature space")
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
DINOV2_FILE = "dinov2_vits14_pretrain.pth"
CLASSIFIER_DEFAULT = ("fashion-mnist", "mnist", "digits")
RESIZES = choices(EvalConfig, "resize")
_INCEPTION_TRUNK = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
                    "MaxPool_2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                    "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "AvgPool")


class FeatureSpace:
    name: str = ""
    identity: str = ""
    batch_size: int = 256  # images per forward; torchrun ranks split a set in whole batches
    device: torch.device = torch.device("cpu")  # where extract runs

    @property
    def numerics(self) -> str:
        """The numeric settings extraction runs under (:func:`benchmark.core.device.pinned_numerics`:
        the same in every process on one device type).  Every cache of features, or of numbers
        computed from them, is keyed by it beside ``identity``; results rows are not (the settings
        are pinned, so they do not split the tables)."""
        with pinned_numerics(self.device) as key:
            return key

    def extract(self, images: torch.Tensor, *, progress: bool = False) -> dict[str, np.ndarray]:
        raise NotImplementedError

    @classmethod
    def check_available(cls, cfg: EvalConfig) -> None:
        """Raise a ConfigError naming the fix when what the space needs from outside (weights) is missing.
        Cheap and offline: the grid's preflight asks it before any cell starts."""


def default_space(dataset_name: str) -> str:
    return "classifier" if dataset_name in CLASSIFIER_DEFAULT else "inception"


def inception_weights_absent(cfg: EvalConfig) -> bool:
    """True when no Inception weights were pointed to and none are in the torch hub cache.  A path
    given explicitly (option or environment) is never 'absent': a wrong one stays an error."""
    if cfg.inception_weights or os.environ.get("LTGEN_INCEPTION_WEIGHTS"):
        return False
    return not (Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE).is_file()


def resolve_feature_space_name(name: str, dataset, cfg: EvalConfig | None = None) -> str:
    """'auto' -> the dataset's default space; any other name is checked against the registry.

    With ``cfg``, 'auto' on a dataset whose default is Inception falls back to ``classifier`` when
    the Inception weights are absent (nothing is downloaded), so the imagefolder preset works
    offline; :func:`benchmark.eval.trust.evaluator_outlook` says so before training, and the
    trust gate judges the classifier.  An explicit ``inception`` never falls back.
    """
    if name == "auto":
        name = default_space(dataset.source.name)
        if name == "inception" and cfg is not None and inception_weights_absent(cfg):
            name = "classifier"
    FEATURE_SPACES.get(name)  # unknown names fail here with the valid list
    return name


def get_feature_space(name: str, *, dataset, cfg: EvalConfig, cache_dir: Path, device: torch.device,
                      progress: bool = False) -> FeatureSpace:
    name = resolve_feature_space_name(name, dataset, cfg)
    if cfg.resize not in RESIZES:
        raise ConfigError(f"unknown eval.resize {cfg.resize!r}; use clean (clean-fid's PIL bicubic), legacy "
                          "(torch-fidelity's) or bilinear (the CBDM / OC evaluator's)")
    factory = FEATURE_SPACES.get(name)
    return factory(dataset=dataset, cfg=cfg, cache_dir=Path(cache_dir), device=device, progress=progress)


# ---------------------------------------------------------------- resizing into pretrained nets


def to_rgb(images: torch.Tensor) -> torch.Tensor:
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ConfigError(f"expected uint8 images [N, 1|3, H, W], got {tuple(images.shape)} {images.dtype}")
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def clean_resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """clean-fid's 'clean' resize: PIL bicubic (antialiased) per channel, float, no re-quantisation."""
    fn = make_resizer("PIL", False, "bicubic", (size, size))
    hwc = to_rgb(images).permute(0, 2, 3, 1).numpy()
    return torch.from_numpy(np.stack([fn(im) for im in hwc])).permute(0, 3, 1, 2).contiguous()


def bilinear_unit(images: torch.Tensor, size: int, device: torch.device) -> torch.Tensor:
    """The CBDM / OC evaluator's input (pytorch-fid's InceptionV3 with resize_input): images as floats in
    [0, 1], resized with F.interpolate(mode='bilinear', align_corners=False); still in [0, 1]."""
    x = to_rgb(images).to(device, torch.float32) / 255.0
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def _batched(images: torch.Tensor, batch_size: int, progress: bool, desc: str):
    for i in progress_bar(range(0, len(images), batch_size), desc=desc, enabled=progress, transient=True, unit="batch"):
        yield images[i:i + batch_size]


def _weights_error(file: str, option: str) -> ConfigError:
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    return ConfigError(
        f"pretrained weights {file} not found (looked in {hub} and the options below), and LTGen-Bench never "
        f"downloads or substitutes another network silently. Fix: copy {file} into $TORCH_HOME/hub/checkpoints "
        f"(here: {hub}), or pass its path with {option}, or use --set eval.feature_space=classifier."
    )


def resolve_inception_weights(cfg: EvalConfig) -> Path:
    candidates = [cfg.inception_weights, os.environ.get("LTGEN_INCEPTION_WEIGHTS"),
                  str(Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE)]
    for i, c in enumerate(candidates):
        if c and Path(c).is_file():
            return Path(c)
        if c and i < 2:  # an explicit path that is wrong must not fall through to another file
            origin = "EvalConfig.inception_weights" if i == 0 else "LTGEN_INCEPTION_WEIGHTS"
            raise ConfigError(f"Inception weights path {c!r} (from {origin}) is not a file; point it at {INCEPTION_FILE}")
    raise _weights_error(INCEPTION_FILE, "--set eval.inception_weights=PATH (EvalConfig.inception_weights) or the "
                                         "environment variable LTGEN_INCEPTION_WEIGHTS")


def _file_digest(path: Path) -> str:
    stat = path.stat()
    return _digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _digest(path: str, size: int, mtime: int) -> str:  # size/mtime in the key: a replaced file is re-hashed
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


class InceptionSpace(FeatureSpace):
    """torch-fidelity's Inception-v3 (TF 2015-12-05 port): 2048-d pool features, unbiased logits for IS."""

    name = "inception"
    size = 299

    @classmethod
    def check_available(cls, cfg: EvalConfig) -> None:
        resolve_inception_weights(cfg)

    def __init__(self, *, dataset=None, cfg: EvalConfig, cache_dir: Path | None = None, device: torch.device,
                 progress: bool = False) -> None:
        weights = resolve_inception_weights(cfg)  # checked before building: no download attempt
        self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                               feature_extractor_weights_path=str(weights)).to(device)
        self.device, self.resize, self.batch_size = device, cfg.resize, cfg.batch_size
        self.identity = f"inception-v3-compat:{_file_digest(weights)}:{cfg.resize}"

    @torch.no_grad()
    def _forward_float(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # torch-fidelity's forward only takes uint8; the clean protocol feeds float 299 px images in
        # 0..255, so run the same layers from the point after its (identity at 299 px) resize.
        return self._trunk((x.to(self.device, torch.float32) - 128) / 128)

    @torch.no_grad()
    def _trunk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pool3 features and unbiased logits of normalised 299 px input (about [-1, 1])."""
        for name in _INCEPTION_TRUNK:
            x = getattr(self.net, name)(x)
        pool = torch.flatten(x, 1)
        return pool, pool.mm(self.net.fc.weight.T)

    @torch.no_grad()
    def extract(self, images: torch.Tensor, *, progress: bool = False) -> dict[str, np.ndarray]:
        feats, logits = [], []
        for batch in _batched(images, self.batch_size, progress, "inception"):
            if self.resize == "clean":
                f, lg = self._forward_float(clean_resize(batch, self.size))
            elif self.resize == "bilinear":  # pytorch-fid's scaling of [0, 1] input: 2x - 1
                f, lg = self._trunk(2 * bilinear_unit(batch, self.size, self.device) - 1)
            else:
                f, lg = self.net(to_rgb(batch).to(self.device))
            feats.append(f.double().cpu().numpy())
            logits.append(lg.double().cpu().numpy())
        return {"features": _cat(feats, 2048), "logits": _cat(logits, 1008)}


class DinoV2Space(FeatureSpace):
    """torch-fidelity's DINOv2 ViT-S/14 (384-d); needs the hub repo and weights in the torch hub cache."""

    name = "dinov2"
    size = 224

    @classmethod
    def check_available(cls, cfg: EvalConfig) -> Path:
        """The weights file; the hub repo and the weights must both be in the torch hub cache."""
        hub = Path(torch.hub.get_dir())
        repo = [p for p in (hub / "facebookresearch_dinov2_main", hub / "facebookresearch_dinov2_master") if p.is_dir()]
        weights = hub / "checkpoints" / DINOV2_FILE
        if not repo or not weights.is_file():
            raise ConfigError(
                f"DINOv2 needs the torch hub repo facebookresearch_dinov2_main in {hub} and the weights "
                f"{DINOV2_FILE} in {hub / 'checkpoints'} ($TORCH_HOME/hub); run torch.hub.load('facebookresearch/"
                "dinov2', 'dinov2_vits14') once on a machine with internet and copy $TORCH_HOME/hub over, "
                "or use --set eval.feature_space=classifier. No other network is substituted.")
        return weights

    def __init__(self, *, dataset=None, cfg: EvalConfig, cache_dir: Path | None = None, device: torch.device,
                 progress: bool = False) -> None:
        weights = self.check_available(cfg)
        self.net = FeatureExtractorDinoV2("dinov2-vit-s-14", ["dinov2"]).to(device)
        self.device, self.resize, self.batch_size = device, cfg.resize, cfg.batch_size
        self.identity = f"dinov2-vit-s-14:{_file_digest(weights)}:{cfg.resize}"

    @torch.no_grad()
    def extract(self, images: torch.Tensor, *, progress: bool = False) -> dict[str, np.ndarray]:
        mean = torch.tensor([0.485, 0.456, 0.406], device=self.device).view(1, 3, 1, 1) * 255
        std = torch.tensor([0.229, 0.224, 0.225], device=self.device).view(1, 3, 1, 1) * 255
        feats = []
        for batch in _batched(images, self.batch_size, progress, "dinov2"):
            if self.resize in ("clean", "bilinear"):
                if self.resize == "clean":
                    x = clean_resize(batch, self.size).to(self.device)
                else:
                    x = bilinear_unit(batch, self.size, self.device) * 255
                f = self.net.model((x - mean) / std)
            else:
                (f,) = self.net(to_rgb(batch).to(self.device))
            feats.append(f.double().cpu().numpy())
        return {"features": _cat(feats, 384)}


class ClassifierSpace(FeatureSpace):
    """The dataset's own evaluator (see classifier.py): penultimate features and class probabilities."""

    name = "classifier"

    def __init__(self, *, dataset, cfg: EvalConfig, cache_dir: Path, device: torch.device,
                 progress: bool = False) -> None:
        self.net, self.info = load_or_train_evaluator(dataset.source, seed=EVALUATOR_SEED, epochs=cfg.classifier_epochs,
                                                      cache_dir=cache_dir, device=device, progress=progress,
                                                      per_class=cfg.classifier_per_class,
                                                      patience=cfg.classifier_patience)
        self.device, self.batch_size = device, cfg.batch_size
        self.resolution, self.channels = dataset.source.resolution, dataset.source.channels
        # the recipe names how it was trained; the digest is of the weights actually loaded or trained, so a
        # retrained evaluator or a replaced weights file is a new space (new caches, a new results table)
        self.identity = f"classifier:{self.info['fingerprint']}:w{weights_digest(self.net)}"

    def extract(self, images: torch.Tensor, *, progress: bool = False) -> dict[str, np.ndarray]:
        if tuple(images.shape[1:]) != (self.channels, self.resolution, self.resolution):
            raise ConfigError(f"the classifier evaluator takes [N, {self.channels}, {self.resolution}, "
                              f"{self.resolution}] images (the dataset's), got {tuple(images.shape)}")
        probs, feats = predict(self.net, images, device=self.device, batch_size=self.batch_size, features=True)
        return {"features": feats, "probs": probs}


FEATURE_SPACES.register("inception", InceptionSpace)
FEATURE_SPACES.register("classifier", ClassifierSpace)
FEATURE_SPACES.register("dinov2", DinoV2Space)


def _cat(parts: list[np.ndarray], dim: int) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros((0, dim))


# ---------------------------------------------------------------- cache


def content_hash(images: torch.Tensor, labels: torch.Tensor | None = None) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(str(tuple(images.shape)).encode())
    h.update(images.contiguous().numpy().tobytes())
    if labels is not None:
        h.update(labels.to(torch.int64).contiguous().numpy().tobytes())
    return h.hexdigest()


def feature_cache_path(space: FeatureSpace, key: str, cache_dir: Path) -> Path:
    """The npz of the images with content hash (or caller's key) ``key`` in ``space``: named by the
    key, the space's identity (network and weights) and its extraction numerics."""
    name = hashlib.sha256(f"{key}|{space.identity}|{space.numerics}".encode()).hexdigest()[:24]
    return Path(cache_dir) / "features" / f"{name}.npz"


def extract_cached(space: FeatureSpace, images: torch.Tensor, *, key: str | None = None, cache_dir: Path,
                   progress: bool = False, together: bool = False) -> dict[str, np.ndarray] | None:
    """Features of ``images`` in ``space``, stored as npz keyed by (content or key, space identity,
    extraction numerics); extraction runs under the pinned numerics, whatever the caller has set.

    ``together=True`` is a collective call of every torchrun rank: rank 0's cache decides, the
    ranks extract contiguous runs of whole batches (so every image sees the batch it would see in
    one process and the features do not depend on the number of processes: bit-identical on the
    CPU, on GPUs up to cuDNN's choice of algorithm), rank 0 gathers,
    stores and returns them; the other ranks return None.
    """
    path = feature_cache_path(space, key or content_hash(images), cache_dir)
    d = current() if together else None
    shared = d is not None and d.world > 1
    if (broadcast(path.exists()) if shared else path.exists()):
        if shared and not d.main:
            return None
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    with pinned_numerics(space.device):
        if shared:
            lo, hi = shard_bounds(len(images), space.batch_size, d.rank, d.world)
            part = space.extract(images[lo:hi], progress=progress and d.main) if hi > lo else None
            parts = gather_to_main(part)
            if not d.main:
                return None
            parts = [q for q in parts if q is not None]
            out = {k: np.concatenate([q[k] for q in parts]) for k in parts[0]} if parts else space.extract(images[:0])
        else:
            out = space.extract(images, progress=progress)
    save_npz_atomic(path, **out)  # readers never see a half-written file
    return out


def shard_bounds(n: int, batch_size: int, rank: int, world: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous share of ``n`` images in whole batches of ``batch_size``."""
    batches = -(-n // batch_size)
    lo, hi = rank * batches // world, (rank + 1) * batches // world
    return min(lo * batch_size, n), min(hi * batch_size, n)
