"""Every error Meridian raises on purpose, in one module.

Subclasses carry keyword-only structured fields, so callers (and the gRPC adapter's one
status table, ``router.api.status``) never parse messages. Foreign exceptions (temporalio,
grpc, yaml, pydantic, aiohttp, py-consul, OSError) are translated into these at the
adapter that met them, with ``raise ... from``. The hierarchy, with the gRPC status each
maps to::

    MeridianError                        root; anything else unexpected is INTERNAL
    ├── Unauthenticated                  UNAUTHENTICATED    no, or bad, credentials
    ├── PermissionDenied                 PERMISSION_DENIED  a known principal, not allowed
    ├── QuotaExceeded                    RESOURCE_EXHAUSTED a start quota is spent (retry_after)
    ├── InvalidArgument                  INVALID_ARGUMENT   a request field is malformed
    ├── Refused                          a request no compliant target can take
    │   ├── ResidencyUnsatisfiable       FAILED_PRECONDITION  no compliant zone exists
    │   ├── WorkflowTypeNotServed        FAILED_PRECONDITION  no allowed region runs it
    │   └── NoHealthyTarget              UNAVAILABLE          none is healthy now
    ├── Unavailable                      UNAVAILABLE        a dependency did not answer
    │   ├── ClusterUnavailable           a Temporal cluster (may_have_reached says if sent)
    │   ├── AuditUnavailable             the audit log cannot be written: nothing acts
    │   ├── FlipStoreUnavailable         the failover state file cannot be written
    │   ├── ConsulUnavailable            Consul did not answer; the router keeps serving
    │   ├── WitnessUnavailable           an audit witness did not take a checkpoint
    │   └── AuditShippingError           the audit sink did not take a batch (retried)
    ├── DeadlineExceeded                 DEADLINE_EXCEEDED
    ├── WorkflowNotFound                 NOT_FOUND
    ├── WorkflowIdTaken                  ALREADY_EXISTS     the id is another tenant's run
    ├── WorkflowOperationFailed          FAILED_PRECONDITION  Temporal refused the operation
    ├── FlipRefusedError                 FAILED_PRECONDITION  a safety rule (named) refused it
    ├── FlipConflict                     ABORTED            lost a check-and-set race
    ├── ConfigError                      FAILED_PRECONDITION  a config rejected whole
    ├── CodecError                       DATA_LOSS          a payload failed authentication
    ├── KeyRingError                     INTERNAL           a key ring missing or unsafe
    ├── StoreError                       INTERNAL           a region's store cannot be opened
    └── StackError                       INTERNAL           the local dev stack
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class MeridianError(Exception):
    """Root of every error Meridian raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Unauthenticated(MeridianError):
    """The caller presented no credentials, or credentials that do not verify. The
    message says which check failed, never the token or certificate itself."""


class PermissionDenied(MeridianError):
    """An authenticated principal asked for something its grant does not allow. The
    message never says whether a tenant or workflow exists."""


class QuotaExceeded(MeridianError):
    """A start quota (per tenant or per principal) is spent; retry after ``retry_after``
    seconds."""

    def __init__(self, message: str, *, retry_after: float, scope: str) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        # "tenant" or "principal": which bucket was empty.
        self.scope = scope


class InvalidArgument(MeridianError):
    """A request field is malformed; the message names the field and why."""

    def __init__(self, *, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class Refused(MeridianError):
    """Routing found no compliant target for the request; it is never sent elsewhere."""

    def __init__(self, message: str, *, zone: str | None = None) -> None:
        super().__init__(message)
        # The residency zone the request is bound to, if any.
        self.zone = zone


class ResidencyUnsatisfiable(Refused):
    """No compliant target can exist for this request under the current config.

    Retrying does not help; the caller must change the request or the config must change.
    """


class WorkflowTypeNotServed(Refused):
    """No region the request may go to declares its workflow type: a start would sit on
    a queue no worker polls. Retrying does not help."""


class NoHealthyTarget(Refused):
    """Compliant targets exist but none is healthy now; retrying later may succeed."""


class Unavailable(MeridianError):
    """A dependency (a Temporal cluster, the audit log, Consul) did not answer."""


class ClusterUnavailable(Unavailable):
    """A Temporal cluster did not answer within the call's deadline, or refused it."""

    def __init__(self, message: str, *, cluster: str, may_have_reached: bool) -> None:
        super().__init__(message)
        self.cluster = cluster
        # True when the request may have reached the cluster (timeout after sending):
        # such a start must never be blindly re-sent elsewhere.
        self.may_have_reached = may_have_reached


class AuditUnavailable(Unavailable):
    """The audit log cannot be written now; nothing may be acted on without a record."""


class FlipStoreUnavailable(Unavailable):
    """The failover state (active clusters) cannot be persisted; the flip is not applied."""


class ConsulUnavailable(Unavailable):
    """Consul did not answer (or answered with an error); the router keeps serving."""


class WitnessUnavailable(Unavailable):
    """An audit witness did not take a checkpoint: it failed, or it ``refused`` one
    that would move it backwards (or contradict what it holds). Retried; never blocks
    a start."""

    def __init__(self, message: str, *, witness: str, refused: bool = False) -> None:
        super().__init__(message)
        self.witness = witness
        self.refused = refused


class AuditShippingError(Unavailable):
    """Audit records could not be shipped off the box now (the sink did not acknowledge
    a batch, or the chain does not continue where shipping stopped). Shipping retries;
    requests never wait for it."""


class DeadlineExceeded(MeridianError):
    """The caller's deadline (or the configured wait) ran out before the answer."""


class WorkflowNotFound(MeridianError):
    """No workflow with this id (and run, and tenant) exists where it could live."""

    def __init__(self, message: str, *, workflow_id: str) -> None:
        super().__init__(message)
        self.workflow_id = workflow_id


class WorkflowIdTaken(MeridianError):
    """A start named a workflow id whose run (open, or closed within retention) is not
    the caller's tenant's: ids are unique per namespace, so the caller must choose
    another. Says nothing of the run (not its id, tenant or status)."""

    def __init__(self, message: str, *, workflow_id: str) -> None:
        super().__init__(message)
        self.workflow_id = workflow_id


class WorkflowOperationFailed(MeridianError):
    """Temporal rejected an operation on an existing workflow (unknown query, closed run)."""

    def __init__(self, message: str, *, precondition: bool = True) -> None:
        super().__init__(message)
        self.precondition = precondition


class FlipRefusedError(MeridianError):
    """An SRE flip was refused by a safety rule (named in ``rule``); it was audited."""

    def __init__(self, message: str, *, rule: str, region: str) -> None:
        super().__init__(f"flip refused by rule {rule}: {message}")
        self.rule = rule
        self.region = region


class FlipConflict(MeridianError):
    """Two flips of one region raced; this one lost the check-and-set and did nothing."""

    def __init__(self, message: str, *, region: str) -> None:
        super().__init__(message)
        self.region = region


@dataclass(frozen=True)
class FieldError:
    """One problem in a config document, at a dotted path."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(MeridianError):
    """A config document was rejected whole; ``errors`` lists every problem found."""

    def __init__(self, errors: Sequence[FieldError], *, source: str = "config") -> None:
        self.errors = tuple(errors)
        self.source = source
        lines = "\n".join(f"  - {e}" for e in self.errors)
        noun = "error" if len(self.errors) == 1 else "errors"
        super().__init__(f"{source}: {len(self.errors)} {noun}\n{lines}")


class CodecError(MeridianError):
    """A payload could not be decoded (unknown key, failed tag, wrong region)."""

    def __init__(self, message: str, *, reason: str = "invalid") -> None:
        super().__init__(message)
        # A short code for metrics: other_region, unknown_key, truncated,
        # authentication, decompress, not_a_payload, invalid.
        self.reason = reason


class KeyRingError(MeridianError):
    """A key ring is missing, malformed, or not safely stored. Never contains key bytes."""


class StoreError(MeridianError):
    """A region's own store (SQLite or PostgreSQL) cannot be opened: said once, at start,
    with where (never a password) and why."""


class StackError(MeridianError):
    """The local dev stack could not start (port taken, binary missing, child died)."""
