"""Per-region key rings: one active key encrypts, older keys still decrypt.

A key ring never leaves its region: the router holds one ring per region it routes to,
a regional worker and codec server hold only their own. Key material is never printed:
``repr`` and every error name key ids, never bytes.

Sources are ``KeyProvider``s. ``FileKeyProvider`` reads ``<dir>/<region>.json`` (mode
0600 or stricter, refused otherwise) and ``EnvKeyProvider`` reads
``MERIDIAN_KEYRING_<REGION>``; both hold the same JSON document::

    {"region": "eu-west", "active": "eu-west-20261124-1a2b",
     "keys": [{"id": "eu-west-20261124-1a2b", "key": "<base64 of 32 bytes>"}]}

A cloud KMS (envelope encryption: data keys wrapped by a KMS key) plugs in as another
provider without touching the codec.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import os
import re
import secrets
import stat
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

from router.errors import KeyRingError, MeridianError

log = logging.getLogger(__name__)

KEY_BYTES = 32  # AES-256
KEY_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


@dataclass(frozen=True, slots=True)
class Key:
    key_id: str
    material: bytes = field(repr=False)

    def __repr__(self) -> str:
        return f"Key(key_id={self.key_id!r}, material=<{len(self.material)} bytes hidden>)"


@dataclass(frozen=True, slots=True)
class KeyRing:
    region: str
    active: str
    keys: Mapping[str, Key]

    def __post_init__(self) -> None:
        if self.active not in self.keys:
            raise KeyRingError(
                f"key ring of {self.region}: active key {self.active!r} is not in it"
            )

    @property
    def active_key(self) -> Key:
        return self.keys[self.active]

    def __repr__(self) -> str:
        return f"KeyRing(region={self.region!r}, active={self.active!r}, keys={sorted(self.keys)})"

    def to_document(self) -> dict[str, Any]:
        """The on-disk JSON form (contains key material: write it only to a 0600 file)."""
        return {
            "region": self.region,
            "active": self.active,
            "keys": [
                {"id": k.key_id, "key": base64.b64encode(k.material).decode()}
                for k in self.keys.values()
            ],
        }

    def rotated(self, now: datetime | None = None) -> KeyRing:
        """A new ring with a fresh key that becomes active; old keys stay for decryption."""
        key = new_key(self.region, now)
        return KeyRing(self.region, key.key_id, MappingProxyType({**self.keys, key.key_id: key}))


def new_key(region: str, now: datetime | None = None) -> Key:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S")
    return Key(f"{region}-{stamp}-{secrets.token_hex(2)}", secrets.token_bytes(KEY_BYTES))


def new_ring(region: str) -> KeyRing:
    key = new_key(region)
    return KeyRing(region, key.key_id, MappingProxyType({key.key_id: key}))


def parse_ring(doc: Any, *, region: str, source: str) -> KeyRing:
    """Validate a key-ring document. Errors name the source and the key id, never bytes."""
    if not isinstance(doc, dict):
        raise KeyRingError(f"{source}: a key ring must be a JSON object")
    unknown = set(doc) - {"region", "active", "keys"}
    if unknown:
        raise KeyRingError(f"{source}: unknown keys {sorted(unknown)}")
    if doc.get("region") != region:
        raise KeyRingError(
            f"{source}: this key ring is for region {doc.get('region')!r}, not {region!r}"
        )
    entries = doc.get("keys")
    if not isinstance(entries, list) or not entries:
        raise KeyRingError(f"{source}: 'keys' must be a non-empty list")
    keys: dict[str, Key] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or set(entry) != {"id", "key"}:
            raise KeyRingError(f"{source}: keys[{i}] must have exactly 'id' and 'key'")
        key_id = entry["id"]
        if not isinstance(key_id, str) or not KEY_ID_RE.match(key_id):
            raise KeyRingError(f"{source}: keys[{i}].id is not a valid key id")
        if key_id in keys:
            raise KeyRingError(f"{source}: key id {key_id!r} appears twice")
        try:
            material = base64.b64decode(entry["key"], validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise KeyRingError(f"{source}: key {key_id!r} is not valid base64") from None
        if len(material) != KEY_BYTES:
            raise KeyRingError(
                f"{source}: key {key_id!r} has {len(material)} bytes; AES-256 needs {KEY_BYTES}"
            )
        keys[key_id] = Key(key_id, material)
    active = doc.get("active")
    if active not in keys:
        raise KeyRingError(f"{source}: active key {active!r} is not one of the ring's keys")
    return KeyRing(region, active, MappingProxyType(keys))


class KeyProvider(ABC):
    """Where a region's key ring comes from. ``load`` is called at start and then
    periodically (see ``KeyRingHolder``), so a rotation reaches running processes."""

    @abstractmethod
    def load(self, region: str) -> KeyRing: ...


class FileKeyProvider(KeyProvider):
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, region: str) -> Path:
        return self.directory / f"{region}.json"

    def load(self, region: str) -> KeyRing:
        path = self.path(region)
        check_private(path, what="key ring")
        try:
            doc = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise KeyRingError(f"{path}: not valid JSON (line {exc.lineno})") from None
        return parse_ring(doc, region=region, source=str(path))

    def save(self, ring: KeyRing) -> Path:
        """Write atomically with mode 0600 (the file holds key material)."""
        path = self.path(ring.region)
        write_private(path, json.dumps(ring.to_document(), indent=2) + "\n")
        return path


class EnvKeyProvider(KeyProvider):
    PREFIX = "MERIDIAN_KEYRING_"

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ = os.environ if environ is None else environ

    @classmethod
    def variable(cls, region: str) -> str:
        return cls.PREFIX + region.upper().replace("-", "_")

    def load(self, region: str) -> KeyRing:
        name = self.variable(region)
        raw = self.environ.get(name)
        if raw is None:
            raise KeyRingError(f"${name} is not set")
        try:
            doc = json.loads(raw)
        except json.JSONDecodeError:
            raise KeyRingError(f"${name}: not valid JSON") from None
        return parse_ring(doc, region=region, source=f"${name}")


class ChainKeyProvider(KeyProvider):
    """Environment first (a deployment's secret injection), then files."""

    def __init__(self, *providers: KeyProvider) -> None:
        self.providers = providers

    def load(self, region: str) -> KeyRing:
        problems = []
        for p in self.providers:
            try:
                return p.load(region)
            except KeyRingError as exc:
                problems.append(exc.message)
        raise KeyRingError(
            f"no key ring for region {region}: "
            + "; ".join(problems)
            + " (`meridian keys init` makes the missing ones; --keys-dir names the directory)"
        )


def default_provider(keys_dir: Path) -> KeyProvider:
    return ChainKeyProvider(EnvKeyProvider(), FileKeyProvider(keys_dir))


def check_private(path: Path, *, what: str) -> None:
    """Refuse a secrets file that others could read; say how to fix it."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise KeyRingError(f"{what} {path} does not exist") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyRingError(
            f"{what} {path} is accessible by group/other (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"refusing to use it. Fix: chmod 600 {path}"
        )


@contextlib.contextmanager
def _private_temp(path: Path, text: str) -> Iterator[Path]:
    """``text`` written and fsynced to a new 0600 file beside ``path``; removed on exit
    unless it was renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        yield tmp
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_private(path: Path, text: str) -> None:
    with _private_temp(path, text) as tmp:
        tmp.replace(path)


def create_private(path: Path, text: str) -> bool:
    """Write ``text`` at ``path`` (0600) unless the file exists; atomic, so two processes
    creating it at once on a shared directory end with the same content. True when this
    call wrote it."""
    if path.exists():
        return False
    with _private_temp(path, text) as tmp:
        try:
            os.link(tmp, path)  # fails if another process made one first: keep theirs
        except FileExistsError:
            return False
        return True


@dataclass(frozen=True, slots=True)
class RingChange:
    """What changed in a region's ring: key ids only, never material."""

    region: str
    previous_active: str
    active: str
    added: tuple[str, ...]
    removed: tuple[str, ...]


# Told of a change before it takes effect; raising keeps the last ring (tried again on
# the next refresh). The router and codec servers audit the change here.
OnRingChange = Callable[[RingChange], Awaitable[None]]


class KeyRingHolder:
    """The current ring of one region, replaced whole when the provider's ring changes.

    Codecs read ``holder.ring`` on every call (one attribute load); ``refresh_forever``
    reloads in the background, so a rotation reaches a running router or worker within
    one interval, and a broken update keeps the last good ring (and is logged).
    """

    def __init__(self, provider: KeyProvider, region: str) -> None:
        self.provider = provider
        self.region = region
        self.ring = provider.load(region)

    def changed(self) -> tuple[KeyRing, RingChange] | None:
        """The provider's ring and what differs from the current one; None if nothing."""
        ring = self.provider.load(self.region)
        if ring.active == self.ring.active and ring.keys.keys() == self.ring.keys.keys():
            return None
        change = RingChange(
            self.region,
            self.ring.active,
            ring.active,
            tuple(k for k in ring.keys if k not in self.ring.keys),
            tuple(k for k in self.ring.keys if k not in ring.keys),
        )
        return ring, change

    def _take(self, ring: KeyRing) -> None:
        log.info(
            "key ring of %s changed: active %s (was %s), %d key(s)",
            self.region,
            ring.active,
            self.ring.active,
            len(ring.keys),
        )
        self.ring = ring

    def refresh(self) -> bool:
        found = self.changed()
        if found is None:
            return False
        self._take(found[0])
        return True

    async def refresh_forever(
        self, interval: float = 1.0, on_change: OnRingChange | None = None
    ) -> None:
        """Reload every ``interval`` seconds; ``on_change`` hears of a changed ring
        before it is used (if it raises, the last ring stays and the next reload tries
        again)."""
        while True:
            await asyncio.sleep(interval)
            try:
                found = self.changed()
                if found is None:
                    continue
                if on_change is not None:
                    await on_change(found[1])
                self._take(found[0])
            except KeyRingError as exc:
                log.error(
                    "key ring of %s not reloaded, keeping the last good one: %s",
                    self.region,
                    exc.message,
                )
            except MeridianError as exc:
                log.error(
                    "key ring of %s changed but the change could not be recorded (%s); "
                    "keeping the last ring until it can",
                    self.region,
                    exc.message,
                )
