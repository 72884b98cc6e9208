"""The memo Meridian stores with every workflow it starts: the one typed contract between
the start path (which writes it) and the follow-ups (which read it to find and check a
workflow's owner), encrypted with the region's key like every other payload.

It is the only thing a follow-up trusts about ownership: a run whose memo does not name
the caller's tenant is treated as if it did not exist.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from router.core.model import DataClass, Decision, RouteRequest

# The memo field under which the value is stored (Temporal memos are key -> payload).
MEMO_KEY = "meridian"


@dataclass(frozen=True, slots=True)
class WorkflowMemo:
    tenant_id: str
    data_class: DataClass
    user_country: str
    zone: str
    # The zone the data is bound to; "" when it may go anywhere.
    residency_zone: str
    region: str
    cluster: str
    rule: str
    config_version: str
    request_id: str

    @classmethod
    def of(cls, req: RouteRequest, d: Decision, request_id: str) -> WorkflowMemo:
        return cls(
            tenant_id=req.tenant_id,
            data_class=req.data_class,
            user_country=req.user_country,
            zone=d.zone,
            residency_zone=d.residency_zone or "",
            region=d.region,
            cluster=d.cluster,
            rule=d.rule,
            config_version=d.config_version,
            request_id=request_id,
        )

    def to_json(self) -> dict[str, str]:
        # Not dataclasses.asdict: it deep-copies every field, once per start.
        doc = {f.name: getattr(self, f.name) for f in _FIELDS}
        doc["data_class"] = self.data_class.value
        return doc

    @classmethod
    def from_json(cls, doc: Any) -> WorkflowMemo | None:
        """The memo read back from a run; None when it is absent or not Meridian's
        (a workflow started around Meridian, or an older shape): such a run belongs to
        no tenant."""
        if not isinstance(doc, Mapping):
            return None
        values: dict[str, Any] = {}
        for f in fields(cls):
            value = doc.get(f.name)
            if value is None:
                # Absent, or null as releases before this type wrote for "no residency
                # zone": an empty field. Ownership still needs tenant and data class.
                value = ""
            if not isinstance(value, str):
                return None
            values[f.name] = value
        if not values["tenant_id"]:
            return None
        try:
            values["data_class"] = DataClass(values["data_class"])
        except ValueError:
            return None
        return cls(**values)


_FIELDS = fields(WorkflowMemo)
