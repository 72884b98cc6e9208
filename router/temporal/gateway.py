"""Workflow operations on one cluster, each bounded by a deadline.

Starts use the raw ``StartWorkflowExecution`` call (not ``Client.start_workflow``) for
three reasons: its response says whether the run is new (``started``); ``retry=False``
lets us own the retry policy (a start must never be re-sent blindly, issue 4); and it
skips the SDK's per-call handle and interceptor overhead on the hot path.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from temporalio.api.common.v1 import Memo, Payloads, WorkflowType
from temporalio.api.enums.v1 import WorkflowIdConflictPolicy, WorkflowIdReusePolicy
from temporalio.api.errordetails.v1 import WorkflowExecutionAlreadyStartedFailure
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import StartWorkflowExecutionRequest
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from router import telemetry
from router.core.model import Decision
from router.errors import DeadlineExceeded
from router.temporal.errors import translate
from router.temporal.pool import IDENTITY, ClientPool

T = TypeVar("T")

MEMO_KEY = "meridian"


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


@dataclass(frozen=True, slots=True)
class WorkflowInfo:
    workflow_id: str
    run_id: str
    workflow_type: str
    status: WorkflowExecutionStatus | None
    task_queue: str
    start_time: datetime | None
    close_time: datetime | None
    history_length: int
    # Meridian's own memo (tenant, data class, where it was routed), {} if absent.
    memo: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ResultOutcome:
    status: WorkflowExecutionStatus
    result: Any = None
    failure: str = ""


class Gateway:
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
        memo: Mapping[str, Any],
        request_id: str,
        timeout: float,
    ) -> StartOutcome:
        """Start (or find) the run of ``workflow_id`` where ``decision`` says.

        Idempotent by workflow id: USE_EXISTING returns a running run; REJECT_DUPLICATE
        makes a closed run's id final, and its ALREADY_EXISTS carries that run's id.
        """
        client = self._pool.client(decision.cluster, decision.namespace)
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
        (memo_payload,) = await converter.encode([dict(memo)])
        req.memo.CopyFrom(Memo(fields={MEMO_KEY: memo_payload}))
        try:
            with telemetry.start_span(workflow_type, decision.cluster) as trace_header:
                if trace_header is not None:
                    req.header.fields[telemetry.HEADER_KEY].CopyFrom(trace_header)
                call = client.workflow_service.start_workflow_execution(
                    req, retry=False, timeout=timedelta(seconds=timeout)
                )
                resp = await asyncio.wait_for(call, timeout + 0.05)
        except RPCError as exc:
            existing = _already_started_run(exc)
            if existing is not None:
                return StartOutcome(run_id=existing, started=False)
            raise translate(exc, cluster=decision.cluster, what="StartWorkflow") from exc
        except Exception as exc:
            raise translate(exc, cluster=decision.cluster, what="StartWorkflow") from exc
        return StartOutcome(run_id=resp.run_id, started=resp.started)

    def _handle(self, t: Target) -> WorkflowHandle[Any, Any]:
        client = self._pool.client(t.cluster, t.namespace)
        return client.get_workflow_handle(t.workflow_id, run_id=t.run_id or None)

    async def describe(self, t: Target, *, timeout: float) -> WorkflowInfo:
        handle = self._handle(t)

        async def call() -> WorkflowInfo:
            d = await handle.describe(rpc_timeout=timedelta(seconds=timeout))
            memo = (await d.memo()).get(MEMO_KEY, {})
            return WorkflowInfo(
                workflow_id=d.id,
                run_id=d.run_id,
                workflow_type=d.workflow_type,
                status=d.status,
                task_queue=d.task_queue,
                start_time=d.start_time,
                close_time=d.close_time,
                history_length=d.history_length,
                memo=memo if isinstance(memo, dict) else {},
            )

        return await self._bounded(call(), t, "DescribeWorkflow", timeout)

    async def signal(self, t: Target, name: str, args: Sequence[Any], *, timeout: float) -> None:
        call = self._handle(t).signal(name, args=args, rpc_timeout=timedelta(seconds=timeout))
        await self._bounded(call, t, f"SignalWorkflow {name!r}", timeout)

    async def query(self, t: Target, name: str, args: Sequence[Any], *, timeout: float) -> Any:
        call = self._handle(t).query(name, args=args, rpc_timeout=timedelta(seconds=timeout))
        return await self._bounded(call, t, f"QueryWorkflow {name!r}", timeout)

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
        return ResultOutcome(status=WorkflowExecutionStatus.COMPLETED, result=value)


async def _count_running(client: Any) -> int:
    count = await client.count_workflows("ExecutionStatus = 'Running'")
    return int(count.count)


def _already_started_run(exc: RPCError) -> str | None:
    if exc.status != RPCStatusCode.ALREADY_EXISTS or not exc.grpc_status.details:
        return None
    details = WorkflowExecutionAlreadyStartedFailure()
    if exc.grpc_status.details[0].Unpack(details):
        return details.run_id
    return None


def _failure_status(cause: BaseException) -> WorkflowExecutionStatus:
    from temporalio.exceptions import CancelledError, TerminatedError
    from temporalio.exceptions import TimeoutError as WfTimeout

    if isinstance(cause, CancelledError):
        return WorkflowExecutionStatus.CANCELED
    if isinstance(cause, TerminatedError):
        return WorkflowExecutionStatus.TERMINATED
    if isinstance(cause, WfTimeout):
        return WorkflowExecutionStatus.TIMED_OUT
    return WorkflowExecutionStatus.FAILED
