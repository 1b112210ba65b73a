"""Methods from outside the package: a plugin file (``--plugin FILE``, ``$LTGEN_PLUGINS``) or an
installed package's entry point in the group ``ltgen_bench.methods``.

A plugin is imported once per process and must register at least one new :class:`methods.base.Method`
with ``@METHODS.register("name")``.  Every way it can go wrong (no such file, an import error, nothing
registered, a taken name, not a Method, options that are not a frozen Options dataclass) is a
ConfigError naming the file and the fix, raised before any cell runs.  The paths loaded are put into
``$LTGEN_PLUGINS`` of this process, so every process it starts (``--jobs`` workers, submitit jobs) loads
the same files; torchrun ranks parse the same ``--plugin`` flags.  Each method a file registers keeps the
file's name and content hash (:func:`source_of`), which every cell of that method records in its config
(``method_code``): editing the plugin changes a training setting, refused without ``--force``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import sys
from collections.abc import Iterable
from pathlib import Path

from benchmark.core.config import from_dict, method_config_class, set_method_config_reducer, to_dict
from benchmark.core.errors import ConfigError

from .base import Method
from .registry import METHODS

ENV = "LTGEN_PLUGINS"  # os.pathsep-separated plugin files
ENTRY_POINTS = "ltgen_bench.methods"

_LOADED: dict[str, str] = {}  # resolved plugin path -> its source label ('file.py sha256:...')
_SOURCES: dict[str, str] = {}  # module name -> source label, for the methods it defines
_ENTRY_POINTS_LOADED = False


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def source_of(cls: type[Method]) -> str:
    """'file.py sha256:<digest>' for a method defined by a plugin (or one of its bases), '' for ours."""
    for klass in cls.__mro__:
        label = _SOURCES.get(getattr(klass, "__module__", ""))
        if label:
            return label
    return ""


def env_plugins() -> list[str]:
    return [p for p in os.environ.get(ENV, "").split(os.pathsep) if p.strip()]


def load_plugins(paths: Iterable[str] = (), *, env: bool = True, entry_points: bool = True) -> list[str]:
    """Load plugin files ``paths`` (and those of ``$LTGEN_PLUGINS``, and installed entry points); return
    the names of the methods they registered.  A file already loaded in this process is skipped."""
    files = [*paths, *(env_plugins() if env else [])]
    added: list[str] = []
    for raw in files:
        added += load_plugin_file(raw)
    if entry_points:
        added += load_entry_points()
    loaded = list(_LOADED)
    if loaded:  # the processes this one starts load the same files
        os.environ[ENV] = os.pathsep.join(dict.fromkeys([*env_plugins(), *loaded]))
    return added


def load_plugin_file(raw: str) -> list[str]:
    path = Path(raw).expanduser()
    if not path.is_file():
        raise ConfigError(f"plugin {raw}: no such file; pass --plugin with the path of a .py file that "
                          "registers a method (see docs/own-method.md)")  # fmt: skip
    key = str(path.resolve())
    if key in _LOADED:
        return []
    digest = file_digest(path)
    module_name = f"ltgen_plugin_{path.stem}_{digest[:12]}"
    label = f"{path.name} sha256:{digest}"
    _SOURCES[module_name] = label
    before = set(METHODS.names())
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"plugin {raw}: not a Python module; pass a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look a class's module up here
    try:
        spec.loader.exec_module(module)
    except ConfigError:
        raise
    except ValueError as exc:
        if "already registered" in str(exc):
            raise ConfigError(f"plugin {raw}: {exc} (a method of ours or of another plugin has that name)") from None
        raise ConfigError(f"plugin {raw} does not import: {type(exc).__name__}: {exc}; fix the file") from None
    except TypeError as exc:
        raise ConfigError(f"plugin {raw}: {exc}") from None
    except Exception as exc:  # anything a user's module raises on import
        raise ConfigError(f"plugin {raw} does not import: {type(exc).__name__}: {exc}; fix the file") from None
    added = sorted(set(METHODS.names()) - before)
    if not added:
        raise ConfigError(f"plugin {raw} registers no method; decorate a Method subclass with "
                          "@METHODS.register('name') (from methods import METHODS, Method)")  # fmt: skip
    _LOADED[key] = label
    return added


def load_entry_points() -> list[str]:
    """Import every installed entry point of the group ``ltgen_bench.methods`` (a module or a Method class;
    a module registers its methods on import, a class is registered under the entry point's name)."""
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return []
    _ENTRY_POINTS_LOADED = True
    added: list[str] = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINTS):
        before = set(METHODS.names())
        where = f"entry point {ep.name} = {ep.value}"
        try:
            obj = ep.load()
            if isinstance(obj, type) and ep.name not in METHODS and obj not in dict(METHODS.items()).values():
                METHODS.register(ep.name, obj)
        except (ValueError, TypeError, ConfigError) as exc:
            raise ConfigError(f"{where}: {exc}") from None
        except Exception as exc:
            raise ConfigError(f"{where} does not import: {type(exc).__name__}: {exc}; fix or uninstall "
                              f"{ep.dist.name if ep.dist else 'its package'}") from None  # fmt: skip
        new = sorted(set(METHODS.names()) - before)
        if not new:
            raise ConfigError(f"{where} registers no method; point it at a module that registers one or a Method class")
        dist = f"{ep.dist.name}=={ep.dist.version}" if ep.dist else ep.value
        for name in new:
            module = METHODS.get(name).__module__
            _SOURCES.setdefault(module, f"{dist} {ep.value}")
        added += new
    return added


def rebuild_method_config(data: dict, plugins: tuple[str, ...]) -> object:
    """A ``method`` section in another process: load the plugins the sender had loaded, then rebuild."""
    load_plugins(plugins, env=False)
    return from_dict(method_config_class(), data)


def _reduce(section: object) -> tuple:
    return rebuild_method_config, (to_dict(section), tuple(_LOADED))


set_method_config_reducer(_reduce)
