"""Translate temporalio's exceptions into Meridian's, at this adapter's boundary only."""

from __future__ import annotations

import asyncio

from temporalio.client import WorkflowQueryRejectedError
from temporalio.service import RPCError, RPCStatusCode

from router.errors import (
    ClusterUnavailable,
    InvalidArgument,
    MeridianError,
    WorkflowNotFound,
    WorkflowOperationFailed,
)


def refused_before_sending(exc: BaseException) -> bool:
    """True when the request cannot have reached the server (TCP connect failed).

    temporalio reports a lazy client's failed first connect as RuntimeError("Failed
    client connect: ... tcp connect error") and a dropped connection's reconnect failure
    as RPCError(UNAVAILABLE, "tcp connect error"); both mean nothing was sent.
    """
    text = str(exc)
    if isinstance(exc, RuntimeError) and text.startswith("Failed client connect"):
        return True
    return (
        isinstance(exc, RPCError)
        and exc.status == RPCStatusCode.UNAVAILABLE
        and "connect error" in text
    )


def translate(
    exc: BaseException, *, cluster: str, what: str, workflow_id: str | None = None
) -> MeridianError:
    """Map a foreign exception raised while talking to ``cluster`` to a MeridianError."""
    if isinstance(exc, MeridianError):
        return exc
    if isinstance(exc, WorkflowQueryRejectedError):
        run_status = exc.status.name if exc.status is not None else "unknown"
        return WorkflowOperationFailed(f"{what} rejected: the run is {run_status}")
    if refused_before_sending(exc):
        return ClusterUnavailable(
            f"cluster {cluster} refused the connection ({what} was not sent)",
            cluster=cluster,
            may_have_reached=False,
        )
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return ClusterUnavailable(
            f"cluster {cluster} did not answer {what} in time",
            cluster=cluster,
            may_have_reached=True,
        )
    if isinstance(exc, RPCError):
        status = exc.status
        if status == RPCStatusCode.NOT_FOUND and workflow_id is not None:
            return WorkflowNotFound(f"workflow {workflow_id} not found", workflow_id=workflow_id)
        if status in (RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.CANCELLED):
            # temporalio reports its own rpc_timeout as CANCELLED("Timeout expired").
            return ClusterUnavailable(
                f"cluster {cluster} did not answer {what} in time",
                cluster=cluster,
                may_have_reached=True,
            )
        if status == RPCStatusCode.INVALID_ARGUMENT:
            return InvalidArgument(field=what, reason=f"rejected by Temporal: {exc.message}")
        if status in (RPCStatusCode.FAILED_PRECONDITION, RPCStatusCode.NOT_FOUND):
            return WorkflowOperationFailed(f"{what} rejected by Temporal: {exc.message}")
        return ClusterUnavailable(
            f"cluster {cluster} failed {what}: {exc.message} ({status.name})",
            cluster=cluster,
            may_have_reached=True,
        )
    return ClusterUnavailable(
        f"cluster {cluster} failed {what}: {type(exc).__name__}",
        cluster=cluster,
        may_have_reached=True,
    )
