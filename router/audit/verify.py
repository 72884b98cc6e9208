"""Verify an audit chain across its files, as an auditor would, with nothing but the
files (and the audit key, for an HMAC chain).

Each directory holds one chain (a router replica's, or a codec server's in
``audit-codec-<region>``), verified alone with its own HEAD: ``verify_chains`` takes
several directories (or files, grouped by their directory) and gives a result per chain.

Names the first bad record (file, line, sequence) and what is wrong with it: modified,
deleted, reordered, inserted, spliced, truncated, or a corrupted line. A torn final line
(a write a crash cut short, never acknowledged) is reported as such, not as tampering.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from router.audit.chain import ALG_HMAC, ALG_SHA256, GENESIS, HEAD_NAME, digest, log_files


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    seq: int | None
    kind: str
    detail: str

    def __str__(self) -> str:
        seq = f" seq {self.seq}" if self.seq is not None else ""
        return f"{self.file}:{self.line}{seq}: {self.kind}: {self.detail}"


@dataclass
class VerifyResult:
    records: int = 0
    files: int = 0
    last_seq: int = 0
    last_hash: str = GENESIS
    # Where the last record is: (file name, line).
    last_at: tuple[str, int] = ("-", 0)
    algs: set[str] = field(default_factory=set)
    problem: Problem | None = None
    notes: list[str] = field(default_factory=list)
    # The records asked for by seq (``verify(seqs=...)``): (hash, file, line) of each.
    found: dict[int, tuple[str, str, int]] = field(default_factory=dict)
    # The chain id the log's checkpoint records name ("" when none does), and what the
    # witnesses say about it (``router.audit.proof``; None when not asked).
    chain_id: str = ""
    witness: Any = None
    # The records about checkpoints the chain ends with (audit.checkpoint, audit.witness),
    # as (seq, record): a checkpoint's own record always comes after the checkpoint, so
    # an idle chain ends with one; ``router.audit.proof`` tells such records apart from
    # records not yet witnessed.
    tail_checkpoints: list[tuple[int, dict[str, Any]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.problem is None


@dataclass
class _Line:
    file: Path
    number: int
    raw: bytes
    record: dict[str, Any] | None
    torn: bool  # the file's final line, without its newline


def expand(paths: Iterable[Path]) -> tuple[list[Path], dict[str, Any] | None]:
    """Files in chain order (directories expand to their log files), and the HEAD of
    a directory given, if any."""
    files: list[Path] = []
    head = None
    for p in paths:
        if p.is_dir():
            files += log_files(p)
            with_head = p / HEAD_NAME
            if with_head.exists():
                try:
                    head = json.loads(with_head.read_text())
                except ValueError:
                    head = None
        else:
            files.append(p)
    return sorted(set(files), key=lambda f: f.name), head


def _lines(files: Sequence[Path]) -> list[_Line]:
    out = []
    for f in files:
        data = f.read_bytes()
        parts = data.split(b"\n")
        ends_clean = data.endswith(b"\n") or not data
        if ends_clean:
            parts = parts[:-1]
        for i, raw in enumerate(parts, start=1):
            torn = not ends_clean and i == len(parts)
            try:
                rec = json.loads(raw)
                record = rec if isinstance(rec, dict) else None
            except ValueError:
                record = None
            out.append(_Line(f, i, raw, record, torn))
    return out


def verify(
    paths: Iterable[Path],
    *,
    key: bytes | None = None,
    head: dict[str, Any] | None = None,
    seqs: Collection[int] = (),
) -> VerifyResult:
    """``seqs``: records whose (hash, file, line) to keep in ``found`` (a checkpoint's,
    a receipt's)."""
    files, found_head = expand(paths)
    head = head if head is not None else found_head
    result = VerifyResult(files=len(files))
    lines = _lines(files)
    seqs_ahead = [ln.record.get("seq") if ln.record else None for ln in lines]
    expected, last = 1, GENESIS
    first_in_file = dict.fromkeys(files, True)

    def fail(ln: _Line, kind: str, detail: str) -> VerifyResult:
        seq = ln.record.get("seq") if ln.record else None
        result.problem = Problem(ln.file.name, ln.number, seq if isinstance(seq, int) else None,
                                 kind, detail)  # fmt: skip
        return result

    for idx, ln in enumerate(lines):
        starts_file = first_in_file.get(ln.file, False)
        first_in_file[ln.file] = False
        rec = ln.record
        if rec is None:
            if ln.torn:
                result.notes.append(
                    f"{ln.file.name}:{ln.number}: torn final line ({len(ln.raw)} bytes): a write "
                    "cut short by a crash, never acknowledged; not part of the chain"
                )
                continue
            return fail(ln, "corrupted", "the line is not a JSON record")
        seq, prev, rhash, alg = rec.get("seq"), rec.get("prev"), rec.get("hash"), rec.get("alg")
        if not isinstance(seq, int) or not isinstance(prev, str) or not isinstance(rhash, str):
            return fail(ln, "corrupted", "missing seq/prev/hash")
        if alg not in (ALG_SHA256, ALG_HMAC):
            return fail(ln, "corrupted", f"unknown hash algorithm {alg!r}")
        if alg == ALG_HMAC and key is None:
            return fail(ln, "key-required", "HMAC-chained: give the audit key to verify it")
        if key is not None and alg != ALG_HMAC:
            return fail(ln, "modified", "not HMAC-chained although an audit key was given "
                                        "(a rewritten, downgraded chain)")  # fmt: skip
        result.algs.add(alg)
        if digest(rec, key if alg == ALG_HMAC else None) != rhash:
            return fail(ln, "modified", "the record does not match its hash (edited)")
        if seq != expected or prev != last:
            where = (
                f"(file {ln.file.name} does not continue the previous file) "
                if (starts_file and idx > 0)
                else ""
            )
            if seq == expected:
                kind = "spliced" if starts_file and idx > 0 else "inserted"
                return fail(ln, kind, f"{where}its prev does not match the hash of seq {seq - 1}: "
                                      "a record from elsewhere, or a rewritten chain")  # fmt: skip
            if seq > expected:
                if expected in seqs_ahead[idx + 1 :]:
                    return fail(
                        ln, "reordered", f"{where}seq {expected} was expected; it comes later"
                    )
                missing = f"{expected}" if seq == expected + 1 else f"{expected}..{seq - 1}"
                return fail(ln, "deleted", f"{where}records {missing} are missing")
            return fail(ln, "inserted", f"{where}seq {seq} appears again after seq {expected - 1} "
                                        "(a duplicated or replayed record)")  # fmt: skip
        rkind = rec.get("kind")
        if rkind == "audit.checkpoint" and isinstance(rec.get("chain_id"), str):
            if not result.chain_id:
                result.chain_id = rec["chain_id"]
            elif rec["chain_id"] != result.chain_id:
                return fail(ln, "spliced", f"it names chain {rec['chain_id']}, but the checkpoint "
                                           f"records before it name {result.chain_id}")  # fmt: skip
        if rkind in ("audit.checkpoint", "audit.witness"):
            result.tail_checkpoints.append((seq, rec))
        else:
            result.tail_checkpoints.clear()
        if seq in seqs:
            result.found[seq] = (rhash, ln.file.name, ln.number)
        if rkind == "log.recovered":
            result.notes.append(f"{ln.file.name}:{ln.number} seq {seq}: {rec.get('note', '')}")
            if "head_seq" in rec:
                return fail(ln, "truncated", rec.get("note", "records were missing at restart"))
        expected, last = seq + 1, rhash
        result.records += 1
        result.last_seq, result.last_hash = seq, rhash
        result.last_at = (ln.file.name, ln.number)
    if head is not None and isinstance(head.get("seq"), int):
        if head["seq"] > result.last_seq:
            tail = lines[-1] if lines else None
            result.problem = Problem(
                tail.file.name if tail else "-", (tail.number + 1) if tail else 0, None,
                "truncated",
                f"the log ends at seq {result.last_seq} but HEAD records seq {head['seq']} as "
                "committed: records at the end are missing",
            )  # fmt: skip
        elif head["seq"] == result.last_seq and head.get("hash") != result.last_hash:
            result.notes.append("HEAD's hash differs from the last record's (HEAD was edited)")
    return result


def chains(paths: Iterable[Path]) -> list[tuple[Path, list[Path]]]:
    """The chains among ``paths``, in the order given, as (directory, what ``verify``
    reads): a directory is one chain; files given one by one are grouped by their
    directory (and checked without its HEAD, which speaks for the whole directory)."""
    found: dict[Path, tuple[Path, list[Path]]] = {}
    whole: set[Path] = set()
    for p in paths:
        directory = p if p.is_dir() else p.parent
        key = directory.resolve()
        _, members = found.setdefault(key, (directory, []))
        if p.is_dir():
            whole.add(key)
            members[:] = [p]
        elif key not in whole:
            members.append(p)
    return list(found.values())


def verify_chains(
    paths: Iterable[Path], *, key: bytes | None = None
) -> list[tuple[Path, VerifyResult]]:
    """Each chain among ``paths`` (see ``chains``) verified alone: a result per chain."""
    return [(directory, verify(members, key=key)) for directory, members in chains(paths)]
