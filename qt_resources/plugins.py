"""The platform's seams as registries: rule strategies, sizing kinds and model families. Each entry is one
function registered with a decorator, in one file; the config validates names and parameters against the
registries (an error lists what is registered), and backtests, sweeps and agents look entries up here.

Where entries come from (docs/extending.md):

1. the packages named in the ``qtos.plugins`` entry-point group (pyproject.toml): the built-in
   ``qt_assets/backtests/rules/``, ``qt_assets/backtests/sizing/`` and ``qt_assets/research/models/``, whose every
   module is imported on the first lookup, and any installed package that declares the same group;
2. a project's own files: ``plugins:`` in qtos.yaml, paths relative to it (a ``.py`` file, or a folder whose
   ``.py`` files are all loaded), loaded before the config is validated.

This module names no package above ``qt_resources``: the built-ins are found through the entry points, which
the installed project declares.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import math
import pkgutil
import sys
import threading
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, Generic, TypeVar

GROUP = "qtos.plugins"
PLUGIN_PREFIX = "qtos_plugin_"  # module names of a project's plugin files
HOW_TO = "docs/extending.md"


@dataclass(frozen=True)
class Param:
    """One numeric parameter of a rule, sizing kind or model family: default, type (int or float) and the
    range [lo, hi] it must lie in ((lo, hi] with ``open_lo``)."""
    default: float
    kind: type = float
    lo: float = -math.inf
    hi: float = math.inf
    description: str = ""
    open_lo: bool = False

    def range_text(self) -> str:
        return f"{'(' if self.open_lo else '['}{self.lo:g}, {self.hi:g}]"

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not acceptable (None if it is), in the config's wording."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{value!r} is not a number"
        if self.kind is int and float(value) != int(value):
            return f"{value!r} is not a whole number"
        if not (self.lo < value if self.open_lo else self.lo <= value) or not value <= self.hi:
            return f"{value!r} is not in {self.range_text()}"
        return None


def typed(params: dict[str, Param], given: dict) -> dict:
    """``given`` with every parameter's default filled in and its type applied."""
    return {k: p.kind(given.get(k, p.default)) for k, p in params.items()}


def param_problems(at: str, owner: str, params: dict[str, Param], given: dict) -> list[str]:
    """One line per unknown or unacceptable parameter of ``given``."""
    out = []
    for k, v in given.items():
        if k not in params:
            out.append(f"{at}.{k}: unknown parameter of {owner} (known: {', '.join(params) or 'none'})")
        elif (why := params[k].problem(v)) is not None:
            out.append(f"{at}.{k}: {why}")
    return out


@dataclass(frozen=True)
class Rule:
    """A rule strategy: ``direction(params, close, longshort, cache)`` -> array (sessions x symbols) of +1 long,
    -1 short, 0 flat, from adjusted closes up to and including each session (``close`` a wide frame; ``cache`` a
    dict to share indicators between calls of one sweep). ``check(params)`` states a cross-parameter rule
    (returns "param: why" or None); ``slots`` the positions the sizing divides by: None (one per symbol), the name
    of the parameter that holds the picks per side (e.g. "k": k, or 2k long/short), or
    ``slots(params, longshort) -> int``. ``kernel`` lets the compiled sweep run the rule inside its kernel (built-ins only); any other
    rule sweeps through ``direction``. ``ready(params, close, cache)`` -> per symbol, the row of the signal's first
    session (its indicators' first value), which ``entry: cross`` needs to tell an event from a state already
    holding; None: the symbol's first close."""
    name: str
    params: dict[str, Param]
    direction: Callable
    description: str = ""
    check: Callable[[dict], str | None] | None = None
    slots: str | Callable[[dict, bool], int] | None = None
    kernel: Any = None
    ready: Callable | None = None
    module: str = ""
    source: str | None = None  # sha256 of the registering file when it registered

    def n_slots(self, params: dict, longshort: bool) -> int | None:
        """Positions the sizing divides by with ``params`` (typed); None: one per symbol."""
        if self.slots is None:
            return None
        if isinstance(self.slots, str):
            return int(params[self.slots]) * (2 if longshort else 1)
        return int(self.slots(params, longshort))


@dataclass(frozen=True)
class SizingKind:
    """A sizing kind: ``multiplier(params, close)`` -> array (sessions x symbols) that a position's direction is
    multiplied by, from the whole close history (``close`` a wide frame). ``per_slot``: then divided by the
    strategy's slots (equal weights); ``sparse``: the weight is given only when the direction changes and left
    to drift otherwise (fixed_fraction)."""
    name: str
    params: dict[str, Param]
    multiplier: Callable
    description: str = ""
    per_slot: bool = False
    sparse: bool = False
    module: str = ""
    source: str | None = None


@dataclass(frozen=True)
class ModelFamily:
    """A model family: ``estimator(objective, params, seed, early_stopping)`` -> an unfitted sklearn
    estimator (a classifier with predict_proba over the classes down/flat/up = 0/1/2, or a regressor);
    ``search(trial)`` -> the hyper-parameters of one Optuna trial (None: not tunable);
    ``importance(estimator, features)`` -> a Series of importance per feature (None: not reported);
    ``early_stopping``: the estimator takes xgboost's ``early_stopping_rounds`` and ``eval_set``. Threads: an
    estimator with an ``n_jobs`` parameter gets the fit's threads (``training.fit_threads``)."""
    name: str
    params: dict[str, Param]
    estimator: Callable
    description: str = ""
    search: Callable | None = None
    importance: Callable | None = None
    early_stopping: bool = False
    module: str = ""
    source: str | None = None


T = TypeVar("T")


class RegistryError(ValueError):
    pass


class Registry(Generic[T]):
    def __init__(self, what: str):
        self.what = what
        self._entries: dict[str, T] = {}

    def register(self, entry: T) -> T:
        old = self._entries.get(entry.name)
        # the same module again, or the same file's text loaded from another place (two projects sharing a plugin
        # file): no ambiguity; anything else would silently change what a name means
        if old is not None and old.module != entry.module and (not old.source or old.source != entry.source):
            raise RegistryError(f"{self.what} {entry.name!r} is registered twice: by {old.module} and {entry.module}")
        self._entries[entry.name] = entry
        return entry

    def names(self) -> list[str]:
        discover()
        return sorted(self._entries)

    def installed(self) -> list[str]:
        """The names registered by installed packages (the entry points), not by a project's plugin files."""
        return [n for n in self.names() if not self._entries[n].module.startswith(PLUGIN_PREFIX)]

    def get(self, name: str) -> T:
        discover()
        if name not in self._entries:
            raise RegistryError(self.unknown(name))
        return self._entries[name]

    def unknown(self, name: str) -> str:
        return (f"is not a registered {self.what} (registered: {', '.join(self.names())}; "
                f"to add one see {HOW_TO})")

    def validator(self, name: str | None) -> str | None:
        """For pydantic: ``name`` if registered (None passes), else a ValueError listing what is."""
        if name is not None and name not in self.names():
            raise ValueError(self.unknown(name))
        return name


RULES: Registry[Rule] = Registry("rule")
SIZING_KINDS: Registry[SizingKind] = Registry("sizing kind")
MODEL_FAMILIES: Registry[ModelFamily] = Registry("model family")


def _source(module: str) -> str | None:
    """sha256 of the module's file (None when it has none)."""
    f = getattr(sys.modules.get(module), "__file__", None)
    return hashlib.sha256(Path(f).read_bytes()).hexdigest() if f and Path(f).is_file() else None


def _origin(fn: Callable) -> tuple[str, str | None]:
    """(module, sha256 of its file) of a registered function."""
    module = getattr(fn, "__module__", "") or ""
    return module, _source(module)


def rule(name: str, params: dict[str, Param], description: str = "", check=None, slots=None, kernel=None,
         ready=None):
    """Decorator: register ``fn(params, close, longshort, cache) -> directions`` as the rule ``name``."""
    def deco(fn):
        RULES.register(Rule(name, params, fn, description, check, slots, kernel, ready, *_origin(fn)))
        return fn
    return deco


def sizing_kind(name: str, params: dict[str, Param], description: str = "", per_slot: bool = False,
                sparse: bool = False):
    """Decorator: register ``fn(params, close) -> multipliers`` as the sizing kind ``name``."""
    def deco(fn):
        SIZING_KINDS.register(SizingKind(name, params, fn, description, per_slot, sparse, *_origin(fn)))
        return fn
    return deco


def model_family(name: str, params: dict[str, Param], description: str = "", search=None, importance=None,
                 early_stopping: bool = False):
    """Decorator: register ``fn(objective, params, seed, early_stopping) -> estimator`` as the model
    family ``name``."""
    def deco(fn):
        MODEL_FAMILIES.register(ModelFamily(name, params, fn, description, search, importance, early_stopping,
                                            *_origin(fn)))
        return fn
    return deco


_LOCK = threading.RLock()
_DISCOVERED = False
_FILES: dict[str, str] = {}  # resolved plugin file -> module name it was loaded as


def _import_all(name: str) -> None:
    mod = importlib.import_module(name)
    for info in pkgutil.iter_modules(getattr(mod, "__path__", [])):
        importlib.import_module(f"{name}.{info.name}")


def discover() -> None:
    """Import the packages of the ``qtos.plugins`` entry points, once per process."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    with _LOCK:
        if _DISCOVERED:
            return
        _DISCOVERED = True  # set first: a plugin module may look the registries up while it loads
        try:
            eps = sorted(entry_points(group=GROUP), key=lambda e: e.name)
            if not eps:
                raise RegistryError(f"no {GROUP!r} entry points are installed: the project's metadata is stale or "
                                    f"missing (run `make install`)")
            for ep in eps:
                _import_all(ep.value)
        except BaseException:
            _DISCOVERED = False
            raise


def load_files(paths: list[str | Path], base_dir: Path) -> list[str]:
    """Load a project's plugin files (``plugins:`` in qtos.yaml), each once per process; returns the problems,
    one line per path that does not exist or fails to import (with the exception)."""
    discover()
    problems = []
    for i, raw in enumerate(paths):
        p = (base_dir / raw).resolve()
        if not p.exists():
            problems.append(f"plugins[{i}]: {str(raw)!r}: no such file or folder (relative to {base_dir})")
            continue
        for f in sorted(p.glob("*.py")) if p.is_dir() else [p]:
            if str(f) in _FILES:
                continue
            name = f"{PLUGIN_PREFIX}{f.stem}_{hashlib.sha1(str(f).encode()).hexdigest()[:8]}"
            try:
                with _LOCK:
                    spec = importlib.util.spec_from_file_location(name, f)
                    mod = importlib.util.module_from_spec(spec)
                    sys.modules[name] = mod
                    spec.loader.exec_module(mod)
                    _FILES[str(f)] = name
            except Exception as exc:  # noqa: BLE001 - reported with the file, as a config problem
                sys.modules.pop(name, None)
                problems.append(f"plugins[{i}]: {f}: {type(exc).__name__}: {exc}")
    return problems


__all__ = ["GROUP", "MODEL_FAMILIES", "ModelFamily", "Param", "RULES", "Registry", "RegistryError", "Rule",
           "SIZING_KINDS", "SizingKind", "discover", "load_files", "model_family", "param_problems", "rule",
           "sizing_kind", "typed"]
