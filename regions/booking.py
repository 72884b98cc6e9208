"""``PropertyBookingWorkflow``: a booking as a saga over three services.

charge the card → reserve the property → send the confirmation. When a step fails for
good (a declined card, a property already taken, or an injected failure), the
compensations run in reverse order (cancel the reservation, then refund), each retried
until it succeeds, and the workflow fails saying where and what was undone. A
cancellation of the workflow compensates the same way and ends CANCELED.

A step's compensation is registered *before* the step runs: a step that failed or was
cancelled after taking effect (its response lost, its retry pending) is undone too. A
compensation finds in the region's store whether there is anything to undo; where there
is not, it does nothing and leaves a tombstone, so a late attempt of that step is refused
rather than applied after its compensation (``regions.store.BookingStore.effect``).

Input (one JSON object)::

    {"booking_id": "bk-42",            # default: the workflow id; every step is idempotent by it
     "tenant": "acme", "property_id": "lisbon-7", "check_in": "2026-12-01",
     "check_out": "2026-12-04", "amount_cents": 45000, "currency": "EUR",
     "card_token": "tok_visa", "guest_email": "guest@example.com",
     "fail_at": "reserve",             # drills: charge | reserve | confirm fails for good
     "transient_at": "charge"}         # drills: the step's first attempt fails after its effect

Every activity (``regions.activities.BookingActivities``) is idempotent by the booking id:
its effect is recorded once in the region's database (``regions.store.BookingStore``), so
a retried step never charges, reserves or refunds twice. Results and failures travel
through the region's data converter, so they are encrypted like every other payload.
"""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError

# (step, the activity that does it, the activity that undoes it)
STEPS: tuple[tuple[str, str, str | None], ...] = (
    ("charge", "chargeCard", "refundCard"),
    ("reserve", "reserveProperty", "cancelReservation"),
    ("confirm", "sendConfirmation", None),
)
STEP_NAMES = tuple(s for s, _, _ in STEPS)
UNDO_ACTION = {"refundCard": "refund", "cancelReservation": "cancel_reservation"}
STATES = {"charge": "CHARGING", "reserve": "RESERVING", "confirm": "CONFIRMING"}
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")

STEP_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=500),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=5,
    non_retryable_error_types=[
        "CardDeclined",
        "PropertyUnavailable",
        "InjectedFailure",
        "AlreadyCompensated",
    ],
)
# A compensation must happen: retried until it does.
UNDO_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=500),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
)


def _invalid(message: str) -> ApplicationError:
    return ApplicationError(message, type="InvalidInput", non_retryable=True)


def booking_request(params: Any, workflow_id: str) -> dict[str, Any]:
    """The request every activity receives, checked."""
    if not isinstance(params, dict):
        raise _invalid("input: a JSON object")
    req = dict(params)
    req.setdefault("booking_id", workflow_id)
    for name in ("booking_id", "tenant", "property_id", "card_token", "guest_email", "currency"):
        if not isinstance(req.get(name), str) or not req[name]:
            raise _invalid(f"{name}: required")
    for name in ("check_in", "check_out"):
        if not isinstance(req.get(name), str) or not _DATE.fullmatch(req[name]):
            raise _invalid(f"{name}: a date, YYYY-MM-DD")
    if req["check_out"] <= req["check_in"]:
        raise _invalid("check_out: after check_in")
    amount = req.get("amount_cents")
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        raise _invalid("amount_cents: a positive integer")
    for name in ("fail_at", "transient_at"):
        if req.get(name) not in (None, "", *STEP_NAMES):
            raise _invalid(f"{name}: one of {', '.join(STEP_NAMES)}")
    return req


async def _call(activity: str, req: dict[str, Any], retry: RetryPolicy) -> dict[str, Any]:
    result: dict[str, Any] = await workflow.execute_activity(
        activity,
        args=[req],
        start_to_close_timeout=timedelta(seconds=30),
        retry_policy=retry,
        result_type=dict,
    )
    return result


@workflow.defn(name="PropertyBookingWorkflow")
class PropertyBookingWorkflow:
    def __init__(self) -> None:
        self._state = "PENDING"
        self._done: list[str] = []
        self._undone: list[str] = []
        self._failure = ""

    @workflow.run
    async def run(self, params: dict[str, Any]) -> dict[str, Any]:
        req = booking_request(params, workflow.info().workflow_id)
        undo: list[str] = []
        step = ""
        try:
            for step, do, compensation in STEPS:
                self._state = STATES[step]
                if compensation is not None:
                    undo.append(compensation)
                await _call(do, req, STEP_RETRY)
                self._done.append(step)
        except ActivityError as err:
            if isinstance(err.cause, CancelledError):
                await self._compensate(req, undo)
                raise asyncio.CancelledError from err
            cause = err.cause.message if isinstance(err.cause, ApplicationError) else str(err)
            self._failure = f"{step}: {cause}"
            await self._compensate(req, undo)
            raise ApplicationError(
                f"booking {req['booking_id']} failed at {step} ({cause}); "
                f"compensated: {', '.join(self._undone) or 'nothing to undo'}",
                {"failed_step": step, "compensated": list(self._undone)},
                type="BookingFailed",
                non_retryable=True,
            ) from err
        except asyncio.CancelledError:
            self._failure = f"{step}: cancelled"
            await self._compensate(req, undo)  # Temporal cancels once: this runs
            raise
        self._state = "CONFIRMED"
        return {"booking_id": req["booking_id"], "state": self._state, "steps": self._done}

    async def _compensate(self, req: dict[str, Any], undo: list[str]) -> None:
        """Every registered compensation, newest first; ``compensated`` lists those that
        had something to undo."""
        self._state = "COMPENSATING"
        for compensation in reversed(undo):
            result = await _call(compensation, req, UNDO_RETRY)
            if result.get("applied"):
                self._undone.append(UNDO_ACTION[compensation])
        self._state = "COMPENSATED"

    @workflow.query(name="getStatus")
    def get_status(self) -> dict[str, Any]:
        return {
            "state": self._state,
            "done": list(self._done),
            "compensated": list(self._undone),
            "failure": self._failure,
        }
