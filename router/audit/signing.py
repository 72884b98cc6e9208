"""The audit signing key (Ed25519): what signs checkpoints and receipts, and what
auditors verify them with.

The private key is a first-run secret like the others: ``<keys-dir>/audit-signing.key``,
PKCS#8 PEM, mode 0600 (refused otherwise), made by ``meridian keys init`` (or by
``meridian serve`` on first run). Its public key is what auditors pin
(``meridian audit public-key``); the key id is a short hash of it, carried by every
signature so several keys (a rotation, several replicas) can be told apart. Nothing
here ever prints, logs or ``repr``s the private key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from router.codec.keys import check_private, write_private
from router.codec.secrets import SIGNING_KEY, new_signing_key_pem
from router.errors import KeyRingError

__all__ = ["SIGNING_KEY", "PublicKeys", "SigningKey", "ensure_signing_key", "load_signing_key"]
RECEIPT_TYPE = "meridian.audit.receipt.v1"


def canonical_json(doc: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers: sorted keys, no spaces, UTF-8."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def key_id_of(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_pem(public: Ed25519PublicKey) -> str:
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


class SigningKey:
    """An Ed25519 private key and its key id. ``repr`` names the key id only."""

    __slots__ = ("_private", "key_id", "public")

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public = private.public_key()
        self.key_id = key_id_of(self.public)

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    def sign(self, data: bytes) -> bytes:
        return self._private.sign(data)

    def public_pem(self) -> str:
        return public_pem(self.public)

    def __repr__(self) -> str:
        return f"SigningKey(key_id={self.key_id!r})"


def load_signing_key(path: Path) -> SigningKey:
    """The key in ``path`` (0600 PEM); ``KeyRingError`` naming the file, never its bytes."""
    check_private(path, what="audit signing key")
    try:
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyRingError(
            f"audit signing key {path} is not an unencrypted Ed25519 private key in PEM"
        ) from None
    if not isinstance(private, Ed25519PrivateKey):
        raise KeyRingError(f"audit signing key {path} is not an Ed25519 key")
    return SigningKey(private)


def ensure_signing_key(path: Path) -> tuple[SigningKey, bool]:
    """The key in ``path``, made (0600) when there is none; (key, whether it was made).
    Replicas sharing a keys directory may start at once: the first to link its new key
    into place wins, and every one of them uses that key."""
    if path.exists():
        return load_signing_key(path), False
    tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
    try:
        write_private(tmp, new_signing_key_pem())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return load_signing_key(path), False
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as exc:
        raise KeyRingError(
            f"audit signing key {path} does not exist and cannot be created "
            f"({os.strerror(exc.errno) if exc.errno else exc}): create it with "
            "`meridian keys init`, or name one with --audit-signing-key-file"
        ) from None
    return load_signing_key(path), True


class PublicKeys:
    """The public keys an auditor trusts, by key id."""

    def __init__(self, keys: Iterable[Ed25519PublicKey] = ()) -> None:
        self._keys = {key_id_of(k): k for k in keys}

    @classmethod
    def load(cls, paths: Iterable[Path]) -> PublicKeys:
        """PEM files of public keys (several in one file are fine); a private key file
        stands for its public half."""
        keys: list[Ed25519PublicKey] = []
        for path in paths:
            try:
                text = path.read_bytes()
            except OSError as exc:
                raise KeyRingError(f"public key {path}: {exc.strerror}") from None
            found = _pem_keys(path, text)
            if not found:
                raise KeyRingError(f"public key {path}: no Ed25519 key in PEM found")
            keys += found
        return cls(keys)

    @property
    def ids(self) -> list[str]:
        return sorted(self._keys)

    def __bool__(self) -> bool:
        return bool(self._keys)

    def check(self, key_id: str, data: bytes, signature: bytes) -> str | None:
        """Why the signature does not verify, or None when it does."""
        public = self._keys.get(key_id)
        if public is None:
            known = ", ".join(self.ids) or "none"
            return f"signed by key {key_id!r}, which is not a trusted public key (known: {known})"
        try:
            public.verify(signature, data)
        except InvalidSignature:
            return f"the signature does not verify with public key {key_id}"
        return None


def _pem_keys(path: Path, data: bytes) -> list[Ed25519PublicKey]:
    out: list[Ed25519PublicKey] = []
    for block in data.split(b"-----END ")[:-1]:
        begin = block.find(b"-----BEGIN ")
        if begin < 0:
            continue
        label = block[begin + 11 : block.find(b"-----", begin + 11)]
        pem = block[begin:] + b"-----END " + label + b"-----\n"
        try:
            if b"PRIVATE" in label:
                check_private(path, what="audit signing key")
                private = serialization.load_pem_private_key(pem, password=None)
                if isinstance(private, Ed25519PrivateKey):
                    out.append(private.public_key())
            else:
                public = serialization.load_pem_public_key(pem)
                if isinstance(public, Ed25519PublicKey):
                    out.append(public)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise KeyRingError(f"public key {path}: a PEM block is not a valid key") from None
    return out


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes | None:
    """Strict base64: None unless ``text`` is exactly the canonical encoding of its bytes
    (standard or URL-safe alphabet), so no two spellings stand for one signature."""
    try:
        alt = "-_" if ("-" in text or "_" in text) else None
        raw = base64.b64decode(
            text.translate(str.maketrans("-_", "+/")) if alt else text, validate=True
        )
    except (binascii.Error, ValueError):
        return None
    again = base64.b64encode(raw).decode("ascii")
    if alt:
        again = again.translate(str.maketrans("+/", "-_"))
    return raw if again == text else None


def receipt_message(chain_id: str, seq: int, record_hash: str, file: str) -> bytes:
    """What a receipt's signature covers."""
    return canonical_json({
        "type": RECEIPT_TYPE, "chain_id": chain_id, "seq": seq, "hash": record_hash, "file": file,
    })  # fmt: skip
