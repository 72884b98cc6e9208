"""The compliance audit log: every decision, refusal, start outcome, flip, config change
and authentication failure, hash-chained, durable before its effect is acknowledged,
verifiable and searchable by auditors (``meridian audit verify|query|report``)."""

from router.audit.log import AuditLog, Receipt, load_key
from router.audit.records import (
    CallContext,
    access_record,
    auth_failure_record,
    config_record,
    decision_record,
    flip_record,
    key_rotation_record,
    outcome_record,
    refusal_record,
)
from router.audit.sink import AuditSink, MemoryAuditSink
from router.audit.verify import VerifyResult, verify, verify_chains

__all__ = [
    "AuditLog",
    "AuditSink",
    "CallContext",
    "MemoryAuditSink",
    "Receipt",
    "VerifyResult",
    "access_record",
    "auth_failure_record",
    "config_record",
    "decision_record",
    "flip_record",
    "key_rotation_record",
    "load_key",
    "outcome_record",
    "refusal_record",
    "verify",
    "verify_chains",
]
