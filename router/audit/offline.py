"""Appending to a chain from a tool that runs and exits (``meridian keys rotate``).

Two writers on one chain would fork it (both continue from the same last record), so a
tool never writes into a running process's chain: it keeps a chain of its own (e.g.
``$MERIDIAN_HOME/audit-keys``), and an exclusive lock on ``<dir>/LOCK`` serialises tools
that run at the same time. Each run opens the log (which starts a new file, as after
any restart), appends its records as one durable batch, and closes it.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from router.audit.log import AuditLog, Receipt

LOCK_NAME = "LOCK"


def append_locked(
    directory: Path, records: Sequence[Mapping[str, Any]], *, key: bytes | None
) -> list[Receipt]:
    """Append ``records`` in order, durably, under the directory's lock; their receipts."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return asyncio.run(_append(directory, records, key))
    finally:
        os.close(fd)  # releases the lock


async def _append(
    directory: Path, records: Sequence[Mapping[str, Any]], key: bytes | None
) -> list[Receipt]:
    log = AuditLog(directory, key=key)
    log.open()
    try:
        # One batch: queued in order, committed with one write and one fsync.
        return list(await asyncio.gather(*(log.append(r) for r in records)))
    finally:
        await log.close()
