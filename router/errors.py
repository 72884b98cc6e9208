"""One error root for Meridian.

Every failure the router reports derives from :class:`MeridianError`; subclasses carry
keyword-only structured fields so callers (and the gRPC adapter's single status table in
``router.api.status``) never parse messages. Foreign exceptions (temporalio, grpc, yaml,
pydantic) are translated into these at the adapter that met them, with ``raise ... from``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class MeridianError(Exception):
    """Root of every error Meridian raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(MeridianError):
    """A request field is malformed; the message names the field and why."""

    def __init__(self, *, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class ResidencyUnsatisfiable(MeridianError):
    """No compliant target can exist for this request under the current config.

    Retrying does not help; the caller must change the request or the config must change.
    """

    def __init__(self, message: str, *, zone: str | None = None) -> None:
        super().__init__(message)
        self.zone = zone


class NoHealthyTarget(MeridianError):
    """Compliant targets exist but none is healthy now; retrying later may succeed."""

    def __init__(self, message: str, *, zone: str | None = None) -> None:
        super().__init__(message)
        self.zone = zone


class ClusterUnavailable(MeridianError):
    """A Temporal cluster did not answer within the call's deadline, or refused it."""

    def __init__(self, message: str, *, cluster: str, may_have_reached: bool) -> None:
        super().__init__(message)
        self.cluster = cluster
        # True when the request may have reached the cluster (timeout after sending):
        # such a start must never be blindly re-sent elsewhere.
        self.may_have_reached = may_have_reached


class DeadlineExceeded(MeridianError):
    """The caller's deadline (or the configured wait) ran out before the answer."""


class WorkflowNotFound(MeridianError):
    """No workflow with this id (and run, and tenant) exists on any reachable cluster."""

    def __init__(self, message: str, *, workflow_id: str) -> None:
        super().__init__(message)
        self.workflow_id = workflow_id


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


class WorkflowOperationFailed(MeridianError):
    """Temporal rejected an operation on an existing workflow (unknown query, closed run)."""

    def __init__(self, message: str, *, precondition: bool = True) -> None:
        super().__init__(message)
        self.precondition = precondition


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


class StackError(MeridianError):
    """The local dev stack could not start (port taken, binary missing, child died)."""
