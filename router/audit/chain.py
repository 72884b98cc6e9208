"""The hash chain: canonical JSON, record hashes, and the on-disk naming.

Each record holds ``seq`` (1, 2, ...), ``prev`` (the previous record's hash; GENESIS for
the first) and ``hash``: SHA-256 of the record's canonical JSON without ``hash``, or
HMAC-SHA256 with the audit key (``alg`` says which). Someone who can rewrite the files
can recompute a plain SHA-256 chain; without the key they cannot recompute an HMAC one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

GENESIS = "0" * 64
ALG_SHA256 = "sha256"
ALG_HMAC = "hmac-sha256"
FILE_RE = re.compile(r"^audit-(\d{16})\.jsonl$")
HEAD_NAME = "HEAD"
# Set by the log on every record; a record appended with any of them is refused.
CHAIN_FIELDS = frozenset({"alg", "prev", "seq", "hash"})


def canonical(record: Mapping[str, Any]) -> bytes:
    """Sorted keys, no spaces, UTF-8: the bytes a record's hash covers (``hash`` excluded)."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _hash(data: bytes, key: bytes | None) -> str:
    if key is None:
        return hashlib.sha256(data).hexdigest()
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def digest(record: Mapping[str, Any], key: bytes | None) -> str:
    return _hash(canonical(record), key)


def seal(record: Mapping[str, Any], key: bytes | None) -> tuple[str, bytes]:
    """The record's hash and its JSON Lines form: the canonical bytes with the hash
    appended as the last member, so each record is serialized once."""
    body = canonical(record)
    h = _hash(body, key)
    return h, body[:-1] + b',"hash":"' + h.encode() + b'"}\n'


def file_name(first_seq: int) -> str:
    return f"audit-{first_seq:016d}.jsonl"


def log_files(directory: Path) -> list[Path]:
    """The chain's files in order (their names carry their first sequence number)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if FILE_RE.match(p.name))


def fsync_dir(directory: Path) -> None:
    """Make a directory's entries (a new or renamed file's name) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
