"""Health thresholds, Value conversion, the status table, CLI tables and exit codes."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from router.api.status import STATUS, message_of, status_of
from router.api.values import args_to_python, from_python, to_python
from router.cli import main, render_table
from router.core.health import ProbeState, Thresholds, observe
from router.errors import (
    ClusterUnavailable,
    CodecError,
    ConfigError,
    ConsulUnavailable,
    DeadlineExceeded,
    FieldError,
    FlipConflict,
    InvalidArgument,
    KeyRingError,
    MeridianError,
    NoHealthyTarget,
    ResidencyUnsatisfiable,
    WorkflowNotFound,
    WorkflowOperationFailed,
)
from tests.helpers import default_doc, write_config

T = Thresholds(unhealthy=3, healthy=2)


def run(seq: str, start: ProbeState | None = None) -> list[bool | None]:
    state = start or ProbeState()
    out = []
    for ch in seq:
        state = observe(state, ch == "+", "" if ch == "+" else "refused", T)
        out.append(state.healthy)
    return out


@pytest.mark.parametrize(
    ("seq", "expected"),
    [
        ("+", [True]),
        ("-", [False]),
        ("+--", [True, True, True]),
        ("+---", [True, True, True, False]),
        ("+--+---", [True, True, True, True, True, True, False]),
        ("---+", [False, False, False, False]),
        ("---++", [False, False, False, False, True]),
        ("---+-++", [False] * 6 + [True]),
    ],
)
def test_health_thresholds(seq: str, expected: list[bool]) -> None:
    assert run(seq) == expected


def test_probe_state_keeps_last_error_until_healthy() -> None:
    s = observe(ProbeState(healthy=True), False, "timed out", T)
    assert s.last_error == "timed out" and s.healthy
    s = observe(ProbeState(healthy=False, last_error="x"), True, "", T)
    assert (s.healthy, s.last_error) == (False, "x")


VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    1,
    -7,
    2**53,
    1.5,
    "",
    "héllo",
    [],
    {},
    {"a": [1, {"b": None}], "c": "d"},
    [1, "two", 3.25, [False]],
]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_value_round_trip(value: Any) -> None:
    back = to_python(from_python(value))
    assert back == value and type(back) is type(value)


def test_value_integral_floats_become_ints_but_big_ones_stay_floats() -> None:
    assert to_python(from_python(3.0)) == 3 and isinstance(to_python(from_python(3.0)), int)
    assert isinstance(to_python(from_python(2.0**60)), float)


def test_non_finite_args_are_rejected() -> None:
    with pytest.raises(InvalidArgument, match=r"args\[1\]: NaN"):
        args_to_python("args", [from_python(1), struct_pb2.Value(number_value=math.nan)])


def test_non_json_results_are_type_errors() -> None:
    with pytest.raises(TypeError):
        from_python(b"bytes")


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidArgument(field="f", reason="r"), grpc.StatusCode.INVALID_ARGUMENT),
        (ResidencyUnsatisfiable("m"), grpc.StatusCode.FAILED_PRECONDITION),
        (NoHealthyTarget("m"), grpc.StatusCode.UNAVAILABLE),
        (ClusterUnavailable("m", cluster="c", may_have_reached=False), grpc.StatusCode.UNAVAILABLE),
        (DeadlineExceeded("m"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (WorkflowNotFound("m", workflow_id="w"), grpc.StatusCode.NOT_FOUND),
        (WorkflowOperationFailed("m"), grpc.StatusCode.FAILED_PRECONDITION),
        (ConfigError([FieldError("a", "b")]), grpc.StatusCode.FAILED_PRECONDITION),
        (CodecError("m"), grpc.StatusCode.DATA_LOSS),
        (ConsulUnavailable("m"), grpc.StatusCode.UNAVAILABLE),
        (FlipConflict("m", region="r"), grpc.StatusCode.ABORTED),
        (KeyRingError("m"), grpc.StatusCode.INTERNAL),
        (MeridianError("m"), grpc.StatusCode.INTERNAL),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else None,
)
def test_status_mapping(error: MeridianError, code: grpc.StatusCode) -> None:
    assert status_of(error) is code


def test_every_error_class_has_a_status() -> None:
    def subclasses(cls: type) -> set[type]:
        out: set[type] = set(cls.__subclasses__())
        for sub in list(out):
            out |= subclasses(sub)
        return out

    mapped = {kind for kind, _ in STATUS}
    assert subclasses(MeridianError) <= mapped


def test_unsure_start_says_it_may_have_reached_the_cluster() -> None:
    sure = ClusterUnavailable("c refused", cluster="c", may_have_reached=False)
    unsure = ClusterUnavailable("c timed out", cluster="c", may_have_reached=True)
    assert "may have reached" not in message_of(sure)
    assert "may have reached" in message_of(unsure)


def test_render_table() -> None:
    out = render_table(["a", "long header"], [("x", 1), ("yyyy", None)])
    assert out.splitlines() == ["a     long header", "----  -----------", "x     1", "yyyy"]


def test_config_validate_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write_config(tmp_path / "good.yaml", default_doc())
    assert main(["config", "validate", str(good), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["valid"] is True
    doc = default_doc()
    doc["regions"]["eu-west"]["clusters"][1]["zone"] = "us"
    doc["default_region"] = "nowhere"
    bad = write_config(tmp_path / "bad.yaml", doc)
    assert main(["config", "validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "2 errors" in err
    assert "regions.eu-west.clusters[1].zone" in err and "default_region: unknown region" in err


async def test_consul_token_is_never_shown(caplog: pytest.LogCaptureFixture) -> None:
    """An ACL token is a secret: not in repr (of the address or the client), nor in the
    error a failed call raises, nor in what it logs."""
    from router.consul import ConsulAddress, ConsulClient

    secret = "s3cr3t-acl-token-9f2b"
    address = ConsulAddress.parse("127.0.0.1:1", token=secret)
    assert address.token == secret
    client = ConsulClient(address)
    with pytest.raises(ConsulUnavailable) as info:
        await client.get("meridian/config")
    await client.close()
    for shown in (repr(address), str(address), repr(client), info.value.message, caplog.text):
        assert secret not in shown
