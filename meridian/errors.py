"""What ``meridian.client`` raises: one hierarchy, mapped from the router's gRPC status.

::

    MeridianError                      root (code: the gRPC status, details: its message)
    ├── InvalidArgument                INVALID_ARGUMENT     a request field is malformed
    ├── Unauthenticated                UNAUTHENTICATED      no, or bad, credentials
    ├── PermissionDenied               PERMISSION_DENIED    not allowed for this principal
    ├── NotFound                       NOT_FOUND            no such workflow for this tenant
    ├── FailedPrecondition             FAILED_PRECONDITION  residency unsatisfiable, type not
    │                                                       served, closed run, Temporal refused
    ├── AlreadyExists                  ALREADY_EXISTS       the workflow id is another tenant's:
    │                                                       choose another
    ├── Aborted                        ABORTED              lost a race (a concurrent flip)
    ├── Unavailable                    UNAVAILABLE          safe_to_retry / connect_failed say
    │                                                       whether a retry can double an effect
    ├── ResourceExhausted              RESOURCE_EXHAUSTED   a start quota: retry_after seconds
    ├── DeadlineExceeded               DEADLINE_EXCEEDED    the call's deadline ran out
    ├── DataLoss                       DATA_LOSS            a payload failed authentication
    ├── Internal                       INTERNAL, UNKNOWN, anything else
    └── WorkflowFailed                 (no status) the run closed without completing

The client's hierarchy is its own (a caller's view of the gRPC status), separate from
``router.errors``, the server's: the router maps its errors to a status in one table
(``router.api.status``) and this module maps the status back.
"""

from __future__ import annotations

from typing import Any

import grpc

SAFE_TO_RETRY = "safe to retry with the same id"
# grpc's words when no connection could be made: nothing was sent.
_CONNECT_FAILED = ("failed to connect to all addresses", "Failed to connect to remote host")


class MeridianError(Exception):
    """Root of every error the client raises."""

    def __init__(self, message: str, *, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class InvalidArgument(MeridianError):
    pass


class Unauthenticated(MeridianError):
    pass


class PermissionDenied(MeridianError):
    pass


class NotFound(MeridianError):
    pass


class FailedPrecondition(MeridianError):
    pass


class AlreadyExists(MeridianError):
    """A start named a workflow id that another tenant's run holds (ids are unique per
    namespace): choose another id. Retrying the same id cannot succeed."""


class Aborted(MeridianError):
    pass


class Unavailable(MeridianError):
    """``connect_failed``: no connection was made, nothing was sent. ``safe_to_retry``:
    the router says a start may have reached a cluster and a retry *with the same
    workflow id* is deduplicated there. Either way the client retries by itself (same
    id, bounded); other UNAVAILABLEs are retried only by reads."""

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = grpc.StatusCode.UNAVAILABLE,
        safe_to_retry: bool = False,
        connect_failed: bool = False,
    ) -> None:
        super().__init__(message, code=code)
        self.safe_to_retry = safe_to_retry
        self.connect_failed = connect_failed


class ResourceExhausted(MeridianError):
    """A start quota is spent; ``retry_after`` (seconds) is the router's hint, if any."""

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = grpc.StatusCode.RESOURCE_EXHAUSTED,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class DeadlineExceeded(MeridianError):
    pass


class DataLoss(MeridianError):
    pass


class Internal(MeridianError):
    pass


class WorkflowFailed(MeridianError):
    """``result()`` of a run that closed without completing: ``status`` is how it
    closed (FAILED, CANCELED, TERMINATED, TIMED_OUT), ``failure`` the region's message."""

    def __init__(self, message: str, *, workflow_id: str, status: str, failure: str) -> None:
        super().__init__(message)
        self.workflow_id = workflow_id
        self.status = status
        self.failure = failure


_BY_CODE: dict[grpc.StatusCode, type[MeridianError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.DATA_LOSS: DataLoss,
}


def from_rpc_error(exc: grpc.RpcError) -> MeridianError:
    """The client error for a failed call (``grpc.aio.AioRpcError`` or a blocking call's
    ``grpc.RpcError``)."""
    code: grpc.StatusCode = exc.code()
    details: str = exc.details() or ""
    message = f"{code.name}: {details}"
    if code == grpc.StatusCode.UNAVAILABLE:
        return Unavailable(
            message,
            safe_to_retry=SAFE_TO_RETRY in details,
            connect_failed=any(words in details for words in _CONNECT_FAILED),
        )
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ResourceExhausted(message, retry_after=_retry_after(exc))
    return _BY_CODE.get(code, Internal)(message, code=code)


def _retry_after(exc: grpc.RpcError) -> float | None:
    """The ``retry-after`` trailer, else ``google.rpc.RetryInfo`` in the status details."""
    trailers: Any = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    for key, value in trailers or ():
        if key == "retry-after":
            try:
                return float(value)
            except ValueError:
                break
    for key, value in trailers or ():
        if key == "grpc-status-details-bin":
            from google.rpc import error_details_pb2, status_pb2

            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.RetryInfo()
                if detail.Unpack(info):
                    return float(info.retry_delay.ToNanoseconds() / 1e9)
    return None
