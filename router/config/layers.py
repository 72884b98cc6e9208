"""Named config layers, merged by written rules.

Order (later wins): code defaults (in the schema) -> YAML file(s) -> Consul KV
(``<prefix>config``) -> environment overrides (``MERIDIAN__section__key=value``).

Rules: mappings merge key by key, recursively; lists and scalars are replaced whole;
a ``null`` in a later layer removes the key (so Consul can drop a tenant the file has).
The merged document is validated as one; any error rejects it whole.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from router.config.compile import compile_config
from router.config.settings import ResolvedConfig
from router.errors import ConfigError, FieldError

ENV_PREFIX = "MERIDIAN__"


@dataclass(frozen=True)
class Layer:
    name: str
    doc: Mapping[str, Any]


def merge(base: Any, overlay: Any) -> Any:
    if not isinstance(base, Mapping) or not isinstance(overlay, Mapping):
        return overlay
    out = dict(base)
    for key, value in overlay.items():
        if value is None:
            out.pop(key, None)
        elif key in out:
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def env_layer(environ: Mapping[str, str] | None = None) -> Layer | None:
    """``MERIDIAN__health__interval_ms=250`` -> {"health": {"interval_ms": 250}}; values
    are YAML scalars (so numbers and booleans keep their types)."""
    env = os.environ if environ is None else environ
    doc: dict[str, Any] = {}
    for name, raw in sorted(env.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        path = [p for p in name[len(ENV_PREFIX) :].lower().split("__") if p]
        if not path:
            continue
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        node = doc
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return Layer("env", doc) if doc else None


def resolve(layers: Sequence[Layer]) -> ResolvedConfig:
    """Merge and compile; a layer that is not a mapping is an error naming it."""
    merged: Any = {}
    for layer in layers:
        if not isinstance(layer.doc, Mapping):
            raise ConfigError(
                [FieldError("", f"layer {layer.name} is not a mapping")], source=layer.name
            )
        merged = merge(merged, layer.doc)
    return compile_config(merged, source=" + ".join(layer.name for layer in layers))
