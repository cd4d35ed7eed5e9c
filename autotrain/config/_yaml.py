"""Safe YAML reading and writing for configs.

``ConfigLoader`` is PyYAML's ``SafeLoader`` (no Python tags, so no code runs) with two
changes: floats follow YAML 1.2 (``1e-2`` and ``.5e-3`` are numbers; YAML 1.1 reads them
as strings) and aliases are refused (a config has no use for them, and expanding nested
aliases is the "billion laughs" attack). ``parse_yaml`` composes the node tree first, so it
can find every duplicate key with both line numbers and remember where each value sits.
``dump_yaml`` writes with the same resolvers, so whatever it writes reads back unchanged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

__all__ = ["ConfigLoader", "Duplicate", "Parsed", "YamlProblem", "dump_yaml", "parse_yaml"]

NodePath = tuple[str | int, ...]
"""Location of a node: mapping keys (raw scalar text) and sequence indexes."""

_FLOAT_TAG = "tag:yaml.org,2002:float"

# YAML 1.2 core-schema floats (plus 1.1's `_` digit separators): a dot or an exponent is
# required, so plain integers still resolve as ints; the exponent sign is optional.
_FLOAT_PATTERN = re.compile(
    r"""^(?:
        [-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
      | [-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
      | [-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
      | [-+]?\.(?:inf|Inf|INF)
      | \.(?:nan|NaN|NAN)
    )$""",
    re.X,
)
_FLOAT_FIRST_CHARS = list("-+.0123456789")


def _use_yaml12_floats(cls: type) -> None:
    """Replace the inherited YAML 1.1 float resolver of ``cls`` (a Loader or Dumper)."""
    cls.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != _FLOAT_TAG]
        for first, resolvers in cls.yaml_implicit_resolvers.items()
    }
    cls.add_implicit_resolver(_FLOAT_TAG, _FLOAT_PATTERN, _FLOAT_FIRST_CHARS)


class ConfigLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 floats that refuses aliases."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not supported in config files", mark
            )
        return super().compose_node(parent, index)


class ConfigDumper(yaml.SafeDumper):
    """SafeDumper that resolves like ``ConfigLoader`` (so it quotes the string "1e3")."""


_use_yaml12_floats(ConfigLoader)
_use_yaml12_floats(ConfigDumper)
ConfigDumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, True)
)
_LINE_BREAKS = frozenset("\n\r\x85\u2028\u2029")


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    # PyYAML may emit a string with a line break single-quoted, where the break reads back
    # folded into a space; double quotes escape every break, so the string survives.
    style = '"' if _LINE_BREAKS.intersection(data) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


ConfigDumper.add_representer(str, _represent_str)


class YamlProblem(Exception):
    """Text that is not a readable YAML document; ``line``/``column`` are 1-based or None."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None):
        super().__init__(message)
        self.message, self.line, self.column = message, line, column

    @classmethod
    def from_yaml_error(cls, err: yaml.YAMLError, text: str) -> YamlProblem:
        """Translate a PyYAML error, keeping the position of the problem."""
        if isinstance(err, yaml.MarkedYAMLError) and err.problem_mark is not None:
            mark = err.problem_mark
            message = err.problem or err.context or "invalid YAML"
            if "'\\t'" in message:
                message += " (indent with spaces: YAML does not allow tabs)"
            if err.context and err.problem and err.context_mark is not None:
                where = f"line {err.context_mark.line + 1}, column {err.context_mark.column + 1}"
                message += f" ({err.context} at {where})"
            return cls(message, mark.line + 1, mark.column + 1)
        if isinstance(err, yaml.reader.ReaderError):
            before = text[: err.position]
            line, column = before.count("\n") + 1, len(before) - before.rfind("\n")
            char = f"#x{err.character:04x}" if isinstance(err.character, int) else err.character
            return cls(f"unacceptable character {char}: {err.reason}", line, column)
        return cls(str(err).replace("\n", " "))


@dataclass(frozen=True)
class Duplicate:
    """A mapping key given twice: where (``path`` ends with the key) and both 1-based lines."""

    path: NodePath
    first_line: int
    second_line: int


@dataclass
class Parsed:
    """A parsed document: its data (None when empty) and where each piece came from."""

    data: Any
    empty: bool = False
    value_lines: dict[NodePath, int] = field(default_factory=dict)
    key_lines: dict[NodePath, int] = field(default_factory=dict)
    duplicates: list[Duplicate] = field(default_factory=list)


def parse_yaml(text: str) -> Parsed:
    """Parse one YAML document safely, or raise :class:`YamlProblem`.

    The constructed data keeps the last value of a duplicated key; every duplicate is
    listed in ``Parsed.duplicates`` for the caller to report.
    """
    loader = None
    try:
        loader = ConfigLoader(text)  # the reader already rejects control characters here
        node = loader.get_single_node()
        if node is None:
            return Parsed(None, empty=True)
        parsed = Parsed(None)
        _index(node, (), parsed)
        parsed.data = loader.construct_document(node)
        return parsed
    except yaml.YAMLError as err:
        raise YamlProblem.from_yaml_error(err, text) from None
    except RecursionError:
        raise YamlProblem("nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()


def _index(node: yaml.Node, path: NodePath, parsed: Parsed) -> None:
    """Record the line of every value and key below ``node``, and every duplicate key."""
    parsed.value_lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        first_seen: dict[tuple[str, str], int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue  # a complex key; construction refuses it as unhashable
            child = path + (key_node.value,)
            line = key_node.start_mark.line + 1
            identity = (key_node.tag, key_node.value)
            if identity in first_seen:
                parsed.duplicates.append(Duplicate(child, first_seen[identity], line))
            else:
                first_seen[identity] = line
            parsed.key_lines[child] = line
            _index(value_node, child, parsed)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index(item, path + (i,), parsed)


def dump_yaml(data: Any) -> str:
    """Block-style YAML in the given key order, lists in flow style (``[a, b]``)."""
    return yaml.dump(
        data, Dumper=ConfigDumper, sort_keys=False, default_flow_style=False, allow_unicode=True
    )
