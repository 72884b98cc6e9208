"""Signed checkpoints and the witness: the checkpointer (signing, records in the chain,
forward-only witnesses, a failing witness retried and shown), verification against the
witness (a cut or rewritten tail with HEAD and the HMAC key in hand fails naming the
checkpoint; no witnessed checkpoint is a failure; another chain's checkpoint never
vouches), signed receipts proven and one changed byte refused, and the signing key kept
out of everything printed."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from router.audit import AuditLog, Receipt, verify
from router.audit.chain import HEAD_NAME, log_files, seal
from router.audit.checkpoint import (
    CHAIN_FILE,
    Checkpoint,
    Checkpointer,
    CheckpointStatus,
    ReceiptSigner,
    WitnessStatus,
    chain_id,
    sign_checkpoint,
)
from router.audit.proof import Evidence, ProofRefused, prove, verify_witnessed
from router.audit.signing import (
    PublicKeys,
    SigningKey,
    ensure_signing_key,
    load_signing_key,
    unb64,
)
from router.audit.witness import (
    ConsulWitness,
    DirectoryWitness,
    Witnessed,
    read_consul,
    read_directory,
)
from router.cli import main
from router.cli.client import checkpoint_lines
from router.consul import ConsulAddress, ConsulClient
from router.errors import KeyRingError, WitnessUnavailable
from tests.consul_emulator import ConsulEmulator

HMAC = b"k" * 32


def rec(i: int) -> dict[str, Any]:
    return {"kind": "route.decision", "workflow_id": f"wf-{i}", "zone": "eu"}


class Chain:
    """An HMAC audit log with a checkpointer publishing to a witness directory."""

    def __init__(self, root: Path, key: SigningKey | None = None, **kw: Any) -> None:
        self.dir = root / "audit"
        self.witness_dir = root / "witness"
        self.key = key or SigningKey.generate()
        self.log = AuditLog(self.dir, key=HMAC)
        self.log.open()
        kw.setdefault("witnesses", [DirectoryWitness(self.witness_dir)])
        self.cp = Checkpointer(self.log, self.key, replica_id="r1", interval=0, **kw)

    async def write(self, n: int, start: int = 0) -> list[Receipt]:
        return [await self.log.append(rec(start + i)) for i in range(n)]

    async def close(self) -> None:
        await self.log.close()

    def evidence(self, keys: PublicKeys | None = None) -> Evidence:
        found, notes = read_directory(self.witness_dir)
        keys = PublicKeys([self.key.public]) if keys is None else keys
        return Evidence.of(found, keys, [f"dir:{self.witness_dir}"], notes)


def verify_one(chain: Chain, evidence: Evidence | None = None) -> Any:
    ((_, result),) = verify_witnessed([chain.dir], key=HMAC, evidence=evidence or chain.evidence())
    return result


def lines(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for f in log_files(directory) for x in f.read_text().splitlines()]


def write_chain(directory: Path, recs: list[dict[str, Any]]) -> None:
    """Rewrite the log as ``recs`` (in one file) and HEAD to match: what the owner of
    the disk can do."""
    for f in log_files(directory):
        f.unlink()
    path = directory / "audit-0000000000000001.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    last = recs[-1]
    head = json.dumps({"seq": last["seq"], "hash": last["hash"], "file": path.name})
    (directory / HEAD_NAME).write_text(head.ljust(255) + "\n")


def reseal(recs: list[dict[str, Any]], start: int) -> list[dict[str, Any]]:
    """Recompute hashes from index ``start`` on with the HMAC key (the key is known)."""
    out = [dict(r) for r in recs]
    for i in range(start, len(out)):
        body = {k: v for k, v in out[i].items() if k != "hash"}
        body["prev"] = out[i - 1]["hash"] if i else body["prev"]
        out[i] = {**body, "hash": seal(body, HMAC)[0]}
    return out


# -- signing key ------------------------------------------------------------------------------


def test_signing_key_file_is_private_and_never_printed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keys" / "audit-signing.key"
    key, made = ensure_signing_key(path)
    assert made and stat.S_IMODE(path.stat().st_mode) == 0o600
    again, made_again = ensure_signing_key(path)
    assert not made_again and again.key_id == key.key_id
    body = path.read_text().splitlines()[1]
    assert body not in repr(key) and key.key_id in repr(key)
    path.chmod(0o644)
    with pytest.raises(KeyRingError, match="chmod 600") as info:
        load_signing_key(path)
    assert body not in str(info.value)
    path.chmod(0o600)
    path.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    with pytest.raises(KeyRingError, match="not an unencrypted Ed25519") as info:
        load_signing_key(path)


def test_public_keys_load_pem_and_check_signatures(tmp_path: Path) -> None:
    a, b = SigningKey.generate(), SigningKey.generate()
    both = tmp_path / "pub.pem"
    both.write_text(a.public_pem() + b.public_pem())
    keys = PublicKeys.load([both])
    assert keys.ids == sorted([a.key_id, b.key_id])
    assert keys.check(a.key_id, b"m", a.sign(b"m")) is None
    assert "does not verify" in (keys.check(a.key_id, b"m2", a.sign(b"m")) or "")
    assert "not a trusted public key" in (keys.check("0" * 16, b"m", a.sign(b"m")) or "")
    (tmp_path / "empty.pem").write_text("nothing\n")
    with pytest.raises(KeyRingError, match="no Ed25519 key"):
        PublicKeys.load([tmp_path / "empty.pem"])


def test_strict_base64_has_one_spelling() -> None:
    sig = bytes(range(64))
    text = base64.b64encode(sig).decode()
    assert unb64(text) == sig
    # The last character before the padding carries 4 unused bits: another spelling of
    # the same bytes that a lenient decoder accepts.
    other = text[:-3] + chr(ord(text[-3]) + 1) + text[-2:]
    assert base64.b64decode(other) == sig
    assert unb64(other) is None
    assert unb64("not base64!") is None


# -- the checkpointer -------------------------------------------------------------------------


async def test_checkpoints_are_signed_recorded_and_chained(tmp_path: Path) -> None:
    c = Chain(tmp_path)
    await c.write(5)
    first = await c.cp.checkpoint()
    assert first is not None and first.seq == 5 and first.prev == ""
    assert first.check(PublicKeys([c.key.public])) is None
    assert await c.cp.checkpoint() is None, "its own record alone calls for no checkpoint"
    await c.write(3, start=5)
    second = await c.cp.checkpoint()
    assert second is not None and second.seq == 9 and second.prev == first.digest
    await c.close()
    stored = lines(c.dir)
    cps = [r for r in stored if r["kind"] == "audit.checkpoint"]
    assert [(r["seq"], r["checkpoint_seq"]) for r in cps] == [(6, 5), (10, 9)]
    assert cps[0]["chain_id"] == c.cp.chain_id == chain_id(c.dir)
    assert cps[0]["checkpoint_digest"] == first.digest
    assert cps[0]["witnesses"] == {f"dir:{c.witness_dir}": "published"}
    found, notes = read_directory(c.witness_dir)
    assert notes == [] and [w.checkpoint for w in found] == [first, second]
    assert (c.witness_dir / f"{c.cp.chain_id}.jsonl").exists()


async def test_checkpoint_age_gauge_counts_from_the_last_witnessed_one(tmp_path: Path) -> None:
    """meridian_audit_last_checkpoint_age_seconds: what AuditCheckpointStale alerts on."""
    from router import metrics
    from router.audit.checkpoint import _age

    now = [1000.0]
    c = Chain(tmp_path, clock=lambda: now[0])
    assert c.cp in metrics._sources["meridian_audit_last_checkpoint_age_seconds"]
    now[0] = 1030.0
    assert _age(c.cp) == [(30.0, {"chain": c.cp.chain_id})], "none yet: since it started"
    await c.write(2)
    assert await c.cp.checkpoint() is not None
    now[0] = 1042.5
    assert _age(c.cp) == [(12.5, {"chain": c.cp.chain_id})]
    unwitnessed = Chain(tmp_path / "none", witnesses=[])
    assert unwitnessed.cp not in metrics._sources["meridian_audit_last_checkpoint_age_seconds"]
    await c.close()
    await unwitnessed.close()


async def test_chain_id_is_stable_and_recovered_from_the_log(tmp_path: Path) -> None:
    c = Chain(tmp_path)
    await c.write(2)
    await c.cp.checkpoint()
    await c.close()
    cid = c.cp.chain_id
    (c.dir / CHAIN_FILE).unlink()
    assert chain_id(c.dir) == cid, "a lost CHAIN file is recovered from the checkpoint records"
    assert json.loads((c.dir / CHAIN_FILE).read_text())["chain_id"] == cid
    assert chain_id(tmp_path / "other") != cid


async def test_close_witnesses_everything_and_the_next_run_continues(tmp_path: Path) -> None:
    c = Chain(tmp_path)
    await c.write(4)
    await c.cp.checkpoint()
    await c.write(2, start=4)
    await c.cp.close()
    await c.close()
    last = read_directory(c.witness_dir)[0][-1].checkpoint
    assert last.seq == 7 == lines(c.dir)[-1]["seq"], "the final checkpoint covers every record"
    result = verify_one(c)
    assert result.ok and result.witness.unwitnessed == 0 and result.notes == []
    again = Chain(tmp_path, key=c.key)
    await again.write(1, start=9)
    cp = await again.cp.checkpoint()
    assert cp is not None and cp.prev == last.digest, "the next run links to the last one"
    await again.close()


async def test_directory_witness_only_moves_forward(tmp_path: Path) -> None:
    key = SigningKey.generate()
    w = DirectoryWitness(tmp_path / "w")

    def cp(seq: int, h: str) -> Checkpoint:
        return sign_checkpoint(
            key, chain_id="a" * 32, replica_id="r", seq=seq, record_hash=h, at="t", prev=""
        )

    await w.publish(cp(5, "1" * 64))
    await w.publish(cp(5, "1" * 64))  # the same point again: nothing new
    with pytest.raises(WitnessUnavailable, match="is behind the witnessed seq 5") as info:
        await w.publish(cp(4, "2" * 64))
    assert info.value.refused
    with pytest.raises(WitnessUnavailable, match="contradicts the witnessed seq 5"):
        await w.publish(cp(5, "3" * 64))
    await w.publish(cp(6, "4" * 64))
    found, _ = read_directory(tmp_path / "w")
    assert [x.checkpoint.seq for x in found] == [5, 6]
    # A torn last line (a crash mid-append) does not stop the next append.
    path = w.path("a" * 32)
    path.write_bytes(path.read_bytes() + b'{"type": "meridian.au')
    await w.publish(cp(7, "5" * 64))
    found, notes = read_directory(tmp_path / "w")
    assert [x.checkpoint.seq for x in found] == [5, 6, 7]
    assert len(notes) == 1 and "not a checkpoint" in notes[0]


class FlakyWitness:
    def __init__(self, name: str = "flaky") -> None:
        self._name = name
        self.down = True
        self.hang = False
        self.held: list[Checkpoint] = []

    @property
    def name(self) -> str:
        return self._name

    async def publish(self, checkpoint: Checkpoint) -> None:
        if self.hang:
            await asyncio.sleep(3600)
        if self.down:
            raise WitnessUnavailable(f"{self.name}: connection refused", witness=self.name)
        self.held.append(checkpoint)


async def test_a_failing_witness_is_retried_shown_and_recorded(tmp_path: Path) -> None:
    flaky = FlakyWitness()
    c = Chain(tmp_path, witnesses=[DirectoryWitness(tmp_path / "witness"), flaky])
    c.cp = Checkpointer(
        c.log,
        c.key,
        replica_id="r1",
        witnesses=[DirectoryWitness(c.witness_dir), flaky],
        interval=0.05,
        max_backoff=0.1,
    )
    await c.write(3)
    c.cp.start()

    async def settle(check: Any) -> CheckpointStatus:
        for _ in range(200):
            status = c.cp.status()
            if check(status):
                return status
            await asyncio.sleep(0.02)
        raise AssertionError(f"never: {c.cp.status()}")

    status = await settle(lambda s: s.witnesses[1].failures >= 2)
    directory, failing = status.witnesses
    assert directory.last_error == "" and directory.published_seq == status.checkpoint_seq
    assert failing.last_error == "flaky: connection refused" and failing.published_seq == 0
    text = "\n".join(checkpoint_lines(status_json(status)))
    assert "witness flaky: FAILING" in text and "connection refused" in text
    flaky.down = False
    await settle(lambda s: s.witnesses[1].failures == 0)
    await c.cp.close()
    await c.close()
    stored = lines(c.dir)
    first = next(r for r in stored if r["kind"] == "audit.checkpoint")
    assert first["witnesses"]["flaky"] == "failed: flaky: connection refused"
    (recovered,) = [r for r in stored if r["kind"] == "audit.witness"]
    assert recovered["outcome"] == "recovered" and recovered["witness"] == "flaky"
    assert recovered["failures"] >= 2 and flaky.held, "the latest checkpoint reached it"


def status_json(s: CheckpointStatus) -> dict[str, Any]:
    """What `meridian status` gets (the Topology's JSON)."""
    from router.api.servicers import _checkpoints_pb
    from router.cli.render import message_to_json
    from router.v1 import router_pb2 as pb

    out = pb.AuditCheckpoints()
    _checkpoints_pb(s, out)
    result: dict[str, Any] = message_to_json(out)
    return result


def test_status_lines_show_every_witness() -> None:
    status = CheckpointStatus(
        chain_id="c" * 32,
        key_id="k" * 16,
        replica_id="r1",
        interval=5.0,
        log_seq=12,
        checkpoint_seq=10,
        checkpoint_time=1_800_000_000.0,
        witnesses=(
            WitnessStatus("dir:/w", 10, 1_800_000_000.5, "", 0),
            WitnessStatus("consul:c:8500/meridian/witness/r1", 0, None, "refused", 3),
        ),
    )
    lines_ = checkpoint_lines(status_json(status))
    assert lines_[0].startswith(f"audit chain {'c' * 32} (signing key {'k' * 16}): last checkpoint")
    assert "seq 10 at 2027-01-15T08:00:00Z; log at seq 12; every 5 s" in lines_[0]
    assert lines_[1] == "  witness dir:/w: ok, holds seq 10 (2027-01-15T08:00:00.500Z)"
    assert "FAILING (3 attempts; retried with backoff): refused" in lines_[2]
    assert checkpoint_lines(None) == []


async def test_a_hung_witness_never_holds_up_appends(tmp_path: Path) -> None:
    hung = FlakyWitness("hung")
    hung.hang = True
    c = Chain(tmp_path)
    c.cp = Checkpointer(
        c.log, c.key, replica_id="r1", witnesses=[hung], interval=0.01, publish_timeout=0.3
    )
    await c.write(1)
    c.cp.start()
    await asyncio.sleep(0.05)  # a round is waiting on the hung witness now
    t = asyncio.get_running_loop().time()
    await c.write(20, start=1)
    assert asyncio.get_running_loop().time() - t < 0.25, "appends waited for the witness"
    await asyncio.sleep(0.4)
    assert "no answer within 0.3 s" in c.cp.status().witnesses[0].last_error
    await c.cp.close()
    await c.close()


# -- verify against the witness ---------------------------------------------------------------


async def witnessed_chain(tmp_path: Path, before: int = 10, after: int = 4) -> Chain:
    """``before`` records and a checkpoint of them (seq ``before``, its record at
    ``before`` + 1), then ``after`` records not yet witnessed."""
    c = Chain(tmp_path)
    await c.write(before)
    await c.cp.checkpoint()
    await c.write(after, start=before)
    await c.close()
    return c


async def test_intact_chain_passes_with_unwitnessed_records_noted(tmp_path: Path) -> None:
    c = await witnessed_chain(tmp_path)
    result = verify_one(c)
    assert result.ok, result.problem
    assert result.chain_id == c.cp.chain_id and result.witness.latest.checkpoint.seq == 10
    assert result.witness.unwitnessed == 5
    assert result.notes == [
        "records 11..15 are not yet witnessed (written after the latest witnessed checkpoint "
        f"seq 10 of {result.witness.latest.checkpoint.time} (digest "
        f"{result.witness.latest.checkpoint.digest[:16]}, key {c.key.key_id}, replica r1))"
    ]


async def test_an_idle_chain_ending_with_its_checkpoints_own_record_has_no_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The checkpoint's own record always follows the checkpoint: a chain at rest is not
    "not yet witnessed" for it (README: every witnessed verify of an idle chain said so)."""
    c = Chain(tmp_path)
    await c.write(45)
    cp = await c.cp.checkpoint()  # seq 45; its record is seq 46
    assert cp is not None and cp.seq == 45
    await c.close()
    result = verify_one(c)
    assert result.ok, result.problem
    assert result.notes == [] and result.witness.unwitnessed == 0
    assert result.witness.own_records == [46]
    witness = ["--witness", str(c.witness_dir), "--public-key", str(pem(tmp_path, c.key))]
    code = main(["audit", "verify", str(c.dir), "--key-file", str(key_file(tmp_path)), *witness])
    text = capsys.readouterr().out
    assert code == 0 and "not yet witnessed" not in text, text
    assert "witnessed up to seq 45 by checkpoint" in text
    assert "(then seq 46: that checkpoint's own record, written after it)" in text


async def test_a_late_witness_recovery_record_is_the_checkpoints_own_too(tmp_path: Path) -> None:
    flaky = FlakyWitness()
    c = Chain(tmp_path, witnesses=[flaky])
    await c.write(3)
    await c.cp.checkpoint()  # seq 3; flaky fails (record 4 says so)
    flaky.down = False
    c.cp._witnesses[0].next_try = 0.0  # its backoff is over
    await c.cp._retry_due()  # flaky takes seq 3 late: audit.witness record 5
    await c.close()
    assert [r["kind"] for r in lines(c.dir)][3:] == ["audit.checkpoint", "audit.witness"]
    evidence = Evidence.of(
        [Witnessed(cp, "flaky") for cp in flaky.held], PublicKeys([c.key.public]), ["flaky"]
    )
    result = verify_one(c, evidence)
    assert result.ok and result.notes == [] and result.witness.own_records == [4, 5]


async def test_only_the_witnessed_checkpoints_own_records_go_unnoted(tmp_path: Path) -> None:
    """Anything else after the latest witnessed checkpoint is still noted, all of it: a
    record after the checkpoint's own, a checkpoint record no witness holds (a failed
    publish), and a trailing checkpoint record rewritten (with the HMAC key) to name
    another checkpoint. No verification outcome changes."""
    c = Chain(tmp_path)
    await c.write(5)
    await c.cp.checkpoint()  # seq 5, record 6
    await c.write(1, start=5)  # seq 7
    await c.close()
    result = verify_one(c)
    assert result.ok and result.witness.own_records == [] and result.witness.unwitnessed == 2
    assert result.notes[0].startswith("records 6..7 are not yet witnessed")

    d = Chain(tmp_path / "failed", witnesses=[DirectoryWitness(tmp_path / "failed" / "witness")])
    await d.write(5)
    await d.cp.checkpoint()  # seq 5, record 6: witnessed
    await d.write(1, start=5)
    d.cp._witnesses[0].witness = FlakyWitness()  # the next publish fails
    await d.cp.checkpoint()  # seq 7 (nobody holds it), record 8
    await d.close()
    result = verify_one(d)
    assert result.ok and result.witness.latest.checkpoint.seq == 5
    assert result.witness.own_records == [] and result.witness.unwitnessed == 3
    assert result.notes[0].startswith("records 6..8 are not yet witnessed")

    e = Chain(tmp_path / "forged")
    await e.write(5)
    await e.cp.checkpoint()
    await e.close()
    stored = lines(e.dir)
    stored[-1]["checkpoint_digest"] = "0" * 64
    write_chain(e.dir, reseal(stored, len(stored) - 1))
    result = verify_one(e)
    assert result.ok and result.witness.own_records == [] and result.witness.unwitnessed == 1
    assert result.notes[0].startswith("records 6..6 are not yet witnessed")


async def test_cut_behind_a_checkpoint_with_head_rewritten_fails(tmp_path: Path) -> None:
    c = await witnessed_chain(tmp_path)
    stored = lines(c.dir)
    write_chain(c.dir, stored[:7])  # the log now ends at seq 7; HEAD says so too
    assert verify([c.dir], key=HMAC).ok, "alone, the cut chain looks intact"
    problem = verify_one(c).problem
    assert problem is not None and problem.kind == "truncated" and problem.seq == 8
    cp = read_directory(c.witness_dir)[0][0].checkpoint
    assert (
        f"records 8..10 are missing: the log ends at seq 7, but the witnessed {cp.describe()}"
        in (problem.detail)
    )
    assert cp.digest[:16] in problem.detail and str(c.witness_dir) in problem.detail


async def test_tail_rewritten_with_the_hmac_key_fails_at_the_witnessed_seq(
    tmp_path: Path,
) -> None:
    c = Chain(tmp_path)
    await c.write(5)
    await c.cp.checkpoint()  # seq 5, record 6
    await c.write(5, start=5)
    await c.cp.checkpoint()  # seq 11, record 12
    await c.close()
    stored = lines(c.dir)
    stored[8]["zone"] = "us"  # seq 9: where the data went, rewritten
    write_chain(c.dir, reseal(stored, 8))
    result = verify_one(c)
    assert result.problem is not None and result.problem.kind == "modified"
    assert result.problem.seq == 11, "the first witnessed seq that differs"
    assert "records up to seq 11 were rewritten" in result.problem.detail
    assert "the log agrees with the witnessed checkpoint of seq 5" in result.problem.detail
    assert result.problem.file == "audit-0000000000000001.jsonl"


async def test_no_witnessed_checkpoint_is_a_failure_not_a_pass(tmp_path: Path) -> None:
    c = await witnessed_chain(tmp_path)
    (c.witness_dir / f"{c.cp.chain_id}.jsonl").unlink()
    problem = verify_one(c).problem
    assert problem is not None and problem.kind == "unwitnessed"
    assert problem.detail.startswith(f"no witnessed checkpoint of chain {c.cp.chain_id} at dir:")


async def test_another_chains_checkpoint_never_vouches(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = await witnessed_chain(tmp_path / "a")
    b = await witnessed_chain(tmp_path / "b")
    a_file = a.witness_dir / f"{a.cp.chain_id}.jsonl"
    b_file = b.witness_dir / f"{b.cp.chain_id}.jsonl"
    a_own = a_file.read_bytes()
    both = PublicKeys([a.key.public, b.key.public])
    # B's checkpoints filed under A's name at A's witness still say chain B.
    a_file.write_bytes(b_file.read_bytes())
    ((_, result),) = verify_witnessed([a.dir], key=HMAC, evidence=a.evidence(both))
    assert result.problem is not None and result.problem.kind == "unwitnessed"
    # A's directory swapped for a copy of B's is chain B, and the witness still holds
    # chain A, which no directory given is: reported.
    a_file.write_bytes(a_own)
    code = main(
        [
            "audit",
            "verify",
            str(b.dir),
            "--key-file",
            str(key_file(tmp_path)),
            "--witness",
            str(a.witness_dir),
            "--witness",
            str(b.witness_dir),
            "--public-key",
            str(pem(tmp_path, a.key, b.key)),
            "--json",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["chains"][0]["chain_id"] == b.cp.chain_id
    assert [o["chain_id"] for o in out["witness"]["unverified_chains"]] == [a.cp.chain_id]


def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "hmac.key"
    path.write_text(base64.b64encode(HMAC).decode())
    path.chmod(0o600)
    return path


def pem(tmp_path: Path, *keys: SigningKey) -> Path:
    path = tmp_path / "public.pem"
    path.write_text("".join(k.public_pem() for k in keys))
    return path


async def test_a_forged_or_untrusted_checkpoint_fails(tmp_path: Path) -> None:
    c = await witnessed_chain(tmp_path)
    path = c.witness_dir / f"{c.cp.chain_id}.jsonl"
    good = path.read_text()
    # Signed by another key: not trusted.
    problem = verify_one(c, c.evidence(PublicKeys([SigningKey.generate().public]))).problem
    assert problem is not None and problem.kind == "bad-checkpoint"
    assert "not a trusted public key" in problem.detail
    # Its seq edited to match a cut log: the signature no longer verifies.
    doc = json.loads(good.splitlines()[-1])
    doc["seq"] = 3
    path.write_text(good + json.dumps(doc) + "\n")
    problem = verify_one(c).problem
    assert problem is not None and problem.kind == "bad-checkpoint"
    assert "the signature does not verify" in problem.detail


async def test_verify_cli_with_the_witness(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    c = await witnessed_chain(tmp_path)
    base = [
        "audit",
        "verify",
        str(c.dir),
        "--key-file",
        str(key_file(tmp_path)),
        "--witness",
        str(c.witness_dir),
    ]
    public = ["--public-key", str(pem(tmp_path, c.key))]
    assert main([*base, *public, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    (chain,) = out["chains"]
    assert chain["ok"] and chain["chain_id"] == c.cp.chain_id
    assert chain["witness"]["witnessed_seq"] == 10 and chain["witness"]["unwitnessed_records"] == 5
    assert chain["witness"]["checkpoint"]["key_id"] == c.key.key_id
    assert out["witness"]["sources"] == [f"dir:{c.witness_dir}"]
    assert main([*base, *public]) == 0
    text = capsys.readouterr().out
    assert f"chain {c.cp.chain_id} witnessed up to seq 10 by checkpoint" in text
    assert "not yet witnessed" in text
    # Without a public key: not a pass, and not a broken chain either (exit 2).
    monkeypatch.delenv("MERIDIAN_KEYS_DIR", raising=False)
    monkeypatch.setenv("MERIDIAN_HOME", str(tmp_path / "home"))
    assert main(base) == 2
    assert "key-required" in capsys.readouterr().out
    (c.witness_dir / f"{c.cp.chain_id}.jsonl").unlink()
    assert main([*base, *public]) == 1
    assert "unwitnessed: no witnessed checkpoint of chain" in capsys.readouterr().out
    # Without --witness the old behaviour and exit codes, with a note.
    assert main(["audit", "verify", str(c.dir), "--key-file", str(key_file(tmp_path))]) == 0
    assert "no witness given" in capsys.readouterr().out


def test_public_key_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key, _ = ensure_signing_key(tmp_path / "keys" / "audit-signing.key")
    assert main(["audit", "public-key", "--keys-dir", str(tmp_path / "keys")]) == 0
    printed = capsys.readouterr()
    assert printed.out == key.public_pem() and key.key_id in printed.err
    (tmp_path / "pub.pem").write_text(printed.out)
    assert PublicKeys.load([tmp_path / "pub.pem"]).ids == [key.key_id]
    assert "PRIVATE" not in printed.out


# -- receipts -------------------------------------------------------------------------------


async def receipt_chain(tmp_path: Path) -> tuple[Chain, dict[str, Any]]:
    c = Chain(tmp_path)
    await c.write(3)
    outcome = {
        "kind": "start.outcome",
        "workflow_id": "wf-3",
        "run_id": "run-3",
        "decision_seq": 3,
        "outcome": "started",
    }
    receipt = await c.log.append(outcome)
    await c.write(2, start=4)
    await c.cp.checkpoint()
    await c.close()
    return c, receipt_json(c.cp.receipts, receipt)


def receipt_json(signer: ReceiptSigner, receipt: Receipt) -> dict[str, Any]:
    """The receipt as a caller stores it (`meridian start --json`)."""
    signed = signer.sign(receipt)
    return {
        "sequence": receipt.sequence,
        "hash": receipt.hash,
        "file": receipt.file,
        "chain_id": signed.chain_id,
        "key_id": signed.key_id,
        "signature": base64.b64encode(signed.signature).decode(),
    }


async def test_a_signed_receipt_is_proven(tmp_path: Path) -> None:
    c, doc = await receipt_chain(tmp_path)
    proof = prove(
        doc, directories=[c.dir], key=HMAC, evidence=c.evidence(), keys=PublicKeys([c.key.public])
    )
    assert proof.record["workflow_id"] == "wf-3" and proof.record["seq"] == 4
    assert proof.checkpoint.checkpoint.seq >= 4
    # proto3 JSON spellings (camelCase, 64-bit integers as strings) are the same receipt.
    camel = {
        "sequence": str(doc["sequence"]),
        "hash": doc["hash"],
        "file": doc["file"],
        "chainId": doc["chain_id"],
        "keyId": doc["key_id"],
        "signature": doc["signature"],
    }
    prove(
        camel, directories=[c.dir], key=HMAC, evidence=c.evidence(), keys=PublicKeys([c.key.public])
    )


async def test_every_changed_byte_of_a_receipt_is_refused(tmp_path: Path) -> None:
    c, doc = await receipt_chain(tmp_path)
    text = json.dumps(doc).encode()
    keys = PublicKeys([c.key.public])
    evidence = c.evidence()
    kinds: set[str] = set()
    for i in range(len(text)):
        changed = text[:i] + bytes([text[i] ^ 0x01]) + text[i + 1 :]
        try:
            parsed = json.loads(changed)
        except ValueError:
            kinds.add("not JSON")
            continue
        with pytest.raises(ProofRefused) as info:
            prove(parsed, directories=[c.dir], key=HMAC, evidence=evidence, keys=keys)
        kinds.add(info.value.kind)
    assert {"signature", "malformed", "not JSON"} <= kinds


async def test_receipt_refusals_name_the_reason(tmp_path: Path) -> None:
    c, doc = await receipt_chain(tmp_path)
    keys = PublicKeys([c.key.public])

    def refused(d: dict[str, Any], **kw: Any) -> ProofRefused:
        args: dict[str, Any] = {
            "directories": [c.dir],
            "key": HMAC,
            "evidence": c.evidence(),
            "keys": keys,
            **kw,
        }
        with pytest.raises(ProofRefused) as info:
            prove(d, **args)
        return info.value

    assert refused({**doc, "sequence": 5}).kind == "signature"
    assert refused({**doc, "signature": ""}).kind == "unsigned"
    assert refused({**doc, "extra": 1}).kind == "malformed"
    assert refused(doc, keys=PublicKeys([SigningKey.generate().public])).kind == "signature"
    assert refused(doc, directories=[tmp_path / "elsewhere"]).kind == "no-chain"
    assert refused(doc, key=None).kind == "key-required"
    # A record written after the latest checkpoint is not proven yet.
    again = Chain(tmp_path, key=c.key)
    late = (await again.write(1, start=9))[0]
    await again.close()
    err = refused(receipt_json(again.cp.receipts, late), evidence=again.evidence())
    assert err.kind == "unwitnessed" and "not yet witnessed" in err.reason
    # The log cut behind the checkpoint: the receipt's record is gone, the chain refused.
    write_chain(c.dir, lines(c.dir)[:3])
    err = refused(doc, evidence=again.evidence())
    assert err.kind == "chain" and "truncated" in err.reason


async def test_prove_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c, doc = await receipt_chain(tmp_path)
    stored = tmp_path / "receipt.json"
    stored.write_text(json.dumps({"receipt": doc, "workflow_id": "wf-3"}))
    args = [
        "audit",
        "prove",
        str(stored),
        "--audit-dir",
        str(c.dir),
        "--key-file",
        str(key_file(tmp_path)),
        "--witness",
        str(c.witness_dir),
        "--public-key",
        str(pem(tmp_path, c.key)),
    ]
    assert main(args) == 0
    assert "PROVEN: record seq 4 of chain" in capsys.readouterr().out
    stored.write_text(json.dumps({"receipt": doc, "workflow_id": "wf-4"}))
    assert main(args) == 1
    assert "REFUSED (record): workflow_id" in capsys.readouterr().out
    other = "1" if doc["hash"].startswith("0") else "0"
    stored.write_text(json.dumps({**doc, "hash": other + doc["hash"][1:]}))
    assert main([*args, "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["proven"] is False and out["kind"] == "signature"


async def test_a_whole_explain_output_is_proven_by_its_signed_receipt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`meridian explain --json` prints a RouteDecision whose receipt (signed) names its
    route.explain record: the whole output is proven, its placement checked."""
    c = Chain(tmp_path)
    placement = {
        "zone": "eu", "region": "eu-west", "cluster": "eu-west-a", "namespace": "acme-eu",
        "task_queue": "dp-eu", "rule": "zone-home", "reasons": ["country DE is in zone eu"],
        "config_version": "v7", "failed_over": False,
    }  # fmt: skip
    receipt = await c.log.append(
        {"kind": "route.explain", "workflow_type": "DataProcessingWorkflow", "tenant": "acme",
         **placement, "dry_run": True}
    )  # fmt: skip
    await c.cp.checkpoint()
    await c.close()
    explained = {**placement, "endpoint": "127.0.0.1:7235",
                 "receipt": receipt_json(c.cp.receipts, receipt)}  # fmt: skip
    keys = PublicKeys([c.key.public])
    proof = prove(explained, directories=[c.dir], key=HMAC, evidence=c.evidence(), keys=keys)
    assert proof.record["kind"] == "route.explain" and proof.decision == proof.record
    with pytest.raises(ProofRefused) as info:
        prove({**explained, "region": "us-east"}, directories=[c.dir], key=HMAC,
              evidence=c.evidence(), keys=keys)  # fmt: skip
    assert info.value.kind == "record" and info.value.reason.startswith("region: the output")
    # A start's output around a route.explain receipt is not what it claims to be.
    with pytest.raises(ProofRefused) as info:
        prove({"receipt": explained["receipt"], "workflow_id": "wf"}, directories=[c.dir],
              key=HMAC, evidence=c.evidence(), keys=keys)  # fmt: skip
    assert "is a route.explain record, not the start.outcome record" in info.value.reason
    stored = tmp_path / "explained.json"
    stored.write_text(json.dumps(explained))
    args = ["audit", "prove", str(stored), "--audit-dir", str(c.dir), "--key-file",
            str(key_file(tmp_path)), "--witness", str(c.witness_dir), "--public-key",
            str(pem(tmp_path, c.key))]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "PROVEN: record seq 1 of chain" in out and "route.explain (a dry run" in out


async def test_an_explain_receipt_around_a_start_output_is_refused_and_vice_versa(
    tmp_path: Path,
) -> None:
    c, doc = await receipt_chain(tmp_path)  # doc: a start.outcome receipt
    keys = PublicKeys([c.key.public])
    with pytest.raises(ProofRefused) as info:
        prove({"receipt": doc, "zone": "eu", "region": "eu-west"}, directories=[c.dir],
              key=HMAC, evidence=c.evidence(), keys=keys)  # fmt: skip
    assert "is a start.outcome record, not the route.explain record" in info.value.reason


async def test_an_unsigned_decision_receipt_is_refused_naming_what_to_prove(
    tmp_path: Path,
) -> None:
    """A start's decision.receipt is an unsigned pointer (one signature per start): its
    refusal says to prove the start's top-level receipt, which covers the decision."""
    c, doc = await receipt_chain(tmp_path)
    decision = {"sequence": 3, "hash": lines(c.dir)[2]["hash"], "file": doc["file"],
                "chain_id": "", "key_id": "", "signature": ""}  # fmt: skip
    with pytest.raises(ProofRefused) as info:
        prove(decision, directories=[c.dir], key=HMAC, evidence=c.evidence(),
              keys=PublicKeys([c.key.public]))  # fmt: skip
    assert info.value.kind == "unsigned"
    assert "receipt: no signature: " in info.value.reason
    assert "prove the start's top-level `receipt` instead" in info.value.reason
    assert "or the whole `meridian start --json` output" in info.value.reason


async def test_signing_key_never_reaches_logs_or_records(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "keys" / "audit-signing.key"
    key, _ = ensure_signing_key(path)
    secret = "".join(path.read_text().splitlines()[1:-1])
    c = Chain(tmp_path, key=key, witnesses=[DirectoryWitness(tmp_path / "w"), FlakyWitness()])
    await c.write(2)
    await c.cp.checkpoint()
    await c.cp.close()
    await c.close()
    everything = [caplog.text, repr(c.cp.status()), repr(key), repr(c.cp.receipts.__dict__)]
    everything += [f.read_text() for f in [*log_files(c.dir), *(tmp_path / "w").glob("*")]]
    everything += [(c.dir / n).read_text() for n in ("CHAIN", "CHECKPOINT", "HEAD")]
    assert all(secret not in text for text in everything)


# -- Consul witness (against the in-repo emulator of Consul's KV API) ------------------------


@pytest.fixture
async def consul() -> AsyncIterator[ConsulClient]:
    emu = ConsulEmulator()
    await emu.start()
    client = ConsulClient(ConsulAddress.parse(emu.address))
    try:
        yield client
    finally:
        await client.close()
        await emu.stop()


async def test_consul_witness_moves_forward_with_cas(consul: ConsulClient, tmp_path: Path) -> None:
    key = SigningKey.generate()
    w = ConsulWitness(consul, "router-1")

    def cp(chain: str, seq: int, h: str) -> Checkpoint:
        return sign_checkpoint(
            key,
            chain_id=chain,
            replica_id="router-1",
            seq=seq,
            record_hash=h,
            at=f"2026-11-26T00:00:{seq:02d}Z",
            prev="",
        )

    a, b = "a" * 32, "b" * 32
    await w.publish(cp(a, 3, "1" * 64))
    await w.publish(cp(a, 3, "1" * 64))
    await w.publish(cp(a, 7, "2" * 64))
    with pytest.raises(WitnessUnavailable, match="is behind the witnessed seq 7") as info:
        await w.publish(cp(a, 5, "3" * 64))
    assert info.value.refused
    await w.publish(cp(b, 1, "4" * 64))  # a new chain of the replica keeps the old one
    index, entry = await consul.get("meridian/witness/router-1")
    assert entry is not None and set(json.loads(entry["Value"])["chains"]) == {a, b}
    # A writer that lost a race (the entry changed under it) reads again and retries.
    await consul.put("meridian/witness/router-1", entry["Value"].decode(), cas=index)
    await w.publish(cp(a, 8, "5" * 64))
    found, notes = await read_consul(consul)
    assert notes == [] and sorted((x.checkpoint.chain_id, x.checkpoint.seq) for x in found) == [
        (a, 8),
        (b, 1),
    ]
    assert {x.source for x in found} == {"consul:meridian/witness/router-1"}


async def test_consul_witness_in_a_checkpointer_and_in_verify(
    consul: ConsulClient, tmp_path: Path
) -> None:
    c = Chain(tmp_path, witnesses=[ConsulWitness(consul, "router-1")])
    await c.write(6)
    await c.cp.checkpoint()
    await c.close()
    found, _ = await read_consul(consul)
    evidence = Evidence.of(found, PublicKeys([c.key.public]), ["consul"])
    ((_, result),) = verify_witnessed([c.dir], key=HMAC, evidence=evidence)
    assert result.ok and result.witness.latest.checkpoint.seq == 6
    assert isinstance(result.witness.latest, Witnessed)
    write_chain(c.dir, lines(c.dir)[:4])
    ((_, cut),) = verify_witnessed([c.dir], key=HMAC, evidence=evidence)
    assert cut.problem is not None and cut.problem.kind == "truncated" and cut.problem.seq == 5


async def test_consul_down_is_a_witness_failure(tmp_path: Path) -> None:
    client = ConsulClient(ConsulAddress.parse("127.0.0.1:9"))
    try:
        c = Chain(tmp_path, witnesses=[ConsulWitness(client, "r1")])
        await c.write(1)
        await c.cp.checkpoint()
        await c.close()
    finally:
        await client.close()
    (failed,) = c.cp.status().witnesses
    assert failed.failures == 1 and failed.last_error.startswith("consul:127.0.0.1:9/meridian/")
    stored = [r for r in lines(c.dir) if r["kind"] == "audit.checkpoint"]
    assert stored[0]["witnesses"][failed.name].startswith("failed: ")


def test_receipt_signer_signs_what_prove_checks() -> None:
    key = SigningKey.generate()
    signed = ReceiptSigner(key, "c" * 32).sign(Receipt(7, "a" * 64, "audit-1.jsonl"))
    assert signed.chain_id == "c" * 32 and signed.key_id == key.key_id
    assert len(signed.signature) == 64


async def test_audit_benchmark_checkpoint_parts_run(tmp_path: Path) -> None:
    from benchmarks.audit import checkpoint_costs, records_per_second

    got = await records_per_second(tmp_path / "log", 4, 40, checkpoint_every=0.01)
    assert (
        got["records_per_s"] > 0
        and got["chain"] == "checkpointed"
        and verify([tmp_path / "log"], key=None).ok
    )
    assert read_directory(tmp_path / "log-witness")[0], "it checkpointed meanwhile"
    costs = await checkpoint_costs(tmp_path / "costs", n=8)
    assert costs["receipt_sign_us"] > 0 and costs["checkpoint_round_ms"] > 0
