"""Signed checkpoints and the witness on real processes, through the public CLI.

On the dev stack (`meridian dev`, mTLS): a copy of its audit directory with its last
records removed and HEAD rewritten to match (the HMAC key in hand) fails `meridian audit
verify` because of the witness, naming the checkpoint and the first missing seq; a tail
rewritten and resealed with the key fails at the witnessed seq; the intact copy passes;
a deleted witness entry is 'no witnessed checkpoint', not a pass. A receipt from a real
`meridian start` is proven with `meridian audit prove`; the same receipt with one byte
changed is refused. With `meridian serve --consul` (the in-repo Consul emulator): both
witnesses are published to, shown in status, read back by `audit verify --consul`, and
a Consul outage shows in status without holding up a start."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from benchmarks.fleet import Fleet, Replica
from router.audit.chain import HEAD_NAME, log_files, seal
from router.audit.checkpoint import read_chain_id
from router.audit.log import load_key
from router.audit.witness import read_directory
from router.v1 import router_pb2 as pb
from router.v1 import router_pb2_grpc as pb_grpc
from tests.consul_emulator import EmulatorProcess
from tests.helpers import eventually
from tests.integration.conftest import DevProcess
from tests.integration.test_readme_and_cli import meridian

pytestmark = pytest.mark.integration


def public_key(home: Path, keys: Path, out: Path) -> Path:
    got = meridian(home, "audit", "public-key", "--keys-dir", str(keys))
    assert got.returncode == 0, got.stderr
    out.write_text(got.stdout)
    return out


def witnessed_seq(witness: Path, audit_dir: Path) -> int:
    chain = read_chain_id(audit_dir)
    found, _ = read_directory(witness)
    return max((w.checkpoint.seq for w in found if w.checkpoint.chain_id == chain), default=-1)


async def wait_witnessed(witness: Path, audit_dir: Path, seq: int) -> int:
    async def covered() -> int:
        got = witnessed_seq(witness, audit_dir)
        return got if got >= seq else 0

    result: int = await eventually(covered, f"a witnessed checkpoint at or after seq {seq}")
    return result


def copy_evidence(home: Path, dst: Path) -> tuple[Path, Path]:
    """A consistent copy of a running stack's evidence: the witness first, then HEAD,
    then the log (each written after what it follows, so nothing copied is ahead)."""
    witness = dst / "witness"
    shutil.copytree(home / "witness", witness)
    audit = dst / "audit"
    audit.mkdir(parents=True)
    shutil.copy2(home / "audit" / HEAD_NAME, audit / HEAD_NAME)
    for f in [home / "audit" / "CHAIN", *log_files(home / "audit")]:
        shutil.copy2(f, audit / f.name)
    return audit, witness


def read_log(directory: Path) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for f in log_files(directory):
        # Split on \n alone: records may hold U+2028 and other characters str.splitlines
        # would also break a line at (caller-supplied text, written unescaped).
        for line in f.read_bytes().split(b"\n"):
            if not line:
                continue
            try:
                out.append((f.name, json.loads(line)))
            except ValueError:
                continue  # a torn final line, copied mid-write
    return out


def rewrite_log(directory: Path, recs: list[tuple[str, dict[str, Any]]]) -> None:
    """Put ``recs`` back as the log (each in its file) and HEAD to match: what the owner
    of the disk can do."""
    for f in log_files(directory):
        f.unlink()
    by_file: dict[str, list[str]] = {}
    for name, r in recs:
        by_file.setdefault(name, []).append(json.dumps(r, ensure_ascii=False))
    for name, rows in by_file.items():
        (directory / name).write_bytes("".join(row + "\n" for row in rows).encode())
    name, last = recs[-1]
    head = json.dumps({"seq": last["seq"], "hash": last["hash"], "file": name})
    (directory / HEAD_NAME).write_text(head.ljust(255) + "\n")


async def test_witness_catches_a_cut_or_rewritten_log_of_the_dev_stack(
    dev: DevProcess, router: pb_grpc.WorkflowRouterStub, tmp_path: Path
) -> None:
    home, keys = dev.home, dev.home / "keys"
    last = None
    for country, dc in [("DE", pb.PII), ("US", pb.FINANCIAL), ("JP", pb.INTERNAL)]:
        last = await router.StartWorkflow(
            pb.StartWorkflowRequest(
                workflow_type="DataProcessingWorkflow",
                workflow_id=f"wit-{uuid.uuid4()}",
                tenant_id="acme",
                user_country=country,
                data_class=dc,
            ),
            timeout=10,
        )
    assert last is not None and last.receipt.signature and last.receipt.chain_id
    await wait_witnessed(home / "witness", home / "audit", last.receipt.sequence)
    pub = public_key(home, keys, tmp_path / "audit-signing.pub")
    hmac = keys / "audit.key"

    def verify(audit: Path, witness: Path, *more: str) -> subprocess.CompletedProcess[str]:
        return meridian(
            home,
            "audit",
            "verify",
            str(audit),
            *more,
            "--key-file",
            str(hmac),
            "--witness",
            str(witness),
            "--public-key",
            str(pub),
        )

    # The intact copy passes, with the codec servers' chains (each its own) beside it.
    audit, witness = copy_evidence(home, tmp_path / "intact")
    codecs = sorted(str(p) for p in home.glob("audit-codec-*"))
    out = verify(audit, witness, *codecs)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"chain {read_chain_id(audit)} witnessed up to seq" in out.stdout
    assert out.stdout.count(": OK: ") == 1 + len(codecs)

    # The last records cut, HEAD rewritten to match: the chain alone is intact, the
    # witness is not fooled.
    audit, witness = copy_evidence(home, tmp_path / "cut")
    s = witnessed_seq(witness, audit)
    recs = [(f, r) for f, r in read_log(audit) if r["seq"] <= s - 2]
    rewrite_log(audit, recs)
    alone = meridian(home, "audit", "verify", str(audit), "--key-file", str(hmac))
    assert alone.returncode == 0, alone.stdout
    out = verify(audit, witness)
    assert out.returncode == 1, out.stdout
    assert (
        f"seq {s - 1}: truncated: records {s - 1}..{s} are missing: the log ends at seq {s - 2}"
        in (out.stdout)
    )
    assert f"checkpoint seq {s} of " in out.stdout

    # The witnessed record rewritten and the rest resealed with the HMAC key.
    audit, witness = copy_evidence(home, tmp_path / "rewritten")
    s = witnessed_seq(witness, audit)
    key = load_key(hmac)
    recs = read_log(audit)
    i = next(i for i, (_, r) in enumerate(recs) if r["seq"] == s)
    recs[i][1]["time"] = "2020-01-01T00:00:00.000Z"
    for j in range(i, len(recs)):
        body = {k: v for k, v in recs[j][1].items() if k != "hash"}
        body["prev"] = recs[j - 1][1]["hash"]
        recs[j] = (recs[j][0], {**body, "hash": seal(body, key)[0]})
    rewrite_log(audit, recs)
    assert meridian(home, "audit", "verify", str(audit), "--key-file", str(hmac)).returncode == 0
    out = verify(audit, witness, "--json")
    assert out.returncode == 1
    problem = json.loads(out.stdout)["chains"][0]["problem"]
    assert (problem["kind"], problem["seq"]) == ("modified", s)
    assert f"records up to seq {s} were rewritten" in problem["detail"]

    # The witness entry deleted: no witnessed checkpoint, a failure.
    audit, witness = copy_evidence(home, tmp_path / "unwitnessed")
    (witness / f"{read_chain_id(audit)}.jsonl").unlink()
    out = verify(audit, witness)
    assert out.returncode == 1, out.stdout
    assert "unwitnessed: no witnessed checkpoint of chain" in out.stdout

    status = meridian(home, "status", "--router", dev.router)
    assert status.returncode == 0, status.stderr
    assert f"audit chain {read_chain_id(home / 'audit')}" in status.stdout
    assert f"witness dir:{home / 'witness'}: ok, holds seq" in status.stdout


async def test_a_real_receipt_is_proven_and_a_changed_byte_refused(
    dev: DevProcess, tmp_path: Path
) -> None:
    home = dev.home
    out = meridian(
        home,
        "start",
        "--router",
        dev.router,
        "--tenant",
        "acme",
        "--country",
        "fr",
        "--class",
        "pii",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    started = json.loads(out.stdout)
    receipt = started["receipt"]
    assert receipt["chain_id"] == read_chain_id(home / "audit")
    assert receipt["key_id"] and receipt["signature"]
    stored = tmp_path / "receipt.json"
    stored.write_text(json.dumps(receipt, indent=2))
    pub = public_key(home, home / "keys", tmp_path / "pub.pem")
    args = [
        "--audit-dir",
        str(home / "audit"),
        "--key-file",
        str(home / "keys" / "audit.key"),
        "--witness",
        str(home / "witness"),
        "--public-key",
        str(pub),
    ]
    await wait_witnessed(home / "witness", home / "audit", receipt["sequence"])

    proven = meridian(home, "audit", "prove", str(stored), *args)
    assert proven.returncode == 0, proven.stdout + proven.stderr
    assert f"PROVEN: record seq {receipt['sequence']} of chain {receipt['chain_id']}" in (
        proven.stdout
    )
    assert f"start.outcome of workflow {started['workflow_id']}" in proven.stdout
    # The whole start output, through stdin: what it says of the placement is checked too.
    whole = meridian(home, "audit", "prove", "-", *args, "--json", stdin=out.stdout)
    assert whole.returncode == 0, whole.stdout
    assert json.loads(whole.stdout)["decision"]["cluster"] == started["decision"]["cluster"]

    text = stored.read_bytes()
    for needle in (f'"sequence": {receipt["sequence"]}', receipt["hash"], receipt["signature"]):
        at = text.index(needle.encode()) + len(needle) - 3
        changed = text[:at] + bytes([text[at] ^ 0x01]) + text[at + 1 :]
        stored.write_bytes(changed)
        refused = meridian(home, "audit", "prove", str(stored), *args)
        assert refused.returncode == 1, refused.stdout
        assert refused.stdout.startswith("REFUSED ("), refused.stdout
    lied = {**started, "decision": {**started["decision"], "region": "us-east"}}
    refused = meridian(home, "audit", "prove", "-", *args, stdin=json.dumps(lied))
    assert refused.returncode == 1 and "decision.region" in refused.stdout

    # What is signed, exactly (README, proto): the start's receipt, not its decision's;
    # the decision's alone is refused naming the receipt to prove instead.
    decision_receipt = started["decision"]["receipt"]
    assert decision_receipt["sequence"] and decision_receipt["hash"]
    assert (decision_receipt["chain_id"], decision_receipt["signature"]) == ("", "")
    alone = meridian(home, "audit", "prove", json.dumps(decision_receipt), *args)
    assert alone.returncode == 1 and alone.stdout.startswith("REFUSED (unsigned)"), alone.stdout
    assert "prove the start's top-level `receipt` instead" in alone.stdout

    # A whole `explain --json` output: proven by its signed receipt, its placement checked.
    out = meridian(home, "explain", "--router", dev.router, "--tenant", "acme",
                   "--country", "fr", "--class", "pii", "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    explained = json.loads(out.stdout)
    assert explained["receipt"]["signature"] and explained["receipt"]["chain_id"]
    await wait_witnessed(home / "witness", home / "audit", explained["receipt"]["sequence"])
    whole = meridian(home, "audit", "prove", "-", *args, stdin=out.stdout)
    assert whole.returncode == 0, whole.stdout + whole.stderr
    assert f"PROVEN: record seq {explained['receipt']['sequence']}" in whole.stdout
    assert "route.explain (a dry run" in whole.stdout
    lied = {**explained, "region": "us-east"}
    refused = meridian(home, "audit", "prove", "-", *args, stdin=json.dumps(lied))
    assert refused.returncode == 1 and "REFUSED (record): region" in refused.stdout


# -- serve with Consul: both witnesses ----------------------------------------------------------


@pytest.fixture
async def consul_fleet(tmp_path: Path) -> AsyncIterator[tuple[Fleet, EmulatorProcess]]:
    consul = EmulatorProcess()
    consul.start()
    fleet = Fleet.create(
        tmp_path, {"eu-west": ("eu", 1)}, {"eu": ["DE"]}, audit={"checkpoint_interval_s": 0.5}
    )
    try:
        await fleet.start_clusters()
        for name in ("router-1", "router-2"):
            fleet.replica(name).start(
                fleet.config_path, fleet.keys_dir, ["--consul", consul.address]
            )
        for replica in fleet.replicas:
            await replica.wait_serving()
        yield fleet, consul
    finally:
        fleet.stop()
        consul.stop()


async def start(replica: Replica) -> pb.StartWorkflowResponse:
    async with grpc.aio.insecure_channel(replica.address) as channel:
        resp: pb.StartWorkflowResponse = await pb_grpc.WorkflowRouterStub(channel).StartWorkflow(
            pb.StartWorkflowRequest(
                workflow_type="EchoWorkflow",
                workflow_id=f"cw-{uuid.uuid4()}",
                tenant_id="acme",
                user_country="DE",
                data_class=pb.PII,
            ),
            timeout=10,
        )
        return resp


async def checkpoints(replica: Replica) -> pb.AuditCheckpoints:
    async with grpc.aio.insecure_channel(replica.address) as channel:
        topo = await pb_grpc.RoutingAdminStub(channel).GetTopology(
            pb.GetTopologyRequest(), timeout=5
        )
        state: pb.AuditCheckpoints = topo.audit_checkpoints
        return state


async def test_serve_publishes_to_consul_and_a_directory(
    consul_fleet: tuple[Fleet, EmulatorProcess], tmp_path: Path
) -> None:
    fleet, consul = consul_fleet
    one, two = fleet.replicas
    got = [await start(r) for r in (one, two, one)]
    assert all(g.receipt.signature for g in got)

    async def both_witnessed() -> bool:
        states = [await checkpoints(r) for r in (one, two)]
        return all(
            len(s.witnesses) == 2
            and all(
                w.published_seq >= s.checkpoint_seq > 0 and not w.last_error for w in s.witnesses
            )
            for s in states
        )

    await eventually(both_witnessed, "both replicas' checkpoints at both witnesses")
    names = [w.name for w in (await checkpoints(one)).witnesses]
    assert names == [
        f"dir:{one.home / 'witness'}",
        f"consul:127.0.0.1:{consul.port}/meridian/witness/router-1",
    ]
    one.stop()  # a clean stop: a last checkpoint of everything
    pub = public_key(fleet.home, fleet.keys_dir, tmp_path / "pub.pem")
    out = meridian(
        fleet.home,
        "audit",
        "verify",
        str(one.audit_dir),
        str(two.audit_dir),
        "--consul",
        consul.address,
        "--public-key",
        str(pub),
        "--json",
    )
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads(out.stdout)
    first, second = result["chains"]
    assert first["witness"]["unwitnessed_records"] == 0, "the clean stop witnessed it all"
    assert first["witness"]["checkpoint"]["source"] == "consul:meridian/witness/router-1"
    assert second["witness"]["checkpoint"]["replica_id"] == "router-2"
    # The directory witness of router-1 says the same.
    dir_out = meridian(
        fleet.home,
        "audit",
        "verify",
        str(one.audit_dir),
        "--witness",
        str(one.home / "witness"),
        "--public-key",
        str(pub),
    )
    assert dir_out.returncode == 0, dir_out.stdout

    # Consul gone: router-2 keeps starting workflows at once; status says the witness fails.
    consul.stop()
    t = time.monotonic()
    resp = await start(two)
    assert resp.started and time.monotonic() - t < 5

    async def failing() -> bool:
        state = await checkpoints(two)
        return any(w.failures and w.name.startswith("consul:") for w in state.witnesses)

    await eventually(failing, "the Consul witness reported failing")
    state = await checkpoints(two)
    assert [bool(w.last_error) for w in state.witnesses] == [False, True]
