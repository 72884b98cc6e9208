"""The one table from Meridian errors to gRPC status codes (the hierarchy and the
reasoning for each code are in ``router.errors``)."""

from __future__ import annotations

from typing import NoReturn

import grpc
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from router.errors import (
    AuditShippingError,
    AuditUnavailable,
    ClusterUnavailable,
    CodecError,
    ConfigError,
    ConsulUnavailable,
    DeadlineExceeded,
    FlipConflict,
    FlipRefusedError,
    FlipStoreUnavailable,
    InvalidArgument,
    KeyRingError,
    MeridianError,
    NoHealthyTarget,
    PermissionDenied,
    QuotaExceeded,
    Refused,
    ResidencyUnsatisfiable,
    StackError,
    StoreError,
    Unauthenticated,
    Unavailable,
    WitnessUnavailable,
    WorkflowIdTaken,
    WorkflowNotFound,
    WorkflowOperationFailed,
    WorkflowTypeNotServed,
)

# Most specific first: the first isinstance match wins.
STATUS: tuple[tuple[type[MeridianError], grpc.StatusCode], ...] = (
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (QuotaExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (ResidencyUnsatisfiable, grpc.StatusCode.FAILED_PRECONDITION),
    (WorkflowTypeNotServed, grpc.StatusCode.FAILED_PRECONDITION),
    (NoHealthyTarget, grpc.StatusCode.UNAVAILABLE),
    (ClusterUnavailable, grpc.StatusCode.UNAVAILABLE),
    (AuditUnavailable, grpc.StatusCode.UNAVAILABLE),
    (FlipStoreUnavailable, grpc.StatusCode.UNAVAILABLE),
    (ConsulUnavailable, grpc.StatusCode.UNAVAILABLE),
    (WitnessUnavailable, grpc.StatusCode.UNAVAILABLE),
    (AuditShippingError, grpc.StatusCode.UNAVAILABLE),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (WorkflowNotFound, grpc.StatusCode.NOT_FOUND),
    (WorkflowIdTaken, grpc.StatusCode.ALREADY_EXISTS),
    (WorkflowOperationFailed, grpc.StatusCode.FAILED_PRECONDITION),
    (FlipRefusedError, grpc.StatusCode.FAILED_PRECONDITION),
    (FlipConflict, grpc.StatusCode.ABORTED),
    (ConfigError, grpc.StatusCode.FAILED_PRECONDITION),
    (StackError, grpc.StatusCode.INTERNAL),
    # A payload that fails authentication is corrupt or tampered with: never guessed at.
    (CodecError, grpc.StatusCode.DATA_LOSS),
    (KeyRingError, grpc.StatusCode.INTERNAL),
    (StoreError, grpc.StatusCode.INTERNAL),
    # The abstract bases last: a new subclass gets its family's code until it has its own.
    (Refused, grpc.StatusCode.FAILED_PRECONDITION),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
)


def status_of(exc: MeridianError) -> grpc.StatusCode:
    for kind, code in STATUS:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


def message_of(exc: MeridianError) -> str:
    msg = exc.message
    if isinstance(exc, ClusterUnavailable) and exc.may_have_reached:
        msg += " (the request may have reached the cluster)"
    return msg


async def abort(context: grpc.aio.ServicerContext, exc: MeridianError) -> NoReturn:
    """End the call with ``exc``'s status and message. A spent quota also carries the
    standard ``google.rpc.RetryInfo`` (in the status details) and a ``retry-after``
    trailer in seconds, so clients can back off by the hint."""
    code, message = status_of(exc), message_of(exc)
    if isinstance(exc, QuotaExceeded):
        delay = Duration()
        delay.FromNanoseconds(int(exc.retry_after * 1e9))
        status = status_pb2.Status(code=code.value[0], message=message)
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        rich = rpc_status.to_status(status)
        hint = (("retry-after", f"{exc.retry_after:.3f}"),)
        await context.abort_with_status(
            type(rich)(rich.code, rich.details, (*rich.trailing_metadata, *hint))
        )
    await context.abort(code, message)
    raise AssertionError("unreachable: context.abort raises")
