"""Home references: where a workflow lives, sealed for the caller that started it.

StartWorkflow (and every follow-up's ``location``) returns one; a follow-up that
carries it back (``WorkflowRef.home``) asks that cluster, and only if the workflow is
not there the rest of its region, instead of every cluster where the tenant's
workflows can live. Behind a load balancer most follow-ups reach a replica that did not
start the workflow, so without the reference each would fan out to a zone (or the
world).

The seal is HMAC-SHA256 over the workflow id, the tenant and the home, with a key every
replica shares (``<keys-dir>/home.key`` or ``$MERIDIAN_HOME_KEY``): a reference issued
by one replica opens on another, and a forged one, another tenant's or another
workflow's opens to nothing, so the follow-up is refused exactly like an unknown id.
The memo check still follows (a reference says where to look, never whose a run is).
A reference names the home (region, cluster, namespace: names, no data) and is bound
to nothing else, so it stays valid for the workflow's life; keys rotate by adding a
new first line to the file (the first seals, every line opens).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from router.codec.keys import check_private, create_private
from router.codec.secrets import HOME_KEY, new_key_text
from router.errors import KeyRingError

log = logging.getLogger(__name__)

ENV = "MERIDIAN_HOME_KEY"
# Longer than any reference this module issues (names are bounded by the config); a
# longer one is refused as an argument, not opened.
MAX_LENGTH = 1024
_VERSION = "h1"
_SEP = "\x1f"  # unit separator: config names and ids never contain control characters
_MAC_BYTES = 16


@dataclass(frozen=True, slots=True)
class Home:
    region: str
    cluster: str
    namespace: str


@dataclass(frozen=True, slots=True)
class HomeRefs:
    """Seals and opens home references. ``keys``: the first seals, every one opens."""

    keys: tuple[bytes, ...] = field(repr=False)

    def __post_init__(self) -> None:
        if not self.keys:
            raise KeyRingError("home references need at least one key")
        for key in self.keys:
            if len(key) < 32:
                raise KeyRingError(f"a home-reference key has {len(key)} bytes; at least 32")

    def seal(self, workflow_id: str, tenant_id: str, home: Home) -> str:
        payload = _SEP.join((home.region, home.cluster, home.namespace)).encode()
        mac = _mac(self.keys[0], workflow_id, tenant_id, payload)
        return f"{_VERSION}.{_b64(payload)}.{_b64(mac)}"

    def open(self, token: str, workflow_id: str, tenant_id: str) -> Home | None:
        """The home ``token`` names, when it was sealed for this workflow id and tenant;
        else None (forged, altered, another's, or from an unknown key)."""
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != _VERSION:
            return None
        try:
            payload, mac = _unb64(parts[1]), _unb64(parts[2])
        except (binascii.Error, ValueError):
            return None
        if not any(
            hmac.compare_digest(mac, _mac(key, workflow_id, tenant_id, payload))
            for key in self.keys
        ):
            return None
        fields = payload.decode("utf-8", "replace").split(_SEP)
        if len(fields) != 3 or not all(fields):
            return None
        return Home(*fields)


def _mac(key: bytes, workflow_id: str, tenant_id: str, payload: bytes) -> bytes:
    msg = b"\x00".join((_VERSION.encode(), workflow_id.encode(), tenant_id.encode(), payload))
    return hmac.digest(key, msg, "sha256")[:_MAC_BYTES]  # one-shot: OpenSSL's fast path


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load(keys_dir: Path, environ: Mapping[str, str] | None = None) -> HomeRefs:
    """``$MERIDIAN_HOME_KEY`` (base64 keys, comma-separated), else ``<keys_dir>/home.key``
    (one base64 key per line, mode 0600), created on first use when absent.

    Created, it is logged: replicas must share it (the same keys directory, or the same
    secret mounted) for references from one to open on another.
    """
    env = os.environ if environ is None else environ
    raw = env.get(ENV)
    if raw is not None:
        return HomeRefs(_parse(raw.replace(",", "\n"), f"${ENV}"))
    path = keys_dir / HOME_KEY
    if create_private(path, new_key_text()):
        log.warning(
            "created the home-reference key %s: every replica must use this same file "
            "(or $%s), or a reference from one will not open on another",
            path,
            ENV,
        )
    check_private(path, what="home-reference key")
    return HomeRefs(_parse(path.read_text(), str(path)))


def _parse(text: str, source: str) -> tuple[bytes, ...]:
    lines: Sequence[str] = [ln.strip() for ln in text.splitlines()]
    keys: list[bytes] = []
    for n, line in enumerate(lines, 1):
        if not line or line.startswith("#"):
            continue
        try:
            keys.append(base64.b64decode(line, validate=True))
        except (binascii.Error, ValueError):
            raise KeyRingError(f"{source}: key {n} is not valid base64") from None
    if not keys:
        raise KeyRingError(f"{source}: no home-reference key in it")
    return tuple(keys)
