"""The one table from Meridian errors to gRPC status codes (the hierarchy and the
reasoning for each code are in ``router.errors``)."""

from __future__ import annotations

import grpc

from router.errors import (
    AuditUnavailable,
    ClusterUnavailable,
    CodecError,
    ConfigError,
    ConsulUnavailable,
    DeadlineExceeded,
    FlipConflict,
    FlipRefusedError,
    InvalidArgument,
    KeyRingError,
    MeridianError,
    NoHealthyTarget,
    Refused,
    ResidencyUnsatisfiable,
    StackError,
    Unavailable,
    WorkflowNotFound,
    WorkflowOperationFailed,
    WorkflowTypeNotServed,
)

# Most specific first: the first isinstance match wins.
STATUS: tuple[tuple[type[MeridianError], grpc.StatusCode], ...] = (
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (ResidencyUnsatisfiable, grpc.StatusCode.FAILED_PRECONDITION),
    (WorkflowTypeNotServed, grpc.StatusCode.FAILED_PRECONDITION),
    (NoHealthyTarget, grpc.StatusCode.UNAVAILABLE),
    (ClusterUnavailable, grpc.StatusCode.UNAVAILABLE),
    (AuditUnavailable, grpc.StatusCode.UNAVAILABLE),
    (ConsulUnavailable, grpc.StatusCode.UNAVAILABLE),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (WorkflowNotFound, grpc.StatusCode.NOT_FOUND),
    (WorkflowOperationFailed, grpc.StatusCode.FAILED_PRECONDITION),
    (FlipRefusedError, grpc.StatusCode.FAILED_PRECONDITION),
    (FlipConflict, grpc.StatusCode.ABORTED),
    (ConfigError, grpc.StatusCode.FAILED_PRECONDITION),
    (StackError, grpc.StatusCode.INTERNAL),
    # A payload that fails authentication is corrupt or tampered with: never guessed at.
    (CodecError, grpc.StatusCode.DATA_LOSS),
    (KeyRingError, grpc.StatusCode.INTERNAL),
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
