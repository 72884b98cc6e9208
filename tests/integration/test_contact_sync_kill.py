"""A regional worker killed (SIGKILL) in the middle of a contact sync and started again:
the sync finishes with no duplicate rows and exact counts — checked against the
region's own database and the pure merge rules applied to the whole source."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.fleet import Fleet, RegionWorker
from meridian import MeridianClient
from regions.contacts import apply_chunk
from regions.store import ContactStore, StoreLocation
from tests.helpers import eventually

pytestmark = pytest.mark.integration


def source(path: Path, n: int) -> list[dict[str, Any]]:
    """``n`` records: about a fifth repeat an earlier contact (newer, older or the
    same), some have no key."""
    rng = random.Random(7)
    records: list[dict[str, Any]] = []
    for i in range(n):
        if i > 10 and rng.random() < 0.2:
            j = rng.randrange(i)
            records.append({**records[j], "updated_at": f"2026-0{rng.randint(1, 9)}-01T00:00:00Z",
                            "note": f"v{i % 3}"})  # fmt: skip
        elif rng.random() < 0.02:
            records.append({"name": f"nobody {i}"})
        else:
            records.append({"email": f"c{i}@example.eu", "name": f"C {i}",
                            "updated_at": "2026-01-01T00:00:00Z"})  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet.create(tmp_path / "fleet", {"eu-west": ("eu", 1)}, {"eu": ["DE"]})
    yield f
    f.stop()


async def test_worker_killed_mid_sync_finishes_with_exact_counts(
    fleet: Fleet, tmp_path: Path
) -> None:
    await fleet.start()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    records = source(inbox / "contacts.jsonl", 2000)
    cluster = fleet.cluster("eu-west-a")
    worker = RegionWorker(
        "eu-west", "eu-west-a", fleet.config_path, fleet.keys_dir, tmp_path / "store",
        source_roots=(inbox,),
    )  # fmt: skip
    try:
        worker.start()
        await worker.wait_polling(cluster.endpoint, "eu-west", "eu-west-ContactSyncWorkflow-queue")
        async with await MeridianClient.connect(fleet.address) as client:
            handle = await client.start_workflow(
                "ContactSyncWorkflow",
                {"tenant": "acme", "source": {"path": "contacts.jsonl"}, "chunk_size": 100,
                 "options": {"throttle_ms": 200, "continue_as_new_every": 4}},
                tenant="acme", user_country="DE", data_class="pii",
            )  # fmt: skip

            async def a_third_done() -> bool:
                progress = await handle.query("getProgress", timeout=5)
                return bool(progress["read"] >= 600)

            await eventually(a_third_done, "a third of the sync", timeout=60)
            worker.kill()
            worker.start()  # a new process, same store
            result = await handle.result(timeout=120)
    finally:
        worker.stop()

    changed, expected, _ = apply_chunk({}, list(enumerate(records)))
    counts = {k: result[k] for k in ("read", "inserted", "updated", "duplicate", "invalid")}
    assert counts == expected.as_dict()
    assert result["read"] == result["total"] == 2000 and result["chunks"] == 20
    store = ContactStore(StoreLocation(directory=tmp_path / "store"))
    rows = store.contacts("acme")
    assert len(rows) == len({r["key"] for r in rows}) == len(changed)
    assert {r["key"]: r["fields"] for r in rows} == {k: c.as_dict() for k, c in changed.items()}
    chunks = store.chunks(result["sync_id"])
    assert [c["cursor"] for c in chunks] == sorted({c["cursor"] for c in chunks})
    assert len(chunks) == 20, "every chunk applied exactly once"
