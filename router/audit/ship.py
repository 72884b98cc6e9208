"""Shipping an audit chain off the box: every committed record, in order, at least once,
to an OpenTelemetry collector as OTLP log records (the collector then forwards them to
the store of choice).

A ``Shipper`` tails one chain's files from a durable cursor — ``<audit-dir>/SHIPPED``,
the last sequence number (and hash) the sink acknowledged, replaced atomically after
each acknowledgement — and sends batches in sequence order, one at a time. A batch the
sink does not acknowledge is sent again, whole, with backoff, until it is; only then
does the cursor move. So a restart (even after SIGKILL) or an outage of the sink loses
nothing and duplicates at most the batch in flight, which a receiver drops by sequence
number (per chain).

Only committed records are shipped: up to the log's durable sequence (``HEAD``, which the
log rewrites after each fsync, or the running log's own counter), never a record written
but not yet fsynced, which a power loss could take back. Each record must continue the
chain from the last one shipped (sequence + 1, ``prev`` = its hash): a chain that does
not is not shipped further (the status says why) — verification, not shipping, is where
tampering is judged.

Each OTLP log record's body is the audit record's JSON line exactly as written (a
receiver can recompute its hash), with attributes ``meridian.audit.seq``, ``.hash``,
``.prev``, ``.kind`` and ``.chain``, and the record's own time as its timestamp. The
sink is the SDK's standard ``OTLPLogExporter`` (gRPC): its endpoint, headers, TLS and
timeout follow the standard ``OTEL_EXPORTER_OTLP_LOGS_*`` variables. It returns success
only when the collector answered the Export call; an OTLP partial success (records the
collector rejected) is final by the OTLP specification, never retried.

Shipping never blocks the request path: it needs nothing but the files, and a running
writer runs it as a child process (``meridian audit ship --follow``,
``router.cli.sidecar``), which keeps ``<audit-dir>/SHIPPING`` (why it is behind) beside
the cursor; ``SHIPPING.lock`` keeps one shipper per chain.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from router.audit.chain import FILE_RE, GENESIS, HEAD_NAME, log_files
from router.errors import AuditShippingError

log = logging.getLogger(__name__)

CURSOR_NAME = "SHIPPED"
STATE_NAME = "SHIPPING"
LOCK_NAME = "SHIPPING.lock"
ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"
ATTR_SEQ = "meridian.audit.seq"
ATTR_HASH = "meridian.audit.hash"
ATTR_PREV = "meridian.audit.prev"
ATTR_KIND = "meridian.audit.kind"
ATTR_CHAIN = "meridian.audit.chain"
_READ_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class Entry:
    """One committed record as shipped: its chain fields and its line as written."""

    seq: int
    hash: str
    prev: str
    kind: str
    time: str
    line: str


@dataclass(frozen=True, slots=True)
class Cursor:
    """The last record ``sink`` acknowledged (seq 0: none yet), and when."""

    seq: int = 0
    hash: str = GENESIS
    sink: str = ""
    at: float = field(default=0.0, compare=False)


def read_cursor(directory: Path) -> Cursor:
    try:
        doc = json.loads((directory / CURSOR_NAME).read_text())
        return Cursor(
            int(doc["seq"]), str(doc["hash"]), str(doc.get("sink", "")), float(doc.get("at", 0))
        )
    except FileNotFoundError:
        return Cursor()
    except (OSError, ValueError, KeyError, TypeError):
        # Lagging is safe (the receiver drops duplicates); skipping never is.
        log.warning("%s/%s unreadable: shipping starts again from seq 1", directory, CURSOR_NAME)
        return Cursor()


def write_cursor(directory: Path, cursor: Cursor) -> None:
    """Replace the cursor atomically (write a new file, rename it over the old one): a
    reader sees the old cursor or the new one, never a torn one. Not fsynced, on purpose:
    after a power loss it may lag the sink (or read as unusable: shipping starts again
    from seq 1), which only duplicates records; it can never lead the sink."""
    path = directory / CURSOR_NAME
    tmp = directory / f".{CURSOR_NAME}.{secrets.token_hex(4)}.tmp"
    doc: dict[str, Any] = {
        "seq": cursor.seq,
        "hash": cursor.hash,
        "sink": cursor.sink,
        "at": cursor.at,
    }
    _replace(path, tmp, json.dumps(doc))


def _replace(path: Path, tmp: Path, text: str) -> None:
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, text.encode() + b"\n")
    finally:
        os.close(fd)
    tmp.replace(path)


def write_state(directory: Path, state: dict[str, Any]) -> None:
    """``<dir>/SHIPPING``: who ships this chain where, and why it is behind (if it is),
    for the process that writes the chain to show in its status."""
    _replace(directory / STATE_NAME, directory / f".{STATE_NAME}.{secrets.token_hex(4)}.tmp",
             json.dumps(state))  # fmt: skip


def read_state(directory: Path) -> dict[str, Any]:
    try:
        state = json.loads((directory / STATE_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def lock_chain(directory: Path) -> int | None:
    """An exclusive lock: one shipper per chain (a restarted writer's new shipper waits
    for the old one to finish its last batch). The fd holding it, or None if taken."""
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def head_seq(directory: Path) -> int | None:
    """The last committed sequence HEAD records (None without a readable HEAD)."""
    try:
        return int(json.loads((directory / HEAD_NAME).read_text())["seq"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class Sink(Protocol):
    """Where batches go. ``send`` blocks until the batch is acknowledged and raises
    ``AuditShippingError`` when it is not (it runs on a worker thread)."""

    name: str

    def send(self, batch: Sequence[Entry], chain: str) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ShipStatus:
    sink: str
    chain: str
    committed_seq: int
    shipped_seq: int
    last_error: str
    last_shipped_at: float | None

    @property
    def lag(self) -> int:
        return max(0, self.committed_seq - self.shipped_seq)


class _Reader:
    """Reads committed entries from a position (a file and a byte offset), across the
    chain's files. The position moves only when the caller says a batch is shipped."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.file: Path | None = None
        self.offset = 0

    def seek(self, after_seq: int) -> None:
        """The file that holds record ``after_seq + 1`` (names carry first seqs), from its
        start (records up to ``after_seq`` are skipped when read)."""
        files = log_files(self.directory)
        firsts = [(int(m.group(1)), f) for f in files if (m := FILE_RE.match(f.name))]
        start = [f for first, f in firsts if first <= after_seq + 1]
        self.file = start[-1] if start else (files[0] if files else None)
        self.offset = 0

    def _after(self, file: Path) -> Path | None:
        later = [f for f in log_files(self.directory) if f.name > file.name]
        return later[0] if later else None

    def read(
        self, cursor: Cursor, bound: int, max_records: int, max_bytes: int
    ) -> tuple[list[Entry], Path | None, int]:
        """One batch of entries after ``cursor`` up to seq ``bound``, and the position
        after its last entry. ``AuditShippingError`` where the chain does not continue."""
        if self.file is None:
            self.seek(cursor.seq)
        file, offset = self.file, self.offset
        out: list[Entry] = []
        size, seq, last = 0, cursor.seq, cursor.hash
        while file is not None:
            try:
                with open(file, "rb") as f:
                    f.seek(offset)
                    data = f.read(_READ_BYTES)
            except FileNotFoundError:
                data = b""
            read_end = offset + len(data)
            end = data.rfind(b"\n") + 1
            if end == 0 and len(data) == _READ_BYTES:
                raise AuditShippingError(f"{file.name}: a line longer than {_READ_BYTES} bytes")
            pos = 0
            while pos < end:
                if len(out) >= max_records or size >= max_bytes:
                    return out, file, offset + pos
                nl = data.index(b"\n", pos)
                raw = data[pos:nl]
                rec = _parse(raw)
                if rec is None:
                    raise AuditShippingError(
                        f"{file.name} at byte {offset + pos}: not an audit record; shipping "
                        "stops here (run `meridian audit verify`)"
                    )
                if rec["seq"] > bound:
                    return out, file, offset + pos
                if rec["seq"] == cursor.seq and rec["hash"] != cursor.hash:
                    raise AuditShippingError(
                        f"{file.name}: seq {cursor.seq} is not the record that was shipped as "
                        f"seq {cursor.seq} (another hash): the chain was replaced or rewritten; "
                        "shipping stops here (run `meridian audit verify`)"
                    )
                if rec["seq"] > seq:
                    if rec["seq"] != seq + 1 or rec["prev"] != last:
                        raise AuditShippingError(
                            f"{file.name}: seq {rec['seq']} does not continue the last record "
                            f"shipped (seq {seq}); shipping stops here (run `meridian audit "
                            "verify`)"
                        )
                    entry = Entry(rec["seq"], rec["hash"], rec["prev"], str(rec.get("kind", "")),
                                  str(rec.get("time", "")), raw.decode())  # fmt: skip
                    out.append(entry)
                    size += len(raw)
                    seq, last = entry.seq, entry.hash
                pos = nl + 1
            offset += end
            if len(data) == _READ_BYTES:
                continue  # more of this file
            nxt = self._after(file)
            if nxt is None:
                return out, file, offset
            # Once a later file exists nothing more is written to this one; but it may
            # have grown between our read and the rotation: read that first.
            if file.exists() and file.stat().st_size > read_end:
                continue
            # Done with it: any rest is a line a crash tore, never committed.
            file, offset = nxt, 0
        return out, file, offset


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        rec = json.loads(raw)
    except ValueError:
        return None
    ok = (
        isinstance(rec, dict)
        and isinstance(rec.get("seq"), int)
        and isinstance(rec.get("hash"), str)
        and isinstance(rec.get("prev"), str)
    )
    return rec if ok else None


class Shipper:
    """Ships one chain (``directory``) to ``sink``; ``chain`` names it to receivers."""

    def __init__(
        self,
        directory: Path,
        sink: Sink,
        *,
        chain: str,
        committed: Callable[[], int | None] | None = None,
        interval: float = 1.0,
        batch_records: int = 512,
        batch_bytes: int = 1 << 20,
        backoff_initial: float = 0.5,
        backoff_max: float = 10.0,
        publish: bool = False,
    ) -> None:
        """``publish``: keep ``<dir>/SHIPPING`` current (a shipper in a process of its
        own, whose writer shows its status)."""
        self.directory = directory
        self._publish = publish
        self.sink = sink
        self.chain = chain
        self._committed = committed or (lambda: head_seq(directory))
        self._interval = interval
        self._batch_records = batch_records
        self._batch_bytes = batch_bytes
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._reader = _Reader(directory)
        cursor = read_cursor(directory)
        if cursor.sink and cursor.sink != sink.name:
            log.warning(
                "audit shipping: %s was shipped to %s up to seq %d; the sink is now %s: "
                "shipping the whole chain to it",
                directory, cursor.sink, cursor.seq, sink.name,
            )  # fmt: skip
            cursor = Cursor()
        self.cursor = Cursor(cursor.seq, cursor.hash, sink.name)
        self.last_error = ""
        self.last_shipped_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False

    def status(self) -> ShipStatus:
        committed = self._committed()
        return ShipStatus(
            sink=self.sink.name,
            chain=self.chain,
            committed_seq=committed if committed is not None else self.cursor.seq,
            shipped_seq=self.cursor.seq,
            last_error=self.last_error,
            last_shipped_at=self.last_shipped_at,
        )

    def _bound(self) -> int:
        committed = self._committed()
        # No HEAD (a copied chain): every complete line counts as committed.
        return committed if committed is not None else 1 << 62

    async def ship_available(self) -> int:
        """Ship everything committed now, batch by batch; the number of records shipped.
        Raises ``AuditShippingError`` (the cursor stays at the last acknowledged batch)."""
        shipped = 0
        while self._bound() > self.cursor.seq:
            # Read, send and move the cursor in one trip to a worker thread: the event
            # loop only waits.
            n = await asyncio.to_thread(self._ship_batch)
            if n == 0:
                break
            shipped += n
            self.last_shipped_at = time.time()
        return shipped

    def _ship_batch(self) -> int:
        """One batch: read, send, and once acknowledged, the cursor (on a worker thread;
        never two at once)."""
        batch, file, offset = self._reader.read(
            self.cursor, self._bound(), self._batch_records, self._batch_bytes
        )
        if not batch:
            return 0
        try:
            self.sink.send(batch, self.chain)
        except AuditShippingError:
            raise
        except Exception as exc:  # a sink is foreign code: translate at the boundary
            raise AuditShippingError(f"sink {self.sink.name}: {exc}") from exc
        last = batch[-1]
        if self.last_error:
            # Cleared before the cursor moves: whoever reads the two files (the status
            # of `serve`) never sees the cursor caught up while the error still stands.
            log.info("audit shipping of %s resumed at seq %d", self.directory, last.seq)
            self._set_error("")
        self.cursor = Cursor(last.seq, last.hash, self.sink.name, time.time())
        self._reader.file, self._reader.offset = file, offset
        write_cursor(self.directory, self.cursor)
        return len(batch)

    def _set_error(self, why: str) -> None:
        self.last_error = why
        if self._publish:
            state = {"pid": os.getpid(), "sink": self.sink.name, "chain": self.chain,
                     "last_error": why}  # fmt: skip
            with contextlib.suppress(OSError):
                write_state(self.directory, state)

    def start(self) -> None:
        if self._publish:
            self._set_error(self.last_error)
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"audit-ship-{self.chain}")

    def wake(self) -> None:
        """Ship now rather than at the next poll (e.g. after an append)."""
        self._wake.set()

    async def _run(self) -> None:
        delay = self._backoff_initial
        while True:
            try:
                await self.ship_available()
            except Exception as exc:
                if isinstance(exc, AuditShippingError):
                    why = exc.message
                else:  # a bug: logged with its trace, retried like an outage
                    why = f"unexpected {type(exc).__name__}: {exc}"
                    log.exception("audit shipping of %s failed; retrying", self.directory)
                if why != self.last_error:
                    log.error("audit shipping of %s: %s", self.directory, why)
                    self._set_error(why)
                if self._stopping:
                    return
                await self._pause(delay)
                delay = min(self._backoff_max, delay * 2)
                continue
            if self._stopping:
                return
            if self.last_error:  # recovered with nothing left to ship
                self._set_error("")
            delay = self._backoff_initial
            await self._pause(self._interval)

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less when woken (``wake``, ``stop``)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()

    async def stop(self, drain: float = 2.0) -> None:
        """Ship what is left (at most ``drain`` seconds more), then stop. A batch in
        flight is finished, never abandoned halfway and sent again beside itself."""
        if self._task is not None:
            self._stopping = True
            self._wake.set()
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._task, drain)  # cancelled when it times out
            self._task = None
        await asyncio.to_thread(self.sink.close)


class OtlpSink:
    """The SDK's OTLP/gRPC log exporter: ``endpoint`` (e.g. ``http://collector:4317``;
    ``https://`` for TLS), else ``$OTEL_EXPORTER_OTLP_LOGS_ENDPOINT``."""

    def __init__(
        self, endpoint: str | None = None, *, service_name: str, timeout: float = 5.0
    ) -> None:
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        name = endpoint or os.environ.get(ENDPOINT_ENV, "")
        if not name:
            raise AuditShippingError(f"no audit sink: give an endpoint or set ${ENDPOINT_ENV}")
        self.name = name
        self._exporter = OTLPLogExporter(endpoint=name, timeout=timeout)
        self._resource = Resource.create({"service.name": service_name})
        self._scope = InstrumentationScope("meridian.audit")

    def send(self, batch: Sequence[Entry], chain: str) -> None:
        from opentelemetry._logs import LogRecord, SeverityNumber
        from opentelemetry.sdk._logs import ReadableLogRecord
        from opentelemetry.sdk._logs.export import LogRecordExportResult

        now = time.time_ns()
        records = [
            ReadableLogRecord(
                LogRecord(
                    timestamp=_nanos(e.time) or now,
                    observed_timestamp=now,
                    severity_number=SeverityNumber.INFO,
                    severity_text="INFO",
                    body=e.line,
                    event_name=f"meridian.audit.{e.kind}" if e.kind else "meridian.audit",
                    attributes={
                        ATTR_SEQ: e.seq,
                        ATTR_HASH: e.hash,
                        ATTR_PREV: e.prev,
                        ATTR_KIND: e.kind,
                        ATTR_CHAIN: chain,
                    },
                ),
                resource=self._resource,
                instrumentation_scope=self._scope,
            )
            for e in batch
        ]
        if self._exporter.export(records) is not LogRecordExportResult.SUCCESS:
            raise AuditShippingError(
                f"the sink {self.name} did not acknowledge seq {batch[0].seq}..{batch[-1].seq}"
            )

    def close(self) -> None:
        self._exporter.shutdown()


def _nanos(text: str) -> int:
    try:
        return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1e9)
    except ValueError:
        return 0
