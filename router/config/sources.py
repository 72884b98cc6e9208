"""The one builder of a router's config layers.

A router's config is the merge (``router.config.layers``) of named layers, later wins:
the YAML files (``--config``, then each ``--overlay``), Consul's ``<prefix>config``
document when Consul is the live source, and ``MERIDIAN__section__key`` environment
overrides. ``ConfigSources`` holds them as one immutable value: a SIGHUP builds a new one
with the files read again, a Consul change one with a new Consul layer; the config
controller (``router.config.runtime``) resolves and applies it, or rejects it whole.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from router.config.layers import Layer, env_layer, resolve
from router.config.load import parse_yaml, read_text
from router.config.settings import ResolvedConfig
from router.errors import ConfigError, FieldError


def read_layer(path: Path) -> Layer:
    return text_layer(read_text(path), f"file:{path}")


def text_layer(text: str, name: str) -> Layer:
    """A YAML document as a layer; an empty document is an empty layer."""
    doc = parse_yaml(text, source=name) if text.strip() else {}
    if doc is None:
        doc = {}
    if not isinstance(doc, Mapping):
        raise ConfigError([FieldError("", "the document must be a mapping")], source=name)
    return Layer(name, doc)


@dataclass(frozen=True, slots=True)
class ConfigSources:
    paths: tuple[Path, ...]
    files: tuple[Layer, ...]
    consul: Layer | None = None
    env: Layer | None = None

    @classmethod
    def read(
        cls,
        paths: Sequence[Path],
        *,
        environ: Mapping[str, str] | None = None,
        use_env: bool = True,
    ) -> ConfigSources:
        """The files (read now) and, unless ``use_env`` is off, the environment's
        overrides. ``meridian dev`` leaves the environment out: its workers and codec
        servers read the same file, and must see the same config."""
        return cls(
            paths=tuple(paths),
            files=tuple(read_layer(p) for p in paths),
            env=env_layer(environ) if use_env else None,
        )

    def reread(self) -> ConfigSources:
        """The same sources with the files read again (a SIGHUP)."""
        return replace(self, files=tuple(read_layer(p) for p in self.paths))

    def with_consul(self, layer: Layer | None) -> ConfigSources:
        return replace(self, consul=layer)

    def layers(self) -> list[Layer]:
        return [
            *self.files,
            *([self.consul] if self.consul is not None else []),
            *([self.env] if self.env is not None else []),
        ]

    def resolve(self) -> ResolvedConfig:
        """Merge and validate; ``ConfigError`` (every problem, with its path) if invalid."""
        return resolve(self.layers())

    def initial(self) -> tuple[ResolvedConfig, ConfigSources, list[ConfigError]]:
        """The config to start with. A Consul document that makes it invalid is left
        out (the files alone serve) and returned, to be audited once the log is open;
        invalid files are fatal at start."""
        try:
            return self.resolve(), self, []
        except ConfigError as exc:
            if self.consul is None:
                raise
            fallback = self.with_consul(None)
            return fallback.resolve(), fallback, [exc]
