"""Request validation: every bad field gets InvalidArgument naming it and saying why."""

from __future__ import annotations

from typing import Any

import pytest

from router.core.model import DataClass, Priority, RoutingTable
from router.core.validate import build_request, check_args_size, check_workflow_id
from router.errors import InvalidArgument

GOOD: dict[str, Any] = {
    "workflow_type": "DataProcessingWorkflow",
    "tenant_id": "acme",
    "user_country": "DE",
    "user_subdivision": "",
    "data_class": DataClass.PII,
    "priority": Priority.NORMAL,
}


def test_good_request_is_normalised(table: RoutingTable) -> None:
    r = build_request(table, **{**GOOD, "user_country": "us", "user_subdivision": "us-ca"})
    assert (r.user_country, r.user_subdivision) == ("US", "US-CA")


BAD = [
    ("empty type", {"workflow_type": ""}, "workflow_type", "required"),
    ("long type", {"workflow_type": "x" * 1001}, "workflow_type", "limit is 1000"),
    ("control char type", {"workflow_type": "a\nb"}, "workflow_type", "control characters"),
    ("padded type", {"workflow_type": " a"}, "workflow_type", "whitespace"),
    ("empty tenant", {"tenant_id": ""}, "tenant_id", "required"),
    ("long tenant", {"tenant_id": "t" * 257}, "tenant_id", "limit is 256"),
    ("empty country", {"user_country": ""}, "user_country", "required"),
    ("unassigned country", {"user_country": "ZZ"}, "user_country", "not an assigned ISO 3166-1"),
    ("alpha-3 country", {"user_country": "DEU"}, "user_country", "not an assigned ISO 3166-1"),
    ("reserved EU code", {"user_country": "EU"}, "user_country", "not an assigned"),
    ("bad subdivision", {"user_subdivision": "DE-XX"}, "user_subdivision", "not an ISO 3166-2"),
    (
        "foreign subdivision",
        {"user_subdivision": "US-CA"},
        "user_subdivision",
        "not a subdivision of user_country DE",
    ),
    ("unspecified data class", {"data_class": None}, "data_class", "must be set"),
]


@pytest.mark.parametrize(
    ("changes", "field", "fragment"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_bad_field_is_named(
    table: RoutingTable, changes: dict[str, Any], field: str, fragment: str
) -> None:
    with pytest.raises(InvalidArgument) as info:
        build_request(table, **{**GOOD, **changes})
    assert info.value.field == field
    assert fragment in info.value.reason
    assert str(info.value).startswith(f"{field}: ")


def test_workflow_id_limit(table: RoutingTable) -> None:
    assert check_workflow_id("x" * 1000, table, required=True) == "x" * 1000
    assert check_workflow_id("", table, required=False) == ""
    with pytest.raises(InvalidArgument, match=r"workflow_id: 1001 characters, the limit is 1000"):
        check_workflow_id("x" * 1001, table, required=True)
    with pytest.raises(InvalidArgument, match="workflow_id: required"):
        check_workflow_id("", table, required=True)


def test_args_size_limit(table: RoutingTable) -> None:
    limit = table.limits.max_args_bytes
    assert limit == 2 * 1024 * 1024
    check_args_size("args", limit, table)
    with pytest.raises(InvalidArgument, match=r"args: encoded size 2097153 bytes exceeds"):
        check_args_size("args", limit + 1, table)
