"""What the feature caches are keyed by: the evaluator's weights (not only its recipe) and the numeric
settings extraction runs under, which extract_cached pins whatever the caller (the trainer) left set."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import torch
from fake_eval_data import fake_dataset

from benchmark.core import device as numerics
from benchmark.core.config import EvalConfig
from benchmark.eval import features
from benchmark.eval.classifier import build_net, weights_digest
from benchmark.eval.evaluate import real_floor_rows
from benchmark.eval.features import extract_cached, feature_cache_path, get_feature_space

CPU = torch.device("cpu")
CFG = EvalConfig(feature_space="classifier", classifier_epochs=1, kid_subsets=2, batch_size=64, diversity=False)
CUDA_FLAGS = ("matmul_tf32", "cudnn_tf32", "benchmark", "deterministic")


def flags() -> tuple:
    b = torch.backends
    return b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32, b.cudnn.benchmark, b.cudnn.deterministic


def set_flags(matmul_tf32: bool, cudnn_tf32: bool, benchmark: bool, deterministic: bool) -> None:
    b = torch.backends
    b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32 = matmul_tf32, cudnn_tf32
    b.cudnn.benchmark, b.cudnn.deterministic = benchmark, deterministic


@pytest.fixture(autouse=True)
def own_flags():
    """Each test may change the process-wide settings; the next test gets them back."""
    with numerics.kept_numerics():
        yield


@pytest.fixture(scope="module")
def ds():
    return fake_dataset(num_classes=3, per_class_train=30, per_class_test=20)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


# ---------------------------------------------------------------- the evaluator's weights


class _AB(torch.nn.Module):
    """A weight matrix and an integer counter (as BatchNorm keeps), with values fixed by hand."""

    def __init__(self, order: str) -> None:
        super().__init__()
        values = {"a": torch.arange(6.0).reshape(2, 3) / 7, "b": torch.tensor(7)}
        for name in order:  # the same entries registered in another order: another state_dict order
            self.register_buffer(name, values[name])


def test_weights_digest_depends_on_the_numbers_only():
    assert list(_AB("ab").state_dict()) != list(_AB("ba").state_dict())
    assert weights_digest(_AB("ab")) == weights_digest(_AB("ba"))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = build_net("smallcnn", channels=1, num_classes=3)
    copy = build_net("smallcnn", channels=1, num_classes=3)
    copy.load_state_dict(net.state_dict())
    digest = weights_digest(net)
    assert re.fullmatch(r"[0-9a-f]{12}", digest) and weights_digest(copy) == digest
    with torch.no_grad():
        next(copy.parameters()).view(-1)[0] += 1e-6  # one weight, barely moved
    assert weights_digest(copy) != digest
    # fixed values, fixed digest: in every process and on every machine (object ids, devices and dict order
    # do not enter).  A change of this value invalidates every cached feature of the classifier space.
    assert weights_digest(_AB("ab")) == "8b99686c75a4"


def test_classifier_identity_follows_the_weights_file(ds, cache):
    space = get_feature_space("classifier", dataset=ds, cfg=CFG, cache_dir=cache, device=CPU)
    fp = space.info["fingerprint"]
    assert re.fullmatch(rf"classifier:{fp}:w[0-9a-f]{{12}}", space.identity)
    images = ds.source.test.images
    first = extract_cached(space, images, cache_dir=cache)
    again = get_feature_space("classifier", dataset=ds, cfg=CFG, cache_dir=cache, device=CPU)  # loaded, not trained
    assert again.identity == space.identity  # the digest of the loaded weights is that of the trained ones
    # the cached evaluator replaced by one with other weights (retrained elsewhere, or nondeterministically)
    path = cache / f"evaluator-{fp}.pt"
    blob = torch.load(path, weights_only=True)
    name = next(k for k, v in blob["state_dict"].items() if v.is_floating_point())
    blob["state_dict"][name] = blob["state_dict"][name] + 0.05
    torch.save(blob, path)
    other = get_feature_space("classifier", dataset=ds, cfg=CFG, cache_dir=cache, device=CPU)
    assert other.info["fingerprint"] == fp  # the same recipe...
    assert other.identity != space.identity and other.identity.startswith(f"classifier:{fp}:w")  # ...other weights
    assert feature_cache_path(other, "k", cache) != feature_cache_path(space, "k", cache)
    before = set((cache / "features").glob("*.npz"))
    changed = extract_cached(other, images, cache_dir=cache)
    assert len(set((cache / "features").glob("*.npz")) - before) == 1  # extracted anew, not read from the old file
    assert not np.allclose(changed["features"], first["features"])


# ---------------------------------------------------------------- numeric settings


def test_numerics_key_follows_every_setting():
    set_flags(False, False, False, False)
    base = numerics.numerics_key("cuda")
    for i in range(4):
        on = [False] * 4
        on[i] = True
        set_flags(*on)
        assert numerics.numerics_key("cuda") != base, CUDA_FLAGS[i]
    set_flags(False, False, False, False)
    assert numerics.numerics_key("cuda") == base
    cpu = numerics.numerics_key("cpu")
    assert cpu.startswith("cpu ") and "dtype=float32" in cpu and "tf32" not in cpu
    set_flags(False, True, True, True)  # cuDNN settings are not the CPU's
    assert numerics.numerics_key("cpu") == cpu
    torch.set_default_dtype(torch.float64)
    try:
        assert "dtype=float64" in numerics.numerics_key("cpu") and "dtype=float64" in numerics.numerics_key("cuda")
    finally:
        torch.set_default_dtype(torch.float32)
    torch.use_deterministic_algorithms(True)
    try:
        assert numerics.numerics_key("cpu") != cpu
    finally:
        torch.use_deterministic_algorithms(False)
    assert numerics.numerics_key("cpu") == cpu


def test_pinned_numerics_are_fixed_inside_and_the_callers_after():
    keys = set()
    for caller in ((True, True, True, False), (False, False, False, False), (True, False, True, True)):
        set_flags(*caller)
        with numerics.pinned_numerics(torch.device("cuda")) as key:
            assert flags() == (False, False, False, True) and key == numerics.numerics_key("cuda")
            assert torch.get_float32_matmul_precision() == "highest"
            keys.add(key)
        assert flags() == caller
        with pytest.raises(RuntimeError, match="inside"), numerics.pinned_numerics(CPU):
            raise RuntimeError("inside")
        assert flags() == caller
    assert len(keys) == 1  # the key of pinned extraction does not depend on what the caller had set


def test_pinned_numerics_restore_settings_made_through_torchs_newer_api():
    matmul = torch.backends.cuda.matmul
    if not hasattr(matmul, "fp32_precision"):
        pytest.skip("this torch has only the legacy TF32 flags (covered above)")
    matmul.fp32_precision = "tf32"  # after this, reading the legacy flag raises in torch >= 2.9
    ops = {p: numerics._op(p).fp32_precision for p in numerics._PRECISION_OPS if numerics._op(p) is not None}
    with numerics.pinned_numerics(CPU):
        assert matmul.fp32_precision == "ieee" and matmul.allow_tf32 is False
    assert {p: numerics._op(p).fp32_precision for p in ops} == ops
    torch.set_float32_matmul_precision("medium")  # oneDNN may then use bf16 for float32 matmuls on the CPU
    before = numerics.numerics_key("cpu")
    with numerics.pinned_numerics(CPU) as key:
        assert "matmul_precision=highest" in key and "mkldnn.matmul=bf16" not in key
    assert torch.get_float32_matmul_precision() == "medium" and numerics.numerics_key("cpu") == before


class RecordingSpace(features.FeatureSpace):
    """Records the settings each extraction saw."""

    name, identity = "recording", "recording:v1"

    def __init__(self):
        self.seen = []

    def extract(self, images, *, progress=False):
        self.seen.append((flags(), torch.get_default_dtype()))
        return {"features": images.flatten(1).double().numpy()}


def test_extract_cached_pins_the_numerics_and_keys_the_cache_by_them(tmp_path):
    space = RecordingSpace()
    x = torch.randint(0, 256, (5, 1, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    set_flags(True, True, True, False)  # what training on a GPU used to leave behind
    extract_cached(space, x, cache_dir=tmp_path)
    assert space.seen == [((False, False, False, True), torch.float32)]
    assert flags() == (True, True, True, False)
    set_flags(False, True, False, False)  # a fresh process's defaults: the same numerics, the same file
    extract_cached(space, x, cache_dir=tmp_path)
    assert len(space.seen) == 1 and len(list((tmp_path / "features").glob("*.npz"))) == 1
    torch.set_default_dtype(torch.float64)  # not pinned (the networks are built in it): keyed
    try:
        extract_cached(space, x, cache_dir=tmp_path)
    finally:
        torch.set_default_dtype(torch.float32)
    assert space.seen[-1][1] == torch.float64 and len(list((tmp_path / "features").glob("*.npz"))) == 2
    assert RecordingSpace().numerics == space.numerics and space.numerics.startswith("cpu ")


def test_real_floor_cache_is_keyed_by_the_extraction_numerics(ds, cache, monkeypatch):
    cfg = dataclasses.replace(CFG, pr_k=2, dc_k=2)
    real_floor_rows(ds, cfg, 5, cache_dir=cache, device=CPU, progress=False)
    assert len(list(cache.glob("real_floor-*.csv"))) == 1
    real_floor_rows(ds, cfg, 5, cache_dir=cache, device=CPU, progress=False)
    assert len(list(cache.glob("real_floor-*.csv"))) == 1
    monkeypatch.setattr(features.FeatureSpace, "numerics", property(lambda self: "other numerics"))
    real_floor_rows(ds, cfg, 5, cache_dir=cache, device=CPU, progress=False)
    assert len(list(cache.glob("real_floor-*.csv"))) == 2


# ---------------------------------------------------------------- the trainer's settings


def test_train_numerics_are_the_runs_and_the_callers_after():
    caller = (False, True, False, False)
    set_flags(*caller)
    with numerics.train_numerics(torch.device("cuda"), tf32=True):
        assert flags()[:3] == (True, True, True)
    assert flags() == caller
    with numerics.train_numerics(torch.device("cuda"), tf32=False):
        assert flags()[:3] == (False, False, True)
    assert flags() == caller
    with pytest.raises(KeyboardInterrupt), numerics.train_numerics(torch.device("cuda"), tf32=True):
        raise KeyboardInterrupt  # an interrupted run gives them back too
    assert flags() == caller
    with numerics.train_numerics(CPU, tf32=True):
        assert flags() == caller  # nothing to set off CUDA


def test_train_leaves_the_settings_as_it_found_them(tmp_path, monkeypatch):
    from engine_helpers import tiny_config, tiny_data

    from benchmark.engine import trainer
    from methods import get_method

    caller = (True, False, True, True)
    set_flags(*caller)
    seen, loop = [], trainer._loop

    def recording_loop(run, **kw):
        seen.append(flags())
        return loop(run, **kw)

    monkeypatch.setattr(trainer, "_loop", recording_loop)
    data, cfg = tiny_data(), tiny_config(steps=2, ckpt_every=2)
    method = get_method("ddpm", class_counts=data.counts, options=cfg.method)
    trainer.train(cfg=cfg, dataset=data, method=method, run_dir=tmp_path, seed=0, device="cpu", progress=False)
    assert seen == [caller] and flags() == caller
