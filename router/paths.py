"""Where Meridian keeps local state and secrets (never in git: .meridian/ is ignored)."""

from __future__ import annotations

import os
from pathlib import Path


def meridian_home() -> Path:
    """$MERIDIAN_HOME, else ./.meridian."""
    return Path(os.environ.get("MERIDIAN_HOME", ".meridian")).resolve()


def keys_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Key rings and codec tokens: the argument, else $MERIDIAN_KEYS_DIR, else <home>/keys."""
    if explicit:
        return Path(explicit).resolve()
    env = os.environ.get("MERIDIAN_KEYS_DIR")
    return Path(env).resolve() if env else meridian_home() / "keys"
