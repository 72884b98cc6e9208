"""Bearer tokens of a region's codec server: per region, so a token of one jurisdiction
never decrypts another's payloads.

Sources: ``MERIDIAN_CODEC_TOKENS_<REGION>`` (comma-separated), else the file
``<keys_dir>/<region>.tokens`` (one per line, ``#`` comments; mode 0600 or refused).
"""

from __future__ import annotations

import hmac
import os
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path

from router.codec.keys import check_private, write_private
from router.errors import KeyRingError

MIN_TOKEN_LENGTH = 16


def variable(region: str) -> str:
    return "MERIDIAN_CODEC_TOKENS_" + region.upper().replace("-", "_")


def token_path(keys_dir: Path, region: str) -> Path:
    return keys_dir / f"{region}.tokens"


def load_tokens(
    region: str, keys_dir: Path, environ: Mapping[str, str] | None = None
) -> tuple[bytes, ...]:
    env = os.environ if environ is None else environ
    raw = env.get(variable(region))
    if raw is not None:
        tokens = [t.strip() for t in raw.split(",") if t.strip()]
        source = f"${variable(region)}"
    else:
        path = token_path(keys_dir, region)
        check_private(path, what="codec token file")
        lines = path.read_text().splitlines()
        tokens = [t.strip() for t in lines if t.strip() and not t.lstrip().startswith("#")]
        source = str(path)
    if not tokens:
        raise KeyRingError(f"{source}: no codec tokens")
    short = [i for i, t in enumerate(tokens) if len(t) < MIN_TOKEN_LENGTH]
    if short:
        raise KeyRingError(
            f"{source}: token #{short[0] + 1} is shorter than {MIN_TOKEN_LENGTH} characters"
        )
    return tuple(t.encode() for t in tokens)


def new_token_file(keys_dir: Path, region: str) -> Path:
    path = token_path(keys_dir, region)
    write_private(path, f"# codec server bearer tokens of {region}\n{secrets.token_urlsafe(32)}\n")
    return path


def token_ok(presented: str | None, tokens: Sequence[bytes]) -> bool:
    """Constant time in the presented token: compares against every configured token."""
    if not presented or not presented.startswith("Bearer "):
        return False
    candidate = presented[len("Bearer ") :].strip().encode()
    ok = False
    for token in tokens:
        ok |= hmac.compare_digest(candidate, token)
    return ok
