"""The audit log: durable group commit, rotation, restart and crash recovery, disk
failures, and `verify` naming the first bad record for every kind of tampering."""

from __future__ import annotations

import asyncio
import base64
import errno
import itertools
import json
import os
from pathlib import Path
from typing import Any

import pytest

from router.audit import AuditLog, Receipt, load_key, verify
from router.audit.chain import GENESIS, canonical, digest, log_files
from router.audit.query import Filter, records
from router.cli import main
from router.errors import AuditUnavailable

KEY = b"k" * 32


def rec(i: int, **extra: Any) -> dict[str, Any]:
    return {"kind": "route.decision", "workflow_id": f"wf-{i}", "data_class": "public",
            "zone": "us", "residency_zone": "", **extra}  # fmt: skip


async def write_log(directory: Path, n: int, *, key: bytes | None = None, **kw: Any) -> list[Any]:
    log = AuditLog(directory, key=key, **kw)
    log.open()
    receipts = [await log.append(rec(i)) for i in range(n)]
    await log.close()
    return receipts


def lines_of(directory: Path) -> list[tuple[Path, list[str]]]:
    return [(f, f.read_text().splitlines()) for f in log_files(directory)]


def rewrite(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines))


async def test_receipts_match_records_and_chain_links(tmp_path: Path) -> None:
    receipts = await write_log(tmp_path, 5)
    assert [r.sequence for r in receipts] == [1, 2, 3, 4, 5]
    stored = list(records([tmp_path]))
    assert [r["hash"] for r in stored] == [r.hash for r in receipts]
    assert stored[0]["prev"] == GENESIS
    for a, b in itertools.pairwise(stored):
        assert b["prev"] == a["hash"]
    for r in stored:
        assert r["hash"] == digest(r, None) and r["alg"] == "sha256" and r["time"].endswith("Z")
    result = verify([tmp_path])
    assert result.ok and result.records == 5 and result.last_hash == receipts[-1].hash
    assert oct((tmp_path / receipts[0].file).stat().st_mode & 0o777) == "0o600"


async def test_group_commit_batches_fsyncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = os.fsync

    def counting_fsync(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    log = AuditLog(tmp_path)
    log.open()
    receipts = await asyncio.gather(*(log.append(rec(i)) for i in range(500)))
    await log.close()
    assert sorted(r.sequence for r in receipts) == list(range(1, 501))
    assert len(calls) < 50, f"{len(calls)} fsyncs for 500 concurrent records"
    assert verify([tmp_path]).ok


async def test_rotation_continues_the_chain(tmp_path: Path) -> None:
    await write_log(tmp_path, 40, max_file_bytes=4096)
    files = lines_of(tmp_path)
    assert len(files) > 2
    for (_, a), (_, b) in itertools.pairwise(files):
        assert json.loads(b[0])["prev"] == json.loads(a[-1])["hash"]
    result = verify([tmp_path])
    assert result.ok and result.records == 40


async def test_every_receipt_names_the_file_that_holds_its_record(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, max_file_bytes=4096)
    log.open()
    receipts = []
    for i in range(0, 60, 3):
        receipts.append(await log.append(rec(i)))  # a batch of one
        receipts += await asyncio.gather(log.append(rec(i + 1)), log.append(rec(i + 2)))
    await log.close()
    assert len(log_files(tmp_path)) > 2, "the records span several files"
    for r in receipts:
        path = tmp_path / r.file
        assert path.is_file(), f"receipt of seq {r.sequence} names {r.file}, which does not exist"
        held = [json.loads(line) for line in path.read_text().splitlines()]
        assert any(h["seq"] == r.sequence and h["hash"] == r.hash for h in held), (
            f"{r.file} does not hold seq {r.sequence}"
        )


async def test_restart_continues_in_a_new_file(tmp_path: Path) -> None:
    await write_log(tmp_path, 3)
    receipts = await write_log(tmp_path, 2)
    assert [r.sequence for r in receipts] == [4, 5]
    assert len(log_files(tmp_path)) == 2
    assert verify([tmp_path]).ok


async def test_torn_final_line_is_reported_not_tampering(tmp_path: Path) -> None:
    await write_log(tmp_path, 3)
    ((f, _),) = lines_of(tmp_path)
    f.write_bytes(f.read_bytes() + b'{"kind":"route.decision","seq":4,"pre')  # a crash mid-write
    result = verify([tmp_path])
    assert result.ok, result.problem
    assert any("torn final line" in n for n in result.notes)
    # The writer recovers: a new file that starts with a record of the crash.
    receipts = await write_log(tmp_path, 1)
    assert receipts[0].sequence == 5  # seq 4 is the recovery note
    stored = list(records([tmp_path]))
    assert stored[3]["kind"] == "log.recovered" and stored[3]["torn_bytes"] > 0
    result = verify([tmp_path])
    assert result.ok and result.records == 5


@pytest.mark.parametrize("earlier", [0, 3])
async def test_a_crash_in_the_first_write_of_a_file_is_set_aside(
    tmp_path: Path, earlier: int
) -> None:
    """A file whose only line is torn has the name the next run would open (its first
    seq is the next seq): appending after the partial line would corrupt the chain."""
    if earlier:
        await write_log(tmp_path, earlier)
    torn = tmp_path / f"audit-{earlier + 1:016d}.jsonl"
    torn.write_bytes(b'{"kind":"route.decision","seq":' + str(earlier + 1).encode() + b',"pr')
    receipts = await write_log(tmp_path, 2)
    assert [r.sequence for r in receipts] == [earlier + 2, earlier + 3]  # after the note
    result = verify([tmp_path])
    assert result.ok, result.problem
    assert result.records == earlier + 3
    kept = tmp_path / f"{torn.name}.torn"
    assert kept.read_bytes().endswith(b',"pr'), "the partial line is kept for inspection"
    note = list(records([tmp_path]))[earlier]
    assert note["kind"] == "log.recovered" and note["torn_file"] == kept.name
    # A second crash of the same kind does not overwrite the first one's bytes.
    torn2 = tmp_path / f"audit-{earlier + 4:016d}.jsonl"
    torn2.write_bytes(b'{"kind"')
    (tmp_path / f"{torn2.name}.torn").write_bytes(b"older")
    await write_log(tmp_path, 1)
    assert (tmp_path / f"{torn2.name}.torn").read_bytes() == b"older"
    assert (tmp_path / f"{torn2.name}.torn.1").read_bytes() == b'{"kind"'
    assert verify([tmp_path]).ok


async def test_one_writer_per_chain(tmp_path: Path) -> None:
    """A second process (here: a second log) appending to the same directory would fork
    the chain: it is refused while the first is open, and welcome once it closed."""
    first = AuditLog(tmp_path)
    first.open()
    await first.append(rec(1))
    second = AuditLog(tmp_path)
    with pytest.raises(
        AuditUnavailable, match=rf"being written by another process \(pid {os.getpid()}\)"
    ):
        second.open()
    await first.close()
    second.open()
    assert (await second.append(rec(2))).sequence == 2
    await second.close()
    assert verify([tmp_path]).ok


@pytest.mark.parametrize("written_with_key", [False, True])
async def test_a_chain_never_changes_algorithm(tmp_path: Path, written_with_key: bool) -> None:
    await write_log(tmp_path, 2, key=KEY if written_with_key else None)
    log = AuditLog(tmp_path, key=None if written_with_key else KEY)
    with pytest.raises(AuditUnavailable, match="never changes algorithm") as info:
        log.open()
    assert base64.b64encode(KEY).decode() not in str(info.value)
    # Refused before anything was written, and the lock is not left behind.
    await write_log(tmp_path, 1, key=KEY if written_with_key else None)
    assert verify([tmp_path], key=KEY if written_with_key else None).ok


async def test_disk_failure_refuses_then_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = AuditLog(tmp_path)
    log.open()
    await log.append(rec(0))
    real_write = os.write
    failing = {"on": True}

    def write(fd: int, data: Any) -> int:
        if failing["on"]:
            real_write(fd, bytes(data)[:10])  # a partial write, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    with pytest.raises(AuditUnavailable, match="audit log unavailable: No space left on device"):
        await log.append(rec(1))
    assert not log.healthy and log.sequence == 1
    assert verify([tmp_path]).ok, "a failed write must leave no partial line behind"
    failing["on"] = False
    receipt = await log.append(rec(2))
    assert receipt.sequence == 2 and log.healthy
    await log.close()
    result = verify([tmp_path])
    assert result.ok and result.records == 2


def fail_once(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, *, partial: bool) -> None:
    """``owner.name`` raises RuntimeError on its first call (after writing a few bytes of
    its data when ``partial``), then behaves."""
    real = getattr(owner, name)
    calls = itertools.count()

    def broken(*args: Any) -> Any:
        if next(calls) == 0:
            if partial:
                real(args[0], bytes(args[1])[:10])
            raise RuntimeError("a bug, not a disk error")
        return real(*args)

    monkeypatch.setattr(owner, name, broken)


@pytest.mark.parametrize(
    ("owner", "name", "partial"),
    [(AuditLog, "_write", False), (os, "write", True)],
    ids=["write step raises", "raises after a partial write"],
)
async def test_any_write_failure_fails_the_batch_and_the_writer_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, partial: bool
) -> None:
    log = AuditLog(tmp_path)
    log.open()
    await log.append(rec(0))
    fail_once(monkeypatch, owner, name, partial=partial)
    with pytest.raises(AuditUnavailable, match="audit log unavailable: unexpected RuntimeError"):
        await asyncio.wait_for(log.append(rec(1)), 10)
    assert not log.healthy and log.sequence == 1
    receipt = await asyncio.wait_for(log.append(rec(2)), 10)
    assert receipt.sequence == 2 and log.healthy
    await log.close()
    result = verify([tmp_path])
    assert result.ok, result.problem
    assert result.records == 2 and result.last_hash == receipt.hash
    assert [r["workflow_id"] for r in records([tmp_path])] == ["wf-0", "wf-2"]


async def test_a_failing_head_write_does_not_undo_a_durable_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = AuditLog(tmp_path)
    log.open()
    fail_once(monkeypatch, AuditLog, "_write_head", partial=False)
    first = await asyncio.wait_for(log.append(rec(0)), 10)
    second = await asyncio.wait_for(log.append(rec(1)), 10)
    await log.close()
    assert (first.sequence, second.sequence) == (1, 2)
    result = verify([tmp_path])
    assert result.ok and result.records == 2, result.problem


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (rec(1, token={"s3cret-value"}), "cannot be serialised: Object of type set is not JSON"),
        (rec(1, seq=1, token="s3cret-value"), "it sets seq, which only the log may set"),
    ],
    ids=["not JSON-shaped", "sets a chain field"],
)
async def test_a_record_the_log_cannot_take_fails_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: dict[str, Any], why: str
) -> None:
    log = AuditLog(tmp_path)
    log.open()
    batches: list[int] = []
    commit = log._commit

    async def counted(batch: list[Any]) -> None:
        batches.append(len(batch))
        await commit(batch)

    monkeypatch.setattr(log, "_commit", counted)
    results = await asyncio.wait_for(
        asyncio.gather(
            log.append(rec(0)), log.append(bad), log.append(rec(2)), return_exceptions=True
        ),
        10,
    )
    await log.close()
    assert batches == [3], "the three records were committed together"
    first, failed, last = results
    assert isinstance(failed, AuditUnavailable), failed
    assert str(failed).startswith("audit record refused: ") and why in str(failed)
    assert "s3cret" not in str(failed)
    assert isinstance(first, Receipt) and isinstance(last, Receipt)
    assert (first.sequence, last.sequence) == (1, 2)
    assert [r["workflow_id"] for r in records([tmp_path])] == ["wf-0", "wf-2"]
    result = verify([tmp_path])
    assert result.ok and result.records == 2, result.problem


# -- tampering: verify names the first bad record and what is wrong ------------------------


@pytest.fixture
async def chain(tmp_path: Path) -> Path:
    await write_log(tmp_path, 12, max_file_bytes=2048)
    assert len(log_files(tmp_path)) >= 2
    return tmp_path


def first_file(directory: Path) -> tuple[Path, list[str]]:
    return lines_of(directory)[0]


def check(
    directory: Path, kind: str, file: str, line: int, seq: int | None, *, key: bytes | None = None
) -> None:
    result = verify([directory], key=key)
    assert not result.ok, "tampering went unnoticed"
    p = result.problem
    assert p is not None
    assert (p.kind, p.file, p.line, p.seq) == (kind, file, line, seq), str(p)


def test_edit_one_field(chain: Path) -> None:
    f, lines = first_file(chain)
    r = json.loads(lines[2])
    r["zone"] = "eu"
    lines[2] = json.dumps(r, sort_keys=True, separators=(",", ":"))
    rewrite(f, lines)
    check(chain, "modified", f.name, 3, 3)


def test_delete_a_line(chain: Path) -> None:
    f, lines = first_file(chain)
    del lines[1]
    rewrite(f, lines)
    check(chain, "deleted", f.name, 2, 3)


def test_swap_two_lines(chain: Path) -> None:
    f, lines = first_file(chain)
    lines[1], lines[2] = lines[2], lines[1]
    rewrite(f, lines)
    check(chain, "reordered", f.name, 2, 3)


def test_insert_a_duplicate_line(chain: Path) -> None:
    f, lines = first_file(chain)
    lines.insert(3, lines[1])
    rewrite(f, lines)
    check(chain, "inserted", f.name, 4, 2)


def test_insert_a_forged_record_with_a_recomputed_chain_is_caught_by_the_key(
    tmp_path: Path,
) -> None:
    asyncio.run(write_log(tmp_path, 4, key=KEY))
    f, lines = first_file(tmp_path)
    # The forger rewrites from line 2 on with plain SHA-256 (they do not have the key).
    out = [lines[0]]
    prev = json.loads(lines[0])["hash"]
    for i, raw in enumerate([json.dumps(rec(99)), *lines[1:]], start=2):
        r = json.loads(raw)
        r.update(seq=i, prev=prev, alg="hmac-sha256")
        r["hash"] = prev = digest(r, b"x" * 32)
        out.append(json.dumps(r))
    rewrite(f, out)
    check(tmp_path, "modified", f.name, 2, 2, key=KEY)
    # Downgrading to an unkeyed chain is caught too.
    rewritten = []
    prev = GENESIS
    for raw in lines:
        r = json.loads(raw)
        r.update(prev=prev, alg="sha256")
        r["hash"] = prev = digest(r, None)
        rewritten.append(json.dumps(r))
    rewrite(f, rewritten)
    check(tmp_path, "modified", f.name, 1, 1, key=KEY)
    assert verify([tmp_path]).ok, "without the key, a recomputed plain chain looks intact"


def test_hmac_chain_needs_the_key(tmp_path: Path) -> None:
    asyncio.run(write_log(tmp_path, 2, key=KEY))
    assert verify([tmp_path], key=KEY).ok
    result = verify([tmp_path])
    assert result.problem is not None and result.problem.kind == "key-required"


def test_truncated_tail_is_caught_by_head(chain: Path) -> None:
    f, lines = lines_of(chain)[-1]
    rewrite(f, lines[:-2])
    result = verify([chain])
    assert result.problem is not None and result.problem.kind == "truncated"
    assert "HEAD records seq 12" in result.problem.detail
    # Cut mid-line (not at a line end): still truncation, since HEAD says it was committed.
    f.write_bytes("".join(x + "\n" for x in lines[:-1]).encode() + lines[-1].encode()[:20])
    result = verify([chain])
    assert result.problem is not None and result.problem.kind == "truncated"


def test_truncated_middle_file(chain: Path) -> None:
    (f1, l1), (f2, _), *_ = lines_of(chain)
    rewrite(f1, l1[:-1])
    next_seq = len(l1) + 1
    check(chain, "deleted", f2.name, 1, next_seq)


async def test_splice_two_files(chain: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    other = tmp_path_factory.mktemp("other")
    await write_log(other, 12, max_file_bytes=2048)
    (_, _), (f2, _), *_ = lines_of(chain)
    (_, _), (_, g2_lines), *_ = lines_of(other)
    rewrite(f2, g2_lines)  # the second file of another chain, same names and sequence numbers
    check(chain, "spliced", f2.name, 1, json.loads(g2_lines[0])["seq"])


def test_corrupted_middle_line(chain: Path) -> None:
    f, lines = first_file(chain)
    lines[1] = "not json"
    rewrite(f, lines)
    check(chain, "corrupted", f.name, 2, None)


# -- `meridian audit verify`: each directory is its own chain --------------------------


@pytest.fixture
async def two_chains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A replica's chain and a codec server's, both intact, with the same file names and
    sequence numbers (each starts at seq 1)."""
    monkeypatch.delenv("MERIDIAN_AUDIT_KEY", raising=False)
    replica, codec = tmp_path / "audit", tmp_path / "audit-codec-eu-west"
    await write_log(replica, 12, max_file_bytes=2048)
    await write_log(codec, 3)
    return replica, codec


def verify_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["audit", "verify", *args])
    return code, capsys.readouterr().out


def test_verify_cli_checks_each_directory_alone(
    two_chains: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    replica, codec = two_chains
    code, out = verify_cli(capsys, str(replica), str(codec), "--json")
    assert code == 0, out
    doc = json.loads(out)
    assert doc["ok"] is True
    assert [
        (c["path"], c["ok"], c["records"], c["last_seq"], c["problem"]) for c in doc["chains"]
    ] == [
        (str(replica), True, 12, 12, None),
        (str(codec), True, 3, 3, None),
    ]
    assert doc["chains"][0]["files"] == len(log_files(replica)) > 1
    assert doc["chains"][1]["last_hash"] == list(records([codec]))[-1]["hash"]
    assert all(c["algorithms"] == ["sha256"] and c["notes"] == [] for c in doc["chains"])
    code, out = verify_cli(capsys, str(replica), str(codec))
    assert code == 0, out
    assert f"{replica}: OK: 12 records" in out and f"{codec}: OK: 3 records" in out
    # Files given one by one: one chain per directory.
    files = [str(f) for f in [*log_files(codec), *log_files(replica)]]
    code, out = verify_cli(capsys, *files, "--json")
    assert code == 0, out
    assert [(c["path"], c["records"]) for c in json.loads(out)["chains"]] == [
        (str(codec), 3),
        (str(replica), 12),
    ]
    # A directory and one of its files: still the one chain, read whole.
    code, out = verify_cli(capsys, files[-1], str(replica), "--json")
    assert code == 0, out
    assert [(c["path"], c["records"]) for c in json.loads(out)["chains"]] == [(str(replica), 12)]


def test_verify_cli_names_the_broken_chain_and_its_bad_record(
    two_chains: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    replica, codec = two_chains
    ((f, lines),) = lines_of(codec)
    r = json.loads(lines[1])
    r["why"] = "edited"
    lines[1] = json.dumps(r)
    rewrite(f, lines)
    code, out = verify_cli(capsys, str(replica), str(codec), "--json")
    assert code == 1, out
    doc = json.loads(out)
    assert doc["ok"] is False
    intact, broken = doc["chains"]
    assert (intact["path"], intact["ok"], intact["records"], intact["problem"]) == (
        str(replica), True, 12, None,
    )  # fmt: skip
    assert (broken["path"], broken["ok"], broken["records"]) == (str(codec), False, 1)
    assert broken["problem"] == {
        "file": f.name, "line": 2, "seq": 2, "kind": "modified",
        "detail": "the record does not match its hash (edited)",
    }  # fmt: skip
    code, out = verify_cli(capsys, str(replica), str(codec))
    assert code == 1, out
    assert f"{replica}: OK: 12 records" in out
    assert f"{codec}: FAILED: {f.name}:2 seq 2: modified" in out


def test_verify_cli_exit_codes(
    two_chains: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    replica, _ = two_chains
    keyed = tmp_path / "audit-keyed"
    asyncio.run(write_log(keyed, 2, key=KEY))
    code, out = verify_cli(capsys, str(replica), str(keyed))
    assert code == 2, out
    assert f"{replica}: OK" in out and f"{keyed}: FAILED" in out and "key-required" in out
    f, lines = first_file(replica)
    rewrite(f, lines[1:])
    code, out = verify_cli(capsys, str(replica), str(keyed))
    assert code == 1, "a broken chain outweighs one that could not be checked without its key"
    assert main(["audit", "verify", str(tmp_path / "nowhere")]) == 1
    assert "nowhere: no such file or directory" in capsys.readouterr().err


def test_canonical_form_excludes_the_hash() -> None:
    a = canonical({"b": 1, "a": "é", "hash": "x"})
    assert a == b'{"a":"\xc3\xa9","b":1}'


def test_load_key(tmp_path: Path) -> None:
    path = tmp_path / "audit.key"
    path.write_text(base64.b64encode(KEY).decode())
    path.chmod(0o600)
    assert load_key(path, environ={}) == KEY
    assert load_key(None, environ={}) is None
    path.chmod(0o644)
    with pytest.raises(Exception, match="chmod 600"):
        load_key(path, environ={})
    with pytest.raises(AuditUnavailable, match="at least 32"):
        load_key(None, environ={"MERIDIAN_AUDIT_KEY": base64.b64encode(b"short").decode()})


# -- query (the report: test_audit_report.py) ---------------------------------------


async def test_query_filters(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    log.open()
    await log.append(rec(1, tenant="acme", region="eu-west", zone="eu"))
    await log.append({"kind": "flip", "region": "eu-west"})
    await log.append(rec(2, tenant="globex", region="us-east"))
    await log.close()

    def got(**kw: Any) -> list[int]:
        return [r["seq"] for r in records([tmp_path]) if Filter(**kw)(r)]

    assert got(tenant="acme") == [1]
    assert got(kind="route") == [1, 3]
    assert got(kind="flip") == [2]
    assert got(workflow_id="wf-2") == [3]
    assert got(region="eu-west") == [1, 2]
    assert got(seq=2) == [2]
