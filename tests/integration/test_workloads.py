"""The reference workloads through the whole dev stack, through ``meridian.client``:
routed by residency, run by the region's worker, checked at the source — the region's
own database (``$MERIDIAN_HOME/regions/<region>``) and the Temporal cluster itself."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType

from meridian import MeridianClient, TLSConfig, WorkflowFailed
from regions.store import BookingStore, ContactStore, StoreLocation
from tests.helpers import eventually
from tests.integration.conftest import Clusters, DevProcess
from tests.integration.test_readme_and_cli import meridian

pytestmark = pytest.mark.integration

SAMPLE = "samples/contacts-eu.jsonl"
# What the sample holds (tests/unit/test_workloads.py checks the rules themselves).
SAMPLE_COUNTS = {"read": 38, "inserted": 32, "updated": 2, "duplicate": 2, "invalid": 2}
REGIONS = ("us-east", "eu-west", "ap-southeast")


@pytest.fixture
async def client(dev: DevProcess) -> AsyncIterator[MeridianClient]:
    tls = TLSConfig.dev_identity("service", home=dev.home)
    async with await MeridianClient.connect(dev.router, tls=tls) as c:
        yield c


def contacts(dev: DevProcess, region: str, tenant: str) -> list[dict[str, Any]]:
    """The tenant's rows in ``region``'s own store (none if the region has no store)."""
    directory = dev.home / "regions" / region
    if not (directory / "contacts.db").exists():
        return []
    return ContactStore(StoreLocation(directory=directory)).contacts(tenant)


def bookings(dev: DevProcess, region: str) -> BookingStore:
    return BookingStore(StoreLocation(directory=dev.home / "regions" / region))


def sync_input(tenant: str, **options: Any) -> dict[str, Any]:
    return {
        "tenant": tenant,
        "source": {"path": SAMPLE},
        "chunk_size": 5,
        "options": {"continue_as_new_every": 2, "default_calling_code": "49", **options},
    }


async def test_contact_sync_runs_in_eu_west_only_and_a_rerun_changes_nothing(
    dev: DevProcess, client: MeridianClient, clusters: Clusters
) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    handle = await client.start_workflow(
        "ContactSyncWorkflow", sync_input(tenant, throttle_ms=150), id=f"sync-{tenant}",
        tenant=tenant, user_country="DE", data_class="pii",
    )  # fmt: skip
    assert handle.decision is not None and handle.decision.region == "eu-west"
    assert handle.receipt is not None and handle.receipt.sequence > 0
    assert handle.receipt.signature and handle.receipt.key_id, "a start's receipt is signed"

    # Progress is answered across continue-as-new: a later run knows what earlier ones did.
    async def later_run() -> dict[str, Any] | None:
        progress: dict[str, Any] = await handle.query("getProgress")
        return (
            progress if progress.get("runs", 0) >= 2 and progress["status"] == "RUNNING" else None
        )

    midway = await eventually(later_run, "a second run of the sync", timeout=60)
    assert 0 < midway["read"] < 38 and 0 < midway["percent"] < 100
    assert midway["read"] == sum(midway[k] for k in ("inserted", "updated", "duplicate", "invalid"))

    result = await handle.result(timeout=60)
    assert {k: result[k] for k in SAMPLE_COUNTS} == SAMPLE_COUNTS
    assert result["percent"] == 100.0 and result["runs"] == 4 and result["chunks"] == 8
    assert [s["reason"] for s in result["invalid_samples"]] == [
        "record: no email and no phone (no natural key)",
        "email: not an email address",
    ]
    assert await handle.query("getStatus") == "COMPLETED"

    # At the source: the contacts exist in eu-west's store and nowhere else.
    rows = contacts(dev, "eu-west", tenant)
    assert len(rows) == 32
    by_key = {r["key"]: r for r in rows}
    assert by_key["email:anna.schmidt0@example.eu"]["fields"]["company"] == "Nordwind GmbH"
    assert by_key["phone:+491512233445"]["fields"]["name"] == "Karl Weber"  # v2 normalisation
    assert by_key["phone:+33612345678"]["fields"] == {
        "company": "Atelier Martin", "name": "Chloé Martin", "phone": "+33612345678"
    }  # fmt: skip
    assert contacts(dev, "us-east", tenant) == [] and contacts(dev, "ap-southeast", tenant) == []
    assert await clusters.holding(handle.id) == {"eu-west-a"}

    # The same sync again: every record is already there; the store is row-for-row the same.
    again = await client.start_workflow(
        "ContactSyncWorkflow", sync_input(tenant), id=f"sync-{tenant}-again",
        tenant=tenant, user_country="DE", data_class="pii",
    )  # fmt: skip
    second = await again.result(timeout=60)
    assert {k: second[k] for k in SAMPLE_COUNTS} == {
        "read": 38, "inserted": 0, "updated": 0, "duplicate": 36, "invalid": 2
    }  # fmt: skip
    assert contacts(dev, "eu-west", tenant) == rows


async def test_transient_chunk_failures_are_retried_and_applied_once(
    dev: DevProcess, client: MeridianClient
) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    records = [{"email": f"p{i}@example.eu"} for i in range(6)] + [{"email": "p0@example.eu"}]
    handle = await client.start_workflow(
        "ContactSyncWorkflow",
        {"tenant": tenant, "source": {"records": records}, "chunk_size": 4,
         "options": {"fail_attempts": 2}},
        tenant=tenant, user_country="FR", data_class="pii",
    )  # fmt: skip
    result = await handle.result(timeout=60)
    assert (result["inserted"], result["duplicate"], result["read"], result["total"]) == (
        6,
        1,
        7,
        7,
    )
    store = ContactStore(StoreLocation(directory=dev.home / "regions" / "eu-west"))
    chunks = store.chunks(result["sync_id"])
    # Each chunk failed twice (injected), then was applied on its third attempt, once.
    assert [(c["cursor"], c["attempt"]) for c in chunks] == [(0, 3), (4, 3)]


async def test_a_source_outside_the_workers_roots_fails_without_retrying(
    client: MeridianClient,
) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    handle = await client.start_workflow(
        "ContactSyncWorkflow", {"tenant": tenant, "source": {"path": "../../etc/passwd"}},
        tenant=tenant, user_country="DE", data_class="pii",
    )  # fmt: skip
    with pytest.raises(WorkflowFailed) as info:
        await handle.result(timeout=30)
    assert info.value.status == "FAILED"
    description = await handle.describe()
    assert description.status == "FAILED" and description.location.region == "eu-west"


BOOKING = {
    "tenant": "acme", "check_in": "2026-12-01", "check_out": "2026-12-04",
    "amount_cents": 45000, "currency": "EUR", "card_token": "tok_visa",
    "guest_email": "guest@example.eu",
}  # fmt: skip


async def _book(client: MeridianClient, **extra: Any) -> tuple[str, Any]:
    booking_id = f"bk-{uuid.uuid4().hex[:10]}"
    args = {**BOOKING, "booking_id": booking_id, "property_id": f"p-{booking_id}", **extra}
    handle = await client.start_workflow(
        "PropertyBookingWorkflow", args, id=booking_id, tenant="acme", user_country="FR",
        data_class="financial",
    )  # fmt: skip
    assert handle.decision is not None and handle.decision.region == "eu-west"
    return booking_id, handle


@pytest.mark.parametrize(
    ("fail_at", "effects", "compensated"),
    [
        (None, ["charge", "reserve", "confirm"], []),
        ("charge", [], []),
        ("reserve", ["charge", "refund"], ["refund"]),
        ("confirm", ["charge", "reserve", "cancel_reservation", "refund"],
         ["cancel_reservation", "refund"]),
    ],
    ids=["no-failure", "fails-at-charge", "fails-at-reserve", "fails-at-confirm"],
)  # fmt: skip
async def test_booking_saga_runs_exactly_the_right_compensations(
    dev: DevProcess,
    client: MeridianClient,
    fail_at: str | None,
    effects: list[str],
    compensated: list[str],
) -> None:
    booking_id, handle = await _book(client, **({"fail_at": fail_at} if fail_at else {}))
    if fail_at is None:
        result = await handle.result(timeout=60)
        assert result["state"] == "CONFIRMED"
    else:
        with pytest.raises(WorkflowFailed) as info:
            await handle.result(timeout=60)
        assert f"failed at {fail_at}" in info.value.failure
    status = await handle.query("getStatus")
    assert status["compensated"] == compensated
    assert status["state"] == ("CONFIRMED" if fail_at is None else "COMPENSATED")
    # At the source: the region's booking store, in the order the effects happened.
    store = bookings(dev, "eu-west")
    assert store.effects(booking_id) == effects
    reservation = {None: True, "charge": None, "reserve": None, "confirm": False}[fail_at]
    assert store.reservation_active(booking_id) is reservation


async def test_a_retried_step_is_applied_once(dev: DevProcess, client: MeridianClient) -> None:
    booking_id, handle = await _book(client, transient_at="charge")
    assert (await handle.result(timeout=60))["state"] == "CONFIRMED"
    store = bookings(dev, "eu-west")
    assert store.effects(booking_id) == ["charge", "reserve", "confirm"]
    charge_calls = [(n, o) for a, n, o in store.calls(booking_id) if a == "charge"]
    assert charge_calls == [(1, "applied"), (2, "already-done")]


async def test_a_taken_property_fails_the_second_booking_and_refunds_it(
    dev: DevProcess, client: MeridianClient, clusters: Clusters
) -> None:
    first, h1 = await _book(client)
    await h1.result(timeout=60)
    second, h2 = await _book(client, property_id=f"p-{first}")
    with pytest.raises(WorkflowFailed) as info:
        await h2.result(timeout=60)
    assert "already booked" in info.value.failure
    store = bookings(dev, "eu-west")
    assert store.effects(second) == ["charge", "refund"]
    assert store.effects(first) == ["charge", "reserve", "confirm"]
    # The failure is ciphertext in Temporal: read without the region's key, nowhere
    # does the history say why the booking failed.
    raw = await clusters.raw("eu-west-a")
    history = await raw.get_workflow_handle(second).fetch_history()
    failed = history.events[-1]
    assert failed.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED
    stored = history.to_json()
    assert "already booked" not in stored
    failure = failed.workflow_execution_failed_event_attributes.failure
    assert failure.message.startswith("meridian-sealed:")
    assert failure.encoded_attributes.metadata["encoding"] == b"binary/encrypted"


def test_cli_describe_signal_cancel(dev: DevProcess, tmp_path: Path) -> None:
    wid = f"cli-followups-{uuid.uuid4().hex[:8]}"
    r = ("--router", dev.router)
    started = meridian(dev.home, "start", *r, "--tenant", "acme", "--country", "DE", "--class",
                       "pii", "--id", wid, "--arg", '{"items": 200, "delay_ms": 100}')  # fmt: skip
    assert started.returncode == 0, started.stderr
    ref = ("--tenant", "acme", "--id", wid)
    out = meridian(dev.home, "signal", *r, *ref, "--name", "pause", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["location"]["cluster"] == "eu-west-a"
    for _ in range(100):
        status = meridian(dev.home, "query", *r, *ref, "--name", "getStatus", "--json")
        if json.loads(status.stdout)["result"] == "PAUSED":
            break
    assert json.loads(status.stdout)["result"] == "PAUSED"
    described = json.loads(meridian(dev.home, "describe", *r, *ref, "--json").stdout)
    assert (
        described["status"] == "RUNNING" and described["workflow_type"] == "DataProcessingWorkflow"
    )
    assert described["location"]["region"] == "eu-west" and described["history_length"] > 0
    out = meridian(dev.home, "cancel", *r, *ref)
    assert out.returncode == 0, out.stderr
    assert "location.cluster" in out.stdout and "eu-west-a" in out.stdout
    result = meridian(dev.home, "result", *r, *ref, "--timeout", "30", "--json")
    assert json.loads(result.stdout)["status"] == "CANCELED"
    assert result.returncode == 3, "a run that did not complete is not a success for scripts"
    # A closed run: signal and cancel are refused, naming its status.
    again = meridian(dev.home, "cancel", *r, *ref)
    assert again.returncode == 1 and "FAILED_PRECONDITION" in again.stderr
    assert "CANCELED" in again.stderr and "Traceback" not in again.stderr


async def test_a_cancelled_booking_undoes_a_step_whose_response_was_lost(
    dev: DevProcess, client: MeridianClient
) -> None:
    """The reservation took effect but its first attempt "lost" the response; while the
    retry waits, the booking is cancelled: the reservation is undone too (its
    compensation was registered before the step ran), then the charge."""
    booking_id, handle = await _book(client, transient_at="reserve")
    store = bookings(dev, "eu-west")

    async def reserved() -> bool:
        return "reserve" in store.effects(booking_id)

    await eventually(reserved, "the first reserve attempt's effect", timeout=30)
    await handle.cancel()
    outcome = await handle.outcome(timeout=60)
    assert outcome.status == "CANCELED"
    assert store.effects(booking_id) == ["charge", "reserve", "cancel_reservation", "refund"]
    assert store.reservation_active(booking_id) is False
    status = await handle.query("getStatus")
    assert status["compensated"] == ["cancel_reservation", "refund"]
    assert status["state"] == "COMPENSATED"
