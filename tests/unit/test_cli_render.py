"""The CLI's one converter from a protobuf message to JSON-shaped Python, on real messages
of the public contract: every field present, 64-bit integers as ints, enums by name,
timestamps as ISO 8601 UTC, google.protobuf.Value as plain JSON."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from google.protobuf import struct_pb2, timestamp_pb2
from temporalio.api.common.v1 import Payload

from router.api.values import from_python
from router.cli.render import message_rows, message_to_json
from router.v1 import router_pb2 as pb

WHEN = datetime(2026, 11, 24, 10, 0, 0, tzinfo=UTC)


def ts(when: datetime = WHEN, nanos: int = 0) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(when)
    out.nanos = nanos
    return out


def roundtrip(value: Any) -> Any:
    """What a tool reading the printed JSON gets back."""
    return json.loads(json.dumps(value))


def test_duplicate_start_keeps_false_zero_and_empty() -> None:
    resp = pb.StartWorkflowResponse(
        workflow_id="order-42", run_id="run-1", started=False, request_id="",
        decision=pb.RouteDecision(
            zone="eu", region="eu-west", cluster="eu-west-a", namespace="eu-west",
            task_queue="eu-west-q", rule="residency", reasons=[], config_version="v1",
            failed_over=False, endpoint="127.0.0.1:7235",
            receipt=pb.AuditReceipt(sequence=0, hash="h0", file="a.jsonl"),
        ),
    )  # fmt: skip
    assert roundtrip(message_to_json(resp)) == {
        "workflow_id": "order-42",
        "run_id": "run-1",
        "decision": {
            "zone": "eu", "region": "eu-west", "cluster": "eu-west-a", "namespace": "eu-west",
            "task_queue": "eu-west-q", "rule": "residency", "reasons": [],
            "config_version": "v1", "failed_over": False, "endpoint": "127.0.0.1:7235",
            "receipt": {"sequence": 0, "hash": "h0", "file": "a.jsonl", "chain_id": "",
                        "key_id": "", "signature": ""},
        },
        "started": False,
        "request_id": "",
        "receipt": None,
        "home": "",
    }  # fmt: skip


def test_unset_presence_fields_are_null_not_defaults() -> None:
    out = message_to_json(pb.StartWorkflowResponse())
    assert out["started"] is None and out["decision"] is None and out["receipt"] is None
    assert out["workflow_id"] == ""


def test_64_bit_integers_are_ints_enums_names_timestamps_iso() -> None:
    big = 2**62 + 1  # beyond a double's exact range: must not pass through a float
    resp = pb.DescribeWorkflowResponse(
        workflow_id="w", status=pb.RUNNING, start_time=ts(nanos=5_000_000),
        history_length=big, data_class=pb.PII,
        location=pb.WorkflowLocation(zone="eu", region="eu-west", cluster="eu-west-a"),
    )  # fmt: skip
    out = roundtrip(message_to_json(resp))
    assert out["history_length"] == big and type(out["history_length"]) is int
    assert out["status"] == "RUNNING" and out["data_class"] == "PII"
    assert out["start_time"] == "2026-11-24T10:00:00.005Z"
    assert out["close_time"] is None
    assert out["location"] == {
        "zone": "eu", "region": "eu-west", "cluster": "eu-west-a", "namespace": "", "home": "",
    }  # fmt: skip
    receipt = message_to_json(pb.AuditReceipt(sequence=2**64 - 1))
    assert receipt["sequence"] == 2**64 - 1


def test_values_are_plain_json_with_integral_numbers_as_ints() -> None:
    resp = pb.QueryWorkflowResponse(
        result=from_python({"done": 20, "ratio": 2.5, "steps": [1, 2.5, None, True], "n": {}})
    )
    out = roundtrip(message_to_json(resp))
    assert out["result"] == {"done": 20, "ratio": 2.5, "steps": [1, 2.5, None, True], "n": {}}
    assert type(out["result"]["done"]) is int and type(out["result"]["steps"][0]) is int
    assert out["location"] is None
    assert message_to_json(pb.QueryWorkflowResponse(result=from_python(20)))["result"] == 20
    assert message_to_json(pb.QueryWorkflowResponse(result=from_python(2.5)))["result"] == 2.5


def test_struct_and_list_value_messages() -> None:
    struct = struct_pb2.Struct()
    struct.update({"a": 1, "b": [2, "x"]})
    assert message_to_json(struct) == {"a": 1, "b": [2, "x"]}
    listed = struct_pb2.ListValue()
    listed.extend([3, 4.5])
    assert message_to_json(listed) == [3, 4.5]
    assert message_to_json(from_python(None)) is None


def test_topology_every_field_and_repeated_messages() -> None:
    topo = pb.Topology(
        config_version="v9",
        regions=[pb.Region(
            name="eu-west", zone="eu", mode="automatic", failed_over=False,
            clusters=[
                pb.Cluster(name="eu-west-a", endpoint="h:1", namespaces=["eu-west"],
                           role=pb.PRIMARY, healthy=True, active=True, probed=True),
                pb.Cluster(name="eu-west-b", endpoint="h:2", role=pb.STANDBY),
            ],
        )],
        zones=[pb.Zone(name="eu", countries=["DE", "FR"], home_region="eu-west")],
        is_leader=False,
        last_rejected=pb.ConfigRejection(time=ts(), source="file:x.yaml", errors=["a: b"]),
    )  # fmt: skip
    out = roundtrip(message_to_json(topo))
    region = out["regions"][0]
    assert region["failed_over"] is False and region["last_flip"] is None
    assert region["clusters"][1] == {
        "name": "eu-west-b", "endpoint": "h:2", "namespaces": [], "role": "STANDBY",
        "healthy": False, "active": False, "last_error": "", "probed": False,
    }  # fmt: skip
    assert region["clusters"][0]["role"] == "PRIMARY" and region["clusters"][0]["active"] is True
    assert out["zones"] == [{"name": "eu", "countries": ["DE", "FR"], "home_region": "eu-west"}]
    assert out["is_leader"] is False and out["consul_reachable"] is False and out["consul"] == ""
    assert out["last_rejected"] == {
        "time": "2026-11-24T10:00:00Z", "source": "file:x.yaml", "errors": ["a: b"]
    }  # fmt: skip


def test_unknown_enum_number_is_kept_as_a_number() -> None:
    d = pb.DescribeWorkflowResponse()
    d.status = pb.WorkflowStatus.ValueType(42)  # a newer server's status this client does not know
    assert message_to_json(d)["status"] == 42


def test_maps_are_objects_and_bytes_base64() -> None:
    payload = Payload(metadata={"encoding": b"json/plain"}, data=b"\x00\x01")
    assert message_to_json(payload) == {
        "metadata": {"encoding": "anNvbi9wbGFpbg=="},
        "data": "AAE=",
        "external_payloads": [],
    }


@pytest.mark.parametrize(
    ("value", "text"),
    [(float("nan"), "NaN"), (float("inf"), "Infinity"), (float("-inf"), "-Infinity")],
    ids=["nan", "inf", "-inf"],
)
def test_non_finite_numbers_are_strings_as_in_proto3_json(value: float, text: str) -> None:
    out = message_to_json(struct_pb2.Value(number_value=value))
    assert out == text
    json.dumps(out, allow_nan=False)  # valid JSON, not Python's NaN extension


def test_rows_flatten_messages_and_keep_false() -> None:
    resp = pb.StartWorkflowResponse(
        workflow_id="w", started=False,
        decision=pb.RouteDecision(region="eu-west", reasons=["r1", "r2"], failed_over=False),
    )  # fmt: skip
    rows = dict(message_rows(resp))
    assert rows["started"] == "false"
    assert rows["decision.failed_over"] == "false"
    assert rows["decision.reasons"] == "r1; r2"
    assert rows["decision.receipt"] == "" and rows["receipt"] == ""
    assert rows["request_id"] == ""
    result = dict(message_rows(pb.WorkflowResult(result=from_python({"total": 3}))))
    assert result["result"] == '{"total": 3}' and result["status"] == "WORKFLOW_STATUS_UNSPECIFIED"


def test_struct_keys_print_in_one_order_whatever_the_map_gives() -> None:
    """A Struct is a map (its iteration order is the runtime's): a workflow result printed
    twice must read the same, nested objects too."""
    keys = [f"k{i:02d}" for i in range(40)]
    value = {k: {"b": 1, "a": [{"z": 1, "y": 2}]} for k in reversed(keys)}
    out = message_to_json(pb.WorkflowResult(result=from_python(value)))["result"]
    assert list(out) == keys
    assert list(out["k00"]) == ["a", "b"] and list(out["k00"]["a"][0]) == ["y", "z"]
