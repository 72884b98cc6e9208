"""Shipping the audit chain: every committed record, in order, at least once, from a
durable cursor; a sink that fails and recovers, a restart, rotation and a torn line lose
nothing; only committed records leave; a chain that does not continue stops shipping;
and the real OTLP exporter delivers records with their seq and hash to an OTLP
collector (the in-test one)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from benchmarks.fleet import free_port
from router.audit import AuditLog
from router.audit.chain import GENESIS, log_files
from router.audit.query import records
from router.audit.ship import (
    ATTR_CHAIN,
    ATTR_HASH,
    ATTR_SEQ,
    CURSOR_NAME,
    Cursor,
    Entry,
    OtlpSink,
    Shipper,
    read_cursor,
)
from router.errors import AuditShippingError
from tests.helpers import eventually
from tests.otlp_collector import Collector


class FakeSink:
    """Keeps every batch it acknowledged. ``fail``: refuse that many sends; ``lose_acks``:
    take that many batches but fail to acknowledge them (the receiver has them, the
    shipper does not know: at-least-once sends them again)."""

    def __init__(self, name: str = "fake") -> None:
        self.name = name
        self.batches: list[list[Entry]] = []
        self.fail = 0
        self.lose_acks = 0
        self.attempts = 0
        self.closed = False

    def send(self, batch: Sequence[Entry], chain: str) -> None:
        self.attempts += 1
        if self.fail:
            self.fail -= 1
            raise AuditShippingError("sink down")
        self.batches.append(list(batch))
        if self.lose_acks:
            self.lose_acks -= 1
            raise ConnectionResetError("ack lost")

    def close(self) -> None:
        self.closed = True

    def seqs(self) -> list[int]:
        return [e.seq for b in self.batches for e in b]


async def append(log: AuditLog, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        await log.append({"kind": "route.decision", "workflow_id": f"wf-{i}", "pad": "x" * 200})


async def written(directory: Path, n: int) -> None:
    """A chain of ``n`` records, closed (as a stopped process leaves it)."""
    log = AuditLog(directory)
    log.open()
    await append(log, n)
    await log.close()


def tear(path: Path) -> None:
    with open(path, "ab") as f:
        f.write(b'{"alg":"sha256","seq":5,"pr')  # a write cut short by a crash


def check_delivered(directory: Path, sink: FakeSink) -> None:
    """Every record of the chain arrived, in order within each batch, with its hash."""
    want = {r["seq"]: r for r in records([directory])}
    got: dict[int, Entry] = {}
    for batch in sink.batches:
        seqs = [e.seq for e in batch]
        assert seqs == sorted(seqs) and seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        for e in batch:
            got.setdefault(e.seq, e)
            assert e.hash == want[e.seq]["hash"] and json.loads(e.line) == want[e.seq]
    assert sorted(got) == sorted(want) == list(range(1, len(want) + 1))


async def test_ships_committed_records_in_order_and_resumes_from_the_cursor(
    tmp_path: Path,
) -> None:
    log = AuditLog(tmp_path, max_file_bytes=4096)  # several files: shipping follows rotation
    log.open()
    await append(log, 40)
    sink = FakeSink()
    shipper = Shipper(tmp_path, sink, chain="r1", batch_records=16, committed=lambda: log.sequence)
    assert await shipper.ship_available() == 40
    assert [len(b) for b in sink.batches] == [16, 16, 8]
    assert len(log_files(tmp_path)) > 3
    check_delivered(tmp_path, sink)
    last = sink.batches[-1][-1]
    assert read_cursor(tmp_path) == Cursor(40, last.hash, "fake")
    assert await shipper.ship_available() == 0
    await append(log, 5, 40)
    assert await shipper.ship_available() == 5
    await log.close()

    # A restart: a new log (it starts a new file) and a new shipper from the cursor.
    log = AuditLog(tmp_path, max_file_bytes=4096)
    log.open()
    await append(log, 3, 45)
    again = Shipper(tmp_path, sink, chain="r1", committed=lambda: log.sequence)
    assert again.cursor.seq == 45
    assert await again.ship_available() == 3
    check_delivered(tmp_path, sink)
    assert sink.seqs() == list(range(1, 49)), "nothing twice, nothing missing"
    await log.close()


async def test_a_failing_sink_loses_nothing_and_duplicates_only_unacknowledged_batches(
    tmp_path: Path,
) -> None:
    log = AuditLog(tmp_path)
    log.open()
    await append(log, 30)
    sink = FakeSink()
    shipper = Shipper(tmp_path, sink, chain="r1", batch_records=10, committed=lambda: log.sequence,
                      interval=0.01, backoff_initial=0.01, backoff_max=0.02)  # fmt: skip
    sink.fail = 3
    with pytest.raises(AuditShippingError, match="sink down"):
        await shipper.ship_available()
    assert shipper.cursor.seq == 0 and not (tmp_path / CURSOR_NAME).exists()
    sink.lose_acks = 1
    shipper.start()

    async def caught_up() -> bool:
        return shipper.cursor.seq == 30

    await eventually(caught_up, "shipping to catch up after the outage")
    await append(log, 5, 30)
    shipper.wake()

    async def all_of_it() -> bool:
        return shipper.cursor.seq == 35

    await eventually(all_of_it, "the records written after the outage")
    await shipper.stop()
    assert sink.closed and shipper.status().lag == 0 and shipper.last_error == ""
    check_delivered(tmp_path, sink)
    seqs = sink.seqs()
    duplicates = len(seqs) - len(set(seqs))
    assert duplicates == 10, "exactly the batch whose acknowledgement was lost, again"
    await log.close()


async def test_the_published_error_clears_before_the_cursor_moves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`serve`'s status reads the cursor and the state file separately: once shipping
    resumes, the error must be gone by the time the cursor shows the records shipped."""
    from router.audit import ship

    errors: list[str] = []  # each last_error published, in order
    at_cursor: list[str] = []  # the published last_error at each move of the cursor
    write_state, write_cursor = ship.write_state, ship.write_cursor

    def state(directory: Path, st: dict[str, Any]) -> None:
        errors.append(st["last_error"])
        write_state(directory, st)

    def cursor(directory: Path, c: Cursor) -> None:
        at_cursor.append(str(ship.read_state(directory).get("last_error", "")))
        write_cursor(directory, c)

    monkeypatch.setattr(ship, "write_state", state)
    monkeypatch.setattr(ship, "write_cursor", cursor)
    log = AuditLog(tmp_path)
    log.open()
    await append(log, 5)
    sink = FakeSink()
    sink.fail = 1
    shipper = Shipper(tmp_path, sink, chain="r1", committed=lambda: log.sequence, publish=True,
                      interval=0.01, backoff_initial=0.01, backoff_max=0.02)  # fmt: skip
    shipper.start()

    async def caught_up() -> bool:
        return shipper.cursor.seq == 5

    await eventually(caught_up, "shipping after one failure")
    await shipper.stop()
    await log.close()
    assert any("sink down" in e for e in errors), errors
    assert at_cursor == [""], "the cursor moved while the state still showed the outage"


async def test_only_committed_records_are_shipped(tmp_path: Path) -> None:
    await written(tmp_path, 10)
    sink = FakeSink()
    committed = 6
    shipper = Shipper(tmp_path, sink, chain="r1", committed=lambda: committed)
    assert await shipper.ship_available() == 6
    assert shipper.status().committed_seq == 6 and shipper.status().lag == 0
    committed = 10
    assert await shipper.ship_available() == 4
    # Without an explicit bound, HEAD's sequence is the bound.
    other = FakeSink("other")
    assert await Shipper(tmp_path, other, chain="r1").ship_available() == 10


async def test_a_torn_line_after_a_crash_is_skipped(tmp_path: Path) -> None:
    await written(tmp_path, 4)
    tear(log_files(tmp_path)[-1])
    log = AuditLog(tmp_path)
    log.open()  # notes the torn line; continues at seq 5 in a new file
    await append(log, 2, 4)
    await log.close()
    sink = FakeSink()
    assert await Shipper(tmp_path, sink, chain="r1").ship_available() == 7
    check_delivered(tmp_path, sink)
    kinds = [json.loads(e.line)["kind"] for e in sink.batches[-1]]
    assert "log.recovered" in kinds


async def test_a_chain_that_does_not_continue_is_not_shipped_further(tmp_path: Path) -> None:
    await written(tmp_path, 6)
    (f,) = log_files(tmp_path)
    lines = f.read_text().splitlines()
    del lines[3]  # seq 4 deleted
    f.write_text("".join(line + "\n" for line in lines))
    sink = FakeSink()
    shipper = Shipper(tmp_path, sink, chain="r1")
    with pytest.raises(AuditShippingError, match="seq 5 does not continue the last record"):
        await shipper.ship_available()
    assert sink.seqs() == [] and shipper.cursor.seq == 0, "a batch is shipped whole or not"
    shipper = Shipper(tmp_path, sink, chain="r1", batch_records=3)
    with pytest.raises(AuditShippingError):
        await shipper.ship_available()
    assert sink.seqs() == [1, 2, 3] and read_cursor(tmp_path).seq == 3


async def test_a_new_sink_gets_the_whole_chain(tmp_path: Path) -> None:
    await written(tmp_path, 3)
    assert await Shipper(tmp_path, FakeSink("a"), chain="r1").ship_available() == 3
    b = FakeSink("b")
    assert await Shipper(tmp_path, b, chain="r1").ship_available() == 3
    assert read_cursor(tmp_path).sink == "b" and b.seqs() == [1, 2, 3]
    (tmp_path / CURSOR_NAME).write_text("{not json")
    assert read_cursor(tmp_path) == Cursor(0, GENESIS, "")


async def test_the_otlp_exporter_delivers_records_with_seq_and_hash(tmp_path: Path) -> None:
    await written(tmp_path, 25)
    collector = Collector()
    port = free_port()
    sink = OtlpSink(f"http://127.0.0.1:{port}", service_name="meridian-test", timeout=2)
    shipper = Shipper(tmp_path, sink, chain="replica-7", batch_records=10,
                      backoff_initial=0.05, backoff_max=0.1, interval=0.02)  # fmt: skip
    # The sink is down first: nothing is acknowledged, so nothing moves.
    with pytest.raises(AuditShippingError, match=r"did not acknowledge seq 1\.\.10"):
        await shipper.ship_available()
    assert shipper.cursor.seq == 0
    collector.start(port)
    try:
        shipper.start()

        async def done() -> bool:
            return shipper.cursor.seq == 25

        await eventually(done, "shipping to the collector")
        await shipper.stop()
    finally:
        collector.stop()
    got = collector.received_logs()
    want = {r["seq"]: r for r in records([tmp_path])}
    assert [r.attributes[ATTR_SEQ] for r in got] == list(range(1, 26))
    assert collector.log_batches == 3
    for r in got:
        rec: dict[str, Any] = json.loads(r.body)
        seq = r.attributes[ATTR_SEQ]
        assert rec == want[seq] and r.attributes[ATTR_HASH] == want[seq]["hash"]
        assert r.attributes[ATTR_CHAIN] == "replica-7" and r.service == "meridian-test"
        assert r.event_name == "meridian.audit.route.decision" and r.time_unix_nano > 0


def test_an_otlp_sink_needs_an_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", raising=False)
    with pytest.raises(AuditShippingError, match="OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"):
        OtlpSink(None, service_name="x")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://127.0.0.1:1")
    sink = OtlpSink(None, service_name="x")
    assert sink.name == "http://127.0.0.1:1"
    sink.close()


def test_audit_ship_cli_ships_a_tools_chain_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio

    from router.cli import main

    chain = tmp_path / "audit-keys"
    asyncio.run(written(chain, 4))
    collector = Collector()
    port = free_port()
    collector.start(port)
    try:
        argv = ["audit", "ship", str(chain), "--endpoint", f"http://127.0.0.1:{port}"]
        assert main(argv) == 0
        assert "shipped 4 record(s)" in capsys.readouterr().out
        assert main(argv) == 0
        assert "shipped 0 record(s)" in capsys.readouterr().out
    finally:
        collector.stop()
    got = collector.received_logs()
    assert [(r.attributes[ATTR_SEQ], r.attributes[ATTR_CHAIN]) for r in got] == [
        (1, "audit-keys"), (2, "audit-keys"), (3, "audit-keys"), (4, "audit-keys"),
    ]  # fmt: skip


async def test_a_replaced_chain_is_not_shipped_and_stop_drains(tmp_path: Path) -> None:
    await written(tmp_path, 5)
    sink = FakeSink()
    assert await Shipper(tmp_path, sink, chain="r1").ship_available() == 5
    for f in log_files(tmp_path):
        f.unlink()
    (tmp_path / "HEAD").unlink()
    await written(tmp_path, 7)  # a new chain in the same directory: seq 5 is another record
    with pytest.raises(AuditShippingError, match="seq 5 is not the record that was shipped"):
        await Shipper(tmp_path, sink, chain="r1").ship_available()

    other = tmp_path / "other"
    log = AuditLog(other)
    log.open()
    sink = FakeSink()
    shipper = Shipper(other, sink, chain="r2", committed=lambda: log.sequence, interval=60)
    shipper.start()
    await append(log, 9)
    await shipper.stop()  # the poll is a minute away: stop ships what is left first
    assert sink.seqs() == list(range(1, 10)) and sink.closed
    await log.close()


async def test_the_sidecar_ships_beside_the_writer_and_is_restarted(tmp_path: Path) -> None:
    """How `serve` ships: `meridian audit ship --follow` as a child process; its status
    comes from the files beside the chain; killed, it is restarted and loses nothing."""
    import os
    import signal

    from router.cli.sidecar import ShipSidecar

    collector = Collector()
    port = free_port()
    collector.start(port)
    log = AuditLog(tmp_path)
    log.open()
    sidecar = ShipSidecar(tmp_path, endpoint=f"http://127.0.0.1:{port}", chain="r9",
                          service_name="meridian-test", committed=lambda: log.sequence,
                          restart_initial=0.1)  # fmt: skip
    try:
        await sidecar.start()
        await append(log, 20)

        async def shipped(n: int) -> bool:
            s = sidecar.status()
            return s.shipped_seq == n and s.committed_seq == n and s.lag == 0

        await eventually(lambda: shipped(20), "20 records shipped by the sidecar")
        status = sidecar.status()
        assert (status.sink, status.chain, status.last_error) == (
            f"http://127.0.0.1:{port}", "r9", "",
        )  # fmt: skip
        assert status.last_shipped_at is not None
        first = sidecar.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)

        async def restarted() -> bool:
            return sidecar.pid not in (None, first)

        await eventually(restarted, "a new shipper")
        await append(log, 5, 20)
        await eventually(lambda: shipped(25), "the records written after the restart")
        collector.stop()  # the sink goes down: the status says why shipping is behind
        await append(log, 3, 25)

        async def behind() -> bool:
            s = sidecar.status()
            return s.lag == 3 and "did not acknowledge" in s.last_error

        await eventually(behind, "the status to show the outage", timeout=60)
        collector.start(port)
        await eventually(lambda: shipped(28), "shipping to resume", timeout=60)
        assert sidecar.status().last_error == ""
    finally:
        await sidecar.stop()
        collector.stop()
        await log.close()
    seqs = [r.attributes[ATTR_SEQ] for r in collector.received_logs()]
    assert set(seqs) == set(range(1, 29))
