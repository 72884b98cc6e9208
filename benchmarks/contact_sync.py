"""Contact sync at scale: one ``ContactSyncWorkflow`` over a generated JSON Lines file.

A fresh ``temporal server start-dev``, one regional worker process (``meridian worker``,
SQLite store, payloads encrypted with the region's key), and a client that starts the
sync on the worker's queue directly (the router adds one start; it is measured by
``router_vs_direct``). Reported: contacts per second from start to result, the worker's
peak RSS (VmHWM), the history events of all runs per 10,000 contacts, and the runs
(continue-as-new) it took. The source has about 10% repeated contacts and 1% invalid
records; the store is checked row for row against the expected unique contacts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from temporalio.client import Client

from benchmarks.common import emit, machine, render
from benchmarks.fleet import Fleet, RegionWorker
from router.codec import FileKeyProvider, KeyRingHolder, RegionCodec, data_converter

REGION, CLUSTER = "eu-west", "eu-west-a"
QUEUE = f"{REGION}-ContactSyncWorkflow-queue"


def write_source(path: Path, n: int, seed: int = 1) -> int:
    """``n`` records into ``path``; returns how many distinct valid contacts they hold."""
    rng = random.Random(seed)
    unique = 0
    with path.open("w") as f:
        for i in range(n):
            roll = rng.random()
            if roll < 0.01:
                record: dict[str, Any] = {"name": f"walk-in {i}"}
            elif roll < 0.11 and unique:
                j = rng.randrange(unique)
                record = {"email": f"contact{j}@example.eu", "company": f"co{i % 97}",
                          "updated_at": f"2026-0{1 + i % 9}-01T00:00:00Z"}  # fmt: skip
            else:
                record = {
                    "email": f"contact{unique}@example.eu", "name": f"Contact {unique}",
                    "phone": f"+49 151 {10_000_000 + unique}", "city": "Berlin",
                    "updated_at": "2026-01-01T00:00:00Z",
                }  # fmt: skip
                unique += 1
            f.write(json.dumps(record) + "\n")
    return unique


async def history_events(client: Client, workflow_id: str, first_run: str) -> tuple[int, int]:
    """Events of every run (following continue-as-new) and the number of runs."""
    events, runs, run_id = 0, 0, first_run
    while run_id:
        history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        events += len(history.events)
        runs += 1
        last = history.events[-1]
        run_id = (
            last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
            if last.HasField("workflow_execution_continued_as_new_event_attributes")
            else ""
        )
    return events, runs


async def run(contacts: int, chunk_size: int, every: int, home: Path) -> dict[str, Any]:
    fleet = Fleet.create(home / "fleet", {REGION: ("eu", 1)}, {"eu": ["DE"]})
    inbox = home / "inbox"
    inbox.mkdir(parents=True)
    unique = write_source(inbox / "contacts.jsonl", contacts)
    worker = RegionWorker(
        REGION, CLUSTER, fleet.config_path, fleet.keys_dir, home / "store", source_roots=(inbox,)
    )
    try:
        await fleet.start_clusters()
        endpoint = fleet.cluster(CLUSTER).endpoint
        worker.start()
        await worker.wait_polling(endpoint, REGION, QUEUE)
        idle_rss = worker.peak_rss_bytes()
        codec = RegionCodec(KeyRingHolder(FileKeyProvider(fleet.keys_dir), REGION))
        client = await Client.connect(
            endpoint, namespace=REGION, data_converter=data_converter(codec)
        )
        params = {
            "tenant": "bench",
            "source": {"path": "contacts.jsonl"},
            "chunk_size": chunk_size,
            "options": {"continue_as_new_every": every},
        }
        t0 = time.perf_counter()
        handle = await client.start_workflow(
            "ContactSyncWorkflow", params, id=f"bench-{time.time_ns()}", task_queue=QUEUE
        )
        result = await handle.result()
        elapsed = time.perf_counter() - t0
        peak_rss = worker.peak_rss_bytes()
        assert handle.first_execution_run_id is not None
        events, runs = await history_events(client, handle.id, handle.first_execution_run_id)
    finally:
        worker.stop()
        fleet.stop()
    from regions.store import ContactStore, StoreLocation

    rows = len(ContactStore(StoreLocation(directory=home / "store")).contacts("bench"))
    if rows != unique or result["read"] != contacts:
        raise RuntimeError(f"store holds {rows} contacts, expected {unique}; result {result}")
    return {
        "machine": machine(),
        "contacts": contacts,
        "chunk_size": chunk_size,
        "continue_as_new_every": every,
        "seconds": round(elapsed, 2),
        "contacts_per_s": round(contacts / elapsed),
        "worker_peak_rss_mb": round(peak_rss / 2**20, 1),
        "worker_idle_rss_mb": round(idle_rss / 2**20, 1),
        "history_events": events,
        "history_events_per_10k": round(events * 10_000 / contacts, 1),
        "runs": runs,
        "counts": {k: result[k] for k in ("read", "inserted", "updated", "duplicate", "invalid")},
        "store_rows": rows,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks contact_sync", description=__doc__)
    parser.add_argument("--contacts", type=int, default=100_000, help="default 100000")
    parser.add_argument("--chunk-size", type=int, default=1000, help="default 1000")
    parser.add_argument("--every", type=int, default=20, help="chunks per run (default 20)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="meridian-bench-") as tmp:
        result = asyncio.run(run(args.contacts, args.chunk_size, args.every, Path(tmp)))
    c = result["counts"]
    rows = [
        ("contacts", f"{result['contacts']:,} ({c['inserted']:,} inserted, {c['updated']:,} "
                     f"updated, {c['duplicate']:,} duplicate, {c['invalid']:,} invalid)"),
        ("time", f"{result['seconds']} s"),
        ("contacts/s", f"{result['contacts_per_s']:,}"),
        ("worker peak RSS", f"{result['worker_peak_rss_mb']} MB "
                            f"(idle {result['worker_idle_rss_mb']} MB)"),
        ("history events per 10k contacts", result["history_events_per_10k"]),
        ("runs (continue-as-new)", result["runs"]),
    ]  # fmt: skip
    emit(result, args.json, render(["measure", "value"], rows))
