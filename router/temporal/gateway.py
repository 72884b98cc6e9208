"""The Temporal side, behind one small Protocol (``Gateway``): every operation on one
cluster, each bounded by a deadline, with temporalio's types and errors translated at
this boundary. The start path and the follow-ups depend only on the Protocol, so they
are unit-tested without a server (as httpx is tested through its transport seam); the
integration tests run ``TemporalGateway`` against real dev servers.

Starts use the raw ``StartWorkflowExecution`` call (not ``Client.start_workflow``) for
three reasons: its response says whether the run is new (``started``); ``retry=False``
lets us own the retry policy (a start must never be re-sent blindly); and it skips the
SDK's per-call handle and interceptor overhead on the hot path.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

from temporalio.api.common.v1 import Memo, Payloads, WorkflowType
from temporalio.api.enums.v1 import WorkflowIdConflictPolicy, WorkflowIdReusePolicy
from temporalio.api.errordetails.v1 import (
    QueryFailedFailure,
    WorkflowExecutionAlreadyStartedFailure,
)
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import StartWorkflowExecutionRequest
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowQueryFailedError,
)
from temporalio.service import RPCError, RPCStatusCode

from router import telemetry
from router.codec.converter import open_sealed
from router.core.memo import MEMO_KEY, WorkflowMemo
from router.core.model import Decision, WorkflowStatus
from router.errors import DeadlineExceeded, WorkflowOperationFailed
from router.temporal.errors import translate
from router.temporal.pool import IDENTITY, ClientPool

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Target:
    """One workflow (run) on one cluster's namespace; an empty run_id means the latest."""

    cluster: str
    namespace: str
    workflow_id: str
    run_id: str = ""


@dataclass(frozen=True, slots=True)
class StartOutcome:
    run_id: str
    started: bool
    # Seconds the StartWorkflowExecution call itself took (what Meridian adds is the
    # rest of the request's time).
    elapsed: float = 0.0


@dataclass(frozen=True, slots=True)
class WorkflowInfo:
    workflow_id: str
    run_id: str
    workflow_type: str
    status: WorkflowStatus | None
    task_queue: str
    start_time: datetime | None
    close_time: datetime | None
    history_length: int
    # Meridian's memo (owner, data class, where it was routed); None if absent.
    memo: WorkflowMemo | None


@dataclass(frozen=True, slots=True)
class ResultOutcome:
    status: WorkflowStatus
    result: Any = None
    failure: str = ""


class Gateway(Protocol):
    """What Meridian asks of Temporal. Every method raises only ``router.errors``
    types: ``ClusterUnavailable`` (with ``may_have_reached``), ``WorkflowNotFound``,
    ``WorkflowOperationFailed``, ``InvalidArgument``, ``DeadlineExceeded``."""

    async def start(
        self,
        decision: Decision,
        *,
        workflow_id: str,
        workflow_type: str,
        args: Sequence[Any],
        memo: WorkflowMemo,
        request_id: str,
        timeout: float,
    ) -> StartOutcome: ...

    async def describe(self, t: Target, *, timeout: float) -> WorkflowInfo: ...

    async def signal(
        self, t: Target, name: str, args: Sequence[Any], *, timeout: float
    ) -> None: ...

    async def query(self, t: Target, name: str, args: Sequence[Any], *, timeout: float) -> Any: ...

    async def cancel(self, t: Target, *, timeout: float) -> None: ...

    async def result(self, t: Target, *, timeout: float) -> ResultOutcome: ...

    async def count_running(self, cluster: str, namespace: str, *, timeout: float) -> int: ...


_STATUS = {
    WorkflowExecutionStatus.RUNNING: WorkflowStatus.RUNNING,
    WorkflowExecutionStatus.COMPLETED: WorkflowStatus.COMPLETED,
    WorkflowExecutionStatus.FAILED: WorkflowStatus.FAILED,
    WorkflowExecutionStatus.CANCELED: WorkflowStatus.CANCELED,
    WorkflowExecutionStatus.TERMINATED: WorkflowStatus.TERMINATED,
    WorkflowExecutionStatus.CONTINUED_AS_NEW: WorkflowStatus.CONTINUED_AS_NEW,
    WorkflowExecutionStatus.TIMED_OUT: WorkflowStatus.TIMED_OUT,
}


class TemporalGateway:
    """``Gateway`` over real clusters, through the pool's per-region clients (so every
    payload is encoded, and every failure decoded, with that region's codec)."""

    def __init__(self, pool: ClientPool) -> None:
        self._pool = pool

    @staticmethod
    async def _bounded(call: Awaitable[T], t: Target, what: str, timeout: float) -> T:
        try:
            return await asyncio.wait_for(call, timeout)
        except Exception as exc:
            raise translate(exc, cluster=t.cluster, what=what, workflow_id=t.workflow_id) from exc

    async def start(
        self,
        decision: Decision,
        *,
        workflow_id: str,
        workflow_type: str,
        args: Sequence[Any],
        memo: WorkflowMemo,
        request_id: str,
        timeout: float,
    ) -> StartOutcome:
        """Start (or find) the run of ``workflow_id`` where ``decision`` says.

        Idempotent by workflow id: USE_EXISTING returns a running run; REJECT_DUPLICATE
        makes a closed run's id final, and its ALREADY_EXISTS carries that run's id.
        """
        client = self._pool.client(decision.cluster, decision.namespace, region=decision.region)
        converter = client.data_converter
        req = StartWorkflowExecutionRequest(
            namespace=decision.namespace,
            workflow_id=workflow_id,
            workflow_type=WorkflowType(name=workflow_type),
            task_queue=TaskQueue(name=decision.task_queue),
            identity=IDENTITY,
            request_id=request_id or str(uuid.uuid4()),
            workflow_id_conflict_policy=WorkflowIdConflictPolicy.WORKFLOW_ID_CONFLICT_POLICY_USE_EXISTING,
            workflow_id_reuse_policy=WorkflowIdReusePolicy.WORKFLOW_ID_REUSE_POLICY_REJECT_DUPLICATE,
        )
        if args:
            req.input.CopyFrom(Payloads(payloads=await converter.encode(args)))
        (memo_payload,) = await converter.encode([memo.to_json()])
        req.memo.CopyFrom(Memo(fields={MEMO_KEY: memo_payload}))
        sent = time.perf_counter()
        try:
            with telemetry.start_span(workflow_type, decision.cluster) as trace_header:
                if trace_header is not None:
                    req.header.fields[telemetry.HEADER_KEY].CopyFrom(trace_header)
                # The RPC's own deadline, and a local one just after it in case the
                # bridge never answers (asyncio.timeout: no extra task, unlike wait_for).
                async with asyncio.timeout(timeout + 0.05):
                    resp = await client.workflow_service.start_workflow_execution(
                        req, retry=False, timeout=timedelta(seconds=timeout)
                    )
        except RPCError as exc:
            existing = _already_started_run(exc)
            if existing is not None:
                return StartOutcome(existing, False, time.perf_counter() - sent)
            raise translate(exc, cluster=decision.cluster, what="StartWorkflow") from exc
        except Exception as exc:
            raise translate(exc, cluster=decision.cluster, what="StartWorkflow") from exc
        return StartOutcome(resp.run_id, resp.started, time.perf_counter() - sent)

    def _client(self, t: Target) -> Client:
        return self._pool.client(t.cluster, t.namespace)

    def _handle(self, t: Target) -> WorkflowHandle[Any, Any]:
        return self._client(t).get_workflow_handle(t.workflow_id, run_id=t.run_id or None)

    async def describe(self, t: Target, *, timeout: float) -> WorkflowInfo:
        handle = self._handle(t)

        async def call() -> WorkflowInfo:
            d = await handle.describe(rpc_timeout=timedelta(seconds=timeout))
            return WorkflowInfo(
                workflow_id=d.id,
                run_id=d.run_id,
                workflow_type=d.workflow_type,
                status=_STATUS.get(d.status) if d.status is not None else None,
                task_queue=d.task_queue,
                start_time=d.start_time,
                close_time=d.close_time,
                history_length=d.history_length,
                memo=WorkflowMemo.from_json((await d.memo()).get(MEMO_KEY)),
            )

        return await self._bounded(call(), t, "DescribeWorkflow", timeout)

    async def signal(self, t: Target, name: str, args: Sequence[Any], *, timeout: float) -> None:
        call = self._handle(t).signal(name, args=args, rpc_timeout=timedelta(seconds=timeout))
        await self._bounded(call, t, f"SignalWorkflow {name!r}", timeout)

    async def query(self, t: Target, name: str, args: Sequence[Any], *, timeout: float) -> Any:
        what = f"QueryWorkflow {name!r}"
        call = self._handle(t).query(name, args=args, rpc_timeout=timedelta(seconds=timeout))
        try:
            return await asyncio.wait_for(call, timeout)
        except WorkflowQueryFailedError as exc:
            # The worker's failure travels encrypted (the region's codec covers failure
            # messages too): open it with the region's keys.
            message = await self._query_failure(t, exc)
            raise WorkflowOperationFailed(f"{what} failed: {message}") from exc
        except Exception as exc:
            raise translate(exc, cluster=t.cluster, what=what, workflow_id=t.workflow_id) from exc

    async def _query_failure(self, t: Target, exc: WorkflowQueryFailedError) -> str:
        """The worker's message for a failed query, readable: Temporal returns the
        failure's message (sealed with the region's key by the regional worker) and,
        from SDKs that send it, the whole Failure; both are opened with the region's
        converter here, so the caller reads what the workflow said."""
        converter = self._client(t).data_converter
        rpc = exc.__cause__ or exc.__context__
        if isinstance(rpc, RPCError):
            for detail in rpc.grpc_status.details:
                failed = QueryFailedFailure()
                if detail.Unpack(failed) and failed.HasField("failure"):
                    decoded = await converter.decode_failure(failed.failure)
                    return str(decoded) or type(decoded).__name__
        opened = open_sealed(exc.message, converter)
        return opened if opened is not None else exc.message

    async def cancel(self, t: Target, *, timeout: float) -> None:
        call = self._handle(t).cancel(rpc_timeout=timedelta(seconds=timeout))
        await self._bounded(call, t, "CancelWorkflow", timeout)

    async def count_running(self, cluster: str, namespace: str, *, timeout: float) -> int:
        """Running workflows in one namespace of a cluster, from its visibility store."""
        client = self._pool.client(cluster, namespace)
        return await self._bounded(
            _count_running(client), Target(cluster, namespace, ""), "CountWorkflows", timeout
        )

    async def result(self, t: Target, *, timeout: float) -> ResultOutcome:
        """Wait up to ``timeout`` for the run to close. Follows continue-as-new."""
        try:
            value = await asyncio.wait_for(self._handle(t).result(follow_runs=True), timeout)
        except TimeoutError as exc:
            raise DeadlineExceeded(
                f"workflow {t.workflow_id} is still running after {timeout:.1f} s; "
                "call again (with a longer deadline) to keep waiting"
            ) from exc
        except WorkflowFailureError as exc:
            cause = exc.cause
            return ResultOutcome(
                status=_failure_status(cause), failure=str(cause) or type(cause).__name__
            )
        except Exception as exc:
            raise translate(
                exc, cluster=t.cluster, what="GetWorkflowResult", workflow_id=t.workflow_id
            ) from exc
        return ResultOutcome(status=WorkflowStatus.COMPLETED, result=value)


async def _count_running(client: Client) -> int:
    count = await client.count_workflows("ExecutionStatus = 'Running'")
    return int(count.count)


def _already_started_run(exc: RPCError) -> str | None:
    if exc.status != RPCStatusCode.ALREADY_EXISTS or not exc.grpc_status.details:
        return None
    details = WorkflowExecutionAlreadyStartedFailure()
    if exc.grpc_status.details[0].Unpack(details):
        return details.run_id
    return None


def _failure_status(cause: BaseException) -> WorkflowStatus:
    from temporalio.exceptions import CancelledError, TerminatedError
    from temporalio.exceptions import TimeoutError as WfTimeout

    if isinstance(cause, CancelledError):
        return WorkflowStatus.CANCELED
    if isinstance(cause, TerminatedError):
        return WorkflowStatus.TERMINATED
    if isinstance(cause, WfTimeout):
        return WorkflowStatus.TIMED_OUT
    return WorkflowStatus.FAILED
