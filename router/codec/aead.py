"""AES-256-GCM payload codec bound to one region.

Wire format of an encrypted payload (compatible with Temporal's samples' metadata):

    metadata: encoding=binary/encrypted, encryption-key-id=<id>,
              meridian-region=<region>, [meridian-compression=zlib]
    data:     12-byte random nonce || AES-GCM ciphertext+tag of the serialized Payload

The associated data authenticates ``meridian/v1``, the region, the key id and the
compression flag: a ciphertext moved to another region, relabelled with another key id
or stripped of its compression flag fails to decode, loudly, never as garbage. Payloads
that are not ``binary/encrypted`` pass through on decode (history written before the
codec, or by a client without it).
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from opentelemetry import metrics
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec

from router.codec.keys import Key, KeyRing, KeyRingHolder
from router.codec.tally import Tally
from router.errors import CodecError

ENCODING = b"binary/encrypted"
META_ENCODING = "encoding"
META_KEY_ID = "encryption-key-id"
META_REGION = "meridian-region"
META_COMPRESSION = "meridian-compression"
NONCE_BYTES = 12
TAG_BYTES = 16
_AAD_PREFIX = b"meridian/v1\x00"


def associated_data(region: str, key_id: str, compressed: bool) -> bytes:
    return b"%s%s\x00%s\x00%s" % (
        _AAD_PREFIX,
        region.encode(),
        key_id.encode(),
        b"zlib" if compressed else b"",
    )


@dataclass(frozen=True, slots=True)
class _Sealer:
    cipher: AESGCM
    aad: bytes
    template: Payload


# Counted through the OpenTelemetry API (router.metrics pins the Prometheus names; the
# codec package does not reach into the rest of the router).
_meter = metrics.get_meter("meridian")
_payloads = Tally(
    _meter, "meridian.codec.payloads", labels=("region", "op"),
    description="payloads encoded or decoded, by region and op",
)  # fmt: skip
_failures = Tally(
    _meter, "meridian.codec.failures", labels=("region", "reason"),
    description="payloads that failed to decode, by region and reason",
)  # fmt: skip


class RegionCodec(PayloadCodec):
    """Encrypts with the region's active key; decrypts with any key of its ring."""

    def __init__(
        self,
        keys: KeyRing | KeyRingHolder,
        *,
        compression: bool = False,
        compression_min_bytes: int = 1024,
    ) -> None:
        self._static = keys if isinstance(keys, KeyRing) else None
        self._holder = keys if isinstance(keys, KeyRingHolder) else None
        self.compression = compression
        self.compression_min_bytes = compression_min_bytes
        # AESGCM objects cost a key schedule each; keep one per key.
        self._ciphers: dict[tuple[str, bytes], AESGCM] = {}
        self._sealers: dict[tuple[str, str, bytes, bool], _Sealer] = {}

    @property
    def ring(self) -> KeyRing:
        if self._holder is not None:
            return self._holder.ring
        assert self._static is not None
        return self._static

    @property
    def region(self) -> str:
        return self.ring.region

    def __repr__(self) -> str:
        return f"RegionCodec(region={self.region!r}, active={self.ring.active!r})"

    def _sealer(self, ring: KeyRing, compressed: bool) -> _Sealer:
        """Cipher, associated data and metadata template for the active key: built once
        per (key, compression) so the per-payload path only seals and copies bytes."""
        key = ring.active_key
        cache_key = (ring.region, key.key_id, key.material, compressed)
        sealer = self._sealers.get(cache_key)
        if sealer is None:
            template = Payload()
            meta = template.metadata
            meta[META_ENCODING] = ENCODING
            meta[META_KEY_ID] = key.key_id.encode()
            meta[META_REGION] = ring.region.encode()
            if compressed:
                meta[META_COMPRESSION] = b"zlib"
            sealer = _Sealer(
                self._cipher(key), associated_data(ring.region, key.key_id, compressed), template
            )
            self._sealers[cache_key] = sealer
        return sealer

    def _cipher(self, key: Key) -> AESGCM:
        cache_key = (key.key_id, key.material)
        cipher = self._ciphers.get(cache_key)
        if cipher is None:
            cipher = self._ciphers[cache_key] = AESGCM(key.material)
        return cipher

    def encode_one(self, payload: Payload) -> Payload:
        plain = payload.SerializeToString()
        compressed = self.compression and len(plain) >= self.compression_min_bytes
        if compressed:
            plain = zlib.compress(plain, 6)
        sealer = self._sealer(self.ring, compressed)
        # nonce || ciphertext || tag, sealed into one buffer. (Concatenating a nonce to
        # encrypt()'s result measured 10x slower for 1 MiB here: two large allocations
        # per call defeat glibc's malloc; see benchmarks/codec.py.)
        nonce = os.urandom(NONCE_BYTES)
        buf = bytearray(NONCE_BYTES + len(plain) + TAG_BYTES)
        view = memoryview(buf)
        view[:NONCE_BYTES] = nonce
        sealer.cipher.encrypt_into(nonce, plain, sealer.aad, view[NONCE_BYTES:])
        out = Payload()
        out.CopyFrom(sealer.template)
        out.data = bytes(buf)
        return out

    def decode_one(self, payload: Payload) -> Payload:
        meta = payload.metadata
        if meta.get(META_ENCODING) != ENCODING:
            return payload
        ring = self.ring
        key_id = meta.get(META_KEY_ID, b"").decode(errors="replace")
        key = ring.keys.get(key_id)
        if key is None:
            origin = meta.get(META_REGION, b"").decode(errors="replace")
            if origin and origin != ring.region:
                raise CodecError(
                    f"payload was encrypted for region {origin}; the {ring.region} codec "
                    "cannot decrypt it (keys never leave their region)",
                    reason="other_region",
                )
            raise CodecError(
                f"unknown encryption key id {key_id!r} for region {ring.region}",
                reason="unknown_key",
            )
        compressed = meta.get(META_COMPRESSION) == b"zlib"
        data = payload.data
        if len(data) < NONCE_BYTES + 16:
            raise CodecError("encrypted payload is truncated", reason="truncated")
        try:
            plain = self._cipher(key).decrypt(
                data[:NONCE_BYTES],
                data[NONCE_BYTES:],
                associated_data(ring.region, key.key_id, compressed),
            )
        except InvalidTag:
            raise CodecError(
                f"payload failed authentication with key {key_id!r} of region {ring.region} "
                "(tampered, or encrypted for another region)",
                reason="authentication",
            ) from None
        if compressed:
            try:
                plain = zlib.decompress(plain)
            except zlib.error:
                raise CodecError(
                    "authenticated payload does not decompress", reason="decompress"
                ) from None
        try:
            return Payload.FromString(plain)
        except Exception:
            raise CodecError(
                "authenticated payload is not a serialized Payload", reason="not_a_payload"
            ) from None

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        out = [self.encode_one(p) for p in payloads]
        _payloads.add(len(out), self.region, "encode")
        return out

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        try:
            out = [self.decode_one(p) for p in payloads]
        except CodecError as exc:
            _failures.add(1, self.region, exc.reason)
            raise
        _payloads.add(len(out), self.region, "decode")
        return out
