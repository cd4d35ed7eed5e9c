"""Load, override, validate, serialise and compare configs.

Every problem becomes one line of a :class:`~autotrain.errors.ConfigError`, starting with
where it came from: the file (``configs/x.yaml: optimizer.lr: 0.0 — must be > 0 (line 7)``),
``file:line:col`` for YAML that cannot be parsed, or the ``--set`` override at fault. All
problems of a file are collected before raising, so one run shows them all.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from autotrain.config._yaml import Parsed, YamlProblem, dump_yaml, parse_yaml
from autotrain.config.messages import Issue, dotted, issues_from, model_at, suggest_key
from autotrain.config.schema import Config
from autotrain.errors import ConfigError
from autotrain.resources import shipped_file, shipped_names

__all__ = [
    "config_from_dict",
    "config_from_yaml_text",
    "config_to_dict",
    "config_to_yaml",
    "default_config_path",
    "diff_configs",
    "load_config",
]

# Pointing a finetune run at other weights does not change what the model *is*.
_NOT_A_DIFFERENCE = frozenset({"model.weights", "data.cache"})


@dataclass(frozen=True)
class _Override:
    """One ``--set dotted.key=value``: the text as given, its key path and parsed value."""

    text: str
    path: tuple[str, ...]
    value: Any

    @property
    def origin(self) -> str:
        return f"--set {self.text}"


def load_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> Config:
    """Read, override and validate the YAML config at ``path``.

    ``overrides`` are ``dotted.key=value`` strings whose value is parsed as YAML and set
    on the raw mapping before validation, so they obey exactly the file's rules.
    Raises ConfigError (one line per problem, each naming the file or override) when the
    file is missing, unreadable, not YAML, or not a valid config.
    """
    if isinstance(overrides, str):
        raise TypeError("overrides must be a list of 'dotted.key=value' strings, not one string")
    name = str(path)
    return _config_from_text(_read_text(Path(path), name), name, overrides)


def config_from_yaml_text(
    text: str, source: str = "<checkpoint>", overrides: Sequence[str] = ()
) -> Config:
    """Validate YAML text (a checkpoint's saved config) exactly as ``load_config`` would;
    problems are prefixed with ``source``."""
    return _config_from_text(text, source, overrides)


def config_from_dict(data: Mapping[str, Any], source: str = "<dict>", overrides: Sequence[str] = ()) -> Config:
    """Validate a plain mapping (e.g. ``config_to_dict`` output, a checkpoint's config) with
    the file rules, after ``overrides`` as in ``load_config``; ``data`` is not modified."""
    if not isinstance(data, Mapping):
        raise ConfigError([f"{source}: top level must be a mapping, not {type(data).__name__}"])
    own = copy.deepcopy(dict(data)) if overrides else dict(data)
    problems, applied = _apply_overrides(own, overrides)
    return _validate(own, source, Parsed(data), problems, applied)


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """The effective config, defaults filled, as plain YAML/JSON types in schema order."""
    return cfg.model_dump(mode="json")


def config_to_yaml(cfg: Config) -> str:
    """The effective config as YAML text that ``config_from_yaml_text`` reads back equal."""
    return dump_yaml(config_to_dict(cfg))


def diff_configs(
    a: Config, b: Config, sections: Iterable[str] = ("model", "data")
) -> list[str]:
    """Dotted fields of ``sections`` whose values differ between ``a`` and ``b``, in
    schema order; ``model.weights`` never counts (it says where weights came from), nor
    ``data.cache`` (where decoded images are kept; the pixels are the same)."""
    flat_a, flat_b = _flatten(config_to_dict(a)), _flatten(config_to_dict(b))
    prefixes = tuple(sections)
    return [
        key
        for key in flat_a
        if key.split(".", 1)[0] in prefixes
        and key not in _NOT_A_DIFFERENCE
        and flat_a[key] != flat_b[key]
    ]


def default_config_path(name: str) -> Path:
    """Path of the shipped config ``name`` (e.g. ``"digits.yaml"``), from any directory
    (found by :func:`autotrain.resources.shipped_file`: package data, else the checkout).
    Raises ConfigError, listing the shipped names, when there is none."""
    found = shipped_file(Path("configs") / name)
    if found is not None:
        return found
    shipped = shipped_names("configs", "*.yaml")
    raise ConfigError([f"{name}: no shipped config of that name (shipped: {', '.join(shipped)})"])


def _read_text(path: Path, name: str) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")  # -sig: tolerate a byte-order mark
    except FileNotFoundError:
        problem = "no such file"
    except IsADirectoryError:
        problem = "is a directory, not a config file"
    except PermissionError:
        problem = "permission denied"
    except UnicodeDecodeError as err:
        problem = f"not UTF-8 text (invalid byte at offset {err.start})"
    except OSError as err:
        problem = f"cannot be read ({err.strerror or err})"
    raise ConfigError([f"{name}: {problem}"])


def _config_from_text(text: str, source: str, overrides: Sequence[str]) -> Config:
    try:
        parsed = parse_yaml(text)
    except YamlProblem as err:
        raise ConfigError([_located(source, err)]) from None
    if parsed.empty:
        raise ConfigError([f"{source}: is empty"])
    if not isinstance(parsed.data, dict):
        kind = "a list" if isinstance(parsed.data, list) else f"{parsed.data!r}"
        raise ConfigError([f"{source}: top level must be a mapping of sections, not {kind}"])
    problems = [
        f"{source}: {dotted(d.path)}: duplicate key {d.path[-1]!r} "
        f"(lines {d.first_line} and {d.second_line})"
        for d in parsed.duplicates
    ]
    more, applied = _apply_overrides(parsed.data, overrides)  # parsed.data is ours: set in place
    return _validate(parsed.data, source, parsed, problems + more, applied)


def _apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> tuple[list[str], list[_Override]]:
    """Set each ``dotted.key=value`` override on ``data`` in place: (problems, those applied)."""
    problems: list[str] = []
    applied: list[_Override] = []
    for item in overrides:
        try:
            override = _parse_override(item)
            _set_path(data, override)
            applied.append(override)
        except ConfigError as err:
            problems.extend(err.problems)
    return problems, applied


def _located(source: str, err: YamlProblem) -> str:
    where = f"{source}:{err.line}:{err.column}" if err.line else source
    return f"{where}: {err.message}"


def _validate(
    data: dict[str, Any],
    source: str,
    parsed: Parsed,
    problems: list[str],
    applied: Sequence[_Override] = (),
) -> Config:
    """Validate ``data``; raise every problem so far plus each validation issue."""
    try:
        config = Config.model_validate(data)
    except ValidationError as err:
        problems = problems + [_describe(i, source, parsed, applied) for i in issues_from(err)]
    if problems:
        raise ConfigError(problems)
    return config


def _describe(issue: Issue, source: str, parsed: Parsed, applied: Sequence[_Override]) -> str:
    """Prefix an issue with its origin: the last override that set it, else the file+line."""
    for override in reversed(applied):
        if issue.loc[: len(override.path)] == override.path:
            return f"{override.origin}: {issue.text()}"
    line = _line_of(issue, parsed)
    return f"{source}: {issue.text()}" + (f" (line {line})" if line else "")


def _line_of(issue: Issue, parsed: Parsed) -> int | None:
    if issue.at_key and issue.loc in parsed.key_lines:
        return parsed.key_lines[issue.loc]
    for end in range(len(issue.loc), 0, -1):  # a missing key: the line of its section
        line = parsed.value_lines.get(issue.loc[:end])
        if line is not None:
            return line
    return None


def _parse_override(text: str) -> _Override:
    """``"optimizer.lr=1e-2"`` -> path ``("optimizer", "lr")``, value ``0.01``."""
    key, sep, raw = text.partition("=")
    path = tuple(part.strip() for part in key.split("."))
    if not sep or not all(path):
        raise ConfigError([f"--set {text}: expected dotted.key=value, e.g. optimizer.lr=0.1"])
    _check_schema_path(text, path)
    try:
        parsed = parse_yaml(raw)
    except YamlProblem as err:
        raise ConfigError([f"--set {text}: value is not valid YAML: {err.message}"]) from None
    if parsed.duplicates:
        keys = ", ".join(repr(d.path[-1]) for d in parsed.duplicates)
        raise ConfigError([f"--set {text}: duplicate key {keys} in the value"])
    return _Override(text, path, parsed.data)


def _check_schema_path(text: str, path: tuple[str, ...]) -> None:
    for end in range(1, len(path) + 1):
        parent = model_at(path[: end - 1])
        if parent is None:
            section = dotted(path[: end - 1])
            raise ConfigError([f"--set {text}: {section} is a value, not a section"])
        if path[end - 1] not in parent.model_fields:
            hint = suggest_key(path[:end])
            raise ConfigError([f"--set {text}: {dotted(path[:end])}: unknown key{hint}"])


def _set_path(data: dict[str, Any], override: _Override) -> None:
    """Set ``override.value`` at its path, creating absent (or null) sections."""
    node = data
    for end, part in enumerate(override.path[:-1], start=1):
        if node.get(part) is None:
            node[part] = {}
        elif not isinstance(node[part], dict):
            where = dotted(override.path[:end])
            raise ConfigError([f"{override.origin}: cannot set it: {where} is not a mapping"])
        node = node[part]
    node[override.path[-1]] = override.value


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
