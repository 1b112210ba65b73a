"""Contract tests over every registry: a newly registered name is tested here without a new test.

One contract per registry, parametrised over every registered name (like diffusers' shared
scheduler tests).  Methods (and each method composed with ``resample``): valid class
probabilities and sample weights, loss terms that draw only from the generator they are handed,
and a training run that resumes bit-exactly (the checks are methods/contracts.py, which
``ltgen-bench check-method`` runs on any method).  The 2-process objective of every method is in
tests/test_distributed.py.  Feature spaces: determinism, batch-size independence and an identity
that follows the weights.  Datasets: those available offline build a valid split, the others
fail with a DataError naming the fix.  Presets and protocols: build, dry-run, fail cleanly.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from fake_eval_data import fake_dataset
from PIL import Image

from benchmark.cli import main
from benchmark.core.config import Config, DataConfig, EvalConfig, from_dict, to_dict, to_json
from benchmark.core.errors import ConfigError, DataError
from benchmark.core.names import GROUPS
from benchmark.core.presets import PAPER_PRESETS, PRESETS, PROTOCOL_SETTINGS, PROTOCOLS, get_preset
from benchmark.data import DATASETS, build_dataset, builtin
from benchmark.eval.features import FEATURE_SPACES, get_feature_space
from methods import METHODS, contracts, get_method
from methods.base import overrides

CPU = torch.device("cpu")

# every method, and every method that leaves class sampling free composed with resample
WITH_RESAMPLE = [f"{n}+resample" for n in METHODS.names() if not overrides(METHODS.get(n), "class_probs")]
ALL_METHODS = METHODS.names() + WITH_RESAMPLE

# ---------------------------------------------------------------- methods
# the checks themselves live in methods/contracts.py: `ltgen-bench check-method NAME` runs the same code


@pytest.mark.parametrize("name", ALL_METHODS)
def test_class_probs_are_a_distribution_without_empty_classes(name):
    contracts.class_probs(name)


@pytest.mark.parametrize("name", ALL_METHODS)
def test_sample_weights_are_finite_and_positive(name):
    contracts.sample_weights(name)


@pytest.mark.parametrize("name", ALL_METHODS)
def test_loss_terms_are_named_finite_and_drawn_only_from_the_generator(name):
    contracts.loss_terms(name)


@pytest.mark.parametrize("name", ALL_METHODS)
def test_trains_logs_and_resumes_bit_exactly(tmp_path, name):
    contracts.resume(name, tmp_path)
    assert not list(tmp_path.rglob("*.tmp"))


# ---------------------------------------------------------------- feature spaces

SPACE_DATA = fake_dataset()
IMAGES = SPACE_DATA.source.test.images[::11]  # 11 images of every class


def _space(name, cache_dir, **eval_kw):
    cfg = EvalConfig(**{"feature_space": name, "classifier_epochs": 1, "batch_size": 4, **eval_kw})
    try:
        return get_feature_space(name, dataset=SPACE_DATA, cfg=cfg, cache_dir=cache_dir, device=CPU)
    except ConfigError as err:  # weights that cannot be had offline: the space says where to put them
        pytest.skip(f"feature space {name!r} is not available here: {str(err)[:200]}")


@pytest.mark.parametrize("name", FEATURE_SPACES.names())
def test_feature_space_is_deterministic_and_batch_size_independent(tmp_path, name):
    space = _space(name, tmp_path)
    a = space.extract(IMAGES)
    assert set(a) >= {"features"}
    for k, v in a.items():
        assert len(v) == len(IMAGES) and np.isfinite(v).all(), k
    again = space.extract(IMAGES)
    assert all(np.array_equal(a[k], again[k]) for k in a)
    space.batch_size = len(IMAGES)  # one batch instead of several
    whole = space.extract(IMAGES)
    for k in a:
        np.testing.assert_allclose(whole[k], a[k], rtol=1e-5, atol=1e-6, err_msg=k)
    empty = space.extract(IMAGES[:0])
    assert all(len(v) == 0 for v in empty.values())


def _other_weights(name, tmp_path):
    """Settings that give the same space other weights; every registered space needs an entry."""
    if name == "classifier":
        return {"classifier_epochs": 2}  # the evaluator is trained longer: other weights
    if name == "inception":
        space = _space(name, tmp_path)  # skips when the weights are absent
        path = tmp_path / "other-inception.pth"
        state = {k: v.clone() for k, v in space.net.state_dict().items()}
        first = next(k for k, v in state.items() if v.is_floating_point())
        state[first] += 1e-3
        torch.save(state, path)
        return {"inception_weights": str(path)}
    if name == "dinov2":
        _space(name, tmp_path)  # skips when the weights are absent
        pytest.skip("dinov2 reads its weights from the torch hub cache only; there is no second file to point at")
    pytest.fail(f"feature space {name!r} is registered but _other_weights does not say how to change its weights")


@pytest.mark.parametrize("name", FEATURE_SPACES.names())
def test_feature_space_identity_follows_the_weights(tmp_path, name):
    other_kw = _other_weights(name, tmp_path)
    a, b = _space(name, tmp_path), _space(name, tmp_path)
    assert a.identity == b.identity, "the same weights must give the same identity (caches are keyed by it)"
    c = _space(name, tmp_path, **other_kw)
    assert c.identity != a.identity
    assert not np.allclose(c.extract(IMAGES)["features"], a.extract(IMAGES)["features"])


# ---------------------------------------------------------------- datasets


def _image_folder(root):
    rng = np.random.default_rng(0)
    for c, n in enumerate((10, 8, 6)):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / f"class{c}" / f"{i}.png")
    return f"imagefolder:{root}"


def _list_file(tmp_path):
    """The image folder as a list of 'relative/path label' lines."""
    root = tmp_path / "listed"
    _image_folder(root)
    lines = [f"{p.parent.name}/{p.name} {int(p.parent.name[5:])}" for p in sorted(root.glob("class*/*.png"))]
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    return f"listfile:{root / 'train.txt'}"


def _spec(name, tmp_path):
    if name == "listfile":
        return _list_file(tmp_path)
    return _image_folder(tmp_path / "folder") if name == "imagefolder" else name


@pytest.mark.parametrize("name", DATASETS.names())
def test_dataset_builds_a_valid_split_or_fails_naming_the_fix(tmp_path, monkeypatch, name):
    monkeypatch.setenv("LTGEN_DATA_ROOT", str(tmp_path / "data"))  # where listfile caches its decoded images
    cfg = DataConfig(dataset=_spec(name, tmp_path), imbalance=0.5, resolution=8)
    try:
        ds = build_dataset(cfg)
    except DataError as err:  # not available offline: a clear error, never a traceback from deep inside
        assert name not in ("digits", "imagefolder", "listfile"), f"{name} must be available offline: {err}"
        if name == "fashion-mnist":
            assert not builtin.DEBIAN_FASHION_MNIST.is_dir(), "the Debian package's files are there: they must load"
        message = str(err)
        assert len(message) > 30 and any(w in message for w in ("LTGEN", "data_root", "--data-root", "install", "download"))
        return
    images, labels = ds.train_images, ds.train_labels
    assert images.dtype == torch.uint8 and images.shape[1:] == (ds.channels, 8, 8) and ds.channels in (1, 3)
    assert labels.dtype == torch.int64 and len(labels) == len(images) == int(ds.counts.sum())
    assert np.array_equal(np.bincount(labels.numpy(), minlength=ds.num_classes), ds.counts)
    assert len(ds.groups) == ds.num_classes and set(ds.groups) <= set(GROUPS)
    assert ds.counts.max() > ds.counts.min() or ds.num_classes == 1  # imbalance 0.5 is long-tailed
    test = ds.source.test
    assert test.images.shape[1:] == images.shape[1:] and int(test.labels.max()) < ds.num_classes
    again = build_dataset(cfg)
    assert again.fingerprint == ds.fingerprint and torch.equal(again.train_images, images)
    assert build_dataset(replace(cfg, imbalance=0.25)).fingerprint != ds.fingerprint


@pytest.mark.parametrize("name", DATASETS.names())
def test_dataset_dry_run_and_data_command(tmp_path, capsys, monkeypatch, name):
    monkeypatch.setenv("LTGEN_DATA_ROOT", str(tmp_path / "data"))
    spec = _spec(name, tmp_path)
    code = main(["run", "--preset", "smoke", "--dataset", spec, "--out", str(tmp_path / "out"), "--dry-run"])
    captured = capsys.readouterr()
    if code == 0:
        assert json.loads(captured.out.split("\n\n")[0])["data"]["dataset"] == spec
    else:  # a dry run that checks the data up front: one clean line for what is not available here
        assert name not in ("digits", "imagefolder"), captured.err
        assert code == 2 and captured.err.startswith("error: ") and "Traceback" not in captured.err
    assert not (tmp_path / "out").exists()
    code = main(["data", "--dataset", spec, "--imbalance", "0.5", "--resolution", "8", "--format", "csv"])
    captured = capsys.readouterr()
    if code == 0:
        assert captured.out.startswith("class,name,count,group")
    else:  # unavailable here: one line naming the problem, exit status 2
        assert code == 2 and captured.err.startswith("error: ") and "Traceback" not in captured.err


# ---------------------------------------------------------------- presets and protocols


@pytest.mark.parametrize("name", PRESETS.names())
def test_preset_builds_round_trips_and_dry_runs(tmp_path, capsys, name):
    cfg = get_preset(name)
    assert isinstance(cfg, Config) and from_dict(Config, to_dict(cfg)) == cfg
    assert cfg.grid.methods and all(get_method(m, class_counts=np.array([3, 2])) for m in cfg.grid.methods)
    assert main(["run", "--preset", name, "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out.split("\n\n")[0]) == json.loads(to_json(cfg)) and " cells" in out
    assert not (tmp_path / "out").exists()
    assert main(["run", "--preset", name, "--set", "train.nosuch=1", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "train.nosuch" in err and "Traceback" not in err


@pytest.mark.parametrize("name", PROTOCOLS.names())
def test_protocol_applies_to_every_preset_and_dry_runs(tmp_path, capsys, name):
    for preset in PRESETS.names():
        base, cfg = get_preset(preset), get_preset(preset, name)
        # a protocol changes sampling and evaluation, and on the paper presets its table's budget and batch only
        budget = PROTOCOL_SETTINGS[name].budget
        train = replace(base.train, steps=budget.steps, batch_size=budget.batch, method_batch_size=budget.method_batch)
        assert cfg.protocol == name and cfg.train == (train if preset in PAPER_PRESETS else base.train)
    assert main(["run", "--preset", "smoke", "--protocol", name, "--out", str(tmp_path), "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out.split("\n\n")[0])["protocol"] == name
    assert main(["run", "--preset", "smoke", "--protocol", name + "x", "--dry-run"]) == 2
    assert "Valid protocols" in capsys.readouterr().err
