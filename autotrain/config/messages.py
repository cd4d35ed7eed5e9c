"""Plain-words problems from pydantic validation errors, and did-you-mean suggestions.

An :class:`Issue` is one problem without its origin: the loader prefixes it with the file
(or the ``--set`` override) it came from and appends the line it sits on.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ValidationError

from autotrain.config.schema import Config

__all__ = ["Issue", "dotted", "issues_from", "model_at", "suggest_key"]

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Issue:
    """One problem at ``loc``; ``at_key`` locates it at the key itself rather than its value."""

    loc: Loc
    detail: str
    at_key: bool = False

    def text(self) -> str:
        """``optimizer.lr: 0.0 — must be > 0`` (the location is omitted when empty)."""
        return f"{dotted(self.loc)}: {self.detail}" if self.loc else self.detail


def dotted(loc: Loc) -> str:
    """``("data", "classes", 2)`` -> ``data.classes[2]``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def model_at(loc: Loc) -> type[BaseModel] | None:
    """The schema model found at ``loc`` (``()`` is ``Config``), or None if not a section."""
    model: type[BaseModel] | None = Config
    for part in loc:
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            return None
        model = _as_model(model.model_fields[part].annotation)
    return model


def _as_model(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _all_fields(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    """Every dotted field path of the schema, sections included."""
    out = []
    for name, info in model.model_fields.items():
        out.append(prefix + name)
        sub = _as_model(info.annotation)
        if sub is not None:
            out.extend(_all_fields(sub, f"{prefix}{name}."))
    return out


_ALL_FIELDS = _all_fields()


def suggest_key(loc: Loc) -> str:
    """A hint for the unknown key at ``loc``: a close name in its section, the same name
    in another section, or the list of valid keys. Starts with a space, or is empty."""
    name, parent = loc[-1], model_at(loc[:-1])
    if parent is None or not isinstance(name, str):
        return ""
    candidates = list(parent.model_fields)
    close = difflib.get_close_matches(name, candidates, n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    elsewhere = [path for path in _ALL_FIELDS if path.rsplit(".", 1)[-1] == name]
    if elsewhere:
        return f" (did you mean {elsewhere[0]!r}?)"
    return f" (valid keys: {', '.join(candidates)})"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _literal_choices(loc: Loc) -> tuple[Any, ...]:
    parent = model_at(loc[:-1])
    info = parent.model_fields.get(loc[-1]) if parent and isinstance(loc[-1], str) else None
    annotation = info.annotation if info else None
    return get_args(annotation) if get_origin(annotation) is Literal else ()


def _type_hint(value: Any) -> str:
    # Why a value that looks right is refused: YAML read it as another type than intended.
    if isinstance(value, bool):
        return " (YAML reads true/false/yes/no/on/off as booleans)"
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return ""
        return " (remove the quotes)"
    return ""


_EXPECTED = {
    "int_type": "expected an integer",
    "float_type": "expected a number",
    "bool_type": "expected true or false",
    "tuple_type": "expected a list",
    "list_type": "expected a list",
    "model_type": "expected a mapping of keys",
    "dict_type": "expected a mapping of keys",
    "finite_number": "must be a finite number",
    "string_too_short": "must not be empty",
    "too_short": "must not be empty",
}
_BOUNDS = {
    "greater_than": ("gt", ">"),
    "greater_than_equal": ("ge", ">="),
    "less_than": ("lt", "<"),
    "less_than_equal": ("le", "<="),
}


def _rule(kind: str, loc: Loc, value: Any, ctx: dict[str, Any], msg: str) -> str:
    """The broken rule of one pydantic error, in plain words."""
    if kind in _BOUNDS:
        key, op = _BOUNDS[kind]
        bound = ctx[key]
        if isinstance(bound, float) and bound.is_integer():
            bound = int(bound)  # a float field's bound 0 prints as 0, not 0.0
        return f"must be {op} {bound}"
    if kind == "string_type":
        return "expected a string" + ("" if value is None else " (quote it)")
    if kind in ("int_type", "float_type"):
        return _EXPECTED[kind] + _type_hint(value)
    if kind in _EXPECTED:
        # `freeze: off` is a boolean to YAML; say so rather than leave "False" unexplained.
        return _EXPECTED[kind] + (_type_hint(value) if isinstance(value, bool) and kind != "bool_type" else "")
    if kind == "literal_error":
        choices = _literal_choices(loc)
        if len(choices) == 1:
            return f"must be {ctx['expected']} (the only choice)"
        close = difflib.get_close_matches(value, choices, n=1) if isinstance(value, str) else []
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"must be one of {ctx['expected']}{hint}"
    if kind == "value_error":
        return str(ctx.get("error", msg))
    return msg


def issues_from(err: ValidationError) -> list[Issue]:
    """One :class:`Issue` per pydantic error, cross-field errors expanded per rule."""
    issues: list[Issue] = []
    for e in err.errors(include_url=False):
        loc, kind, value, ctx = tuple(e["loc"]), e["type"], e.get("input"), e.get("ctx") or {}
        if kind == "missing":
            issues.append(Issue(loc, "required key missing"))
        elif kind == "extra_forbidden":
            issues.append(Issue(loc, "unknown key" + suggest_key(loc), at_key=True))
        elif kind == "cross_field":
            for field, bad, rule in ctx["problems"]:
                issues.append(Issue(loc + tuple(field.split(".")), f"{_show(bad)} — {rule}"))
        else:
            rule = _rule(kind, loc, value, ctx, e["msg"])
            issues.append(Issue(loc, f"{_show(value)} — {rule}"))
    return issues
