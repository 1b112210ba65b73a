import pytest

from benchmark.core.config import Config, apply_overrides, from_dict, to_dict
from benchmark.core.errors import ConfigError
from benchmark.core.presets import PRESETS, PROTOCOLS, get_preset
from benchmark.core.registry import Registry, UnknownNameError


def test_overrides_are_typed():
    cfg = apply_overrides(
        Config(),
        ["train.steps=2e3", "grid.imbalances=0.01,0.1", "sample.guidance=none", "train.hflip=false", "model.ch_mult=1,2"],
    )
    assert cfg.train.steps == 2000 and isinstance(cfg.train.steps, int)
    assert cfg.grid.imbalances == (0.01, 0.1)
    assert cfg.sample.guidance is None
    assert cfg.train.hflip is False
    assert cfg.model.ch_mult == (1, 2)


@pytest.mark.parametrize(
    "pair, fragment",
    [
        ("train.stepz=3", "Did you mean train.steps"),
        ("train.steps=abc", "expects int"),
        ("train.steps=2.5", "expects int"),
        ("train.hflip=maybe", "expects bool"),
        ("nonsense", "key=value"),
    ],
)
def test_bad_overrides_are_clear(pair, fragment):
    with pytest.raises(ConfigError, match=fragment):
        apply_overrides(Config(), [pair])


def test_roundtrip_every_preset():
    for name in PRESETS.names():
        cfg = get_preset(name)
        assert from_dict(Config, to_dict(cfg)) == cfg


def test_protocols_are_distinct():
    a = get_preset("cifar10lt", "ddpm1000")
    b = get_preset("cifar10lt", "ddim")
    assert a.protocol == "ddpm1000" and a.sample.sampler == "ddpm" and a.sample.steps == 1000
    assert a.sample.guidance is None  # each method's official strength
    assert b.protocol == "ddim" and b.sample.steps == 50 and b.sample.guidance == 1.5


def test_registry_rejects_duplicates_and_lists_names():
    reg = Registry("widget")
    reg.register("a", 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", 2)
    with pytest.raises(UnknownNameError, match="Valid widgets: a"):
        reg.get("b")
    with pytest.raises(UnknownNameError, match="unknown preset"):
        get_preset("nope")
    assert "ddim" in PROTOCOLS
