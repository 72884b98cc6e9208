"""Signed checkpoints of an audit chain, published to witnesses off the box.

A chain's HEAD and its HMAC key live on the router's own disk, so whoever owns that disk
can cut or rewrite the tail and HEAD together. A checkpoint anchors the chain elsewhere:
every ``interval`` seconds while records are written (and at a clean shutdown) the
``Checkpointer`` reads the log's last durable (seq, hash), signs a checkpoint of it with
the replica's Ed25519 key::

    {"type": "meridian.audit.checkpoint.v1", "chain_id", "replica_id", "seq", "hash",
     "time", "prev" (the previous checkpoint's digest), "key_id", "signature"}

(the signature covers the canonical JSON of everything but itself), publishes it to every
witness (``router.audit.witness``: a directory on another volume or host, Consul KV),
and appends an ``audit.checkpoint`` record to the chain itself naming the checkpoint and
each witness's outcome. A failing witness is retried with backoff and its last error kept
for ``meridian status``; its recovery is an ``audit.witness`` record. None of this is on
the start path: starts never wait for a witness.

The chain id is stable per audit directory (its ``CHAIN`` file, created with it; a lost
file is recovered from the checkpoint records in the log) and bound into every
checkpoint, so a checkpoint of one chain never vouches for another.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from router import metrics
from router.audit.chain import log_files
from router.audit.log import AuditLog, Receipt
from router.audit.records import checkpoint_record, utc, witness_record
from router.audit.signing import (
    PublicKeys,
    SigningKey,
    b64,
    canonical_json,
    receipt_message,
    unb64,
)
from router.errors import AuditUnavailable, WitnessUnavailable

log = logging.getLogger(__name__)

CHECKPOINT_TYPE = "meridian.audit.checkpoint.v1"
CHAIN_FILE = "CHAIN"
LAST_CHECKPOINT_FILE = "CHECKPOINT"
CHECKPOINT_KIND = "audit.checkpoint"
CHAIN_ID_RE = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    chain_id: str
    replica_id: str
    seq: int
    hash: str
    time: str
    # The digest of the chain's previous checkpoint ("" for its first).
    prev: str
    key_id: str
    signature: bytes

    def body(self) -> dict[str, Any]:
        return {
            "type": CHECKPOINT_TYPE, "chain_id": self.chain_id, "replica_id": self.replica_id,
            "seq": self.seq, "hash": self.hash, "time": self.time, "prev": self.prev,
            "key_id": self.key_id,
        }  # fmt: skip

    @property
    def digest(self) -> str:
        """What names this checkpoint (and what the next one's ``prev`` holds)."""
        return hashlib.sha256(canonical_json(self.body())).hexdigest()

    def document(self) -> dict[str, Any]:
        """The form witnesses store: the body and its signature (base64)."""
        return {**self.body(), "signature": b64(self.signature)}

    @classmethod
    def from_document(cls, doc: Any) -> Checkpoint:
        """``ValueError`` naming what is wrong when ``doc`` is not a checkpoint."""
        if not isinstance(doc, dict) or doc.get("type") != CHECKPOINT_TYPE:
            raise ValueError("not a Meridian audit checkpoint")
        strings = ("chain_id", "replica_id", "hash", "time", "prev", "key_id", "signature")
        bad = [k for k in strings if not isinstance(doc.get(k), str)]
        if bad or not isinstance(doc.get("seq"), int) or isinstance(doc.get("seq"), bool):
            raise ValueError(f"checkpoint fields missing or mistyped: {', '.join(bad) or 'seq'}")
        signature = unb64(doc["signature"])
        if signature is None:
            raise ValueError("checkpoint signature is not canonical base64")
        extra = set(doc) - {"type", "seq", *strings}
        if extra:
            raise ValueError(f"checkpoint has unknown fields: {', '.join(sorted(extra))}")
        return cls(
            doc["chain_id"], doc["replica_id"], doc["seq"], doc["hash"], doc["time"],
            doc["prev"], doc["key_id"], signature,
        )  # fmt: skip

    def check(self, keys: PublicKeys) -> str | None:
        """Why the signature does not verify with ``keys``, or None when it does."""
        return keys.check(self.key_id, canonical_json(self.body()), self.signature)

    def describe(self) -> str:
        return (
            f"checkpoint seq {self.seq} of {self.time} (digest {self.digest[:16]}, "
            f"key {self.key_id}, replica {self.replica_id})"
        )


def sign_checkpoint(
    key: SigningKey, *, chain_id: str, replica_id: str, seq: int, record_hash: str, at: str,
    prev: str,
) -> Checkpoint:  # fmt: skip
    unsigned = Checkpoint(chain_id, replica_id, seq, record_hash, at, prev, key.key_id, b"")
    return Checkpoint(
        chain_id, replica_id, seq, record_hash, at, prev, key.key_id,
        key.sign(canonical_json(unsigned.body())),
    )  # fmt: skip


def forward(held: Checkpoint | None, new: Checkpoint, witness: str) -> bool:
    """A witness's one rule: it only moves forward. True: store ``new``; False: it holds
    that point already; ``WitnessUnavailable(refused=True)`` for anything backwards or
    contradicting what it holds."""
    if held is None or new.seq > held.seq:
        return True
    if new.seq == held.seq and new.hash == held.hash:
        return False
    what = "contradicts" if new.seq == held.seq else "is behind"
    raise WitnessUnavailable(
        f"{witness}: refused checkpoint seq {new.seq} of chain {new.chain_id}: it {what} the "
        f"witnessed seq {held.seq} (hash {held.hash[:16]}); a witness only moves forward "
        "(was the log cut or rewritten?)",
        witness=witness,
        refused=True,
    )


class Witness(Protocol):
    """Somewhere a checkpoint is kept apart from the log it vouches for."""

    @property
    def name(self) -> str: ...

    async def publish(self, checkpoint: Checkpoint) -> None:
        """Store ``checkpoint`` (idempotent; forward only), or raise WitnessUnavailable."""


# -- the chain id of an audit directory ------------------------------------------------------


def declared_chain_ids(directory: Path) -> list[str]:
    """The chain ids the log's own checkpoint records name, in order of appearance."""
    found: dict[str, None] = {}
    for path in log_files(directory):
        with open(path, "rb") as f:
            for raw in f:
                if b'"audit.checkpoint"' not in raw:
                    continue
                with contextlib.suppress(ValueError):
                    rec = json.loads(raw)
                    if rec.get("kind") == CHECKPOINT_KIND and isinstance(rec.get("chain_id"), str):
                        found.setdefault(rec["chain_id"])
    return list(found)


def read_chain_id(directory: Path) -> str | None:
    """The id in ``directory``'s CHAIN file, if it holds a valid one."""
    try:
        value = json.loads((directory / CHAIN_FILE).read_text()).get("chain_id")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and CHAIN_ID_RE.match(value) else None


def chain_id(directory: Path) -> str:
    """The audit directory's chain id: its CHAIN file's; else (the file lost) the one its
    checkpoint records name; else a new one, written to CHAIN."""
    found = read_chain_id(directory)
    if found is not None:
        return found
    declared = declared_chain_ids(directory)
    new = declared[0] if declared else secrets.token_hex(16)
    _write_atomic(directory / CHAIN_FILE, json.dumps({"chain_id": new}) + "\n")
    return new


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _load_last(directory: Path, chain: str) -> Checkpoint | None:
    """The last checkpoint this directory's checkpointer made (a hint for ``prev`` and
    where to start; never evidence: verification reads the witnesses)."""
    try:
        cp = Checkpoint.from_document(json.loads((directory / LAST_CHECKPOINT_FILE).read_text()))
    except (OSError, ValueError):
        return None
    return cp if cp.chain_id == chain else None


# -- receipts -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReceiptSignature:
    chain_id: str
    key_id: str
    signature: bytes


class ReceiptSigner:
    """Signs (chain id, seq, hash, file) of a receipt: ~50 µs of Ed25519, done only for
    the receipts a caller gets back."""

    def __init__(self, key: SigningKey, chain: str) -> None:
        self._key = key
        self.chain_id = chain

    def sign(self, receipt: Receipt) -> ReceiptSignature:
        message = receipt_message(self.chain_id, receipt.sequence, receipt.hash, receipt.file)
        return ReceiptSignature(self.chain_id, self._key.key_id, self._key.sign(message))


# -- the checkpointer -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WitnessStatus:
    name: str
    # The last checkpoint it took from this checkpointer (0: none yet).
    published_seq: int
    last_published: float | None
    # Why the last attempt failed ("" when it succeeded); consecutive failures.
    last_error: str
    failures: int


@dataclass(frozen=True, slots=True)
class CheckpointStatus:
    chain_id: str
    key_id: str
    replica_id: str
    interval: float
    log_seq: int
    checkpoint_seq: int
    checkpoint_time: float | None
    witnesses: tuple[WitnessStatus, ...]


@dataclass
class _WitnessState:
    witness: Witness
    published_seq: int = 0
    last_published: float | None = None
    last_error: str = ""
    failures: int = 0
    next_try: float = 0.0

    def status(self) -> WitnessStatus:
        return WitnessStatus(
            self.witness.name, self.published_seq, self.last_published, self.last_error,
            self.failures,
        )  # fmt: skip


def _age(c: Checkpointer) -> metrics.Reading:
    """Seconds since a witness last took one of this chain's checkpoints (since the
    checkpointer started, while none has)."""
    published = [w.last_published for w in c._witnesses if w.last_published is not None]
    since = max(published) if published else c._started
    return [(max(0.0, c._clock() - since), {"chain": c.chain_id})]


class Checkpointer:
    def __init__(
        self,
        audit: AuditLog,
        key: SigningKey,
        *,
        replica_id: str,
        witnesses: Sequence[Witness],
        interval: float = 5.0,
        publish_timeout: float = 5.0,
        max_backoff: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``interval`` 0: no periodic checkpoints (only at ``close``)."""
        self._log = audit
        self._key = key
        self.replica_id = replica_id
        self.chain_id = chain_id(audit.directory)
        self.interval = interval
        self._timeout = publish_timeout
        self._max_backoff = max_backoff
        self._clock = clock
        self._last = _load_last(audit.directory, self.chain_id)
        self._last_at: float | None = None
        # Seqs of the records this checkpointer wrote itself since its last checkpoint:
        # they alone never call for a new checkpoint (or an idle chain would never rest).
        self._own: list[int] = []
        self._witnesses = [_WitnessState(w) for w in witnesses]
        self._task: asyncio.Task[None] | None = None
        self.receipts = ReceiptSigner(key, self.chain_id)
        self._started = clock()
        if self._witnesses:  # no witness, nothing is ever witnessed: no series at all
            metrics.watch("meridian_audit_last_checkpoint_age_seconds", self, _age)

    @property
    def key_id(self) -> str:
        return self._key.key_id

    @property
    def last(self) -> Checkpoint | None:
        return self._last

    def start(self) -> None:
        if self.interval > 0 and self._task is None:
            self._task = asyncio.create_task(self._run(), name="audit-checkpoints")

    async def close(self) -> None:
        """Stop, then a last checkpoint of everything written (published within the
        publish timeout; not recorded in the log, which would leave a record after it)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        seq, _ = self._log.head
        if seq > (self._last.seq if self._last else 0):
            cp = self._make()
            await self._publish_all(cp)
            log.info("audit chain %s: final checkpoint at seq %d", self.chain_id, cp.seq)

    def pending(self) -> bool:
        """Records other than this checkpointer's own were written since its last one."""
        seq, _ = self._log.head
        last = self._last.seq if self._last else 0
        return seq - last > sum(1 for s in self._own if s > last)

    async def checkpoint(self, *, record: bool = True, force: bool = False) -> Checkpoint | None:
        """One round: sign a checkpoint of the log's last durable record, publish it to
        every witness (each bounded by the publish timeout) and, with ``record``, append
        the ``audit.checkpoint`` record; None when nothing new was written (unless
        ``force``)."""
        if not (force or self.pending()):
            return None
        cp = self._make()
        outcomes = await self._publish_all(cp)
        if record:
            await self._append(checkpoint_record(
                chain_id=cp.chain_id, replica_id=cp.replica_id, checkpoint_seq=cp.seq,
                checkpoint_hash=cp.hash, checkpoint_time=cp.time, digest=cp.digest,
                key_id=cp.key_id, witnesses=outcomes,
            ))  # fmt: skip
        return cp

    def status(self) -> CheckpointStatus:
        return CheckpointStatus(
            chain_id=self.chain_id, key_id=self._key.key_id, replica_id=self.replica_id,
            interval=self.interval, log_seq=self._log.head[0],
            checkpoint_seq=self._last.seq if self._last else 0,
            checkpoint_time=self._last_at,
            witnesses=tuple(w.status() for w in self._witnesses),
        )  # fmt: skip

    # -- inside ---------------------------------------------------------------------------

    def _make(self) -> Checkpoint:
        seq, last_hash = self._log.head
        now = self._clock()
        cp = sign_checkpoint(
            self._key, chain_id=self.chain_id, replica_id=self.replica_id, seq=seq,
            record_hash=last_hash, at=utc(now), prev=self._last.digest if self._last else "",
        )  # fmt: skip
        self._last, self._last_at = cp, now
        self._own = [s for s in self._own if s > seq]
        try:
            _write_atomic(self._log.directory / LAST_CHECKPOINT_FILE, json.dumps(cp.document()))
        except OSError as exc:
            # Only a hint for the next run's ``prev``; the witnesses hold the evidence.
            log.warning("audit chain %s: last checkpoint not saved: %s", self.chain_id, exc)
        return cp

    async def _publish_all(self, cp: Checkpoint) -> dict[str, str]:
        outcomes = await asyncio.gather(*(self._publish(w, cp) for w in self._witnesses))
        return {w.witness.name: o for w, o in zip(self._witnesses, outcomes, strict=True)}

    async def _publish(self, w: _WitnessState, cp: Checkpoint) -> str:
        try:
            await asyncio.wait_for(w.witness.publish(cp), self._timeout)
        except TimeoutError:
            error = f"{w.witness.name}: no answer within {self._timeout:g} s"
        except WitnessUnavailable as exc:
            error = exc.message
        except Exception as exc:
            log.error("audit witness %s: unexpected failure", w.witness.name, exc_info=exc)
            error = f"{w.witness.name}: unexpected {type(exc).__name__}: {exc}"
        else:
            if w.failures:
                log.warning("audit witness %s: publishing again (seq %d)", w.witness.name, cp.seq)
            w.published_seq, w.last_published = max(w.published_seq, cp.seq), self._clock()
            w.last_error, w.failures = "", 0
            return "published"
        if not w.failures:
            log.error("audit witness %s failing (retried with backoff): %s", w.witness.name, error)
        w.failures += 1
        w.last_error = error
        w.next_try = time.monotonic() + min(self._max_backoff, 0.5 * 2 ** (w.failures - 1))
        return f"failed: {error}"

    def _behind(self) -> list[_WitnessState]:
        last = self._last.seq if self._last else 0
        return [w for w in self._witnesses if w.failures and w.published_seq < last]

    async def _retry_due(self) -> None:
        """Witnesses behind get the latest checkpoint again once their backoff is over;
        a recovery is recorded (the failure already was, in its checkpoint's record)."""
        now = time.monotonic()
        for w in self._behind():
            if w.next_try > now or self._last is None:
                continue
            failures = w.failures
            if await self._publish(w, self._last) == "published":
                await self._append(witness_record(
                    chain_id=self.chain_id, witness=w.witness.name, outcome="recovered",
                    checkpoint_seq=self._last.seq, failures=failures,
                ))  # fmt: skip

    async def _append(self, record: Mapping[str, Any]) -> None:
        receipt = await self._log.append(record)
        self._own.append(receipt.sequence)

    async def _run(self) -> None:
        # A chain never checkpointed (a new one) is witnessed at once, empty or not: from
        # then on its directory cannot vanish unnoticed, and its first record names it.
        first = self._last is None
        next_round = time.monotonic() + self.interval
        while True:
            try:
                if first:
                    first = False
                    await self.checkpoint(force=True)
                elif time.monotonic() >= next_round:
                    next_round = time.monotonic() + self.interval
                    await self.checkpoint()
                await self._retry_due()
            except AuditUnavailable as exc:
                # Published, but the log could not take the record: it says so itself.
                log.warning("audit chain %s: checkpoint record not written: %s",
                            self.chain_id, exc.message)  # fmt: skip
            except Exception:
                log.exception("audit chain %s: checkpoint round failed; next round goes on",
                              self.chain_id)  # fmt: skip
            wake = min([next_round, *(w.next_try for w in self._behind())])
            await asyncio.sleep(max(0.01, wake - time.monotonic()))
