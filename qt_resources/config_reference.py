"""The config reference (docs/config.md), generated from the pydantic models of ``qt_resources.config``: every
key with its type, default, constraints and description, section by section in the order of ``qtos.yaml``.

    .venv/bin/python -m qt_resources.config_reference      (print it; `make docs` writes it with the other generated docs)

``tests/qt_resources/test_config_reference.py`` fails when the committed page differs from what this renders."""

from __future__ import annotations

import json
import types
import typing
from datetime import date
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from qt_resources.config import ProjectConfig

HEADER = """# Config reference (`qtos.yaml`)

Generated from the pydantic models in `qt_resources/config/` and the registries by `make docs`
(`python -m qt_resources.config_reference`); do not edit by hand: `make test` fails when this page is stale.

The project reads `qtos.yaml` at the repo root, or the file named by `$QTOS_CONFIG`. Unknown keys are refused;
every problem is reported at once with its key path and value (e.g. `agents[0].risk.max_position_pct: 1.7 is not
<= 1`). Relative paths are relative to the config file. Key paths below: `a.b` a nested key, `a[].b` a key of
each item of the list `a`, `a.<key>.b` a key of each value of the mapping `a`. A key without a default is required
(when its section is given).
"""

_CONSTRAINTS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"), ("min_length", "length >="),
                ("max_length", "length <="), ("pattern", "matches"))


def _type(tp: Any) -> str:
    origin, args = get_origin(tp), get_args(tp)
    if origin is typing.Annotated:
        return _type(args[0])
    if origin is Literal:
        return " \\| ".join(f"`{a}`" if isinstance(a, str) else f"`{json.dumps(a)}`" for a in args)
    if origin in (Union, types.UnionType):
        parts = [a for a in args if a is not type(None)]
        return " \\| ".join(_type(a) for a in parts) + (" \\| null" if len(parts) < len(args) else "")
    if origin in (list, tuple):
        return f"list of {_type(args[0])}"
    if origin is dict:
        return f"mapping {_type(args[0])} → {_type(args[1])}"
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return "section"
    if tp is date:
        return "date (YYYY-MM-DD)"
    return getattr(tp, "__name__", str(tp))


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return "(section defaults)"
    if isinstance(value, date):
        return f"`{value.isoformat()}`"
    return f"`{json.dumps(value)}`"


def _words(metadata, prefix: str = "") -> list[str]:
    return [f"{prefix}{word} `{v}`" for meta in metadata for attr, word in _CONSTRAINTS
            if (v := getattr(meta, attr, None)) is not None]


def _constraints(field: FieldInfo, tp: Any) -> str:
    out = _words(field.metadata)
    # constraints on the items of a list / keys of a mapping (e.g. symbols' pattern)
    for arg in get_args(tp):
        if get_origin(arg) is typing.Annotated:
            for meta in get_args(arg)[1:]:
                out += _words(getattr(meta, "metadata", [meta]), "each ")
    return ", ".join(out).replace("|", "\\|")


def _models_in(tp: Any) -> list[tuple[str, type[BaseModel]]]:
    """(path suffix, model) for the sections a field holds: itself, its list items, its mapping values."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is typing.Annotated:
        return _models_in(args[0])
    if origin in (Union, types.UnionType):
        return [m for a in args for m in _models_in(a)]
    if origin in (list, tuple):
        return [("[]" + s, m) for s, m in _models_in(args[0])]
    if origin is dict:
        return [(".<key>" + s, m) for s, m in _models_in(args[1])]
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [("", tp)]
    return []


def _rows(model: type[BaseModel], prefix: str) -> list[tuple[str, str, str, str, str]]:
    rows = []
    for name, field in model.model_fields.items():
        if name == "base_dir":
            continue
        path = f"{prefix}.{name}" if prefix else name
        desc = " ".join((field.description or "").split()).replace("|", "\\|")
        rows.append((f"`{path}`", _type(field.annotation), _default(field), _constraints(field, field.annotation),
                     desc))
        for suffix, sub in _models_in(field.annotation):
            rows.extend(_rows(sub, path + suffix))
    return rows


def _doc(model: type[BaseModel]) -> str:
    doc = model.__doc__ or ""
    if doc.startswith(f"{model.__name__}(") or not doc.strip():  # pydantic's generated signature
        return ""
    return " ".join(doc.split())


def render() -> str:
    parts = [HEADER]
    for name, field in ProjectConfig.model_fields.items():
        if name == "base_dir":
            continue
        parts.append(f"\n## `{name}`\n")
        models = _models_in(field.annotation)
        doc = _doc(models[0][1]) if models else ""
        required = field.is_required()
        head = ("**Required.**" if required else "Optional.") + (f" {_type(field.annotation)}." if not models or
                                                                  models[0][0] else "")
        if not required and not (models and models[0][0] == "" and _default(field) == "(section defaults)"):
            head += f" Default {_default(field)}."
        if field.description:
            head += " " + " ".join(field.description.split())
        parts.append(head + ("\n\n" + doc if doc else "") + "\n")
        rows = _rows(models[0][1], name + models[0][0]) if models else []
        if rows:
            parts.append("\n| key | type | default | constraints | description |\n|---|---|---|---|---|\n")
            parts.extend(f"| {' | '.join(r)} |\n" for r in rows)
    parts.append(registered())
    return "".join(parts)


def _param_rows(params) -> str:
    rows = "".join(f"| `{k}` | {p.kind.__name__} | `{p.default:g}` | {p.range_text()} | {p.description} |\n"
                   for k, p in params.items())
    return "\n| param | type | default | range | description |\n|---|---|---|---|---|\n" + rows if rows else ""


def registered() -> str:
    """The built-in entries of the registries (qt_resources/plugins.py), with their parameters."""
    from qt_resources.plugins import MODEL_FAMILIES, RULES, SIZING_KINDS

    parts = ["\n## Registered rules\n\nThe values `rule` takes (strategies and rule agents), with the keys of their "
             "`params` and `sweep`. A project adds its own through `plugins` (docs/extending.md).\n"]
    for name in RULES.installed():
        r = RULES.get(name)
        slots = ("one position per symbol" if r.slots is None else f"positions: `{r.slots}` per side"
                 if isinstance(r.slots, str) else "positions: set by the rule")
        parts.append(f"\n### `{name}`\n\n{r.description} ({slots}; `{r.module}`)\n{_param_rows(r.params)}")
    parts.append("\n## Registered sizing kinds\n\nThe values `sizing.kind` takes; a kind's parameters are keys of "
                 "`sizing` beside `kind`.\n")
    for name in SIZING_KINDS.installed():
        k = SIZING_KINDS.get(name)
        how = ", ".join(w for w, on in (("divided by the slots", k.per_slot), ("given at entry, then drifts",
                                                                             k.sparse)) if on)
        parts.append(f"\n### `{name}`\n\n{k.description}{f' ({how})' if how else ''} (`{k.module}`)\n"
                     f"{_param_rows(k.params)}")
    parts.append("\n## Registered model families\n\nThe values `research.model.family` takes, with the keys of "
                 "`research.model.params`.\n")
    for name in MODEL_FAMILIES.installed():
        f = MODEL_FAMILIES.get(name)
        extras = ", ".join(w for w, on in (("tuned by Optuna", f.search is not None), ("feature importance",
                           f.importance is not None), ("early stopping", f.early_stopping)) if on)
        parts.append(f"\n### `{name}`\n\n{f.description} ({extras or 'no tuning'}; `{f.module}`)\n"
                     f"{_param_rows(f.params)}")
    return "".join(parts)


if __name__ == "__main__":
    print(render(), end="")
