"""Checks made before any cell starts: names against their registries, and (below) what every cell needs."""

import pytest

from benchmark.core.config import Config, apply_overrides, named_fields
from benchmark.core.errors import ConfigError
from benchmark.data import DATASETS, RESIZE_METHODS
from benchmark.engine.sampling import SAMPLERS
from benchmark.eval.features import FEATURE_SPACES
from benchmark.harness.preflight import REGISTRIES, check_config
from methods import METHODS

NAMED = {key: registry for key, _names, registry, _also, _default in named_fields(Config())}
ENTRIES = {"dataset": DATASETS.names(), "method": METHODS.names(), "sampler": list(SAMPLERS),
           "feature space": FEATURE_SPACES.names(), "resize method": list(RESIZE_METHODS)}  # fmt: skip


def test_every_registry_a_field_names_has_a_check():
    assert {"data.dataset", "data.resize", "sample.sampler", "eval.feature_space", "grid.methods",
            "train.method_batch_size"} <= set(NAMED)  # fmt: skip
    assert set(NAMED.values()) <= set(REGISTRIES) == set(ENTRIES)


def _value(key: str, name: str) -> str:
    return {"grid.methods": name, "train.method_batch_size": f"{name}=8"}.get(key, name)


@pytest.mark.parametrize("key", sorted(NAMED))
def test_named_field_rejects_an_unknown_name_and_accepts_every_registered_one(key):
    entries = ENTRIES[NAMED[key]]
    with pytest.raises(ConfigError) as info:
        check_config(apply_overrides(Config(), [f"{key}={_value(key, 'nosuchname')}"]))
    message = str(info.value)
    assert message.startswith(key) and "nosuchname" in message
    assert all(name in message for name in entries), "the error lists the registered names"
    for name in entries:
        check_config(apply_overrides(Config(), [f"{key}={_value(key, name)}"]))


def test_extra_values_and_compositions_are_accepted():
    check_config(apply_overrides(Config(), ["eval.feature_space=auto", "data.dataset=imagefolder:some/folder",
                                            "grid.methods=cbdm+resample,ddpm"]))  # fmt: skip
    with pytest.raises(ConfigError, match="grid.methods"):
        check_config(apply_overrides(Config(), ["grid.methods=cbdm+ddpmm"]))
