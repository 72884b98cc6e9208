"""Read config documents (YAML files, the embedded default) into a ResolvedConfig.

YAML problems (syntax, duplicate keys) become ``ConfigError`` with line and column,
so an SRE sees the same kind of message for a typo as for a residency mistake.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from router.config.compile import compile_config
from router.config.settings import ResolvedConfig
from router.errors import ConfigError, FieldError

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = ROOT / "config" / "default.yaml"
ENV_CONFIG = "MERIDIAN_CONFIG"


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                mark = key_node.start_mark
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# YAML 1.1 reads NO (Norway), ON, YES, OFF as booleans; a country list must not turn
# into [False]. Only true/false are booleans here, as in YAML 1.2.
_UniqueKeyLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def parse_yaml(text: str, *, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([FieldError(where, f"invalid YAML: {problem}")], source=source) from exc


def load_text(text: str, *, source: str) -> ResolvedConfig:
    return compile_config(parse_yaml(text, source=source), source=source)


def load_file(path: str | os.PathLike[str]) -> ResolvedConfig:
    p = Path(path)
    return load_text(read_text(p), source=str(p))


def read_text(path: Path) -> str:
    """A config file's text; unreadable or not UTF-8 is a ConfigError naming the file."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError([FieldError("", f"cannot read: {reason}")], source=str(path)) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [FieldError("", f"cannot read: not UTF-8 text ({exc.reason} at byte {exc.start})")],
            source=str(path),
        ) from exc


def resolve_path(path: str | os.PathLike[str] | None) -> Path:
    """The config file to use: the argument, else $MERIDIAN_CONFIG, else the embedded default."""
    if path:
        return Path(path)
    env = os.environ.get(ENV_CONFIG)
    return Path(env) if env else DEFAULT_CONFIG


def load(path: str | os.PathLike[str] | None = None) -> ResolvedConfig:
    return load_file(resolve_path(path))
