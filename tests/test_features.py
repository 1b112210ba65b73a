"""Feature spaces: offline errors, the Inception computation path, the classifier evaluator, the cache."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from fake_eval_data import fake_dataset

from benchmark.core.config import EvalConfig
from benchmark.core.errors import ConfigError
from benchmark.eval import classifier, features
from benchmark.eval.features import INCEPTION_FILE, extract_cached, get_feature_space

CPU = torch.device("cpu")


@pytest.fixture
def no_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("LTGEN_INCEPTION_WEIGHTS", raising=False)
    return tmp_path


def test_inception_missing_weights_error_names_file_place_and_options(no_hub):
    with pytest.raises(ConfigError) as err:
        features.InceptionSpace(cfg=EvalConfig(), device=CPU)
    msg = str(err.value)
    for part in (INCEPTION_FILE, "$TORCH_HOME/hub/checkpoints", "inception_weights", "LTGEN_INCEPTION_WEIGHTS"):
        assert part in msg
    with pytest.raises(ConfigError, match="not a file"):
        features.InceptionSpace(cfg=EvalConfig(inception_weights=str(no_hub / "nope.pth")), device=CPU)


def test_dinov2_missing_error_is_clear(no_hub):
    with pytest.raises(ConfigError, match="dinov2_vits14_pretrain.pth"):
        features.DinoV2Space(cfg=EvalConfig(), device=CPU)


def test_auto_space_and_registry():
    assert features.default_space("fashion-mnist") == "classifier"
    assert features.default_space("cifar100") == "inception"
    assert features.resolve_feature_space_name("auto", fake_dataset(num_classes=2)) == "inception"
    assert features.resolve_feature_space_name("dinov2", None) == "dinov2"
    assert features.FEATURE_SPACES.names() == ["classifier", "dinov2", "inception"]
    with pytest.raises(ConfigError, match="Valid feature spaces"):
        get_feature_space("vgg", dataset=None, cfg=EvalConfig(), cache_dir=".", device=CPU)


@pytest.fixture(scope="module")
def random_inception_weights(tmp_path_factory):
    """A weights file of the right shape with random values: exercises the computation path offline."""
    from torch_fidelity.feature_extractor_inceptionv3 import (
        FeatureExtractorInceptionV3 as Net,
    )

    path = tmp_path_factory.mktemp("w") / INCEPTION_FILE
    torch.save({}, path)
    original = Net.load_state_dict
    Net.load_state_dict = lambda self, *a, **k: None
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            net = Net("x", ["2048"], feature_extractor_weights_path=str(path))
    finally:
        Net.load_state_dict = original
    torch.save(net.state_dict(), path)
    return path


def test_inception_clean_path_matches_torch_fidelity_forward(random_inception_weights, monkeypatch):
    monkeypatch.setenv("LTGEN_INCEPTION_WEIGHTS", str(random_inception_weights))
    images = torch.randint(0, 256, (1, 3, 299, 299), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    clean = features.InceptionSpace(cfg=EvalConfig(resize="clean", batch_size=2), device=CPU)
    legacy = features.InceptionSpace(cfg=EvalConfig(resize="legacy", batch_size=2), device=CPU)
    assert clean.identity.endswith(":clean") and legacy.identity.endswith(":legacy")
    a, b = clean.extract(images), legacy.extract(images)  # at 299 px both resizes are the identity
    assert a["features"].shape == (1, 2048) and a["logits"].shape == (1, 1008)
    np.testing.assert_allclose(a["features"], b["features"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a["logits"], b["logits"], rtol=1e-4, atol=1e-4)
    gray = torch.randint(0, 256, (2, 1, 16, 16), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    together = clean.extract(gray)
    clean.batch_size = 1  # numbers must not depend on the extraction batch size
    np.testing.assert_allclose(clean.extract(gray)["features"], together["features"], rtol=1e-4, atol=1e-5)


def test_bilinear_resize_is_the_cbdm_evaluators(random_inception_weights, monkeypatch):
    # pytorch-fid's InceptionV3 as the CBDM / OC evaluators call it: x in [0, 1], F.interpolate(x, (299, 299),
    # mode='bilinear', align_corners=False), then 2x - 1 into the network.  align_corners=False upsampling
    # of [a, b] to 4 samples reads source positions -0.25, 0.25, 0.75, 1.25 (clamped at the edges):
    row = torch.tensor([[[[0, 255]]]], dtype=torch.uint8).expand(1, 3, 1, 2)
    up = features.bilinear_unit(row, 4, CPU)[0, 0]
    assert torch.allclose(up, torch.tensor([0.0, 0.25, 0.75, 1.0]).expand(4, 4), atol=1e-6)
    monkeypatch.setenv("LTGEN_INCEPTION_WEIGHTS", str(random_inception_weights))
    space = features.InceptionSpace(cfg=EvalConfig(resize="bilinear", batch_size=2), device=CPU)
    assert space.identity.endswith(":bilinear")
    images = torch.randint(0, 256, (2, 3, 32, 32), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    x = torch.nn.functional.interpolate(images.float() / 255, size=(299, 299), mode="bilinear", align_corners=False)
    x = 2 * x - 1
    for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
                 "MaxPool_2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                 "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "AvgPool"):  # fmt: skip
        x = getattr(space.net, name)(x)
    np.testing.assert_allclose(space.extract(images)["features"], x.flatten(1).double().numpy(), rtol=1e-4,
                               atol=1e-5)  # fmt: skip


def test_clean_resize_gray_to_rgb():
    out = features.clean_resize(torch.full((2, 1, 8, 8), 100, dtype=torch.uint8), 20)
    assert out.shape == (2, 3, 20, 20) and out.dtype == torch.float32
    assert torch.allclose(out, torch.full_like(out, 100.0), atol=1e-3)


def test_classifier_space_trains_caches_reloads_and_is_batch_size_independent(tmp_path, monkeypatch):
    ds = fake_dataset()
    cfg = EvalConfig(feature_space="classifier", classifier_epochs=6, batch_size=7)
    space = get_feature_space("classifier", dataset=ds, cfg=cfg, cache_dir=tmp_path, device=CPU)
    assert space.identity.startswith("classifier:") and space.info["n_test"] == 120
    assert space.info["test_acc"] > 0.6  # structured classes are learnt in a few tiny epochs
    out = space.extract(ds.source.test.images)
    assert out["features"].shape == (120, 128) and out["probs"].shape == (120, 4)
    monkeypatch.setattr(classifier, "train_evaluator", lambda *a, **k: pytest.fail("retrained"))
    again = get_feature_space("auto", dataset=dataclasses.replace(ds, source=dataclasses.replace(
        ds.source, name="fashion-mnist")), cfg=dataclasses.replace(cfg, batch_size=64), cache_dir=tmp_path, device=CPU)
    assert again.identity == space.identity and again.info == space.info
    np.testing.assert_allclose(again.extract(ds.source.test.images)["features"], out["features"], rtol=1e-5, atol=1e-6)
    other = dataclasses.replace(ds, source=dataclasses.replace(ds.source, source_id="changed"))
    with pytest.raises(pytest.fail.Exception):  # another source means another evaluator
        get_feature_space("classifier", dataset=other, cfg=cfg, cache_dir=tmp_path, device=CPU)


class CountingSpace(features.FeatureSpace):
    name, identity = "count", "count:v1"

    def __init__(self):
        self.calls = 0

    def extract(self, images, *, progress=False):
        self.calls += 1
        return {"features": images.flatten(1).double().numpy()}


def test_extract_cached_is_keyed_by_content_and_identity(tmp_path):
    space = CountingSpace()
    x = torch.randint(0, 256, (5, 1, 4, 4), dtype=torch.uint8)
    a = extract_cached(space, x, cache_dir=tmp_path)
    b = extract_cached(space, x.clone(), cache_dir=tmp_path)
    assert space.calls == 1 and np.array_equal(a["features"], b["features"])
    y = x.clone()
    y[0, 0, 0, 0] ^= 1
    extract_cached(space, y, cache_dir=tmp_path)
    space.identity = "count:v2"
    extract_cached(space, x, cache_dir=tmp_path)
    assert space.calls == 3
    assert not list((tmp_path / "features").glob("*.tmp*"))
