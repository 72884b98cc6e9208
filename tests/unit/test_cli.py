"""The `meridian` command without a server: the client commands against a stub that
returns real messages of the contract, and the offline tools against temporary files.
Each test reads what was really printed (parsed JSON, table cells) or written."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import tomllib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import timestamp_pb2

from meridian.client import MeridianClient, SyncMeridianClient
from router.api.values import from_python
from router.cli import admin, build_parser, client, main
from router.codec import FileKeyProvider
from router.config import load
from router.v1 import router_pb2 as pb
from tests.helpers import default_doc, write_config

ROOT = Path(__file__).resolve().parents[2]
REGIONS = list(load(ROOT / "config" / "default.yaml").table.regions)


class FakeRouter:
    """Both stubs (WorkflowRouter, RoutingAdmin): each RPC returns its canned response and
    records the request and timeout it was called with."""

    def __init__(self) -> None:
        self.responses: dict[str, Any] = {}
        self.calls: dict[str, tuple[Any, float]] = {}

    def __getattr__(self, rpc: str) -> Callable[..., Any]:
        async def call(request: Any, timeout: float) -> Any:
            self.calls[rpc] = (request, timeout)
            return self.responses[rpc]

        return call


@pytest.fixture
def router(monkeypatch: pytest.MonkeyPatch) -> FakeRouter:
    """The CLI's client library on the fake stubs (its transport seam)."""
    fake = FakeRouter()

    def connect(args: argparse.Namespace) -> SyncMeridianClient:
        async def make() -> MeridianClient:
            return MeridianClient(fake, fake, address=args.router, default_timeout=args.timeout)

        return SyncMeridianClient(make)

    monkeypatch.setattr(client, "_connect", connect)
    return fake


@pytest.fixture(autouse=True)
def _no_env_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("MERIDIAN_CONFIG", "MERIDIAN_KEYS_DIR"):
        monkeypatch.delenv(name, raising=False)
    # `keys init` also writes the dev PKI under $MERIDIAN_HOME/tls: never into the tree.
    monkeypatch.setenv("MERIDIAN_HOME", str(tmp_path / "home"))


def table(text: str) -> dict[str, str]:
    """A field/value table as {field: value} ("" for an empty cell)."""
    rows = {}
    for line in text.splitlines()[2:]:
        field, _, value = line.partition(" ")
        rows[field] = value.strip()
    return rows


def ts(when: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(when)
    return out


ROUTING = ["--tenant", "acme", "--country", "DE", "--class", "pii"]
RECEIPT = pb.AuditReceipt(sequence=12, hash="h12", file="audit-000001.jsonl")
DECISION = pb.RouteDecision(
    zone="eu", region="eu-west", cluster="eu-west-a", namespace="eu-west",
    task_queue="eu-west-DataProcessingWorkflow-queue", rule="residency",
    reasons=["DE is in zone eu"], config_version="v1", failed_over=False,
    endpoint="127.0.0.1:7235", receipt=RECEIPT,
)  # fmt: skip
DUPLICATE = pb.StartWorkflowResponse(
    workflow_id="order-42", run_id="run-1", decision=DECISION, started=False,
    request_id="req-1", receipt=pb.AuditReceipt(sequence=13, hash="h13", file="a.jsonl"),
)  # fmt: skip


# --- A: JSON and tables keep false, 0 and empty values -------------------------------


def test_start_json_shows_a_duplicate_start(
    router: FakeRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    router.responses["StartWorkflow"] = DUPLICATE
    assert main(["start", *ROUTING, "--id", "order-42", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["started"] is False
    assert out["decision"]["failed_over"] is False
    assert out["decision"]["receipt"] == {
        "sequence": 12, "hash": "h12", "file": "audit-000001.jsonl",
        "chain_id": "", "key_id": "", "signature": "",
    }  # fmt: skip
    assert out["receipt"]["sequence"] == 13
    assert out["decision"]["reasons"] == ["DE is in zone eu"]


def test_start_table_shows_a_duplicate_start(
    router: FakeRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    router.responses["StartWorkflow"] = DUPLICATE
    assert main(["start", *ROUTING, "--id", "order-42"]) == 0
    rows = table(capsys.readouterr().out)
    assert rows["started"] == "false"
    assert rows["decision.failed_over"] == "false"
    assert rows["decision.receipt.sequence"] == "12"
    assert rows["receipt.sequence"] == "13"
    assert rows["decision.reasons"] == "DE is in zone eu"


def test_explain_json_and_table(router: FakeRouter, capsys: pytest.CaptureFixture[str]) -> None:
    router.responses["ExplainRoute"] = DECISION
    assert main(["explain", *ROUTING, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["failed_over"] is False and out["receipt"]["sequence"] == 12
    assert main(["explain", *ROUTING]) == 0
    text = capsys.readouterr().out
    rows = table(text.split("why:")[0])
    assert rows["failed_over"] == "false" and rows["receipt.sequence"] == "12"
    assert rows["cluster"] == "eu-west-a"
    assert text.rstrip().endswith("why:\n  - DE is in zone eu")


def test_query_and_result_numbers_stay_ints(
    router: FakeRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    where = pb.WorkflowLocation(zone="eu", region="eu-west", cluster="eu-west-a")
    router.responses["QueryWorkflow"] = pb.QueryWorkflowResponse(
        result=from_python({"done": 20, "ratio": 2.5}), location=where
    )
    assert main(["query", "--tenant", "acme", "--id", "w", "--name", "getProgress", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["result"] == {"done": 20, "ratio": 2.5} and type(out["result"]["done"]) is int
    router.responses["GetWorkflowResult"] = pb.WorkflowResult(
        workflow_id="w", status=pb.COMPLETED, result=from_python(3), location=where
    )
    assert main(["result", "--tenant", "acme", "--id", "w", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "COMPLETED" and out["failure"] == ""
    assert out["result"] == 3 and type(out["result"]) is int
    assert main(["result", "--tenant", "acme", "--id", "w"]) == 0
    rows = table(capsys.readouterr().out)
    assert rows["result"] == "3" and rows["location.cluster"] == "eu-west-a"


FLIP_TIME = datetime(2026, 11, 24, 10, 0, 5, tzinfo=UTC)


def topology() -> pb.Topology:
    return pb.Topology(
        config_version="v1", config_source="file:x.yaml", default_region="us-east",
        regions=[pb.Region(
            name="eu-west", zone="eu", mode="automatic", failed_over=True,
            clusters=[
                pb.Cluster(name="eu-west-a", endpoint="h:1", role=pb.PRIMARY, probed=True,
                           healthy=False, active=False, last_error="refused"),
                pb.Cluster(name="eu-west-b", endpoint="h:2", role=pb.STANDBY, probed=True,
                           healthy=True, active=True),
            ],
            last_flip=pb.FlipInfo(time=ts(FLIP_TIME), from_cluster="eu-west-a",
                                  to_cluster="eu-west-b", actor="sre", reason="drill",
                                  rule="manual"),
        )],
    )  # fmt: skip


def test_status_json_and_table(router: FakeRouter, capsys: pytest.CaptureFixture[str]) -> None:
    router.responses["GetTopology"] = topology()
    assert main(["status", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    a, b = out["regions"][0]["clusters"]
    assert a["active"] is False and a["healthy"] is False and b["active"] is True
    assert out["is_leader"] is False and out["last_rejected"] is None
    assert out["regions"][0]["last_flip"]["time"] == "2026-11-24T10:00:05Z"
    assert main(["status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "config version v1 from file:x.yaml; default region us-east"
    cells = [line.split("  ") for line in lines[3:]]
    cells = [[c.strip() for c in row if c.strip()] for row in cells]
    assert cells[0] == ["eu", "eu-west", "eu-west-a", "primary", "UNHEALTHY (refused)", "h:1"]
    assert cells[1] == [
        "eu", "eu-west", "eu-west-b", "standby", "healthy", "*", "h:2",
        "2026-11-24T10:00:05Z eu-west-a->eu-west-b manual by sre: drill",
    ]  # fmt: skip


def test_status_shows_audit_shipping(
    router: FakeRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    topo = topology()
    router.responses["GetTopology"] = topo
    assert main(["status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["audit_shipping"] is None  # shipping is off
    topo.audit_shipping.CopyFrom(pb.AuditShipping(
        sink="http://c:4317", chain="router-1", committed_seq=120, shipped_seq=100, lag=20,
        last_error="the sink http://c:4317 did not acknowledge seq 101..120",
    ))  # fmt: skip
    assert main(["status", "--json"]) == 0
    ship = json.loads(capsys.readouterr().out)["audit_shipping"]
    assert (ship["shipped_seq"], ship["committed_seq"], ship["lag"]) == (100, 120, 20)
    assert ship["last_shipped"] is None
    assert main(["status"]) == 0
    assert (
        "audit shipping to http://c:4317 (chain router-1): shipped seq 100 of 120, lag 20; "
        "BEHIND: the sink http://c:4317 did not acknowledge seq 101..120"
    ) in capsys.readouterr().out


def test_failover_dry_run_json_has_ints_and_false(
    router: FakeRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    region = topology().regions[0]
    router.responses["SetActiveCluster"] = pb.SetActiveClusterResponse(
        before=region, after=region, changed=False, dry_run=True,
        impact=pb.FlipImpact(leaving_cluster="eu-west-b", running_workflows=3,
                             running_workflows_known=True),
    )  # fmt: skip
    argv = ["failover", "--region", "eu-west", "--to", "eu-west-a", "--reason", "r", "--dry-run"]
    assert main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["changed"] is False and out["refused_rule"] == ""
    assert out["impact"]["running_workflows"] == 3 and out["impact"]["route_changes"] == []
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert (
        "running workflows on eu-west-b: 3" in text and "before: eu-west active eu-west-b" in text
    )


# --- B: config validate --json -------------------------------------------------------


def bad_config(tmp_path: Path) -> Path:
    doc = default_doc()
    doc["regions"]["eu-west"]["clusters"][1]["zone"] = "us"
    doc["default_region"] = "nowhere"
    return write_config(tmp_path / "bad.yaml", doc)


def test_config_validate_json_lists_every_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = bad_config(tmp_path)
    assert main(["config", "validate", str(bad), "--json"]) == 2
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["valid"] is False and out["source"] == str(bad)
    paths = [e["path"] for e in out["errors"]]
    assert paths == ["regions.eu-west.clusters[1].zone", "default_region"]
    assert out["errors"][1]["message"] == "unknown region 'nowhere'"
    assert captured.err == ""


def test_config_validate_json_of_a_valid_file_has_the_same_shape(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write_config(tmp_path / "good.yaml", default_doc())
    assert main(["config", "validate", str(good), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["valid"] is True and out["errors"] == [] and out["source"] == str(good)
    assert (out["zones"], out["regions"], out["clusters"], out["rules"]) == (3, 3, 6, 0)
    assert main(["config", "validate", str(good)]) == 0
    assert "3 zones, 3 regions, 6 clusters, 0 rules" in capsys.readouterr().out


def unreadable(directory: Path, kind: str) -> Path:
    if kind == "missing":
        return directory / "missing.yaml"
    if kind == "directory":
        return directory
    path = directory / "latin1.yaml"
    path.write_bytes(b"zones: \xff\n")  # Latin-1, not UTF-8
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing", "cannot read: No such file or directory"),
        ("directory", "cannot read: Is a directory"),
        ("not-utf8", "cannot read: not UTF-8 text (invalid start byte at byte 7)"),
    ],
    ids=["missing", "directory", "not-utf8"],
)
def test_config_validate_unreadable_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, message: str
) -> None:
    path = unreadable(tmp_path, kind)
    assert main(["config", "validate", str(path), "--json"]) == 2
    out = json.loads(capsys.readouterr().out)
    assert out == {
        "valid": False,
        "version": None,
        "source": str(path),
        "errors": [{"path": "", "message": message}],
        "zones": None,
        "regions": None,
        "clusters": None,
        "rules": None,
    }
    assert main(["config", "validate", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"meridian: invalid config: {path}: 1 error\n  - {message}\n"


# --- C: keys -------------------------------------------------------------------------


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "keys"
    assert main(["keys", "init", "--keys-dir", str(directory)]) == 0
    return directory


def actives(directory: Path) -> dict[str, str]:
    provider = FileKeyProvider(directory)
    return {r: provider.load(r).active for r in REGIONS}


def test_keys_rotate_needs_region_or_all(
    keys_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = actives(keys_dir)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(["keys", "rotate", "--keys-dir", str(keys_dir)])
    assert exited.value.code == 2
    assert "one of the arguments --region --all is required" in capsys.readouterr().err
    assert actives(keys_dir) == before, "nothing rotated"
    assert main(["keys", "rotate", "--region", "eu-west", "--keys-dir", str(keys_dir)]) == 0
    after = actives(keys_dir)
    assert [r for r in REGIONS if after[r] != before[r]] == ["eu-west"]
    assert main(["keys", "rotate", "--all", "--keys-dir", str(keys_dir)]) == 0
    assert all(actives(keys_dir)[r] != after[r] for r in REGIONS)


@pytest.mark.parametrize("action", ["list", "rotate", "init"])
def test_keys_unknown_region_names_the_known_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], action: str
) -> None:
    directory = tmp_path / "keys"
    assert main(["keys", action, "--region", "mars", "--keys-dir", str(directory)]) == 1
    err = capsys.readouterr().err
    assert err == f"meridian: --region: unknown region 'mars' (known: {', '.join(REGIONS)})\n"
    assert not directory.exists() or not any(directory.iterdir()), "nothing written"


def test_keys_list_json_shape(keys_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (keys_dir / "ap-southeast.json").unlink()
    capsys.readouterr()
    assert main(["keys", "list", "--keys-dir", str(keys_dir), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    provider = FileKeyProvider(keys_dir)
    eu = provider.load("eu-west")
    assert [row["region"] for row in out] == REGIONS
    assert out[1] == {
        "region": "eu-west", "active_key": eu.active, "key_ids": [eu.active],
        "file": str(keys_dir / "eu-west.json"), "error": "",
    }  # fmt: skip
    missing = out[2]
    assert missing["active_key"] == "" and missing["key_ids"] == []
    assert missing["file"] == str(keys_dir / "ap-southeast.json") and missing["error"]
    assert (
        main(["keys", "rotate", "--region", "eu-west", "--keys-dir", str(keys_dir), "--json"]) == 0
    )
    rotated = json.loads(capsys.readouterr().out)
    eu = provider.load("eu-west")
    checkpoint = rotated[0].pop("audit_checkpoint")
    assert rotated == [{
        "region": "eu-west", "active_key": eu.active, "key_ids": list(eu.keys),
        "file": str(keys_dir / "eu-west.json"), "error": "", "audit_seq": 1,
        "audit_chain": str(Path(os.environ["MERIDIAN_HOME"]) / "audit-keys"),
    }]  # fmt: skip
    # The chain's checkpoint of this run: keys init made a signing key, so there is one.
    assert (keys_dir / "audit-signing.key").exists()
    assert set(checkpoint) == {
        "chain_id",
        "seq",
        "digest",
        "key_id",
        "witnesses",
        "record_error",
    }
    assert len(rotated[0]["key_ids"]) == 2


def test_keys_rotate_all_rotates_nothing_when_a_ring_is_missing(
    keys_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (keys_dir / "ap-southeast.json").unlink()
    provider = FileKeyProvider(keys_dir)
    before = {r: provider.load(r).active for r in REGIONS if r != "ap-southeast"}
    assert main(["keys", "rotate", "--all", "--keys-dir", str(keys_dir)]) == 1
    assert "ap-southeast" in capsys.readouterr().err
    assert {r: provider.load(r).active for r in before} == before


def test_keys_init_json_lists_created_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "keys"
    assert main(["keys", "init", "--keys-dir", str(directory), "--json"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert {tuple(sorted(row)) for row in made} == {("file", "secret")}
    tls_files = ["ca.pem", "server.pem", "service.pem", "acme.pem", "sre.pem"]
    assert {row["secret"] for row in made} == {
        *(f"key ring {r}" for r in REGIONS), *(f"codec token {r}" for r in REGIONS),
        "home-reference key", "audit key", "audit signing key",
        *(f"dev TLS {name}" for name in tls_files),
        *(f"dev TLS {name.replace('.pem', '-key.pem')}" for name in tls_files),
    }  # fmt: skip
    tls_dir = tmp_path / "home" / "tls"
    assert {Path(row["file"]).parent for row in made if "TLS" in row["secret"]} == {tls_dir}
    assert all(Path(row["file"]).is_file() for row in made)
    assert main(["keys", "init", "--keys-dir", str(directory), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


# --- C: routing arguments, timeouts, Consul prefix, version --------------------------


def test_class_and_priority_in_any_case(
    router: FakeRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    router.responses["ExplainRoute"] = DECISION
    argv = [
        "explain",
        "--tenant",
        "acme",
        "--country",
        "de",
        "--class",
        "PII",
        "--priority",
        "High",
    ]
    assert main([*argv, "--json"]) == 0
    request, _ = router.calls["ExplainRoute"]
    assert request.data_class == pb.PII and request.priority == pb.HIGH
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(["explain", "--tenant", "acme", "--country", "DE", "--class", "secret"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--class: invalid choice: 'secret'" in err
    assert all(c in err for c in ("public", "internal", "pii", "financial"))


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon"])
def test_timeout_must_be_a_positive_number(
    value: str, router: FakeRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    router.responses["GetTopology"] = topology()
    with pytest.raises(SystemExit) as exited:
        main(["status", "--timeout", value])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --timeout: {value!r} is not a positive number of seconds" in err
    assert "GetTopology" not in router.calls


def test_timeout_reaches_the_call(router: FakeRouter) -> None:
    router.responses["GetTopology"] = topology()
    assert main(["status", "--timeout", "2.5", "--json"]) == 0
    # The whole call is bounded by --timeout: what is left of it when the RPC is sent.
    assert 2.4 < router.calls["GetTopology"][1] <= 2.5


@pytest.mark.parametrize("action", ["push", "diff"])
def test_consul_prefix_is_one_flag_everywhere(action: str) -> None:
    args = build_parser().parse_args(
        ["config", action, "x.yaml", "--consul", "c:8500", "--consul-prefix", "team/meridian"]
    )
    assert admin._consul(args).address.key("config") == "team/meridian/config"
    default = build_parser().parse_args(["config", action, "x.yaml", "--consul", "c:8500"])
    assert admin._consul(default).address.key("config") == "meridian/config"
    serve = build_parser().parse_args(["serve", "--consul-prefix", "team/meridian"])
    assert serve.consul_prefix == args.consul_prefix


def pyproject_version() -> str:
    version: str = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    return version


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"meridian {importlib.metadata.version('meridian-router')}\n"


def test_version_without_installed_metadata(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"meridian {pyproject_version()}\n"


# --- C: every option documented ------------------------------------------------------


def undocumented(parser: argparse.ArgumentParser, path: str = "meridian") -> list[str]:
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = "/".join(action.option_strings) or action.dest
        if isinstance(action, argparse._SubParsersAction):
            if not action.help:
                missing.append(f"{path}: {action.metavar or action.dest}")
            helps = {a.dest: a.help for a in action._choices_actions}
            for command, sub in action.choices.items():
                if not helps.get(command):
                    missing.append(f"{path} {command}")
                missing += undocumented(sub, f"{path} {command}")
        elif not action.help or action.help == argparse.SUPPRESS:
            missing.append(f"{path}: {name}")
    return missing


def test_every_option_and_positional_has_help() -> None:
    assert undocumented(build_parser()) == []


def test_the_help_walker_finds_an_undocumented_option() -> None:
    parser = build_parser()
    parser.add_argument("--quiet", action="store_true")
    assert undocumented(parser) == ["meridian: --quiet"]


# --- the follow-ups the library brought to the CLI: describe, signal, cancel ------------


def test_describe_json_keeps_zero_and_unset(
    router: FakeRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    router.responses["DescribeWorkflow"] = pb.DescribeWorkflowResponse(
        workflow_id="w1", run_id="r1", workflow_type="ContactSyncWorkflow", status=pb.RUNNING,
        history_length=0, tenant_id="acme", data_class=pb.PII,
        location=pb.WorkflowLocation(zone="eu", region="eu-west", cluster="eu-west-a"),
    )  # fmt: skip
    assert main(["describe", "--tenant", "acme", "--id", "w1", "--run-id", "r1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["history_length"] == 0 and out["close_time"] is None
    assert out["status"] == "RUNNING" and out["location"]["cluster"] == "eu-west-a"
    ref = router.calls["DescribeWorkflow"][0]
    assert (ref.workflow_id, ref.tenant_id, ref.run_id) == ("w1", "acme", "r1")


def test_signal_sends_json_args_and_cancel_prints_the_location(
    router: FakeRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    where = pb.WorkflowLocation(zone="eu", region="eu-west", cluster="eu-west-b")
    router.responses["SignalWorkflow"] = pb.SignalWorkflowResponse(location=where)
    router.responses["CancelWorkflow"] = pb.CancelWorkflowResponse(location=where)
    ref = ["--tenant", "acme", "--id", "w1"]
    assert main(["signal", *ref, "--name", "pause", "--arg", '{"n": 2}', "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["location"]["cluster"] == "eu-west-b"
    sent = router.calls["SignalWorkflow"][0]
    assert sent.signal_name == "pause" and sent.args[0].struct_value.fields["n"].number_value == 2
    assert main(["cancel", *ref]) == 0
    assert table(capsys.readouterr().out)["location.cluster"] == "eu-west-b"
