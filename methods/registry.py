"""The METHODS registry, and :func:`resolve`: a method name (with its '+' compositions such as
'cbdm+resample') made once into a :class:`MethodSpec` that answers every question about it (its class,
objective, options sections, fine-tuning parent) and builds it.

A composition takes each piece (class sampling, sample weights, loss terms) from the one part
that supplies it.  Two parts that supply the same piece (say two objectives, 'cbdm+t2h') have no
single meaning, so that is an error naming the clash instead of a silent choice.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from benchmark.core.config import MethodConfig, method_section, register_method_options
from benchmark.core.errors import ConfigError
from benchmark.core.registry import Registry

from .base import Method, overrides


class MethodRegistry(Registry[type[Method]]):
    """Method classes by name; a method's ``Options`` become its section ``method.<name>.``, and where it
    was defined (its module's file) is kept, so a plugin's content can be recorded with its cells."""

    def _check(self, name: str, item: type[Method]) -> None:
        if item.Options is not None:
            register_method_options(name, item.Options)


METHODS = MethodRegistry("method", base=Method)

_PIECES = {
    "class_probs": "class sampling", "sample_weights": "sample weights", "loss_terms": "loss (objective)",
    "wrap_model": "backbone wrapper",
}  # fmt: skip


class Composite(Method):
    """Several methods at once; each piece is delegated to the single part that supplies it."""

    def __init__(self, *, parts: list[Method], class_counts) -> None:
        super().__init__(class_counts=class_counts)
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


def _absorb(names: list[str]) -> tuple[list[str], tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]]:
    """Drop the parts another part absorbs (its ``absorbs``); return the rest and, per absorbing part, the
    values of its own options that absorbing sets."""
    kept, options = list(names), {}
    for name in names:
        for other, opts in METHODS.get(name).absorbs.items():
            if other in kept and name in kept:
                kept.remove(other)
                options.setdefault(name, {}).update(opts)
    return kept, tuple((n, tuple(sorted(o.items()))) for n, o in options.items())


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


@dataclass(frozen=True)
class MethodSpec:
    """Method ``name`` resolved once: ``given`` its parts as written, ``parts`` those built (after
    ``absorbs``), ``absorbed`` the options each built part takes from the parts it absorbed."""

    name: str
    given: tuple[str, ...]
    parts: tuple[str, ...]
    absorbed: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]

    @property
    def classes(self) -> tuple[type[Method], ...]:
        return tuple(METHODS.get(n) for n in self.parts)

    @property
    def method_class(self) -> type[Method]:
        """The class built: the method's own, or :class:`Composite` for a composition."""
        return self.classes[0] if len(self.parts) == 1 else Composite

    @property
    def objective(self) -> type[Method]:
        """The class whose objective (``loss_terms``) it trains: the part that supplies it in a composition
        ('cbdm+resample' -> CBDM), or the base Method's plain DDPM loss when none does."""
        if len(self.parts) == 1:
            return self.classes[0]
        return check_composable(list(self.classes)).get("loss_terms", Method)

    @property
    def sections(self) -> tuple[str, ...]:
        """The ``method.<section>`` keys whose options it reads (its written parts' own)."""
        return tuple(method_section(n) for n in self.given if METHODS.get(n).Options is not None)

    @property
    def fine_tuner(self) -> type[Method] | None:
        """The part that fine-tunes another method's model (``init_from_method``), or None."""
        tuners = [c for c in (METHODS.get(n) for n in self.given) if c.init_from_method]
        return tuners[0] if tuners else None

    def options(self, config: Any, part: str) -> Any:
        """Part ``part``'s options from the ``method`` section ``config``, with what it absorbed."""
        if METHODS.get(part).Options is None:
            return None
        opts = getattr(config, method_section(part), None)
        if opts is None:  # never fall back to defaults silently: the options given would be ignored
            raise ConfigError(f"the config has no section method.{method_section(part)}: it was built before method "
                              f"{part!r} was registered; load its plugin (--plugin) before building the config")
        values = dict(dict(self.absorbed).get(part, ()))
        return replace(opts, **values) if values else opts

    def build(self, *, class_counts: np.ndarray, options: Any = None) -> Method:
        """The method for these class counts; ``options``: the config's ``method`` section (default: defaults)."""
        config = options if options is not None else MethodConfig()
        parts = [METHODS.get(n)(class_counts=class_counts, options=self.options(config, n)) for n in self.parts]
        method = parts[0] if len(parts) == 1 else Composite(parts=parts, class_counts=class_counts)
        method.name = self.name
        return method


@functools.cache
def _resolve(name: str, generation: int) -> MethodSpec:
    given = _split(name)
    kept, absorbed = _absorb(given)  # also fails for an unknown part, with the valid names
    spec = MethodSpec(name=name, given=tuple(given), parts=tuple(kept), absorbed=absorbed)
    if len(kept) > 1:
        check_composable(list(spec.classes))
    tuners = [c for c in (METHODS.get(n) for n in given) if c.init_from_method]
    if len(tuners) > 1:
        raise ConfigError(
            f"method {name!r} combines several fine-tuning methods ({', '.join(c.name for c in tuners)}); "
            "a model starts from one parent, so use one of them"
        )
    return spec


def resolve(name: str) -> MethodSpec:
    """Method ``name`` ('ddpm', 'cbdm+resample', ...) as a spec; a ConfigError naming the fix when it has
    an unknown part, a repeated part, two parts that supply the same piece or two fine-tuning parts."""
    return _resolve(name, len(METHODS))  # a plugin registered later may make a name valid


def method_source(spec: MethodSpec) -> str:
    """Where the parts of ``spec`` from outside the package were defined: 'file.py sha256:...' each, joined
    by '; ' ('' when every part is ours).  Recorded in the cell's config (``method_code``)."""
    from .plugins import source_of

    return "; ".join(s for s in (source_of(METHODS.get(n)) for n in spec.given) if s)


def method_options(**sections: dict[str, Any]) -> Any:
    """The config's ``method`` section with some options changed, e.g. ``method_options(resample={"q": 0.5})``."""
    base = MethodConfig()
    return replace(base, **{method_section(name): replace(getattr(base, method_section(name)), **values)
                            for name, values in sections.items()})  # fmt: skip


# the questions earlier code asked with a name; each resolves it (cached)


def get_method_class(name: str) -> type[Method]:
    """Validate ``name`` (single or '+'-composed) without building it; for up-front config checks."""
    return resolve(name).method_class


def objective_class(name: str) -> type[Method]:
    return resolve(name).objective


def fine_tuner(name: str) -> type[Method] | None:
    return resolve(name).fine_tuner


def get_method(name: str, *, class_counts: np.ndarray, options: Any = None) -> Method:
    """Build method ``name`` ('ddpm', 'cbdm', ... or a '+'-joined composition) for these class counts;
    ``options``: the config's ``method`` section."""
    return resolve(name).build(class_counts=class_counts, options=options)

