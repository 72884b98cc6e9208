"""Validation of caller input against the compiled table's limits and code lists.

Pure, so the gRPC adapter and the CLI's ``explain`` share one set of messages: each
error names the field and says why (``InvalidArgument(field=..., reason=...)``).
"""

from __future__ import annotations

from router.core.model import DataClass, Priority, RouteRequest, RoutingTable
from router.errors import InvalidArgument

# Characters that break task-queue names, logs and audit lines.
_FORBIDDEN = frozenset(chr(c) for c in range(32)) | {"\x7f"}


def check_name(field: str, value: str, *, limit: int, required: bool = True) -> str:
    """A caller-supplied identifier: non-empty (when required), bounded, printable."""
    if not value:
        if required:
            raise InvalidArgument(field=field, reason="required, got an empty string")
        return value
    if len(value) > limit:
        raise InvalidArgument(field=field, reason=f"{len(value)} characters, the limit is {limit}")
    if value != value.strip() or not _FORBIDDEN.isdisjoint(value):
        raise InvalidArgument(
            field=field,
            reason="must not contain control characters or leading/trailing whitespace",
        )
    return value


def check_country(value: str, table: RoutingTable) -> str:
    if not value:
        raise InvalidArgument(
            field="user_country", reason="required: the user's ISO 3166-1 alpha-2 country code"
        )
    code = value.upper()
    if len(code) != 2 or code not in table.known_countries:
        raise InvalidArgument(
            field="user_country",
            reason=f"{value!r} is not an assigned ISO 3166-1 alpha-2 country code",
        )
    return code


def check_subdivision(value: str, country: str, table: RoutingTable) -> str | None:
    if not value:
        return None
    code = value.upper()
    if code not in table.known_subdivisions:
        raise InvalidArgument(
            field="user_subdivision",
            reason=f"{value!r} is not an ISO 3166-2 subdivision code (e.g. 'US-CA')",
        )
    if not code.startswith(country + "-"):
        raise InvalidArgument(
            field="user_subdivision",
            reason=f"{code} is not a subdivision of user_country {country}",
        )
    return code


def build_request(
    table: RoutingTable,
    *,
    workflow_type: str,
    tenant_id: str,
    user_country: str,
    user_subdivision: str,
    data_class: DataClass | None,
    priority: Priority,
) -> RouteRequest:
    """Check every routing input and return the normalised request.

    ``data_class`` None means the caller left it unspecified: refused, because a
    router that guesses a class could send regulated data across a border.
    """
    limits = table.limits
    check_name("workflow_type", workflow_type, limit=limits.max_workflow_type_length)
    check_name("tenant_id", tenant_id, limit=limits.max_tenant_id_length)
    country = check_country(user_country, table)
    subdivision = check_subdivision(user_subdivision, country, table)
    if data_class is None:
        raise InvalidArgument(
            field="data_class",
            reason="must be set (PUBLIC, INTERNAL, PII or FINANCIAL): callers classify "
            "their data, Meridian does not guess",
        )
    return RouteRequest(
        workflow_type=workflow_type,
        tenant_id=tenant_id,
        user_country=country,
        user_subdivision=subdivision,
        data_class=data_class,
        priority=priority,
    )


def check_workflow_id(workflow_id: str, table: RoutingTable, *, required: bool) -> str:
    return check_name(
        "workflow_id", workflow_id, limit=table.limits.max_workflow_id_length, required=required
    )


def check_args_size(field: str, size: int, table: RoutingTable) -> None:
    limit = table.limits.max_args_bytes
    if size > limit:
        raise InvalidArgument(
            field=field, reason=f"encoded size {size} bytes exceeds the limit of {limit} bytes"
        )
