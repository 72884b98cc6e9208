"""``ContactSyncWorkflow``: a large contact synchronisation into the region's store.

Input (one JSON object)::

    {"tenant": "acme",
     "source": {"path": "samples/contacts-eu.jsonl"}      # or {"records": [{...}, ...]}
     "chunk_size": 500,                                   # records per activity (1-10000)
     "options": {"continue_as_new_every": 20,             # chunks per run (1-1000)
                 "default_calling_code": "49",            # v2: national phone numbers
                 "throttle_ms": 0,                        # pause per chunk (source rate limits)
                 "fail_attempts": 0}}                     # drills: first N attempts fail

The workflow reads the source's size once, then hands chunk after chunk to the
``syncContactChunk`` activity, which reads the chunk from the source and upserts it into
the region's store exactly once (``regions.store``): the contacts never pass through
Temporal's history, so a 100k sync keeps a small history and the personal data stays in
the region's database. Invalid records are counted and reported (position and reason,
never the value), not retried; transient failures are retried with backoff; the
activity heartbeats its progress. Every ``continue_as_new_every`` chunks the workflow
continues as new, carrying the cursor and the counters, so ``getStatus`` and
``getProgress`` answer for the whole sync, across runs.

Versioning: v2 normalises national phone numbers with the sync's
``default_calling_code``. It is a new activity type (``syncContactChunkV2``) chosen behind
``workflow.patched("contact-sync-v2-phone")``, so a run started under v1 keeps scheduling
``syncContactChunk`` when it replays under v2 code (its histories are replayed in
``tests/unit/test_replay.py``), and new runs (and v1 runs after their next
continue-as-new) use v2.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

PATCH_V2_PHONE = "contact-sync-v2-phone"
DESCRIBE_SOURCE = "describeContactSource"
SYNC_CHUNK_V1 = "syncContactChunk"
SYNC_CHUNK_V2 = "syncContactChunkV2"
COUNTERS = ("read", "inserted", "updated", "duplicate", "invalid")
MAX_INVALID_SAMPLES = 20

# Transient failures (a locked database, a source briefly unreadable) back off and retry;
# a source that cannot be read as given never heals by retrying.
CHUNK_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=500),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=10,
    non_retryable_error_types=["InvalidSource"],
)


def _bounded(options: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = options.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ApplicationError(
            f"{name}: an integer from {low} to {high}", type="InvalidInput", non_retryable=True
        )
    return value


def parse_params(params: Any) -> dict[str, Any]:
    """The input, checked; a bad one fails the workflow at once (retrying cannot help)."""
    if not isinstance(params, dict):
        raise ApplicationError("input: a JSON object", type="InvalidInput", non_retryable=True)
    tenant = params.get("tenant")
    if not isinstance(tenant, str) or not tenant:
        raise ApplicationError("tenant: required", type="InvalidInput", non_retryable=True)
    source = params.get("source")
    if not isinstance(source, dict) or ("path" in source) == ("records" in source):
        raise ApplicationError(
            "source: give either {'path': FILE} or {'records': [...]}",
            type="InvalidInput",
            non_retryable=True,
        )
    options = params.get("options") or {}
    if not isinstance(options, dict):
        raise ApplicationError("options: a JSON object", type="InvalidInput", non_retryable=True)
    code = options.get("default_calling_code", "")
    if not isinstance(code, str):
        raise ApplicationError(
            "default_calling_code: a string such as '49'", type="InvalidInput", non_retryable=True
        )
    return {
        "tenant": tenant,
        "source": source,
        "chunk_size": _bounded(params, "chunk_size", 500, 1, 10_000),
        "every": _bounded(options, "continue_as_new_every", 20, 1, 1000),
        "throttle_ms": _bounded(options, "throttle_ms", 0, 0, 60_000),
        "fail_attempts": _bounded(options, "fail_attempts", 0, 0, 5),
        "default_calling_code": code,
    }


@workflow.defn(name="ContactSyncWorkflow")
class ContactSyncWorkflow:
    def __init__(self) -> None:
        self._status = "PENDING"
        self._state: dict[str, Any] = {}

    @workflow.run
    async def run(self, params: dict[str, Any]) -> dict[str, Any]:
        p = parse_params(params)
        carried = params.get("carried")
        if isinstance(carried, dict):
            state = dict(carried)
            state["runs"] += 1
        else:
            info = workflow.info()
            state = {
                "sync_id": f"{info.workflow_id}/{info.run_id}",
                "cursor": 0,
                "done": False,
                "total": 0,
                "chunks": 0,
                "runs": 1,
                "counts": dict.fromkeys(COUNTERS, 0),
                "invalid_samples": [],
            }
        self._state = state
        self._status = "RUNNING"
        if not carried:
            records = p["source"].get("records")
            # Inline records: the workflow knows their number; a file is counted where it is.
            source = {"count": len(records)} if isinstance(records, list) else p["source"]
            described = await workflow.execute_activity(
                DESCRIBE_SOURCE,
                args=[{"source": source}],
                start_to_close_timeout=timedelta(minutes=2),
                retry_policy=CHUNK_RETRY,
                result_type=dict,
            )
            state["total"] = int(described["total"])
        chunks_this_run = 0
        while not state["done"]:
            if chunks_this_run >= p["every"]:
                self._status = "CONTINUING"
                workflow.continue_as_new({**params, "carried": state})
            await self._sync_chunk(p, state)
            chunks_this_run += 1
        self._status = "COMPLETED"
        return self._progress()

    def _chunk_activity(self) -> str:
        return SYNC_CHUNK_V2 if workflow.patched(PATCH_V2_PHONE) else SYNC_CHUNK_V1

    def _remote_source(self, p: dict[str, Any], cursor: int) -> dict[str, Any]:
        """What the activity reads: the file, or (inline records) only this chunk's slice,
        so a history never carries the whole list once per chunk."""
        records = p["source"].get("records")
        if isinstance(records, list):
            return {"records": records[cursor : cursor + p["chunk_size"]], "base": cursor}
        return dict(p["source"])

    async def _sync_chunk(self, p: dict[str, Any], state: dict[str, Any]) -> None:
        cursor = state["cursor"]
        result = await workflow.execute_activity(
            self._chunk_activity(),
            args=[
                {
                    "sync_id": state["sync_id"],
                    "tenant": p["tenant"],
                    "source": self._remote_source(p, cursor),
                    "cursor": cursor,
                    "chunk_size": p["chunk_size"],
                    "default_calling_code": p["default_calling_code"],
                    "throttle_ms": p["throttle_ms"],
                    "fail_attempts": p["fail_attempts"],
                }
            ],
            start_to_close_timeout=timedelta(minutes=5),
            heartbeat_timeout=timedelta(seconds=10),
            retry_policy=CHUNK_RETRY,
            result_type=dict,
        )
        for name in COUNTERS:
            state["counts"][name] += int(result["counts"][name])
        room = MAX_INVALID_SAMPLES - len(state["invalid_samples"])
        state["invalid_samples"] += list(result["invalid"])[: max(room, 0)]
        state["cursor"] = int(result["next_cursor"])
        records = p["source"].get("records")
        # Inline records: the activity saw only a slice; the workflow knows where the end is.
        state["done"] = (
            state["cursor"] >= len(records) if isinstance(records, list) else bool(result["done"])
        )
        state["chunks"] += 1

    @workflow.query(name="getStatus")
    def get_status(self) -> str:
        return self._status

    @workflow.query(name="getProgress")
    def get_progress(self) -> dict[str, Any]:
        return self._progress()

    def _progress(self) -> dict[str, Any]:
        s = self._state
        if not s:
            return {"status": self._status, "percent": 0.0, **dict.fromkeys(COUNTERS, 0)}
        counts = s["counts"]
        total = s["total"]
        done = 100.0 if s["done"] else 0.0
        percent = round(100 * counts["read"] / total, 1) if total and not s["done"] else done
        return {
            "status": self._status,
            "percent": min(percent, 100.0),
            **counts,
            "total": total,
            "chunks": s["chunks"],
            "runs": s["runs"],
            "cursor": s["cursor"],
            "sync_id": s["sync_id"],
            "invalid_samples": list(s["invalid_samples"]),
        }
