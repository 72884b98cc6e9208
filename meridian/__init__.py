"""Meridian's Python client: start and follow workflows through the router.

    from meridian import MeridianClient, TLSConfig

See ``meridian.client`` for the API and ``meridian.errors`` for what it raises.
"""

from meridian.client import (
    AuditReceipt,
    MeridianClient,
    RouteDecision,
    SyncMeridianClient,
    SyncWorkflowHandle,
    TLSConfig,
    WorkflowDescription,
    WorkflowHandle,
    WorkflowLocation,
    WorkflowOutcome,
)
from meridian.errors import (
    Aborted,
    AlreadyExists,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    MeridianError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    WorkflowFailed,
)

__all__ = [
    "Aborted",
    "AlreadyExists",
    "AuditReceipt",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "MeridianClient",
    "MeridianError",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "RouteDecision",
    "SyncMeridianClient",
    "SyncWorkflowHandle",
    "TLSConfig",
    "Unauthenticated",
    "Unavailable",
    "WorkflowDescription",
    "WorkflowFailed",
    "WorkflowHandle",
    "WorkflowLocation",
    "WorkflowOutcome",
]
