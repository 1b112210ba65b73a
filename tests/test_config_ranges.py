"""Every numeric option has a range: a walk over every field of every section proves an out-of-range
value is refused however the section is built (``--set``, :func:`from_dict`, ``replace``)."""

import typing
from dataclasses import fields, is_dataclass, replace

import pytest

from benchmark.core.config import Bounds, Config, apply_overrides, bounded_fields, from_dict, to_dict
from benchmark.core.errors import ConfigError

# method.* options are declared by each method (methods/), which ranges them itself
SKIPPED_SECTIONS = {"method"}
# numeric options deliberately without a range, with the reason (none so far: add one here only with why)
UNBOUNDED: dict[str, str] = {}


def _numeric(ftype) -> bool:
    """int / float, optional or as a tuple (bool is an int to Python, but not a number here)."""
    args = [a for a in typing.get_args(ftype) if a is not type(None) and a is not Ellipsis]
    if typing.get_origin(ftype) in (typing.Union, tuple) or type(ftype).__name__ == "UnionType":
        return any(_numeric(a) for a in args)
    return ftype in (int, float)


def _numeric_keys() -> list[str]:
    keys = []
    for section in fields(Config):
        hints = typing.get_type_hints(Config)
        if not is_dataclass(hints[section.name]) or section.name in SKIPPED_SECTIONS:
            continue
        cls = hints[section.name]
        inner = typing.get_type_hints(cls)
        keys += [f"{section.name}.{f.name}" for f in fields(cls) if _numeric(inner[f.name])]
    return keys


def _outside(bounds: Bounds, integer: bool):
    """One value just outside ``bounds`` (below its lower end where it has one)."""
    step = 1 if integer else 0.5
    if bounds.ge is not None:
        return bounds.ge - step
    if bounds.gt is not None:
        return int(bounds.gt) if integer else bounds.gt
    if bounds.le is not None:
        return bounds.le + step
    return int(bounds.lt) if integer else bounds.lt


def _is_int(key: str) -> bool:
    section, name = key.split(".")
    hint = typing.get_type_hints(typing.get_type_hints(Config)[section])[name]
    return int in (hint, *typing.get_args(hint)) and float not in (hint, *typing.get_args(hint))


def test_every_numeric_option_has_a_range_or_a_reason():
    declared = bounded_fields(Config)
    missing = [k for k in _numeric_keys() if k not in declared and k not in UNBOUNDED]
    assert not missing, f"numeric options without a range (declare one with bounded(), or list why in UNBOUNDED): {missing}"
    assert len(_numeric_keys()) > 40  # the walk really saw the sections


@pytest.mark.parametrize("key", [k for k in _numeric_keys() if k not in UNBOUNDED])
def test_an_out_of_range_value_is_refused_however_the_section_is_built(key):
    bounds = bounded_fields(Config)[key]
    bad = _outside(bounds, _is_int(key))
    section, name = key.split(".")
    default = getattr(getattr(Config(), section), name)
    value = (bad,) if isinstance(default, tuple) else bad
    text = ",".join(str(v) for v in value) if isinstance(value, tuple) else str(value)
    with pytest.raises(ConfigError, match=rf"{key}=.* is out of range"):
        apply_overrides(Config(), [f"{key}={text}"])
    data = to_dict(Config())
    data[section][name] = list(value) if isinstance(value, tuple) else value
    with pytest.raises(ConfigError, match="out of range"):
        from_dict(Config, data)
    with pytest.raises(ConfigError, match="out of range"):
        replace(getattr(Config(), section), **{name: value})


@pytest.mark.parametrize("pair, fragment", [
    ("diffusion.beta_1=0.05", "beta_1=0.05 is above diffusion.beta_T"),
    ("data.few_threshold=200", "few_threshold=200 is above data.many_threshold"),
    ("model.ch_mult=", "model.ch_mult needs at least one level"),
])  # fmt: skip
def test_cross_field_rules(pair, fragment):
    with pytest.raises(ConfigError, match=fragment):
        apply_overrides(Config(), [pair])


@pytest.mark.parametrize("pair", ["eval.pr_k=0", "sample.steps=0", "train.ema_decay=1.5", "train.lr=-1e-4",
                                  "data.split_seed=-1", "grid.seeds=-1", "sample.batch_size=0", "train.lr=nan"])
def test_the_issue_cases_are_refused(pair):
    with pytest.raises(ConfigError, match="out of range"):
        apply_overrides(Config(), [pair])
