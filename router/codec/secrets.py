"""First-run secrets of a deployment: each region's key ring and codec-server token, the
home-reference key (router.homes), the audit key and the audit signing key (Ed25519:
checkpoints and receipts, ``router.audit.signing``). Files only, mode 0600, never
printed; existing ones are kept."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from router.codec.keys import FileKeyProvider, create_private, new_ring, write_private
from router.codec.tokens import new_token_file, token_path

AUDIT_KEY = "audit.key"
HOME_KEY = "home.key"
SIGNING_KEY = "audit-signing.key"


def new_key_text() -> str:
    """A fresh 32-byte key, base64, one line."""
    return base64.b64encode(secrets.token_bytes(32)).decode() + "\n"


def new_signing_key_pem() -> str:
    """A new Ed25519 private key, PKCS#8 PEM (written 0600 by the caller)."""
    return (
        Ed25519PrivateKey.generate()
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )


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
    signing = keys_dir / SIGNING_KEY
    if not signing.exists():
        write_private(signing, new_signing_key_pem())
        made.append(("audit signing key", signing))
    return made
