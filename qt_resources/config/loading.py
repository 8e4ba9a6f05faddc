"""Loading ``qtos.yaml``: duplicate keys refused, plugin files loaded first, pydantic's errors turned into one line
per problem naming the key path and the value."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from qt_resources.config.base import ConfigError, DEFAULT_CONFIG_PATH, REPO_ROOT
from qt_resources.config.project import ProjectConfig
from qt_resources.plugins import load_files


def _loc_to_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<root>"


_OPS = {"less_than_equal": "<=", "less_than": "<", "greater_than_equal": ">=", "greater_than": ">"}


def _describe(err: dict) -> str:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    typ, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    msg = err["msg"]
    path = _loc_to_path(loc)
    if typ in _OPS:
        bound = next(iter(ctx.values()))
        if isinstance(bound, float) and bound.is_integer():
            bound = int(bound)
        return f"{path}: {value!r} is not {_OPS[typ]} {bound}"
    if typ == "missing":
        return f"{path}: required key is missing"
    if typ == "extra_forbidden":
        return f"{path}: unknown key (value {value!r})"
    if typ == "value_error":
        return f"{path}: {value!r} {msg.removeprefix('Value error, ')}"
    if typ == "string_pattern_mismatch":
        return f"{path}: {value!r} does not match {ctx.get('pattern')}"
    if typ == "literal_error":
        return f"{path}: {value!r} is not one of {ctx.get('expected')}"
    return f"{path}: {value!r} is invalid: {msg}"


def parse_config(raw: Any, source: str = "<dict>", base_dir: Path = REPO_ROOT,
                 known_features: list[str] | None = None) -> ProjectConfig:
    if not isinstance(raw, dict):
        raise ConfigError(source, [f"<root>: expected a mapping of sections, got {type(raw).__name__}"])
    plugins = raw.get("plugins") or []
    if isinstance(plugins, list) and all(isinstance(p, str) for p in plugins):
        problems = load_files(plugins, base_dir)  # before validation: the config may name what they register
        if problems:
            raise ConfigError(source, problems)
    try:
        cfg = ProjectConfig.model_validate({**raw, "base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigError(source, [_describe(e) for e in exc.errors()]) from None
    from qt_resources.extras import missing_extras

    problems = cfg.cross_check(known_features) + missing_extras(cfg)
    if problems:
        raise ConfigError(source, problems)
    return cfg


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader refusing a key given twice in one mapping (plain YAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            try:
                key = self.construct_object(key_node, deep=True)
                hash(key)
            except Exception:  # noqa: BLE001 - the base class reports unhashable keys with its own message
                continue
            if key in seen:
                raise DuplicateKeyError(key, seen[key] + 1, key_node.start_mark.line + 1)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


class DuplicateKeyError(yaml.YAMLError):
    def __init__(self, key, first: int, second: int):
        super().__init__(f"key {key!r} is given twice, on line {first} and on line {second}")
        self.key, self.first, self.second = key, first, second


def load_config(path: str | os.PathLike | None = None, known_features: list[str] | None = None) -> ProjectConfig:
    """Load and validate the project config (``$QTOS_CONFIG`` or ``qtos.yaml`` at the repo root)."""
    p = Path(path or os.environ.get("QTOS_CONFIG") or DEFAULT_CONFIG_PATH).resolve()
    if not p.exists():
        raise ConfigError(str(p), ["<file>: does not exist (set QTOS_CONFIG or create qtos.yaml)"])
    try:
        raw = yaml.load(p.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except DuplicateKeyError as exc:
        raise ConfigError(str(p), [f"<yaml>: {exc}: remove one (YAML would keep the last silently)"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise ConfigError(str(p), [f"<yaml>: not valid YAML at {where}: {getattr(exc, 'problem', exc)}"]) from None
    return parse_config(raw, str(p), p.parent, known_features)
