"""The payload codec and key rings: round trips, tampering of every kind fails closed,
rotation, pass-through, key-file safety, and key material never printed."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from types import MappingProxyType

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.api.failure.v1 import Failure
from temporalio.converter import DataConverter

from router.codec import (
    EnvKeyProvider,
    FileKeyProvider,
    Key,
    KeyRing,
    KeyRingHolder,
    RegionCodec,
    data_converter,
    new_ring,
)
from router.codec.aead import META_COMPRESSION, META_KEY_ID, META_REGION
from router.codec.tokens import load_tokens, new_token_file, token_ok
from router.errors import CodecError, KeyRingError

MARKER = "marker-7f3a-residency"


def plain(text: str = MARKER) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(text).encode())


@pytest.fixture
def eu() -> RegionCodec:
    return RegionCodec(new_ring("eu-west"))


@pytest.mark.parametrize("compression", [False, True], ids=["plain", "zlib"])
@pytest.mark.parametrize("size", [0, 1, 1000, 5000, 1 << 20])
def test_round_trip(compression: bool, size: int) -> None:
    codec = RegionCodec(new_ring("eu-west"), compression=compression, compression_min_bytes=100)
    original = Payload(metadata={"encoding": b"binary/plain"}, data=b"a" * size)
    sealed = codec.encode_one(original)
    assert sealed.metadata["encoding"] == b"binary/encrypted"
    assert sealed.metadata[META_KEY_ID] == codec.ring.active.encode()
    assert (META_COMPRESSION in sealed.metadata) == (compression and size >= 100)
    if compression and size >= 5000:
        assert len(sealed.data) < size, "compressible data should shrink"
    assert codec.decode_one(sealed) == original


def test_nonces_are_fresh(eu: RegionCodec) -> None:
    a, b = eu.encode_one(plain()), eu.encode_one(plain())
    assert a.data[:12] != b.data[:12] and a.data != b.data


def test_ciphertext_hides_the_marker(eu: RegionCodec) -> None:
    sealed = eu.encode_one(plain()).SerializeToString()
    assert MARKER.encode() not in sealed
    for shift in range(3):
        assert base64.b64encode(b"x" * shift + MARKER.encode())[4:-4] not in sealed


def test_unencrypted_payloads_pass_through(eu: RegionCodec) -> None:
    p = plain()
    assert eu.decode_one(p) is p


def _tampered(sealed: Payload, *, data: bytes | None = None, **meta: bytes | None) -> Payload:
    out = Payload()
    out.CopyFrom(sealed)
    if data is not None:
        out.data = data
    for k, v in meta.items():
        key = k.replace("_", "-")
        if v is None:
            del out.metadata[key]
        else:
            out.metadata[key] = v
    return out


def test_tampering_fails_closed(eu: RegionCodec) -> None:
    sealed = eu.encode_one(plain())
    flipped = bytearray(sealed.data)
    flipped[20] ^= 0x01
    nonce_flipped = bytearray(sealed.data)
    nonce_flipped[0] ^= 0x80
    cases = {
        "flipped ciphertext bit": _tampered(sealed, data=bytes(flipped)),
        "flipped nonce bit": _tampered(sealed, data=bytes(nonce_flipped)),
        "truncated": _tampered(sealed, data=sealed.data[:20]),
        "flipped tag bit": _tampered(sealed, data=sealed.data[:-1] + bytes([sealed.data[-1] ^ 1])),
        "compression flag added": _tampered(sealed, meridian_compression=b"zlib"),
    }
    for name, bad in cases.items():
        with pytest.raises(CodecError):
            eu.decode_one(bad)
            pytest.fail(f"{name}: decoded a tampered payload")


def test_swapped_key_id_fails(eu: RegionCodec) -> None:
    ring = eu.ring.rotated()
    codec = RegionCodec(ring)
    old_id = next(k for k in ring.keys if k != ring.active)
    sealed = codec.encode_one(plain())
    relabelled = _tampered(sealed, encryption_key_id=old_id.encode())
    with pytest.raises(CodecError, match="failed authentication"):
        codec.decode_one(relabelled)
    with pytest.raises(CodecError, match="unknown encryption key id"):
        codec.decode_one(_tampered(sealed, encryption_key_id=b"nope"))


def test_other_region_cannot_decrypt() -> None:
    us, eu = RegionCodec(new_ring("us-east")), RegionCodec(new_ring("eu-west"))
    sealed = us.encode_one(plain())
    with pytest.raises(CodecError, match="encrypted for region us-east"):
        eu.decode_one(sealed)


def test_moved_region_fails_even_with_the_same_key_material() -> None:
    """The region is authenticated data: copying a key to another region's ring (a
    misconfiguration) still does not let that region read the payload."""
    key = Key("shared-1", os.urandom(32))
    us = RegionCodec(KeyRing("us-east", "shared-1", MappingProxyType({"shared-1": key})))
    eu = RegionCodec(KeyRing("eu-west", "shared-1", MappingProxyType({"shared-1": key})))
    sealed = us.encode_one(plain())
    for forged in (sealed, _tampered(sealed, meridian_region=b"eu-west")):
        with pytest.raises(CodecError, match="failed authentication"):
            eu.decode_one(forged)
    assert us.decode_one(sealed) == plain()
    assert sealed.metadata[META_REGION] == b"us-east"


def test_rotation_keeps_old_payloads_readable() -> None:
    ring1 = new_ring("eu-west")
    old = RegionCodec(ring1).encode_one(plain("before"))
    ring2 = ring1.rotated()
    assert ring2.active != ring1.active and set(ring1.keys) < set(ring2.keys)
    codec = RegionCodec(ring2)
    new = codec.encode_one(plain("after"))
    assert new.metadata[META_KEY_ID] == ring2.active.encode()
    assert codec.decode_one(old) == plain("before")
    assert codec.decode_one(new) == plain("after")
    only_new = KeyRing("eu-west", ring2.active, MappingProxyType({ring2.active: ring2.active_key}))
    with pytest.raises(CodecError, match="unknown encryption key id"):
        RegionCodec(only_new).decode_one(old)


async def test_data_converter_encrypts_values_and_failures() -> None:
    conv = data_converter(RegionCodec(new_ring("eu-west")))
    payloads = await conv.encode([MARKER, {"k": [1, 2]}])
    assert all(p.metadata["encoding"] == b"binary/encrypted" for p in payloads)
    assert await conv.decode(payloads) == [MARKER, {"k": [1, 2]}]
    failure = Failure()
    await conv.encode_failure(RuntimeError(MARKER), failure)
    assert MARKER not in failure.message and MARKER.encode() not in failure.SerializeToString()
    assert MARKER in str(await conv.decode_failure(failure))
    with pytest.raises(KeyError):
        await DataConverter.default.decode(payloads)


# -- key rings on disk and in the environment ----------------------------------------


def test_file_provider_round_trip_and_mode(tmp_path: Path) -> None:
    provider = FileKeyProvider(tmp_path / "keys")
    ring = new_ring("eu-west")
    path = provider.save(ring)
    assert path.stat().st_mode & 0o777 == 0o600
    loaded = provider.load("eu-west")
    assert loaded.active == ring.active and loaded.keys == ring.keys


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_group_or_world_readable_key_file_is_refused(tmp_path: Path, mode: int) -> None:
    provider = FileKeyProvider(tmp_path)
    path = provider.save(new_ring("eu-west"))
    path.chmod(mode)
    with pytest.raises(KeyRingError) as info:
        provider.load("eu-west")
    msg = str(info.value)
    assert str(path) in msg and f"chmod 600 {path}" in msg and f"{mode:04o}" in msg


def test_key_ring_for_another_region_is_refused(tmp_path: Path) -> None:
    provider = FileKeyProvider(tmp_path)
    ring = new_ring("us-east")
    (tmp_path / "eu-west.json").write_text(json.dumps(ring.to_document()))
    (tmp_path / "eu-west.json").chmod(0o600)
    with pytest.raises(KeyRingError, match="for region 'us-east', not 'eu-west'"):
        provider.load("eu-west")


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda d: d["keys"][0].update(key=base64.b64encode(b"short").decode()), "has 5 bytes"),
        (lambda d: d["keys"][0].update(key="!!not base64!!"), "not valid base64"),
        (lambda d: d.update(active="missing"), "active key 'missing'"),
        (lambda d: d.update(extra=1), "unknown keys"),
        (lambda d: d["keys"].append(dict(d["keys"][0])), "appears twice"),
        (lambda d: d.update(keys=[]), "non-empty list"),
    ],
    ids=["short key", "bad base64", "unknown active", "unknown field", "duplicate id", "no keys"],
)
def test_malformed_rings_never_echo_key_material(mutate, fragment: str) -> None:  # type: ignore[no-untyped-def]
    doc = new_ring("eu-west").to_document()
    secret = doc["keys"][0]["key"]
    mutate(doc)
    env = {EnvKeyProvider.variable("eu-west"): json.dumps(doc)}
    with pytest.raises(KeyRingError) as info:
        EnvKeyProvider(env).load("eu-west")
    assert fragment in str(info.value)
    assert secret not in str(info.value) and "!!not base64!!" not in str(info.value)


def test_repr_never_shows_key_material() -> None:
    ring = new_ring("eu-west")
    secret = ring.active_key.material
    for text in (repr(ring), str(ring), repr(ring.active_key), repr(RegionCodec(ring))):
        assert secret.hex() not in text
        assert base64.b64encode(secret).decode() not in text
        assert repr(secret) not in text


def test_env_provider() -> None:
    ring = new_ring("ap-southeast")
    env = {"MERIDIAN_KEYRING_AP_SOUTHEAST": json.dumps(ring.to_document())}
    assert EnvKeyProvider(env).load("ap-southeast").keys == ring.keys
    with pytest.raises(KeyRingError, match=r"\$MERIDIAN_KEYRING_EU_WEST is not set"):
        EnvKeyProvider(env).load("eu-west")


def test_holder_follows_rotation_and_keeps_last_good(tmp_path: Path) -> None:
    provider = FileKeyProvider(tmp_path)
    provider.save(new_ring("eu-west"))
    holder = KeyRingHolder(provider, "eu-west")
    first = holder.ring.active
    assert holder.refresh() is False
    provider.save(holder.ring.rotated())
    assert holder.refresh() is True and holder.ring.active != first
    (tmp_path / "eu-west.json").chmod(0o644)
    with pytest.raises(KeyRingError):
        holder.refresh()
    assert first in holder.ring.keys, "a broken update keeps the last good ring"


# -- codec server tokens --------------------------------------------------------------


def test_token_check() -> None:
    tokens = (b"a" * 20, b"b" * 20)
    assert token_ok("Bearer " + "a" * 20, tokens)
    assert token_ok("Bearer " + "b" * 20, tokens)
    for bad in (None, "", "a" * 20, "Bearer ", "Bearer " + "c" * 20, "Basic " + "a" * 20):
        assert not token_ok(bad, tokens)


def test_token_files(tmp_path: Path) -> None:
    path = new_token_file(tmp_path, "eu-west")
    assert path.stat().st_mode & 0o777 == 0o600
    (token,) = load_tokens("eu-west", tmp_path, environ={})
    assert len(token) >= 32
    path.chmod(0o644)
    with pytest.raises(KeyRingError, match="chmod 600"):
        load_tokens("eu-west", tmp_path, environ={})
    env = {"MERIDIAN_CODEC_TOKENS_EU_WEST": "short"}
    with pytest.raises(KeyRingError, match="shorter than 16"):
        load_tokens("eu-west", tmp_path, environ=env)
    env = {"MERIDIAN_CODEC_TOKENS_EU_WEST": "x" * 16 + ", " + "y" * 16}
    assert load_tokens("eu-west", tmp_path, environ=env) == (b"x" * 16, b"y" * 16)


async def test_failure_messages_are_sealed_and_open_only_in_their_region() -> None:
    """Temporal hands a failed query back as its message alone, so the regional worker
    seals the message too (not just the encoded attributes); the router opens it with
    the same region's keys, and no other region can."""
    from router.codec.converter import SEALED_PREFIX, open_sealed

    eu = data_converter(RegionCodec(new_ring("eu-west")))
    us = data_converter(RegionCodec(new_ring("us-east")))
    secret = "card 4111 1111 1111 1111 was declined"
    failure = Failure()
    await eu.encode_failure(RuntimeError(secret), failure)
    assert failure.message.startswith(SEALED_PREFIX)
    assert secret.encode() not in failure.SerializeToString()
    assert open_sealed(failure.message, eu) == secret
    with pytest.raises(CodecError, match="us-east codec cannot decrypt"):
        open_sealed(failure.message, us)
    assert open_sealed("a plain message", eu) is None
    # The SDK's own decoding (encoded attributes) still gives the message back.
    assert str(await eu.decode_failure(failure)).endswith(secret)
