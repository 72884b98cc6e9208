"""Audit log cost: durable records per second (fsync on, group commit) at several
concurrencies, without and with signed checkpoints published to a witness directory
(every 0.1 s: 50 times the default, to make their cost visible); the latency of a start
with the audit log, with the log plus checkpoints (default interval) and a signed
receipt, and without the log (same in-process router, same fresh dev server, alternated
A/B rounds); and what one receipt signature and one checkpoint round cost.

With ``--ship``, each is measured again with the chain shipped off the box as it is
written, as `meridian serve` ships it (``router.cli.sidecar``: a child process running
the SDK's OTLP log exporter, to the in-test collector in a process of its own):
records/s, the writer's CPU and the shipper's CPU per record, how long after the last
append the sink has everything, and a third start mode whose log is shipped.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.common import emit, machine, render
from benchmarks.fleet import Fleet, _stop, cpu_seconds, free_port, otlp_collector
from router.app import Router
from router.audit import AuditLog, AuditSink, MemoryAuditSink
from router.audit.checkpoint import Checkpointer, ReceiptSigner
from router.audit.ship import read_state
from router.audit.signing import SigningKey
from router.audit.witness import DirectoryWitness
from router.cli.sidecar import ShipSidecar
from router.codec import FileKeyProvider
from router.config.sources import ConfigSources
from router.core.model import DataClass, Priority
from router.starts import StartInput

RECORD = {
    "kind": "route.decision", "workflow_type": "EchoWorkflow", "tenant": "acme",
    "user_country": "DE", "data_class": "pii", "zone": "eu", "region": "eu-west",
    "cluster": "eu-west-a", "namespace": "eu-west", "task_queue": "eu-west-EchoWorkflow-queue",
    "rule": "zone-home",
    "reasons": ["user country DE is in zone eu", "pii data must stay in zone eu"],
    "config_version": "0123456789abcdef", "encryption_key_id": "eu-west-20261124000000-abcd",
}  # fmt: skip


async def shipped(log: AuditLog, sink: str | None) -> ShipSidecar | None:
    """A shipper of ``log``'s chain to ``sink`` (started), as `meridian serve` runs one:
    a child process."""
    if sink is None:
        return None
    shipper = ShipSidecar(
        log.directory, endpoint=sink, chain=log.directory.name,
        service_name="meridian-bench", committed=lambda: log.sequence,
    )  # fmt: skip
    await shipper.start()
    # Up (imports done, lock taken) before anything is timed or its CPU counted.
    while read_state(log.directory).get("pid") != shipper.pid:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    return shipper


async def drained(shipper: ShipSidecar, log: AuditLog) -> float:
    """Seconds until the sink has acknowledged everything the log committed."""
    t = time.perf_counter()
    while shipper.status().lag:  # noqa: ASYNC110 - polling a count we do not own
        await asyncio.sleep(0.005)
    return time.perf_counter() - t


def shipper_cpu(shipper: ShipSidecar | None) -> float:
    return cpu_seconds(shipper.pid) if shipper is not None and shipper.pid else 0.0


async def records_per_second(
    directory: Path,
    concurrency: int,
    n: int,
    sink: str | None = None,
    checkpoint_every: float = 0.0,
) -> dict[str, Any]:
    """Durable records/s, append p50 and CPU per record; with ``sink`` the chain is
    shipped meanwhile; with ``checkpoint_every`` a checkpointer signs and publishes to a
    witness directory that often."""
    log = AuditLog(directory)
    log.open()
    shipper = await shipped(log, sink)
    checkpointer = None
    if checkpoint_every:
        checkpointer = Checkpointer(
            log, SigningKey.generate(), replica_id="bench",
            witnesses=[DirectoryWitness(directory.parent / f"{directory.name}-witness")],
            interval=checkpoint_every,
        )  # fmt: skip
        checkpointer.start()
    latencies: list[float] = []

    async def worker(count: int) -> None:
        for i in range(count):
            t = time.perf_counter()
            await log.append({**RECORD, "workflow_id": f"wf-{i}"})
            latencies.append(time.perf_counter() - t)

    start, cpu, ship_cpu = time.perf_counter(), time.process_time(), shipper_cpu(shipper)
    await asyncio.gather(*(worker(n // concurrency) for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    drain = await drained(shipper, log) if shipper is not None else 0.0
    cpu = time.process_time() - cpu
    ship_cpu = shipper_cpu(shipper) - ship_cpu
    if shipper is not None:
        await shipper.stop()
    if checkpointer is not None:
        await checkpointer.close()
    await log.close()
    mode = "shipped" if sink else "checkpointed" if checkpoint_every else "local"
    return {
        "concurrency": concurrency, "chain": mode, "shipping": sink is not None,
        "records_per_s": len(latencies) / elapsed,
        "append_p50_ms": statistics.median(latencies) * 1e3,
        "cpu_us_per_record": cpu / len(latencies) * 1e6,
        "shipper_cpu_us_per_record": ship_cpu / len(latencies) * 1e6,
        "drain_ms": drain * 1e3,
    }  # fmt: skip


async def checkpoint_costs(directory: Path, n: int = 200) -> dict[str, float]:
    """Median cost of signing one receipt, and of one checkpoint round (sign, publish to
    a witness directory with fsync, append its record)."""
    key = SigningKey.generate()
    log = AuditLog(directory)
    log.open()
    receipt = await log.append(RECORD)
    signer = ReceiptSigner(key, "0" * 32)
    signs = []
    for _ in range(n):
        t = time.perf_counter()
        signer.sign(receipt)
        signs.append(time.perf_counter() - t)
    checkpointer = Checkpointer(
        log, key, replica_id="bench", witnesses=[DirectoryWitness(directory / "witness")],
        interval=0,
    )  # fmt: skip
    rounds = []
    for i in range(n // 4):
        await log.append({**RECORD, "workflow_id": f"cp-{i}"})
        t = time.perf_counter()
        await checkpointer.checkpoint()
        rounds.append(time.perf_counter() - t)
    await log.close()
    return {
        "receipt_sign_us": statistics.median(signs) * 1e6,
        "checkpoint_round_ms": statistics.median(rounds) * 1e3,
    }


def start_input() -> StartInput:
    return StartInput(
        workflow_type="EchoWorkflow", workflow_id=f"b-{uuid.uuid4()}", args=["x"], args_size=3,
        tenant_id="acme", user_country="DE", user_subdivision="", data_class=DataClass.PII,
        priority=Priority.NORMAL, request_id="",
    )  # fmt: skip


async def start_latencies(m: Router, n: int) -> list[float]:
    """Each start as the servicer runs it: the start, then its receipt signed (when the
    router has a checkpointer)."""
    out = []
    signer = m.checkpointer.receipts if m.checkpointer is not None else None
    for _ in range(n):
        t = time.perf_counter()
        res = await m.starts.start(start_input(), remaining=None)
        if signer is not None and res.receipt is not None:
            signer.sign(res.receipt)
        out.append(time.perf_counter() - t)
    return out


async def run(records: int, starts: int, rounds: int, ship: bool) -> dict[str, Any]:
    result: dict[str, Any] = {"benchmark": "audit", "machine": machine(), "shipping": ship}
    with tempfile.TemporaryDirectory(prefix="meridian-audit-bench-") as tmp:
        home = Path(tmp)
        port = free_port()
        collector = otlp_collector(port, home / "collector.log") if ship else None
        sink = f"http://127.0.0.1:{port}" if ship else None
        try:
            result.update(await _run(home, records, starts, rounds, sink))
        finally:
            _stop(collector)
    return result


async def _run(
    home: Path, records: int, starts: int, rounds: int, sink: str | None
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    rates = []
    for c in (1, 32, 256):
        rates.append(await records_per_second(home / f"log-{c}-local", c, records))
        rates.append(
            await records_per_second(home / f"log-{c}-cp", c, records, checkpoint_every=0.1)
        )
        if sink:
            rates.append(await records_per_second(home / f"log-{c}-shipped", c, records, sink))
    result["records"] = rates
    result["checkpoint_costs"] = await checkpoint_costs(home / "costs")
    result.update(await _starts(home, starts, rounds, sink))
    return result


async def _starts(home: Path, starts: int, rounds: int, sink: str | None) -> dict[str, Any]:
    """Starts through an in-process router, one at a time: with the audit log, with it
    plus checkpoints and a signed receipt, shipped (when ``sink``), and without it, in
    alternated rounds on one dev server."""
    result: dict[str, Any] = {}
    fleet = Fleet.create(home / "fleet", {"eu-west": ("eu", 1)}, {"eu": ["DE"]})
    fleet.write_config()
    cluster = next(fleet.clusters())
    cluster.start()
    try:
        await cluster.wait_ready()
        sources = ConfigSources.read([fleet.config_path], use_env=False)
        config = sources.resolve()
        keys = FileKeyProvider(fleet.keys_dir)
        durable = AuditLog(home / "router-audit")
        durable.open()
        witnessed = AuditLog(home / "router-audit-cp")
        witnessed.open()
        checkpointer = Checkpointer(
            witnessed, SigningKey.generate(), replica_id="bench",
            witnesses=[DirectoryWitness(home / "witness")],
            interval=float(config.document.audit.checkpoint_interval_s),
        )  # fmt: skip
        checkpointer.start()
        sinks: dict[str, AuditSink] = {
            "with audit": durable,
            "with audit + checkpoints + signed receipt": witnessed,
        }
        shippers = []
        if sink is not None:
            shipped_log = AuditLog(home / "router-audit-shipped")
            shipped_log.open()
            sinks["with audit, shipped"] = shipped_log
            shippers.append((await shipped(shipped_log, sink), shipped_log))
        sinks["without audit"] = MemoryAuditSink()
        routers = {
            name: Router(
                sources, config, keys, audit=a,
                checkpointer=checkpointer if a is witnessed else None,
            )
            for name, a in sinks.items()
        }  # fmt: skip
        for m in routers.values():
            await m.start(first_probe_timeout=5)
            await start_latencies(m, 50)  # warm up connections and caches
        samples: dict[str, list[float]] = {name: [] for name in routers}
        for _ in range(rounds):
            for name, m in routers.items():
                samples[name] += await start_latencies(m, starts // rounds)
        for m in routers.values():
            await m.close()
        for shipper, log in shippers:
            assert shipper is not None
            await drained(shipper, log)
            result["shipped_starts_lag_after_drain"] = shipper.status().lag
            await shipper.stop()
            await log.close()
        await checkpointer.close()
        result["checkpointed_up_to_seq"] = checkpointer.status().checkpoint_seq
        await witnessed.close()
        await durable.close()
    finally:
        cluster.terminate()
    result["starts"] = [
        {"mode": name, "n": len(xs), "p50_ms": statistics.median(xs) * 1e3,
         "p99_ms": sorted(xs)[int(len(xs) * 0.99) - 1] * 1e3}
        for name, xs in samples.items()
    ]  # fmt: skip
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks audit", description=__doc__)
    parser.add_argument("--records", type=int, default=20_480)
    parser.add_argument("--starts", type=int, default=1000, help="per mode")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--ship", action="store_true", help="also measure with the chain shipped over OTLP"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.records, args.starts, args.rounds, args.ship))
    t1 = render(["concurrency", "chain", "durable records/s", "append p50 ms", "CPU µs/record",
                 "shipper CPU µs/record", "sink has all after ms"], [
        (r["concurrency"], r["chain"],
         f"{r['records_per_s']:,.0f}", f"{r['append_p50_ms']:.3f}",
         f"{r['cpu_us_per_record']:.0f}",
         f"{r['shipper_cpu_us_per_record']:.0f}" if r["shipping"] else "",
         f"{r['drain_ms']:.0f}" if r["shipping"] else "")
        for r in result["records"]
    ])  # fmt: skip
    t2 = render(["start (in-process router)", "n", "p50 ms", "p99 ms"], [
        (s["mode"], s["n"], f"{s['p50_ms']:.2f}", f"{s['p99_ms']:.2f}") for s in result["starts"]
    ])  # fmt: skip
    costs = result["checkpoint_costs"]
    t3 = (
        f"checkpointed: every 0.1 s, 50 x the default. One receipt signature (Ed25519): "
        f"{costs['receipt_sign_us']:.0f} µs; one checkpoint round (sign, publish to a witness "
        f"directory with fsync, record): {costs['checkpoint_round_ms']:.2f} ms"
    )
    emit(result, args.json, f"{t1}\n\n{t2}\n\n{t3}")
