"""Audit records: what Meridian decided, refused and changed, and why.

``records`` turns the core's audit events into JSON-shaped records (pure); an
``AuditSink`` stores them. The sink is awaited before the effect it records is applied
or acknowledged.
"""

from router.audit.records import flip_record
from router.audit.sink import AuditSink, LogAuditSink

__all__ = ["AuditSink", "LogAuditSink", "flip_record"]
