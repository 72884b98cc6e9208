"""The durable, hash-chained audit log of one router replica.

``await log.append(record)`` returns only once the record is written and fsynced, with a
receipt (sequence, hash, file). Appends from concurrent requests are committed together:
one write and one fsync per batch (group commit), so durability costs little throughput.

Files rotate by size and age; the chain continues across them (the first record of a new
file holds the last hash of the previous one). After every commit the ``HEAD`` file
records the last durable sequence and hash, so a log cut short later is recognisable as
truncated rather than merely ending.

If the disk refuses a write (full, read-only, permissions), the batch fails with
``AuditUnavailable``, the file is cut back to its last durable byte and the sequence is
rolled back: callers refuse to act without a record, and the next append tries again,
so the log recovers by itself when the disk does. Any other failure of a commit is met
the same way. A record the log cannot take (not JSON-shaped, or setting a chain field)
fails its own append only, never the rest of its batch.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import fcntl
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router import metrics
from router.audit.chain import (
    ALG_HMAC,
    ALG_SHA256,
    CHAIN_FIELDS,
    GENESIS,
    HEAD_NAME,
    file_name,
    fsync_dir,
    log_files,
    seal,
)
from router.audit.records import utc
from router.codec.keys import check_private
from router.errors import AuditUnavailable

log = logging.getLogger(__name__)

_TAIL_BYTES = 1 << 20  # enough to find the last complete record of a file
WRITER_NAME = "WRITER"  # the lock of the one process appending to the chain
_MAX_BATCH = 4096
_HEAD_BYTES = 256


@dataclass(frozen=True, slots=True)
class Receipt:
    sequence: int
    hash: str
    file: str


def load_key(path: Path | None = None, environ: Mapping[str, str] | None = None) -> bytes | None:
    """The optional audit HMAC key: $MERIDIAN_AUDIT_KEY (base64), else a 0600 file holding
    base64; None when neither is given. At least 32 bytes."""
    env = os.environ if environ is None else environ
    raw = env.get("MERIDIAN_AUDIT_KEY")
    source = "$MERIDIAN_AUDIT_KEY"
    if raw is None and path is not None:
        check_private(path, what="audit key")
        raw, source = path.read_text().strip(), str(path)
    if raw is None:
        return None
    try:
        key = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise AuditUnavailable(f"{source}: the audit key is not valid base64") from None
    if len(key) < 32:
        raise AuditUnavailable(f"{source}: the audit key has {len(key)} bytes; at least 32")
    return key


@dataclass
class _Pending:
    record: dict[str, Any]
    future: asyncio.Future[Receipt]


class AuditLog:
    def __init__(
        self,
        directory: Path,
        *,
        key: bytes | None = None,
        max_file_bytes: int = 64 * 1024 * 1024,
        max_file_age: float = 86_400.0,
        fsync: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self._key = key
        self._alg = ALG_HMAC if key is not None else ALG_SHA256
        self._max_bytes = max_file_bytes
        self._max_age = max_file_age
        self._fsync = fsync
        self._clock = clock
        self._queue: list[_Pending] = []
        self._wakeup = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._fd: int | None = None
        self._head_fd: int | None = None
        self._writer_fd: int | None = None
        self._path: Path | None = None
        self._size = 0
        self._opened_at = 0.0
        self._seq = 0
        self._last = GENESIS
        self._notes: list[dict[str, Any]] = []
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.healthy = True
        self.last_error = ""
        metrics.watch("meridian_audit_queue_depth", self, _queue_depth)

    @property
    def queued(self) -> int:
        """Records waiting for the writer (status and metrics)."""
        return len(self._queue)

    # -- opening and recovery ---------------------------------------------------------

    def open(self) -> None:
        """Find where the chain ends; note a torn final line or a truncation (they go
        into the log as the first record of a new file)."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock_writer()
        files = log_files(self.directory)
        if files:
            newest = files[-1]
            seq, last, torn, alg = _tail(newest)
            if seq == 0 and len(files) > 1:
                # The newest file held nothing complete: continue from the one before.
                seq, last, _, alg = _tail(files[-2])
            if alg and alg != self._alg:
                self._unlock_writer()
                given = "an audit key" if self._key is not None else "no audit key"
                raise AuditUnavailable(
                    f"audit log {self.directory}: its chain is {alg}-chained but this "
                    f"process was given {given}; a chain never changes algorithm (verify "
                    "would report a rewritten chain): give the key it was written with "
                    "(or none), or start a new chain in another --audit-dir"
                )
            self._seq, self._last = seq, last
            if torn and torn == newest.stat().st_size and newest.name == file_name(seq + 1):
                # A crash in the first write of a file (all it holds is the partial
                # line): the next file would have this name, and appending after the
                # partial line would corrupt the chain. Set it aside (not deleted: it is
                # evidence of the crash).
                newest = _set_aside(newest)
            if torn:
                self._notes.append({
                    "kind": "log.recovered", "torn_file": newest.name, "torn_bytes": torn,
                    "note": "the previous run ended mid-write (a crash); the partial line "
                            "was never acknowledged",
                })  # fmt: skip
        head = _read_head(self.directory)
        if head is not None and head.get("seq", 0) > self._seq:
            self._notes.append({
                "kind": "log.recovered", "head_seq": head["seq"], "found_seq": self._seq,
                "note": f"HEAD says records up to {head['seq']} were committed but the log "
                        f"ends at {self._seq}: records are missing (truncated)",
            })  # fmt: skip
            log.error("audit log %s is truncated: HEAD %s, log ends at %s",
                      self.directory, head["seq"], self._seq)  # fmt: skip
        # Always start a fresh file: never append after a possibly torn line.
        self._fd = None

    def _lock_writer(self) -> None:
        """One writer per chain: two processes appending to one directory fork the chain
        (each continues from the seq it saw). An exclusive lock on ``<dir>/WRITER``, held
        while open; the kernel drops it when the process dies, so a crash never leaves
        it stale."""
        fd = os.open(self.directory / WRITER_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise AuditUnavailable(
                f"audit log {self.directory} is being written by another process"
                f"{f' (pid {holder})' if holder else ''}: one writer per chain (two would "
                "fork it); give this one its own --audit-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._writer_fd = fd

    def _unlock_writer(self) -> None:
        if self._writer_fd is not None:
            os.close(self._writer_fd)  # releases the lock
            self._writer_fd = None

    @property
    def sequence(self) -> int:
        return self._seq

    @property
    def head(self) -> tuple[int, str]:
        """The last durable record's (seq, hash): what a checkpoint covers."""
        return self._seq, self._last

    # -- appending ---------------------------------------------------------------------

    async def append(self, record: Mapping[str, Any]) -> Receipt:
        """Durably append ``record`` (a JSON-shaped mapping without alg/seq/prev/hash);
        ``AuditUnavailable`` when it is not written."""
        loop = asyncio.get_running_loop()
        pending = _Pending(dict(record), loop.create_future())
        self._queue.append(pending)
        self._wakeup.set()
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._run(), name="audit-writer")
        return await pending.future

    async def _io(self, data: bytes, new_file_seq: int | None, seq: int, last: str) -> None:
        """Write and fsync on the log's own thread (the event loop never blocks on the
        disk); a plain queue and one wake-up each way: cheaper than an executor."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._io_loop, name="audit-io", daemon=True)
            self._thread.start()
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._jobs.put((loop, done, (data, new_file_seq, seq, last)))
        await done

    def _io_loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            loop, done, args = job
            try:
                self._write(*args)
            except BaseException as exc:
                loop.call_soon_threadsafe(_settle, done, exc)
            else:
                loop.call_soon_threadsafe(_settle, done, None)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        if self._thread is not None:
            self._jobs.put(None)
            await asyncio.to_thread(self._thread.join, 5)
            self._thread = None
        for fd in (self._fd, self._head_fd):
            if fd is not None:
                os.close(fd)
        self._fd = self._head_fd = None
        self._unlock_writer()

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                batch, self._queue = self._queue[:_MAX_BATCH], self._queue[_MAX_BATCH:]
                await self._commit(batch)

    async def _commit(self, batch: list[_Pending]) -> None:
        t0 = time.perf_counter()
        seq, last = self._seq, self._last
        chunks: list[bytes] = []
        sealed: list[tuple[_Pending, Receipt]] = []
        try:
            rotate = self._fd is None or self._needs_rotation()
            first_seq = seq + 1
            # The file that will hold the batch: a new one, named after its first record,
            # or the open one (named after ITS first record).
            file = file_name(first_seq) if rotate or self._path is None else self._path.name
            for body in self._notes if rotate else []:
                seq += 1
                last, line = seal(self._chained(body, seq, last), self._key)
                chunks.append(line)
            for p in batch:
                got = self._seal_or_refuse(p, seq + 1, last)
                if got is not None:
                    seq, (last, line) = seq + 1, got
                    chunks.append(line)
                    sealed.append((p, Receipt(seq, last, file)))
            if not sealed:
                return
            await self._io(b"".join(chunks), first_seq if rotate else None, seq, last)
        except Exception as exc:
            # Whatever failed (the disk, or a bug), nothing of the batch is acknowledged and
            # the chain's state stays where the last durable record left it.
            self._fail(batch, exc)
            return
        self._seq, self._last = seq, last
        if rotate:
            self._notes = []
        self.healthy, self.last_error = True, ""
        metrics.audit_commit.record(time.perf_counter() - t0)
        metrics.audit_batch.record(len(chunks))
        for p, r in sealed:
            if not p.future.done():
                p.future.set_result(r)

    def _chained(self, body: Mapping[str, Any], seq: int, prev: str) -> dict[str, Any]:
        rec = {"alg": self._alg, "prev": prev, "seq": seq, **body}
        rec.setdefault("time", utc(self._clock()))
        return rec

    def _seal_or_refuse(self, p: _Pending, seq: int, prev: str) -> tuple[str, bytes] | None:
        """The hash and line of ``p``'s record as record ``seq``; or None, with ``p`` failed
        alone, when the log cannot take the record (the rest of its batch goes on)."""
        why = _refusal(p.record)
        if why is None:
            rec = self._chained(p.record, seq, prev)
            try:
                return seal(rec, self._key)
            except (TypeError, ValueError, RecursionError) as exc:
                # json's messages name types ("Object of type set ..."), never values.
                why = f"it cannot be serialised: {exc}"
        if not p.future.done():
            p.future.set_exception(AuditUnavailable(f"audit record refused: {why}"))
        return None

    def _needs_rotation(self) -> bool:
        return self._size >= self._max_bytes or self._clock() - self._opened_at >= self._max_age

    def _write(self, data: bytes, new_file_seq: int | None, seq: int, last: str) -> None:
        """Runs in a worker thread: the write and fsync never block the event loop."""
        if new_file_seq is not None:
            self._open_file(new_file_seq)
        assert self._fd is not None
        start = self._size
        try:
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
            if self._fsync:
                os.fsync(self._fd)
        except BaseException:
            # Cut back to the last durable byte, so no partial line stays in the chain.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, start)
            raise
        self._size = start + len(data)
        try:
            self._write_head(seq, last)
        except Exception:
            # The batch is durable and stands; HEAD may lag the log, never lead it.
            log.warning("audit log %s: HEAD not updated", self.directory, exc_info=True)

    def _open_file(self, first_seq: int) -> None:
        path = self.directory / file_name(first_seq)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self._path, self._size, self._opened_at = fd, path, 0, self._clock()
        if self._fsync:
            fsync_dir(self.directory)  # the new file's name is durable too

    def _write_head(self, seq: int, last: str) -> None:
        """Overwrite HEAD in place: one pwrite of a fixed-size record, no rename (a rename
        per commit cost more than the commit). Not fsynced on purpose: HEAD may lag the
        log after a crash, never lead it, which is all truncation detection needs."""
        if self._head_fd is None:
            self._head_fd = os.open(self.directory / HEAD_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        name = self._path.name if self._path else ""
        # Formatted, not json.dumps'd (once per commit): an int, a hex digest and a log
        # file name (audit-<16 digits>.jsonl) need no escaping; the same JSON.
        text = f'{{"seq": {seq}, "hash": "{last}", "file": "{name}"}}'.encode()
        os.pwrite(self._head_fd, text.ljust(_HEAD_BYTES - 1) + b"\n", 0)

    def _fail(self, batch: list[_Pending], exc: Exception) -> None:
        metrics.audit_failures.add(1)
        if isinstance(exc, OSError):
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
        else:
            reason = f"unexpected {type(exc).__name__}: {exc}"
            log.error("audit log %s: unexpected failure", self.directory, exc_info=exc)
        self.healthy, self.last_error = False, reason
        if self._fd is not None and self._size == 0:
            # A file that never got a record: drop it, the next attempt reopens.
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        log.error("audit log %s unavailable: %s", self.directory, reason)
        error = AuditUnavailable(f"audit log unavailable: {reason}")
        for p in batch:
            if not p.future.done():
                p.future.set_exception(error)


def _refusal(record: Mapping[str, Any]) -> str | None:
    """Why the log cannot take ``record`` as it is (never quoting its content), or None."""
    clash = CHAIN_FIELDS & record.keys()
    if clash:
        return f"it sets {', '.join(sorted(clash))}, which only the log may set"
    return None


def _settle(done: asyncio.Future[None], exc: BaseException | None) -> None:
    if done.done():
        return
    if exc is None:
        done.set_result(None)
    else:
        done.set_exception(exc)


def _set_aside(path: Path) -> Path:
    """Rename ``path`` to ``<name>.torn`` (``.torn.1``, … if taken), out of the chain's
    file pattern, durably."""
    target = path.with_name(f"{path.name}.torn")
    n = 0
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.torn.{n}")
    path.rename(target)
    fsync_dir(path.parent)
    log.warning("audit log %s: %s held only a torn line (a crash mid-write); kept as %s",
                path.parent, path.name, target.name)  # fmt: skip
    return target


def _tail(path: Path) -> tuple[int, str, int, str]:
    """(last complete seq, its hash, bytes of a torn final line, its hash algorithm) of
    one file."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - _TAIL_BYTES))
        tail = f.read()
    torn = 0
    if tail and not tail.endswith(b"\n"):
        cut = tail.rfind(b"\n") + 1
        torn, tail = len(tail) - cut, tail[:cut]
    for raw in reversed(tail.splitlines()):
        try:
            rec = json.loads(raw)
            return int(rec["seq"]), str(rec["hash"]), torn, str(rec.get("alg", ""))
        except (ValueError, KeyError, TypeError):
            continue
    return 0, GENESIS, torn, ""


def _read_head(directory: Path) -> dict[str, Any] | None:
    try:
        head: dict[str, Any] = json.loads((directory / HEAD_NAME).read_text())
    except (OSError, ValueError):
        return None
    return head


def _queue_depth(log_: AuditLog) -> metrics.Reading:
    return [(float(log_.queued), {"log": log_.directory.name})]
