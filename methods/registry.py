"""The METHODS registry and ``get_method``, which also builds compositions such as 'cbdm+resample'.

A composition takes each piece (class sampling, sample weights, loss terms) from the one part
that supplies it.  Two parts that supply the same piece (say two objectives, 'cbdm+t2h') have no
single meaning, so that is an error naming the clash instead of a silent choice.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from benchmark.core.config import MethodConfig
from benchmark.core.errors import ConfigError
from benchmark.core.registry import Registry

from .base import Method, overrides

METHODS: Registry[type[Method]] = Registry("method")

_PIECES = {
    "class_probs": "class sampling", "sample_weights": "sample weights", "loss_terms": "loss (objective)",
    "wrap_model": "backbone wrapper",
}  # fmt: skip


class Composite(Method):
    """Several methods at once; each piece is delegated to the single part that supplies it."""

    def __init__(self, *, parts: list[Method], class_counts, options) -> None:
        super().__init__(class_counts=class_counts, options=options)
        self.parts = parts
        self.name = "+".join(p.name for p in parts)
        by_class = check_composable([type(p) for p in parts])
        self._owner: dict[str, Method] = {
            attr: next(p for p in parts if type(p) is cls) for attr, cls in by_class.items()
        }
        loss_owner = self._owner.get("loss_terms", parts[0])
        self.official_guidance = loss_owner.official_guidance
        self.term_names = loss_owner.term_names

    def class_probs(self, step, total_steps):
        owner = self._owner.get("class_probs")
        return owner.class_probs(step, total_steps) if owner else None

    def sample_weights(self, y):
        owner = self._owner.get("sample_weights")
        return owner.sample_weights(y) if owner else None

    def loss_terms(self, model, diffusion, x0, labels, generator):
        owner = self._owner.get("loss_terms", self.parts[0])
        return owner.loss_terms(model, diffusion, x0, labels, generator)

    def trainable_modules(self, model):
        return {k: m for p in self.parts for k, m in p.trainable_modules(model).items()}

    def wrap_model(self, model):
        owner = self._owner.get("wrap_model")
        return owner.wrap_model(model) if owner else model

    def export_model(self, model):
        owner = self._owner.get("wrap_model")
        return owner.export_model(model) if owner else model


def _split(name: str) -> list[str]:
    names = [n.strip() for n in name.split("+")]
    if not all(names):
        raise ConfigError(f"method name {name!r} has an empty part; write e.g. 'cbdm+resample'")
    if len(set(names)) != len(names):
        raise ConfigError(f"method name {name!r} repeats a part; list each method once")
    return names


def _absorb(names: list[str]) -> tuple[list[str], dict[str, object]]:
    """Drop the parts another part absorbs (its ``absorbs``); return the rest and the options they set."""
    kept, options = list(names), {}
    for name in names:
        for other, opts in METHODS.get(name).absorbs.items():
            if other in kept and name in kept:
                kept.remove(other)
                options.update(opts)
    return kept, options


def check_composable(classes: list[type[Method]]) -> dict[str, type[Method]]:
    """Which part supplies each piece; an error when two parts supply the same piece."""
    owner: dict[str, type[Method]] = {}
    for attr, what in _PIECES.items():
        owners = [c for c in classes if overrides(c, attr)]
        if len(owners) > 1:
            joined = "+".join(c.name for c in classes)
            raise ConfigError(
                f"methods {' and '.join(repr(c.name) for c in owners)} both define the {what}, "
                f"so {joined!r} has no single meaning; combine methods that supply different "
                "pieces (for example 'cbdm+resample')"
            )
        if owners:
            owner[attr] = owners[0]
    return owner


def get_method_class(name: str) -> type[Method]:
    """Validate ``name`` (single or '+'-composed) without building it; for up-front config checks."""
    names, _ = _absorb(_split(name))  # also fails for an unknown part, with the valid names
    classes = [METHODS.get(n) for n in names]
    if len(classes) == 1:
        return classes[0]
    check_composable(classes)
    return Composite


def objective_class(name: str) -> type[Method]:
    """The class whose objective (``loss_terms``) method ``name`` trains: the part that supplies it in a
    composition ('cbdm+resample' -> CBDM), or the base Method's plain DDPM loss when none does."""
    classes = [METHODS.get(n) for n in _absorb(_split(name))[0]]
    if len(classes) == 1:
        return classes[0]
    return check_composable(classes).get("loss_terms", Method)


def options_read(name: str) -> set[str] | None:
    """The MethodConfig field prefixes method ``name`` reads (over its parts), or None when a part reads any."""
    read: set[str] = set()
    for cls in (METHODS.get(n) for n in _split(name)):
        if cls.options_read is None:
            return None
        read.update(cls.options_read)
    return read


def fine_tuner(name: str) -> type[Method] | None:
    """The part of method ``name`` that fine-tunes another method's model (``init_from_method``), or None."""
    tuners = [c for c in (METHODS.get(n) for n in _split(name)) if c.init_from_method]
    if len(tuners) > 1:
        raise ConfigError(
            f"method {name!r} combines several fine-tuning methods ({', '.join(c.name for c in tuners)}); "
            "a model starts from one parent, so use one of them"
        )
    return tuners[0] if tuners else None


def get_method(name: str, *, class_counts: np.ndarray, options: MethodConfig | None = None) -> Method:
    """Build method ``name`` ('ddpm', 'cbdm', ... or a '+'-joined composition) for these class counts."""
    options = options or MethodConfig()
    given = _split(name)
    names, absorbed = _absorb(given)  # also fails for an unknown part, with the valid names
    if absorbed:
        options = replace(options, **absorbed)
    parts = [METHODS.get(n)(class_counts=class_counts, options=options) for n in names]
    method = parts[0] if len(parts) == 1 else Composite(parts=parts, class_counts=class_counts, options=options)
    method.name = "+".join(given)
    return method
