import numpy as np
import pytest
import torch
from engine_helpers import TINY_MODEL

import benchmark.engine.sampling as sampling
from benchmark.core.config import SampleConfig
from benchmark.core.errors import ConfigError
from benchmark.engine.backbone import build_unet
from benchmark.engine.diffusion import GaussianDiffusion
from benchmark.engine.sampling import (
    SAMPLERS,
    balanced_labels,
    generate_eval_set,
    sample_images,
    sample_seeds,
)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_unet(TINY_MODEL, channels=1, resolution=8, num_classes=3).eval()


DIFF = GaussianDiffusion(T=20)


def test_labels_and_seeds():
    labels = balanced_labels(3, 4)
    assert torch.bincount(labels).tolist() == [4, 4, 4]
    assert len(set(sample_seeds(0, 10).tolist()) | set(sample_seeds(1, 10).tolist())) == 20


@pytest.mark.parametrize("sampler,eta", [(name, eta) for name in SAMPLERS.names() for eta in (0.0, 0.7)])
def test_same_images_for_any_batch_size(model, sampler, eta):
    """The contract of every registered sampler: an image depends on its label and seed only."""
    labels, seeds = balanced_labels(3, 2), sample_seeds(5, 6)
    kw = dict(labels=labels, seeds=seeds, sampler=sampler, steps=4, eta=eta, guidance=1.5)
    a = sample_images(model, DIFF, batch_size=6, **kw)
    b = sample_images(model, DIFF, batch_size=4, **kw)
    c = sample_images(model, DIFF, batch_size=1, **kw)
    assert a.shape == (6, 1, 8, 8) and a.dtype == torch.uint8
    assert torch.equal(a, b) and torch.equal(a, c)
    # an image depends on its own seed only: permuting the set permutes the images
    perm = torch.tensor([5, 0, 3, 1, 4, 2])
    d = sample_images(model, DIFF, batch_size=3, **{**kw, "labels": labels[perm], "seeds": seeds[perm]})
    assert torch.equal(d, a[perm])
    assert not torch.equal(sample_images(model, DIFF, batch_size=6, **{**kw, "seeds": sample_seeds(6, 6)}), a)


def test_ddim_eta0_deterministic_and_seed_dependent(model):
    labels = balanced_labels(3, 1)
    run = lambda s: sample_images(model, DIFF, labels=labels, seeds=sample_seeds(s, 3), steps=5, guidance=None)
    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


def test_generate_eval_set_is_atomic_and_resumes(model, tmp_path, monkeypatch):
    cfg = SampleConfig(steps=3, guidance=None, n_per_class=3, batch_size=2)
    out = tmp_path / "samples.npz"
    kw = dict(num_classes=3, n_per_class=3, cfg=cfg, seed=0, out_path=out, device="cpu", progress=False, chunk_size=4)
    with pytest.raises(ConfigError, match="no guidance strength"):
        generate_eval_set(model, DIFF, **kw)
    images, labels = generate_eval_set(model, DIFF, guidance=0.8, **kw)
    assert images.shape == (9, 1, 8, 8) and torch.bincount(labels).tolist() == [3, 3, 3]
    with np.load(out) as data:
        assert np.array_equal(data["images"], images.numpy()) and np.array_equal(data["labels"], labels.numpy())
    assert not list(tmp_path.glob("*.tmp")) and not (tmp_path / "samples.npz.parts").exists()

    # interrupted run: the first two chunks exist, only the last one is generated again
    out2 = tmp_path / "again.npz"
    parts = tmp_path / "again.npz.parts"
    calls = []
    real = sampling.sample_images

    def flaky(*a, **k):
        calls.append(len(k["labels"]))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(sampling, "sample_images", flaky)
    with pytest.raises(KeyboardInterrupt):
        generate_eval_set(model, DIFF, guidance=0.8, **{**kw, "out_path": out2})
    assert len(list(parts.glob("chunk_*.npz"))) == 2 and not out2.exists()
    calls.clear()
    again, _ = generate_eval_set(model, DIFF, guidance=0.8, **{**kw, "out_path": out2})
    assert calls == [1]
    assert torch.equal(again, images)


def test_a_smaller_set_paired_with_a_larger_one_holds_its_first_images_per_class(model, tmp_path):
    """An intermediate budget point with fewer images per class draws them with the seeds the same
    images have in the full set (the same model here, so the same images)."""
    cfg = SampleConfig(steps=3, guidance=(0.8,), n_per_class=4, batch_size=5)
    kw = dict(num_classes=3, cfg=cfg, seed=1, device="cpu", progress=False)
    full, labels = generate_eval_set(model, DIFF, n_per_class=4, out_path=tmp_path / "full.npz", **kw)
    small, _ = generate_eval_set(model, DIFF, n_per_class=2, out_path=tmp_path / "small.npz", paired_with=4, **kw)
    first = torch.cat([torch.nonzero(labels == c).flatten()[:2] for c in range(3)])
    assert torch.equal(small, full[first])
    unpaired, _ = generate_eval_set(model, DIFF, n_per_class=2, out_path=tmp_path / "unpaired.npz", **kw)
    assert not torch.equal(unpaired, full[first])
