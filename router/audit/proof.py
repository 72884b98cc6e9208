"""The auditor's side of the witness: check each chain against the checkpoints witnessed
off the box (``meridian audit verify --witness``), and prove a caller's receipt
(``meridian audit prove``).

A chain that verifies on its own only shows that nobody without the box rewrote it.
Against the witness: every witnessed checkpoint of the chain's id must carry a valid
signature of a trusted public key, and the log must hold each checkpoint's seq with that
checkpoint's hash. A log cut behind a checkpoint (even with HEAD rewritten to match) is
``truncated`` from the first missing seq; a tail rewritten behind one (even with the HMAC
key) is ``modified`` at the first witnessed seq that differs; a chain no witness has a
checkpoint of is ``unwitnessed`` — never a pass. Records after the latest checkpoint are
noted as not yet witnessed, except that checkpoint's own record(s) ending an idle chain
(``own_records`` says why that is sound).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from router.audit.chain import GENESIS
from router.audit.checkpoint import Checkpoint, declared_chain_ids, read_chain_id
from router.audit.signing import PublicKeys, receipt_message, unb64
from router.audit.verify import Problem, VerifyResult, chains, verify
from router.audit.witness import Witnessed

_HASH_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class Evidence:
    """Every witnessed checkpoint, by chain id, each with why its signature does not
    verify ("" when it does), sorted by seq."""

    by_chain: dict[str, list[tuple[Witnessed, str]]]
    sources: list[str]
    notes: list[str] = field(default_factory=list)
    # The public keys the signatures were checked with.
    keys: PublicKeys = field(default_factory=PublicKeys)

    @property
    def trusted(self) -> bool:
        """False: no public key was given, so no signature could be checked."""
        return bool(self.keys)

    @classmethod
    def of(
        cls,
        found: Iterable[Witnessed],
        keys: PublicKeys,
        sources: Sequence[str],
        notes: Sequence[str] = (),
    ) -> Evidence:
        by_chain: dict[str, list[tuple[Witnessed, str]]] = {}
        for w in found:
            by_chain.setdefault(w.checkpoint.chain_id, []).append(
                (w, w.checkpoint.check(keys) or "")
            )
        for entries in by_chain.values():
            entries.sort(key=lambda e: e[0].checkpoint.seq)
        return cls(by_chain, list(sources), list(notes), keys)

    def seqs(self) -> set[int]:
        return {w.checkpoint.seq for entries in self.by_chain.values() for w, _ in entries}


@dataclass
class WitnessCheck:
    """What the witnesses say about one chain."""

    chain_id: str
    # The latest witnessed checkpoint whose signature verifies (None: there is none).
    latest: Witnessed | None = None
    checked: int = 0
    # Records after the latest witnessed checkpoint, not counting its own (``own_records``).
    unwitnessed: int = 0
    own_records: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        w = self.latest
        return {
            "chain_id": self.chain_id,
            "checked_checkpoints": self.checked,
            "witnessed_seq": w.checkpoint.seq if w else 0,
            "unwitnessed_records": self.unwitnessed,
            "checkpoint_records": self.own_records,
            "checkpoint": None
            if w is None
            else {
                "seq": w.checkpoint.seq,
                "hash": w.checkpoint.hash,
                "time": w.checkpoint.time,
                "digest": w.checkpoint.digest,
                "key_id": w.checkpoint.key_id,
                "replica_id": w.checkpoint.replica_id,
                "source": w.source,
            },
        }


def chain_of(directory: Path, result: VerifyResult) -> str:
    """The chain id of a verified directory: the one its checkpoint records name, else its
    CHAIN file's (the writer's own note; "" when neither says)."""
    noted = read_chain_id(directory)
    if result.chain_id and noted and noted != result.chain_id:
        result.notes.append(
            f"the CHAIN file names chain {noted}, the log's checkpoint records "
            f"{result.chain_id}: the log's is checked"
        )
    return result.chain_id or noted or ""


def check_chain(directory: Path, result: VerifyResult, evidence: Evidence) -> WitnessCheck:
    """Compare one verified chain with the witnessed checkpoints of its id; sets
    ``result.problem`` when they contradict it (or vouch for nothing)."""
    chain = chain_of(directory, result)
    result.chain_id = chain
    check = WitnessCheck(chain)
    result.witness = check
    entries = evidence.by_chain.get(chain, []) if chain else []
    valid = [w for w, why in entries if not why]
    check.latest = valid[-1] if valid else None
    if result.problem is not None:
        result.notes.append("not compared with the witness: the chain is already broken")
        return check
    if not evidence.trusted:
        result.problem = Problem(
            result.last_at[0],
            result.last_at[1],
            None,
            "key-required",
            "give the audit signing key's public key (--public-key; "
            "`meridian audit public-key`) to check witnessed checkpoints",
        )
        return check
    bad = next(((w, why) for w, why in entries if why), None)
    if bad is not None:
        w, why = bad
        result.problem = Problem(
            w.where,
            w.line,
            w.checkpoint.seq,
            "bad-checkpoint",
            f"the witnessed {w.checkpoint.describe()}: {why}",
        )
        return check
    if not valid:
        named = f"chain {chain}" if chain else "this chain (the log names no chain id)"
        where = ", ".join(evidence.sources) or "no witness given"
        result.problem = Problem(
            result.last_at[0],
            result.last_at[1],
            None,
            "unwitnessed",
            f"no witnessed checkpoint of {named} at {where}: nothing "
            "off this box vouches for the log",
        )
        return check
    agreeing: Witnessed | None = None
    for w in valid:
        cp = w.checkpoint
        since = (
            f"; the log agrees with the witnessed checkpoint of seq {agreeing.checkpoint.seq}"
            if agreeing is not None
            else "; no earlier witnessed checkpoint agrees"
        )
        if cp.seq > result.last_seq:
            first = result.last_seq + 1
            missing = str(first) if cp.seq == first else f"{first}..{cp.seq}"
            result.problem = Problem(
                result.last_at[0],
                result.last_at[1] + 1,
                first,
                "truncated",
                f"records {missing} are missing: the log ends at seq {result.last_seq}, but the "
                f"witnessed {cp.describe()} at {w.source} vouches for seq {cp.seq}{since}",
            )
            return check
        got = (GENESIS, *result.last_at) if cp.seq == 0 else result.found.get(cp.seq)
        if got is None or got[0] != cp.hash:
            file, line = (got[1], got[2]) if got else result.last_at
            theirs = got[0][:16] if got else "none"
            result.problem = Problem(
                file,
                line,
                cp.seq,
                "modified",
                f"the record differs from the witnessed {cp.describe()} at {w.source} (hash "
                f"{cp.hash[:16]}…, the log's {theirs}…): records up to seq {cp.seq} were "
                f"rewritten{since}",
            )
            return check
        agreeing = w
        check.checked += 1
    latest = valid[-1].checkpoint
    check.own_records = own_records(result, latest)
    check.unwitnessed = result.last_seq - latest.seq - len(check.own_records)
    if check.unwitnessed:
        result.notes.append(
            f"records {latest.seq + 1}..{result.last_seq} are not yet witnessed (written after "
            f"the latest witnessed {latest.describe()})"
        )
    return check


def own_records(result: VerifyResult, latest: Checkpoint) -> list[int]:
    """The seqs after ``latest`` that are its own records, when nothing else follows it.

    A checkpoint covers the log up to its seq, and only then is its ``audit.checkpoint``
    record written (what it covers, its digest, each witness's outcome), followed perhaps
    by ``audit.witness`` records of a witness that took it late. So a chain at rest always
    ends after its latest checkpoint with records about that checkpoint alone. They are
    told apart, not hidden: the checkpoint record must name ``latest``'s chain and digest
    (which the witness holds, signed), each witness record its chain and seq, and nothing
    else may follow; any other record after the checkpoint, or one of these naming
    another checkpoint, leaves every record after it counted as not yet witnessed. Like
    any record after the latest checkpoint they are not vouched for by the witness
    (whoever owns the disk could still cut or rewrite them); no check is relaxed."""
    tail = [(seq, rec) for seq, rec in result.tail_checkpoints if seq > latest.seq]
    if not tail or tail[0][0] != latest.seq + 1 or tail[-1][0] != result.last_seq:
        return []
    first, *rest = (rec for _, rec in tail)
    if (
        first.get("kind") != "audit.checkpoint"
        or first.get("chain_id") != latest.chain_id
        or first.get("checkpoint_digest") != latest.digest
        or first.get("checkpoint_seq") != latest.seq
    ):
        return []
    for rec in rest:
        if (
            rec.get("kind") != "audit.witness"
            or rec.get("chain_id") != latest.chain_id
            or rec.get("checkpoint_seq") != latest.seq
        ):
            return []
    return [seq for seq, _ in tail]


def verify_witnessed(
    paths: Iterable[Path], *, key: bytes | None, evidence: Evidence
) -> list[tuple[Path, VerifyResult]]:
    """Each chain among ``paths`` verified alone, then against the witnessed evidence."""
    wanted = evidence.seqs()
    out = []
    for directory, members in chains(paths):
        result = verify(members, key=key, seqs=wanted)
        check_chain(directory, result, evidence)
        out.append((directory, result))
    return out


def unverified_chains(
    results: Sequence[tuple[Path, VerifyResult]], evidence: Evidence
) -> list[dict[str, Any]]:
    """Chains the witnesses hold checkpoints of that none of ``results`` is: a replica's
    earlier chain, or a directory swapped for another one's."""
    seen = {r.chain_id for _, r in results}
    out = []
    for chain, entries in sorted(evidence.by_chain.items()):
        if chain in seen or not entries:
            continue
        w = entries[-1][0]
        out.append(
            {
                "chain_id": chain,
                "replica_id": w.checkpoint.replica_id,
                "witnessed_seq": w.checkpoint.seq,
                "time": w.checkpoint.time,
                "source": w.source,
            }
        )
    return out


# -- proving a receipt -----------------------------------------------------------------------


class ProofRefused(Exception):
    """A receipt that is not proven; ``kind`` says which check refused it."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


@dataclass(frozen=True)
class Claim:
    chain_id: str
    seq: int
    hash: str
    file: str
    key_id: str
    signature: bytes


_RECEIPT_FIELDS = {
    "sequence": "sequence",
    "hash": "hash",
    "file": "file",
    "chain_id": "chain_id",
    "key_id": "key_id",
    "signature": "signature",
    # proto3 JSON spells them in lowerCamelCase.
    "chainId": "chain_id",
    "keyId": "key_id",
}


# Why a receipt can be unsigned, and what to prove instead. One signature per start
# (~41 µs of Ed25519): the start.outcome record's receipt is signed, and that record
# names its route.decision record (``decision_seq``), so the decision's receipt
# (``decision.receipt``) is an unsigned pointer the signed one covers.
UNSIGNED_HINT = (
    "an unsigned receipt proves nothing by itself. A start's decision.receipt is never "
    "signed: prove the start's top-level `receipt` instead, or the whole `meridian start "
    "--json` output, whose signed receipt covers the decision (its start.outcome record "
    "names the decision record, and decision.receipt is checked against it). Any other "
    "receipt without a signature came from a router without an audit signing key"
)


def parse_claim(doc: Any, where: str = "receipt") -> Claim:
    if not isinstance(doc, dict):
        raise ProofRefused("malformed", f"{where}: not a JSON object")
    fields: dict[str, Any] = {}
    for name, value in doc.items():
        if name not in _RECEIPT_FIELDS:
            raise ProofRefused("malformed", f"{where}: unknown field {name!r}")
        fields[_RECEIPT_FIELDS[name]] = value
    missing = sorted(set(_RECEIPT_FIELDS.values()) - set(fields))
    if missing:
        raise ProofRefused("malformed", f"{where}: missing {', '.join(missing)}")
    seq = fields["sequence"]
    if isinstance(seq, str) and seq.isdigit() and str(int(seq)) == seq:
        seq = int(seq)  # proto3 JSON writes 64-bit integers as strings
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise ProofRefused("malformed", f"{where}: sequence is not a positive integer")
    text = {k: fields[k] for k in ("hash", "file", "chain_id", "key_id", "signature")}
    bad = [k for k, v in text.items() if not isinstance(v, str)]
    if bad:
        raise ProofRefused("malformed", f"{where}: {', '.join(bad)} must be strings")
    if not _HASH_RE.match(text["hash"]):
        raise ProofRefused("malformed", f"{where}: hash is not 64 lower-case hex digits")
    if not text["signature"]:
        raise ProofRefused("unsigned", f"{where}: no signature: {UNSIGNED_HINT}")
    signature = unb64(text["signature"])
    if signature is None:
        raise ProofRefused("malformed", f"{where}: signature is not canonical base64")
    return Claim(text["chain_id"], seq, text["hash"], text["file"], text["key_id"], signature)


@dataclass
class Proof:
    claim: Claim
    directory: Path
    record: dict[str, Any]
    checkpoint: Witnessed
    algorithms: list[str]
    # The route.decision record a start.outcome names, if any.
    decision: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


def _directory_of(chain: str, directories: Sequence[Path]) -> Path:
    for d in directories:
        if read_chain_id(d) == chain or chain in declared_chain_ids(d):
            return d
    given = ", ".join(str(d) for d in directories)
    raise ProofRefused("no-chain", f"no audit directory given holds chain {chain} ({given})")


def _read_records(directory: Path, seqs: set[int]) -> dict[int, dict[str, Any]]:
    from router.audit.query import records

    return {r["seq"]: r for r in records([directory]) if r.get("seq") in seqs}


def prove(
    doc: Any,
    *,
    directories: Sequence[Path],
    key: bytes | None,
    evidence: Evidence,
    keys: PublicKeys,
) -> Proof:
    """Prove a stored receipt (or a ``meridian start --json`` or ``meridian explain --json``
    output, by its signed top-level ``receipt``): its signature, its record in the log, a
    chain that verifies alone and against the witness, and a witnessed checkpoint at or
    after its seq; of a whole output, also that what it says beside the receipt is what
    the records say. ``ProofRefused`` says which failed."""
    outer = doc if isinstance(doc, dict) and "receipt" in doc else None
    claim = parse_claim(outer["receipt"] if outer is not None else doc)
    if not keys:
        raise ProofRefused(
            "key-required",
            "no public key to check the signature with: give "
            "--public-key (`meridian audit public-key`)",
        )
    message = receipt_message(claim.chain_id, claim.seq, claim.hash, claim.file)
    why = keys.check(claim.key_id, message, claim.signature)
    if why is not None:
        raise ProofRefused(
            "signature", f"receipt: {why}: it was altered or not signed by a trusted key"
        )
    directory = _directory_of(claim.chain_id, directories)
    result = verify([directory], key=key, seqs={claim.seq, *evidence.seqs()})
    check = check_chain(directory, result, evidence)
    if result.problem is not None:
        kind = "key-required" if result.problem.kind == "key-required" else "chain"
        raise ProofRefused(kind, f"chain {claim.chain_id} in {directory}: {result.problem}")
    got = result.found.get(claim.seq)
    if got is None:
        raise ProofRefused(
            "record",
            f"the log of chain {claim.chain_id} holds no record seq "
            f"{claim.seq} (it ends at seq {result.last_seq})",
        )
    if got[0] != claim.hash:
        raise ProofRefused(
            "record", f"record seq {claim.seq} has hash {got[0]}, not the receipt's {claim.hash}"
        )
    if got[1] != claim.file:
        raise ProofRefused(
            "record", f"record seq {claim.seq} is in {got[1]}, not in the receipt's {claim.file}"
        )
    latest = check.latest
    assert latest is not None  # check_chain sets a problem when there is none
    if latest.checkpoint.seq < claim.seq:
        raise ProofRefused(
            "unwitnessed",
            f"record seq {claim.seq} is not yet witnessed: the latest witnessed "
            f"{latest.checkpoint.describe()} covers records up to seq {latest.checkpoint.seq}; "
            "try again after the next checkpoint",
        )
    found = _read_records(directory, {claim.seq})
    record = found[claim.seq]
    proof = Proof(claim, directory, record, latest, sorted(result.algs), notes=result.notes)
    if outer is not None:
        _check_output(outer, proof, directory)
    return proof


# What a StartWorkflowResponse says beside its receipt, and what a RouteDecision (an
# explain output, or a start's decision) says of the placement. The endpoint is not
# recorded: it is config.
_START_FIELDS = ("workflow_id", "run_id", "request_id", "started", "decision", "home")
_PLACEMENT_FIELDS = (
    "zone", "region", "cluster", "namespace", "task_queue", "rule", "reasons",
    "config_version", "failed_over",
)  # fmt: skip
_OUTPUT_OF = {"start.outcome": "meridian start --json", "route.explain": "meridian explain --json"}


def _check_output(outer: Mapping[str, Any], proof: Proof, directory: Path) -> None:
    """A whole output holding the receipt: which command's it is must match the record
    the signed receipt names, and what it says beside the receipt must be what the
    proven records say."""
    kind = proof.record.get("kind")
    looks = (
        "start.outcome"
        if any(k in outer for k in _START_FIELDS)
        else "route.explain"
        if any(k in outer for k in (*_PLACEMENT_FIELDS, "endpoint"))
        else None
    )
    if looks is None:
        return  # nothing beside the receipt: the receipt alone, proven
    if kind != looks:
        raise ProofRefused(
            "record",
            f"record seq {proof.claim.seq} is a {kind} record, not the {looks} record the "
            f"receipt of a `{_OUTPUT_OF[looks]}` output names: prove this receipt alone",
        )
    if kind == "route.explain":
        _check_placement(outer, proof.record, "", f"the route.explain record seq {proof.claim.seq}")
        proof.decision = proof.record
        return
    _check_start_output(outer, proof, directory)


def _check_placement(
    said: Mapping[str, Any], rec: Mapping[str, Any], prefix: str, what: str
) -> None:
    for name in _PLACEMENT_FIELDS:
        if name in said and said[name] != rec.get(name):
            raise ProofRefused(
                "record",
                f"{prefix}{name}: the output says {said[name]!r}, {what} {rec.get(name)!r}",
            )


def _check_start_output(outer: Mapping[str, Any], proof: Proof, directory: Path) -> None:
    """A whole ``meridian start --json`` output (its receipt names a start.outcome
    record): what it says beside the receipt must be what the proven records say; its
    decision, unsigned, is checked against the route.decision record the outcome names."""
    rec = proof.record
    said = {k: outer[k] for k in ("workflow_id", "run_id", "request_id") if k in outer}
    if "started" in outer:
        said["started"] = outer["started"]
    recorded = {**rec, "started": rec.get("outcome") == "started"}
    for name, value in said.items():
        if value != recorded.get(name):
            raise ProofRefused(
                "record",
                f"{name}: the output says {value!r}, the record seq "
                f"{proof.claim.seq} {recorded.get(name)!r}",
            )
    decision = outer.get("decision")
    if decision is None:
        return
    if not isinstance(decision, dict):
        raise ProofRefused("malformed", "decision: not a JSON object")
    seq = rec.get("decision_seq")
    found = _read_records(directory, {seq}) if isinstance(seq, int) else {}
    drec = found.get(seq) if isinstance(seq, int) else None
    if drec is None or drec.get("kind") != "route.decision":
        raise ProofRefused(
            "record",
            f"the outcome names decision seq {seq}, which is not a "
            "route.decision record of this chain",
        )
    inner = decision.get("receipt")
    if isinstance(inner, dict):
        s = inner.get("sequence")
        if (str(s) if s is not None else "") != str(seq) or inner.get("hash") != drec["hash"]:
            raise ProofRefused(
                "record",
                f"decision.receipt does not name the decision record "
                f"(seq {seq}, hash {drec['hash'][:16]}…)",
            )
    _check_placement(decision, drec, "decision.", f"the decision record seq {seq}")
    proof.decision = drec
