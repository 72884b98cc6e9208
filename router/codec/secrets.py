"""First-run secrets of a deployment: each region's key ring and codec-server token, the
home-reference key (router.homes) and the audit key. Files only, mode 0600, never
printed; existing ones are kept."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterable
from pathlib import Path

from router.codec.keys import FileKeyProvider, create_private, new_ring, write_private
from router.codec.tokens import new_token_file, token_path

AUDIT_KEY = "audit.key"
HOME_KEY = "home.key"


def new_key_text() -> str:
    """A fresh 32-byte key, base64, one line."""
    return base64.b64encode(secrets.token_bytes(32)).decode() + "\n"


def ensure_secrets(keys_dir: Path, regions: Iterable[str]) -> list[tuple[str, Path]]:
    """Create what is missing; return (what, path) of each file created."""
    provider = FileKeyProvider(keys_dir)
    made: list[tuple[str, Path]] = []
    for region in regions:
        ring = provider.path(region)
        if not ring.exists():
            provider.save(new_ring(region))
            made.append((f"key ring {region}", ring))
        if not token_path(keys_dir, region).exists():
            made.append((f"codec token {region}", new_token_file(keys_dir, region)))
    if create_private(keys_dir / HOME_KEY, new_key_text()):
        made.append(("home-reference key", keys_dir / HOME_KEY))
    audit_key = keys_dir / AUDIT_KEY
    if not audit_key.exists():
        write_private(audit_key, new_key_text())
        made.append(("audit key", audit_key))
    return made
