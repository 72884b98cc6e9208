"""Config: the user's format (schema), its validation and compilation to the frozen
runtime form, and loading from files."""

from router.config.compile import compile_config, config_version, format_loc
from router.config.load import DEFAULT_CONFIG, load, load_file, load_text, parse_yaml
from router.config.settings import HealthSettings, ResolvedConfig, TemporalSettings

__all__ = [
    "DEFAULT_CONFIG",
    "HealthSettings",
    "ResolvedConfig",
    "TemporalSettings",
    "compile_config",
    "config_version",
    "format_loc",
    "load",
    "load_file",
    "load_text",
    "parse_yaml",
]
