"""Appending to a chain from a tool that runs and exits (``meridian keys rotate``).

Two writers on one chain would fork it (both continue from the same last record), so a
tool never writes into a running process's chain: it keeps a chain of its own (e.g.
``$MERIDIAN_HOME/audit-keys``), and an exclusive lock on ``<dir>/LOCK`` serialises tools
that run at the same time. Each run opens the log (which starts a new file, as after
any restart), appends its records as one durable batch, and closes it.

A tool's chain is evidence like a router's, and auditors verify every chain against the
witness, where a chain no witness holds a checkpoint of fails as ``unwitnessed``. So,
given a ``Witnessing`` (the signing key and witnesses), each run ends the way a router's
checkpointer runs a round: it signs a checkpoint of everything it wrote (the chain gets
its id, its ``CHAIN`` file, on the first such run), publishes it to each witness and
appends the ``audit.checkpoint`` record; the next run's checkpoint covers that record.
A witness that fails is reported to the caller (``Appended.witnesses``), never retried
here: the records are already durable, and the tool's user is told.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from router.audit.checkpoint import Checkpoint, Checkpointer, Witness
from router.audit.log import AuditLog, Receipt
from router.audit.signing import SigningKey
from router.errors import AuditUnavailable

LOCK_NAME = "LOCK"


@dataclass(frozen=True, slots=True)
class Witnessing:
    """How a tool's run is checkpointed: the Ed25519 key that signs, the name its
    checkpoints give as replica, and where they are published."""

    key: SigningKey
    replica_id: str
    witnesses: Sequence[Witness]


@dataclass(frozen=True, slots=True)
class Appended:
    receipts: list[Receipt]
    # The checkpoint of this run (None: no ``Witnessing`` given), its chain, and each
    # witness's outcome: "published" or "failed: why".
    checkpoint: Checkpoint | None = None
    chain_id: str = ""
    witnesses: dict[str, str] = field(default_factory=dict)
    # Why the checkpoint's audit record is missing ("" when it was written).
    record_error: str = ""


def append_locked(
    directory: Path,
    records: Sequence[Mapping[str, Any]],
    *,
    key: bytes | None,
    witnessing: Witnessing | None = None,
) -> Appended:
    """Append ``records`` in order, durably, under the directory's lock; then, with
    ``witnessing``, checkpoint the chain (still under the lock: the checkpoint's record
    is an append too)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return asyncio.run(_append(directory, records, key, witnessing))
    finally:
        os.close(fd)  # releases the lock


async def _append(
    directory: Path,
    records: Sequence[Mapping[str, Any]],
    key: bytes | None,
    witnessing: Witnessing | None,
) -> Appended:
    log = AuditLog(directory, key=key)
    log.open()
    try:
        # One batch: queued in order, committed with one write and one fsync.
        receipts = list(await asyncio.gather(*(log.append(r) for r in records)))
        if witnessing is None:
            return Appended(receipts)
        return await _checkpoint(log, receipts, witnessing)
    finally:
        await log.close()


async def _checkpoint(log: AuditLog, receipts: list[Receipt], w: Witnessing) -> Appended:
    checkpointer = Checkpointer(
        log, w.key, replica_id=w.replica_id, witnesses=w.witnesses, interval=0
    )
    record_error = ""
    try:
        cp = await checkpointer.checkpoint(force=True)
    except AuditUnavailable as exc:
        # Signed and published; only its record in the chain is missing (the next run's
        # checkpoint covers this run's records all the same).
        cp, record_error = checkpointer.last, exc.message
    outcomes = {
        s.name: f"failed: {s.last_error}" if s.last_error else "published"
        for s in checkpointer.status().witnesses
    }
    return Appended(receipts, cp, checkpointer.chain_id, outcomes, record_error)
