"""Activities of the reference workloads: the only code that touches the region's
database and the contact sources. Synchronous (SQLite and file reads block), run on the
worker's thread pool, heartbeating as they go.

Errors: what retrying cannot fix is a non-retryable ``ApplicationError`` whose type the
workflows name (``InvalidSource``, ``CardDeclined``, ``PropertyUnavailable``,
``InjectedFailure``, ``AlreadyCompensated``); anything else (a locked database, an
unreadable disk) propagates and is retried with the workflow's backoff.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from regions import sources
from regions.contact_sync import DESCRIBE_SOURCE, SYNC_CHUNK_V1, SYNC_CHUNK_V2
from regions.store import BookingDeclined, BookingStore, ContactStore


def _source_error(exc: sources.InvalidSource) -> ApplicationError:
    return ApplicationError(str(exc), type="InvalidSource", non_retryable=True)


class ContactActivities:
    def __init__(self, store: ContactStore, source_roots: Sequence[Path]) -> None:
        self.store = store
        self.roots = tuple(source_roots)

    @activity.defn(name=DESCRIBE_SOURCE)
    def describe_source(self, req: dict[str, Any]) -> dict[str, Any]:
        spec = req["source"]
        try:
            if "count" in spec:
                return {"total": int(spec["count"])}
            return {"total": sources.count(spec, self.roots)}
        except sources.InvalidSource as exc:
            raise _source_error(exc) from None

    @activity.defn(name=SYNC_CHUNK_V1)
    def sync_chunk(self, req: dict[str, Any]) -> dict[str, Any]:
        return self._sync(req, version=1)

    @activity.defn(name=SYNC_CHUNK_V2)
    def sync_chunk_v2(self, req: dict[str, Any]) -> dict[str, Any]:
        return self._sync(req, version=2)

    def _sync(self, req: dict[str, Any], *, version: int) -> dict[str, Any]:
        info = activity.info()
        cursor, size = int(req["cursor"]), int(req["chunk_size"])
        spec = dict(req["source"])
        base = int(spec.pop("base", 0))
        try:
            chunk = sources.read(spec, self.roots, 0 if "records" in spec else cursor, size)
        except sources.InvalidSource as exc:
            raise _source_error(exc) from None
        records = [(position + base, record) for position, record in chunk.records]
        next_cursor = chunk.next_cursor + base
        activity.heartbeat({"cursor": cursor, "read": len(records), "stage": "read"})
        _pause(int(req.get("throttle_ms", 0)), lambda: activity.heartbeat({"cursor": cursor}))
        if info.attempt <= int(req.get("fail_attempts", 0)):
            # A drill of a transient failure: retried with backoff, nothing written.
            raise RuntimeError(f"injected transient failure (attempt {info.attempt})")
        result = self.store.apply(
            sync_id=req["sync_id"],
            tenant=req["tenant"],
            cursor=cursor,
            next_cursor=next_cursor,
            records=records,
            version=version,
            default_calling_code=str(req.get("default_calling_code", "")),
            attempt=info.attempt,
        )
        activity.heartbeat({"cursor": next_cursor, "stage": "applied"})
        return {
            "next_cursor": next_cursor,
            "done": chunk.done,
            "counts": result.counts,
            "invalid": result.invalid[:20],
            "replayed": result.replayed,
        }


def _pause(ms: int, beat: Callable[[], None]) -> None:
    end = time.monotonic() + ms / 1000
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(left, 0.5))
        beat()


class BookingActivities:
    """Each step is idempotent by the booking id (``BookingStore.effect``)."""

    def __init__(self, store: BookingStore) -> None:
        self.store = store

    def _step(self, req: dict[str, Any], action: str, **extra: Any) -> dict[str, Any]:
        booking_id, attempt = req["booking_id"], activity.info().attempt
        if req.get("fail_at") == action:
            self.store.log_call(
                booking_id=booking_id, action=action, attempt=attempt, outcome="injected-failure"
            )
            raise ApplicationError(
                f"injected failure at {action}", type="InjectedFailure", non_retryable=True
            )
        try:
            applied = self.store.effect(
                booking_id=booking_id,
                tenant=req["tenant"],
                action=action,
                attempt=attempt,
                detail={"amount_cents": req["amount_cents"], "currency": req["currency"]},
                **extra,
            )
        except BookingDeclined as exc:
            self.store.log_call(
                booking_id=booking_id, action=action, attempt=attempt, outcome=exc.kind
            )
            raise ApplicationError(str(exc), type=exc.kind, non_retryable=True) from None
        if req.get("transient_at") == action and attempt == 1:
            # A drill of a lost response: the effect happened, the caller never heard.
            raise RuntimeError(f"injected transient failure after {action}")
        return {"booking_id": booking_id, "action": action, "applied": applied}

    @activity.defn(name="chargeCard")
    def charge_card(self, req: dict[str, Any]) -> dict[str, Any]:
        if req["card_token"] == "tok_declined":
            self.store.log_call(
                booking_id=req["booking_id"], action="charge",
                attempt=activity.info().attempt, outcome="CardDeclined",
            )  # fmt: skip
            raise ApplicationError("card declined", type="CardDeclined", non_retryable=True)
        return self._step(req, "charge")

    @activity.defn(name="reserveProperty")
    def reserve_property(self, req: dict[str, Any]) -> dict[str, Any]:
        reservation = {k: req[k] for k in ("property_id", "check_in", "check_out")}
        return self._step(req, "reserve", reservation=reservation)

    @activity.defn(name="sendConfirmation")
    def send_confirmation(self, req: dict[str, Any]) -> dict[str, Any]:
        # The outbox: the confirmation is a row the region's mailer sends from.
        return self._step(req, "confirm")

    @activity.defn(name="cancelReservation")
    def cancel_reservation(self, req: dict[str, Any]) -> dict[str, Any]:
        return self._step(req, "cancel_reservation", undoes="reserve")

    @activity.defn(name="refundCard")
    def refund_card(self, req: dict[str, Any]) -> dict[str, Any]:
        return self._step(req, "refund", undoes="charge")

    def all(self) -> list[Callable[..., Any]]:
        return [
            self.charge_card,
            self.reserve_property,
            self.send_confirmation,
            self.cancel_reservation,
            self.refund_card,
        ]
