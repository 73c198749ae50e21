"""The configuration reference, docs/configuration.md, generated from the config's pydantic models:

    python -m gnnrec.launch.reference > docs/configuration.md      # or: make docs

One table per section, one row per key (nested sections as dotted keys): its type, default and description.
"""
from __future__ import annotations

import inspect
import json
import re
import types
import typing

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from gnnrec.launch.config import Config

HEADER = """# Configuration reference

Generated from `launch/config.py`, `launch/sections.py` and `launch/train_sections.py` by
`python -m gnnrec.launch.reference > docs/configuration.md` (`make docs`); do not edit by hand.

Every stage takes one YAML config (default `configs/quickstart.yaml`) plus `key.sub=value` overrides on
the command line, e.g. `gnnrec run --config configs/lastfm_social.yaml split.seed=7`. Override values are
read as YAML (`3`, `0.5`, `true`, `[a, b]`, `null`; empty is null). Unknown keys and bad values are errors
naming the dotted key (exit 2). Paths may contain `{workdir}`, replaced by `workdir` after the overrides.
The resolved config is written beside every output as `config.yaml`.
"""


def reference() -> str:
    """The Markdown text of docs/configuration.md."""
    top = [(name, field) for name, field in Config.model_fields.items() if _model(field.annotation) is None]
    lines = [HEADER, "## Top level", "", *_table([_row(name, field, _field_default(field)) for name, field in top])]
    for name, field in Config.model_fields.items():
        model = _model(field.annotation)
        if model is not None:
            lines += [f"## `{name}`", ""]
            doc = _doc(model)
            lines += [doc, ""] if doc else []
            lines += _table(_rows(name, model, _field_default(field)))
    return "\n".join(lines)


def _rows(prefix: str, model: type[BaseModel], instance) -> list[tuple[str, str, str, str]]:
    """A row per key of `model` under `prefix`, nested sections after their own row; defaults from
    `instance` where the section's default is a filled-in model (ingest.interactions)."""
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}.{name}"
        default = getattr(instance, name) if isinstance(instance, BaseModel) else _field_default(field)
        nested = _model(field.annotation)
        if nested is None:
            rows.append(_row(key, field, default))
            continue
        description = field.description or _doc(nested).split("\n\n")[0]
        rows.append((key, _type(field.annotation), _default(default), description))
        rows += _rows(key, nested, default)
    return rows


def _row(key: str, field, default) -> tuple[str, str, str, str]:
    limits = [f"{symbol} {getattr(m, attr)}" for m in field.metadata
              for attr, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")) if hasattr(m, attr)]
    kind = ", ".join([_type(field.annotation), *limits])
    return key, kind, _default(default), field.description or ""


def _table(rows) -> list[str]:
    lines = ["| key | type | default | description |", "|---|---|---|---|"]
    for key, kind, default, description in rows:
        cells = [f"`{key}`", kind, default, " ".join(description.split())]
        cells = [re.sub(r"<(?=[A-Za-z])", "&lt;", cell.replace("|", "\\|")) for cell in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _model(annotation) -> type[BaseModel] | None:
    """The section model an annotation holds (directly or as Optional), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        models = [_model(arg) for arg in typing.get_args(annotation)]
        return next((m for m in models if m is not None), None)
    return None


def _type(annotation) -> str:
    """An annotation as a reader writes it: `int`, `str or null`, `one of: a, b`, `list[int]`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if annotation is typing.Any:
        return "any"
    if origin is typing.Literal:
        return "one of: " + ", ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type(a) for a in args)
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type(a) for a in args)}]"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return getattr(annotation, "__name__", str(annotation))


def _default(value) -> str:
    if value is PydanticUndefined:
        return "required"
    if isinstance(value, BaseModel):
        return "(below)"
    if isinstance(value, str):
        return f"`{value}`"
    return f"`{json.dumps(value, ensure_ascii=False, default=str)}`"


def _field_default(field):
    """A field's default, a default factory's value included; PydanticUndefined when it has none."""
    return field.get_default(call_default_factory=True)


def _doc(model: type[BaseModel]) -> str:
    """The model's own docstring (not its base's), dedented; after its first paragraph, each unindented
    line starts a list item (split's methods)."""
    first, _, rest = inspect.cleandoc(model.__dict__.get("__doc__") or "").partition("\n\n")
    items = [line if line[:1] in (" ", "") else f"- {line}" for line in rest.splitlines()]
    return "\n\n".join([first, "\n".join(items)]) if rest else first


if __name__ == "__main__":
    print(reference(), end="")
