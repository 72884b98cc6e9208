"""Record the workflow histories that tests/unit/test_replay.py replays.

    .venv/bin/python scripts/record_histories.py      # rewrites tests/fixtures/histories/

Starts a fresh `temporal server start-dev` (free loopback port), runs a worker in this
process with the real activities on a temporary store, and records:

- ``contact_sync_v1_run*.json``: a contact sync under **v1** code (before the
  ``contact-sync-v2-phone`` patch: ``ContactSyncV1`` below schedules ``syncContactChunk``
  and never calls ``workflow.patched``), with a continue-as-new every chunk, so there is
  one history per run;
- ``booking_*.json``: a booking that completes and one that fails at the reservation
  and compensates, under the current code.

Payloads use the default converter (no codec): the fixtures hold synthetic data only.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from temporalio import workflow  # noqa: E402
from temporalio.client import Client, WorkflowFailureError  # noqa: E402
from temporalio.worker import UnsandboxedWorkflowRunner, Worker  # noqa: E402

from benchmarks.fleet import Cluster, free_port  # noqa: E402
from regions.activities import BookingActivities, ContactActivities  # noqa: E402
from regions.booking import PropertyBookingWorkflow  # noqa: E402
from regions.contact_sync import SYNC_CHUNK_V1, ContactSyncWorkflow  # noqa: E402
from regions.store import BookingStore, ContactStore, StoreLocation  # noqa: E402

OUT = ROOT / "tests" / "fixtures" / "histories"
QUEUE = "record-histories"

# The v1 input: three chunks of two, a continue-as-new after every chunk.
CONTACT_SYNC_INPUT: dict[str, Any] = {
    "tenant": "acme",
    "source": {
        "records": [
            {"email": "Ana@Example.com", "name": "Ana", "updated_at": "2026-01-01T00:00:00Z"},
            {"phone": "+49 151 2345 6789", "name": "Ben"},
            {"email": "ana@example.com", "company": "Acme", "updated_at": "2026-02-01T00:00:00Z"},
            {"name": "no key"},
            {"email": "not-an-email"},
            {"email": "cy@example.org", "phone": "0151 111"},
        ]
    },
    "chunk_size": 2,
    "options": {"continue_as_new_every": 1},
}
BOOKING_INPUT: dict[str, Any] = {
    "tenant": "acme",
    "property_id": "lisbon-7",
    "check_in": "2026-12-01",
    "check_out": "2026-12-04",
    "amount_cents": 45000,
    "currency": "EUR",
    "card_token": "tok_visa",
    "guest_email": "guest@example.com",
}


@workflow.defn(name="ContactSyncWorkflow")
class ContactSyncV1(ContactSyncWorkflow):
    """The workflow as it was before v2: the same code, but always the v1 activity and
    no patch marker."""

    @workflow.run
    async def run(self, params: dict[str, Any]) -> dict[str, Any]:
        return await super().run(params)

    def _chunk_activity(self) -> str:
        return SYNC_CHUNK_V1


async def _histories(client: Client, workflow_id: str, first_run: str) -> list[str]:
    """Every run of ``workflow_id`` from ``first_run`` on, following continue-as-new."""
    out = []
    run_id: str | None = first_run
    while run_id:
        history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        out.append(history.to_json())
        last = history.events[-1]
        attrs = last.workflow_execution_continued_as_new_event_attributes
        run_id = (
            attrs.new_execution_run_id
            if last.HasField("workflow_execution_continued_as_new_event_attributes")
            else None
        )
    return out


async def record() -> dict[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster("record", free_port(), ("default",), Path(tmp) / "logs")
        cluster.start()
        try:
            await cluster.wait_ready()
            client = await Client.connect(cluster.endpoint, namespace="default")
            location = StoreLocation(directory=Path(tmp) / "store")
            contacts = ContactActivities(ContactStore(location), ())
            bookings = BookingActivities(BookingStore(location))
            with ThreadPoolExecutor(4) as executor:
                worker = Worker(
                    client,
                    task_queue=QUEUE,
                    workflows=[ContactSyncV1, PropertyBookingWorkflow],
                    activities=[contacts.describe_source, contacts.sync_chunk, *bookings.all()],
                    activity_executor=executor,
                    workflow_runner=UnsandboxedWorkflowRunner(),
                )
                async with worker:
                    return await _record_all(client)
        finally:
            cluster.terminate()


async def _record_all(client: Client) -> dict[str, str]:
    """File name -> history JSON."""
    written: dict[str, str] = {}
    sync_id = f"contact-sync-v1-{uuid.uuid4().hex[:8]}"
    handle = await client.start_workflow(
        "ContactSyncWorkflow", CONTACT_SYNC_INPUT, id=sync_id, task_queue=QUEUE
    )
    await handle.result()
    assert handle.first_execution_run_id is not None
    for i, history in enumerate(
        await _histories(client, sync_id, handle.first_execution_run_id), 1
    ):
        written[f"contact_sync_v1_run{i}.json"] = history
    for name, extra in (("confirmed", {}), ("fails_at_reserve", {"fail_at": "reserve"})):
        wid = f"booking-{name}-{uuid.uuid4().hex[:8]}"
        with contextlib.suppress(WorkflowFailureError):
            await client.execute_workflow(
                "PropertyBookingWorkflow", {**BOOKING_INPUT, **extra}, id=wid, task_queue=QUEUE
            )
        history = await client.get_workflow_handle(wid).fetch_history()
        written[f"booking_{name}.json"] = history.to_json()
    return written


def main() -> None:
    histories = asyncio.run(record())
    OUT.mkdir(parents=True, exist_ok=True)
    for stale in OUT.glob("*.json"):
        stale.unlink()
    for name, text in histories.items():
        (OUT / name).write_text(text)
        print(f"wrote {(OUT / name).relative_to(ROOT)}")
    subprocess.run(["git", "-C", str(ROOT), "status", "--short", str(OUT)], check=False)


if __name__ == "__main__":
    main()
