"""Witnesses: where checkpoints are kept apart from the log they vouch for.

- ``DirectoryWitness``: ``<witness-dir>/<chain-id>.jsonl``, one signed checkpoint a line,
  appended and fsynced under an exclusive lock, only ever forward by seq. Deployments put
  the directory on another volume or host (an NFS share the router may only append to,
  a synced bucket with object lock); the dev stack uses ``$MERIDIAN_HOME/witness``.
- ``ConsulWitness``: ``<prefix>witness/<replica-id>`` in Consul KV, one key per replica
  holding the latest checkpoint of each of its chains, written with check-and-set on the
  key's ModifyIndex and refusing to move any chain backwards.

Both are read back by auditors (``read_directory``, ``read_consul``) into ``Witnessed``
checkpoints; nothing read here is trusted before its signature is checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router.audit.chain import fsync_dir
from router.audit.checkpoint import Checkpoint, forward
from router.consul import ConsulClient
from router.errors import ConsulUnavailable, WitnessUnavailable

_TAIL_BYTES = 64 * 1024
_CAS_ATTEMPTS = 5
# Chains one replica's Consul entry keeps (the newest by checkpoint time): a replica
# starts a new chain only with a new audit directory (e.g. an audit key rotation).
CONSUL_CHAINS_KEPT = 32


@dataclass(frozen=True, slots=True)
class Witnessed:
    checkpoint: Checkpoint
    # Where it was read: a witness file and its line, or "consul:<key>" (line 0).
    where: str
    line: int = 0

    @property
    def source(self) -> str:
        return f"{self.where}:{self.line}" if self.line else self.where


def _line(cp: Checkpoint) -> bytes:
    return json.dumps(cp.document(), sort_keys=True, separators=(",", ":")).encode() + b"\n"


def _last_checkpoint(tail: bytes) -> Checkpoint | None:
    for raw in reversed(tail.splitlines()):
        with contextlib.suppress(ValueError):
            return Checkpoint.from_document(json.loads(raw))
    return None


class DirectoryWitness:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._name = f"dir:{directory}"

    @property
    def name(self) -> str:
        return self._name

    def path(self, chain: str) -> Path:
        return self.directory / f"{chain}.jsonl"

    async def publish(self, checkpoint: Checkpoint) -> None:
        await asyncio.to_thread(self._publish, checkpoint)

    def _publish(self, cp: Checkpoint) -> None:
        path = self.path(cp.chain_id)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            raise WitnessUnavailable(
                f"{self.name}: cannot open {path.name}: {exc.strerror or exc}", witness=self.name
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # two writers of one chain never interleave
            size = os.fstat(fd).st_size
            start = max(0, size - _TAIL_BYTES)
            tail = os.pread(fd, size - start, start)
            if not forward(_last_checkpoint(tail), cp, self.name):
                return
            # A torn last line (a crash mid-append) stays its own, unreadable line.
            data = (b"\n" if tail and not tail.endswith(b"\n") else b"") + _line(cp)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
            if size == 0:
                fsync_dir(self.directory)
        except OSError as exc:
            raise WitnessUnavailable(
                f"{self.name}: cannot write {path.name}: {exc.strerror or exc}", witness=self.name
            ) from exc
        finally:
            os.close(fd)


def read_directory(directory: Path) -> tuple[list[Witnessed], list[str]]:
    """Every checkpoint in a witness directory, and notes on lines that are not one."""
    found: list[Witnessed] = []
    notes: list[str] = []
    if not directory.is_dir():
        return found, [f"witness directory {directory} does not exist"]
    for path in sorted(directory.glob("*.jsonl")):
        data = path.read_bytes()
        lines = data.split(b"\n")
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            source = f"{path}:{number}"
            try:
                found.append(
                    Witnessed(Checkpoint.from_document(json.loads(raw)), str(path), number)
                )
            except ValueError as exc:
                torn = number == len(lines) and not data.endswith(b"\n")
                notes.append(f"{source}: {'torn final line' if torn else 'not a checkpoint'}: "
                             f"{exc}; ignored")  # fmt: skip
    return found, notes


class ConsulWitness:
    def __init__(self, client: ConsulClient, replica_id: str) -> None:
        self.client = client
        self.replica_id = replica_id
        self.key = client.address.key(f"witness/{replica_id}")
        a = client.address
        self._name = f"consul:{a.host}:{a.port}/{self.key}"

    @property
    def name(self) -> str:
        return self._name

    async def publish(self, checkpoint: Checkpoint) -> None:
        for _ in range(_CAS_ATTEMPTS):
            try:
                _, entry = await self.client.get(self.key)
                chains = _entry_chains(entry)
                held = chains.get(checkpoint.chain_id)
                try:
                    prior = Checkpoint.from_document(held) if held is not None else None
                except ValueError:
                    prior = None  # not ours to keep: a forward write replaces it
                if not forward(prior, checkpoint, self.name):
                    return
                chains[checkpoint.chain_id] = checkpoint.document()
                newest = sorted(chains.items(), key=lambda kv: str(kv[1].get("time", "")))
                value = json.dumps(
                    {"replica_id": self.replica_id,
                     "chains": dict(newest[-CONSUL_CHAINS_KEPT:])},
                    sort_keys=True,
                )  # fmt: skip
                cas = int(entry["ModifyIndex"]) if entry else 0
                if await self.client.put(self.key, value, cas=cas):
                    return
            except ConsulUnavailable as exc:
                raise WitnessUnavailable(f"{self.name}: {exc.message}", witness=self.name) from exc
        raise WitnessUnavailable(
            f"{self.name}: lost the check-and-set race {_CAS_ATTEMPTS} times in a row "
            "(another writer of this replica's key?)",
            witness=self.name,
        )


def _entry_chains(entry: Any) -> dict[str, Any]:
    if not entry or not entry.get("Value"):
        return {}
    try:
        chains = json.loads(entry["Value"]).get("chains")
    except (ValueError, AttributeError):
        return {}
    return dict(chains) if isinstance(chains, dict) else {}


async def read_consul(client: ConsulClient) -> tuple[list[Witnessed], list[str]]:
    """Every checkpoint under ``<prefix>witness/``, and notes on what is not one."""
    prefix = client.address.key("witness/")
    _, entries = await client.get(prefix, recurse=True)
    found: list[Witnessed] = []
    notes: list[str] = []
    for entry in entries or []:
        source = f"consul:{entry['Key']}"
        for chain, doc in _entry_chains(entry).items():
            try:
                cp = Checkpoint.from_document(doc)
            except ValueError as exc:
                notes.append(f"{source} chain {chain}: not a checkpoint: {exc}; ignored")
                continue
            found.append(Witnessed(cp, source))
    return found, notes
