"""YAML loading that avoids the YAML 1.1 traps and remembers where each key was written.

PyYAML implements YAML 1.1, so by default `1e-3` loads as a string, `on`/`no` load as booleans,
`2024-01-31` loads as a date and a duplicated key silently keeps the last value. Configs and search
spaces are read through `load_yaml`, which follows the YAML 1.2 core schema for numbers, booleans and
dates (a date stays a string). It rejects duplicate keys and tab indentation, and it records the line
of every mapping key and list item so errors can point at it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from moa_search.errors import ConfigError

# YAML 1.2 core schema: only true/false are booleans, and floats need no dot before an exponent.
_BOOL_RE = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_FLOAT_RE = re.compile(
    r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"
)
_INT_RE = re.compile(r"^[-+]?[0-9]+$|^0x[0-9a-fA-F]+$|^0o[0-7]+$")


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 scalars, duplicate-key errors and key positions."""


# Drop the YAML 1.1 implicit resolvers for bool, int, float and timestamp, then add the 1.2 ones.
# The 1.2 core schema has no timestamp type, so `2024-01-31` stays the string the user wrote.
_YAML11_TAGS = ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:float", "tag:yaml.org,2002:int",
                "tag:yaml.org,2002:timestamp")
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _YAML11_TAGS]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.copy().items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", _BOOL_RE, list("tTfF"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:int", _INT_RE, list("-+0123456789"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+0123456789."))


def _construct_int(loader: _Loader, node: yaml.ScalarNode) -> int:
    text = loader.construct_scalar(node)
    return int(text, 0) if text.lower().startswith(("0x", "0o")) else int(text)


def _construct_float(loader: _Loader, node: yaml.ScalarNode) -> float:
    text = str(loader.construct_scalar(node)).lower()
    if text.lstrip("+-") == ".inf":
        return float("-inf") if text.startswith("-") else float("inf")
    if text == ".nan":
        return float("nan")
    return float(text)


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_Loader.add_constructor("tag:yaml.org,2002:float", _construct_float)


@dataclass
class YamlDocument:
    """Parsed YAML data with the source line of every mapping key, addressed by dotted path."""

    data: Any
    path: str
    lines: dict[str, int] = field(default_factory=dict)

    def where(self, key_path: str) -> str:
        """Return "FILE:LINE" for a dotted key path, or the nearest parent that has a line."""
        parts = key_path.split(".") if key_path else []
        while parts:
            line = self.lines.get(".".join(parts))
            if line is not None:
                return f"{self.path}:{line}"
            parts.pop()
        return self.path


def _walk(node: yaml.Node, prefix: str, lines: dict[str, int], path: str) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(
                    f"{path}:{line}: duplicate key '{_join(prefix, key)}' (first written on line "
                    f"{seen[key]}); YAML keeps only one of them, so remove or rename the other"
                )
            seen[key] = line
            lines[_join(prefix, key)] = line
            _walk(value_node, _join(prefix, key), lines, path)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[_join(prefix, str(index))] = item.start_mark.line + 1
            _walk(item, _join(prefix, str(index)), lines, path)


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _syntax_error(path: str, error: yaml.YAMLError) -> ConfigError:
    """Turn a PyYAML error into one line: FILE:LINE, the problem and the construct it was in."""
    if not isinstance(error, yaml.MarkedYAMLError) or error.problem_mark is None:
        return ConfigError(f"{path}: invalid YAML: {error}")
    line = error.problem_mark.line + 1
    context = f" ({error.context})" if error.context else ""
    return ConfigError(f"{path}:{line}: invalid YAML: {error.problem}{context}; check the brackets, quotes and indentation")


def parse_yaml(text: str, path: str = "<string>") -> YamlDocument:
    """Parse YAML text with YAML 1.2 scalars; raise ConfigError with the file and line on any problem."""
    for number, line in enumerate(text.splitlines(), start=1):
        indent = line[: len(line) - len(line.lstrip(" \t"))]
        if "\t" in indent:
            raise ConfigError(f"{path}:{number}: tab used for indentation; YAML allows only spaces, so replace the tab with spaces")
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError as error:
        raise _syntax_error(path, error) from None
    if node is None:
        return YamlDocument(data={}, path=path)
    lines: dict[str, int] = {}
    _walk(node, "", lines, path)
    loader = _Loader(text)
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as error:
        raise _syntax_error(path, error) from None
    finally:
        loader.dispose()
    return YamlDocument(data=data, path=path, lines=lines)


def load_yaml(path: str | Path) -> YamlDocument:
    """Read and parse a YAML file (see `parse_yaml`); a missing or unreadable file is a ConfigError."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"file not found: {file}; check the path") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read {file}: {error}") from None
    return parse_yaml(text, str(file))


def dump_yaml(data: Any) -> str:
    """Serialise plain data to block-style YAML that `load_yaml` reads back unchanged."""
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)
