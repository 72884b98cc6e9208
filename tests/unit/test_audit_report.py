"""`meridian audit report` on real logs: written by ``router.audit.AuditLog`` through the
router's own config controller and start path (the Temporal side is the gateway test
double), then read by `python -m router.cli audit report`.

The report verifies first: a tampered record makes it fail and name what is unproven
(never a finding from a record that fails its hash); each decision's zone is re-derived
from its region under the config version in force (a rebuilt chain whose record moved
`pii` data to `us-east` but kept `zone: eu` fails); a range without zone-bound decisions
is "no evidence in range", not a pass; an honest log passes with its counts.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from router.audit import AuditLog, config_record
from router.audit.chain import HEAD_NAME, log_files, seal
from router.audit.query import Topology, check_decision
from router.audit.records import topology, topology_hash
from router.config import compile_config
from router.config.runtime import ConfigController
from router.config.sources import ConfigSources
from router.core.model import ClusterView, DataClass, Priority
from router.errors import MeridianError
from router.starts import Starter, StartInput
from router.temporal.locator import LocationCache
from tests.helpers import default_doc
from tests.unit.seams import Gateway, Views, keys_for

ROOT = Path(__file__).resolve().parents[2]
KEY = b"k" * 32
DAY = 86_400.0
T0 = 1_795_000_000.0  # 2026-11-18T...Z
ALL = frozenset(f"{r}-{x}" for r in ("us-east", "eu-west", "ap-southeast") for x in ("a", "b"))
PRIMARIES = {"us-east": "us-east-a", "eu-west": "eu-west-a", "ap-southeast": "ap-southeast-a"}

# (tenant, country, class): where each goes under the default topology.
STARTS = [
    ("acme", "DE", DataClass.PII),  # eu, bound
    ("acme", "US", DataClass.FINANCIAL),  # us, bound
    ("acme", "JP", DataClass.INTERNAL),  # apac, unbound
    ("acme", "BR", DataClass.PUBLIC),  # default region, unbound
    ("globex", "US", DataClass.PUBLIC),  # globex declares eu: bound to eu
]


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def inp(n: int, tenant: str, country: str, dc: DataClass) -> StartInput:
    return StartInput(
        workflow_type="EchoWorkflow", workflow_id=f"wf-{n}", args=["x"], args_size=3,
        tenant_id=tenant, user_country=country, user_subdivision="", data_class=dc,
        priority=Priority.NORMAL, request_id=f"req-{n}",
    )  # fmt: skip


async def write_router_log(directory: Path, keys: Path, *, key: bytes | None = None) -> None:
    """Day 1: the router starts (config loaded, with its topology). Day 2: five starts
    and a refusal. Every record goes through the real controller, start path and log."""
    clock = Clock()
    log = AuditLog(directory, key=key, clock=clock)
    log.open()
    doc = default_doc()
    config = compile_config(doc, source="test")
    sources = ConfigSources(paths=(), files=())
    controller = ConfigController(sources, config, keys=keys_for(keys, config), audit=log)
    await controller.start()
    clock.now += DAY
    views = Views(config.table, ClusterView(active=MappingProxyType(dict(PRIMARIES)), healthy=ALL))
    starter = Starter(controller, views, Gateway(), log, LocationCache())
    for n, (tenant, country, dc) in enumerate(STARTS):
        await starter.start(inp(n, tenant, country, dc), remaining=5.0)
    with pytest.raises(MeridianError):
        await starter.start(inp(99, "acme", "BR", DataClass.PII), remaining=5.0)
    await controller.close()
    await log.close()


def report(*args: str) -> tuple[int, str]:
    out = subprocess.run(
        [sys.executable, "-m", "router.cli", "audit", "report", *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
        env={k: v for k, v in os.environ.items() if k != "MERIDIAN_AUDIT_KEY"},
    )  # fmt: skip
    assert not out.stderr or "Traceback" not in out.stderr, out.stderr
    return out.returncode, out.stdout


def lines(directory: Path) -> Iterator[tuple[Path, list[dict[str, Any]]]]:
    for f in log_files(directory):
        yield f, [json.loads(x) for x in f.read_text().splitlines()]


def edit_in_place(directory: Path, seq: int, change: Callable[[dict[str, Any]], None]) -> None:
    """Change one record and leave its hash: what someone without the chain's means does."""
    for f, recs in lines(directory):
        for r in recs:
            if r["seq"] == seq:
                change(r)
        f.write_text("".join(json.dumps(r) + "\n" for r in recs))


def rebuild(
    directory: Path, seq: int, change: Callable[[dict[str, Any]], None], key: bytes | None = None
) -> None:
    """Change one record and recompute the chain from it on (and HEAD): what whoever holds
    the disk (and, for an HMAC chain, the key) can do. Verification passes afterwards."""
    prev = None
    last: tuple[int, str] = (0, "")
    for f, recs in lines(directory):
        out = []
        for r in recs:
            if r["seq"] == seq:
                change(r)
            if prev is not None:
                r["prev"] = prev
            body = {k: v for k, v in r.items() if k != "hash"}
            prev, line = seal(body, key)
            out.append(line)
            last = (r["seq"], prev)
        f.write_bytes(b"".join(out))
    head = directory / HEAD_NAME
    head.write_text(json.dumps({"seq": last[0], "hash": last[1], "file": ""}).ljust(255) + "\n")


def decision_seq(directory: Path, workflow_id: str) -> int:
    return int(where(directory, workflow_id)[2])


def where(directory: Path, workflow_id: str) -> tuple[str, int, int]:
    """(file name, line, seq) of a workflow's decision record."""
    for f, recs in lines(directory):
        for number, r in enumerate(recs, start=1):
            if r["kind"] == "route.decision" and r["workflow_id"] == workflow_id:
                return f.name, number, int(r["seq"])
    raise AssertionError(workflow_id)


@pytest.fixture
async def honest(tmp_path: Path) -> Path:
    directory = tmp_path / "audit"
    await write_router_log(directory, tmp_path / "keys")
    return directory


def test_an_honest_log_passes_with_what_it_checked(honest: Path) -> None:
    code, out = report(str(honest))
    assert code == 0, out
    total = sum(len(recs) for _, recs in lines(honest))
    assert f"verified: {total} records in 1 chain(s)" in out
    # pii DE, financial US, globex (declares eu): three zone-bound starts.
    assert "Residency: PASS: 3 zone-bound decision(s) checked" in out
    assert "Result: PASS (exit 0)" in out

    code, out = report(str(honest), "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["verdict"] == "pass" and doc["exit_code"] == 0
    assert doc["verification"] == {
        "ok": True, "records": total,
        "chains": [{
            "path": str(honest), "ok": True, "records": total, "last_seq": total,
            "last_hash": doc["verification"]["chains"][0]["last_hash"], "proven": total,
            "unproven": 0, "first_unproven_seq": None, "notes": [], "problem": None,
        }],
    }  # fmt: skip
    assert doc["residency"] == {
        "checked": 5, "zone_bound_decisions": 3, "violations": [], "unproven": [],
    }  # fmt: skip
    assert doc["range"] == {"since": None, "until": None}
    by_zone = {row["zone"]: row for row in doc["summary"]["zone"]}
    assert by_zone["eu"] == {
        "zone": "eu", "decisions": 2, "zone_bound": 2, "refusals": 0, "violations": 0,
        "unproven": 0,
    }  # fmt: skip
    assert by_zone["us"]["decisions"] == 2 and by_zone["us"]["zone_bound"] == 1
    assert {r["tenant"]: r["decisions"] for r in doc["summary"]["tenant"]} == {
        "acme": 4, "globex": 1,
    }  # fmt: skip
    by_class = {
        r["data_class"]: (r["decisions"], r["refusals"]) for r in doc["summary"]["data_class"]
    }
    assert by_class == {"pii": (1, 1), "financial": (1, 0), "internal": (1, 0), "public": (2, 0)}
    assert {r["region"] for r in doc["summary"]["region"]} == {"eu-west", "us-east", "ap-southeast"}
    assert doc["refusals"] == [{"refusal": "residency", "data_class": "pii", "count": 1}]
    assert doc["start_outcomes"] == {"started": 5}
    (loaded,) = doc["config_changes"]
    assert loaded["outcome"] == "loaded" and loaded["topology"]["regions"]["us-east"] == {
        "zone": "us", "clusters": ["us-east-a", "us-east-b"],
    }  # fmt: skip
    assert loaded["topology_hash"] == topology_hash(loaded["topology"])


def test_a_tampered_record_fails_verification_and_is_never_a_finding(honest: Path) -> None:
    name, line, seq = where(honest, "wf-0")  # the pii decision (DE, eu-west)

    def move(r: dict[str, Any]) -> None:
        r["zone"], r["region"], r["cluster"] = "us", "us-east", "us-east-a"

    edit_in_place(honest, seq, move)
    total = sum(len(recs) for _, recs in lines(honest))
    code, out = report(str(honest))
    assert code == 1, out
    assert f"NOT VERIFIED: {name}:{line} seq {seq}: modified" in out
    assert f"unproven from seq {seq} on: {total - seq + 1} record(s), not counted" in out
    assert "NOT verified: 1 of 1 chain(s) failed verification" in out
    assert "VIOLATION" not in out, "a record that fails its hash proves nothing"
    assert "Residency: NOT PROVEN: the log failed verification" in out
    assert "Result: FAILED (exit 1)" in out
    doc = json.loads(report(str(honest), "--json")[1])
    (chain,) = doc["verification"]["chains"]
    assert (chain["ok"], chain["proven"], chain["unproven"], chain["first_unproven_seq"]) == (
        False, seq - 1, total - seq + 1, seq,
    )  # fmt: skip
    assert chain["problem"]["kind"] == "modified"
    assert doc["residency"]["violations"] == [] and doc["verdict"] == "failed"
    assert doc["records"] == seq - 1


@pytest.mark.parametrize("key", [None, KEY], ids=["sha256", "hmac-with-the-key"])
async def test_a_rebuilt_chain_that_moved_pii_out_of_its_zone_fails(
    tmp_path: Path, key: bytes | None
) -> None:
    """The region says us-east, the record's own zone still says eu: the chain verifies
    (rebuilt), the re-derived zone does not."""
    directory = tmp_path / "audit"
    await write_router_log(directory, tmp_path / "keys", key=key)
    seq = decision_seq(directory, "wf-0")

    def move(r: dict[str, Any]) -> None:
        r["region"], r["cluster"] = "us-east", "us-east-a"  # zone stays "eu"

    rebuild(directory, seq, move, key)
    key_args = []
    if key is not None:
        key_file = tmp_path / "audit.key"
        key_file.write_text(base64.b64encode(key).decode())
        key_file.chmod(0o600)
        key_args = ["--key-file", str(key_file)]
    code, out = report(str(directory), *key_args)
    assert code == 1, out
    assert "verified: " in out and "NOT verified" not in out
    assert "Residency: VIOLATION: 1 decision(s)" in out
    assert f"seq {seq} " in out
    assert "the record says zone 'eu', but region us-east is in zone us" in out
    assert "pii data bound to zone eu (user country DE is in zone eu) was routed to region " \
           "us-east of zone us" in out  # fmt: skip
    doc = json.loads(report(str(directory), "--json", *key_args)[1])
    (v,) = doc["residency"]["violations"]
    assert (v["seq"], v["zone"], v["region"], v["derived_zone"], v["bound_zone"]) == (
        seq, "eu", "us-east", "us", "eu",
    )  # fmt: skip
    assert doc["verdict"] == "failed" and doc["exit_code"] == 1


def test_a_range_without_zone_bound_decisions_is_no_evidence(honest: Path) -> None:
    code, out = report(str(honest), "--since", "2001-01-01", "--until", "2001-01-02")
    assert code == 3, out
    assert "Residency: NO EVIDENCE IN RANGE: 0 zone-bound decisions in 2001-01-01 .. 2001-01-02" \
           in out  # fmt: skip
    assert "this is not a pass" in out and "Result: NO-EVIDENCE (exit 3)" in out
    doc = json.loads(report(str(honest), "--until", "2001-01-02", "--json")[1])
    assert (doc["verdict"], doc["exit_code"], doc["records"]) == ("no-evidence", 3, 0)
    assert doc["residency"]["zone_bound_decisions"] == 0 and doc["summary"]["zone"] == []


def test_a_range_after_the_config_record_still_checks_against_it(honest: Path) -> None:
    """The config went into force on day 1; the starts are on day 2: a range of day 2
    alone still re-derives their zones from the day-1 topology."""
    day2 = "2026-11-19"
    code, out = report(str(honest), "--since", day2)
    assert code == 0, out
    doc = json.loads(report(str(honest), "--since", day2, "--json")[1])
    assert doc["config_changes"] == [] and doc["residency"]["zone_bound_decisions"] == 3


async def test_a_decision_without_its_config_record_is_unproven(tmp_path: Path) -> None:
    directory = tmp_path / "audit"
    log = AuditLog(directory)
    log.open()
    doc = default_doc()
    table = compile_config(doc, source="test").table
    old = config_record(outcome="loaded", source="test", version="v-old")  # no topology
    await log.append(old)
    base = {"kind": "route.decision", "tenant": "acme", "user_country": "DE",
            "data_class": "pii", "zone": "eu", "residency_zone": "eu", "region": "eu-west",
            "cluster": "eu-west-a", "workflow_id": "w"}  # fmt: skip
    await log.append({**base, "config_version": "v-old"})
    await log.append({**base, "config_version": "v-unknown"})
    await log.append(config_record(outcome="loaded", source="t", version=table.version,
                                   table=table))  # fmt: skip
    await log.append({**base, "config_version": table.version})
    forged = config_record(outcome="accepted", source="t", version="v-forged", table=table)
    forged["topology"]["regions"]["us-east"]["zone"] = "eu"  # the hash no longer matches
    await log.append(forged)
    await log.append({**base, "config_version": "v-forged"})
    await log.close()
    code, out = report(str(directory))
    assert code == 1, out
    assert "Residency: UNPROVEN: 3 decision(s) could not be checked" in out
    assert "config version v-forged: its config record (" in out and "mismatches its " \
           "topology_hash" in out  # fmt: skip
    assert "config version v-old: its config record (" in out and "carries no topology" in out
    assert "no config record of version v-unknown precedes it in its chain" in out
    res = json.loads(report(str(directory), "--json")[1])["residency"]
    assert [u["seq"] for u in res["unproven"]] == [2, 3, 7]
    assert res["checked"] == 1 and res["zone_bound_decisions"] == 1


async def test_an_hmac_chain_without_its_key_is_not_reported(tmp_path: Path) -> None:
    directory = tmp_path / "audit"
    await write_router_log(directory, tmp_path / "keys", key=KEY)
    code, out = report(str(directory))
    assert code == 2, out
    assert "key-required" in out and "Residency: not checked: give the audit key" in out


# -- the check itself, table-driven ------------------------------------------------------


@pytest.fixture(scope="module")
def topo() -> Topology:
    table = compile_config(default_doc(), source="test").table
    return Topology.of(table.version, topology(table))


OK = {"tenant": "acme", "user_country": "DE", "data_class": "pii", "zone": "eu",
      "residency_zone": "eu", "region": "eu-west", "cluster": "eu-west-b"}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "wrong"),
    [
        ({}, []),
        ({"data_class": "public", "residency_zone": ""}, []),
        ({"region": "us-east", "cluster": "us-east-a"},
         ["the record says zone 'eu', but region us-east is in zone us",
          "pii data bound to zone eu (user country DE is in zone eu) was routed to region "
          "us-east of zone us"]),
        ({"zone": "us", "region": "us-east", "cluster": "us-east-a", "residency_zone": "us"},
         ["the record's residency zone is us, but config", "was routed to region us-east"]),
        ({"cluster": "us-east-a"}, ["cluster us-east-a is not a cluster of eu-west"]),
        ({"region": "mars"}, ["region 'mars' is not a region of config"]),
        ({"user_country": "BR", "residency_zone": ""},
         ["pii data, user country BR is in no zone: it is bound to no zone"]),
        ({"tenant": "globex", "user_country": "US", "data_class": "public"}, []),
        ({"tenant": "globex", "user_country": "US", "data_class": "public",
          "residency_zone": "", "zone": "us", "region": "us-east", "cluster": "us-east-a"},
         ["the record's residency zone is none, but config", "(tenant globex declares "
          "residency zone eu)", "public data bound to zone eu"]),
    ],
    ids=["compliant", "unbound", "region-moved-zone-kept", "all-fields-moved", "foreign-cluster",
         "unknown-region", "regulated-unplaceable", "tenant-binding", "tenant-binding-broken"],
)  # fmt: skip
def test_check_decision(topo: Topology, change: dict[str, Any], wrong: list[str]) -> None:
    got, _, _ = check_decision({**OK, **change}, topo)
    text = "\n".join(got)
    for w in wrong:
        assert w in text, text
    if not wrong:
        assert got == []
