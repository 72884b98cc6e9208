"""Offline tools: key rings, config validation, and the auditors' commands."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from router.cli.common import config_args, render_table, witness_dir
from router.errors import MeridianError

if TYPE_CHECKING:
    from router.audit import VerifyResult
    from router.audit.offline import Appended, Witnessing
    from router.codec.keys import KeyRing


def _regions(args: argparse.Namespace) -> list[str]:
    """The regions a keys action works on: --region (one the config knows) or all."""
    from router.config.load import load

    known = list(load(args.config).table.regions)
    if args.region is None:
        return known
    if args.region not in known:
        raise MeridianError(f"--region: unknown region {args.region!r} (known: {', '.join(known)})")
    return [args.region]


def _ring_row(region: str, ring: KeyRing | None, path: Path, error: str = "") -> dict[str, Any]:
    return {
        "region": region,
        "active_key": ring.active if ring else "",
        "key_ids": list(ring.keys) if ring else [],
        "file": str(path),
        "error": error,
    }


def cmd_keys(args: argparse.Namespace) -> int:
    from router.codec import FileKeyProvider
    from router.codec.secrets import ensure_secrets
    from router.errors import KeyRingError
    from router.paths import keys_dir, meridian_home
    from router.tls import ensure_dev_pki

    regions = _regions(args)
    directory = keys_dir(args.keys_dir)
    provider = FileKeyProvider(directory)
    if args.action == "init":
        made = ensure_secrets(directory, regions)
        # The development PKI of the router's gRPC port (client commands find it there).
        tls_dir = meridian_home() / "tls"
        made += [(f"dev TLS {path.name}", path) for path in ensure_dev_pki(tls_dir)]
        if args.json:
            print(
                json.dumps([{"secret": what, "file": str(path)} for what, path in made], indent=2)
            )
        else:
            created = [(what, str(path), "created") for what, path in made]
            kept = [("all secrets", f"{directory}, {tls_dir}", "kept (they exist)")]
            print(render_table(["secret", "file", "note"], created or kept))
        return 0
    rows: list[dict[str, Any]] = []
    witnessed = ""
    if args.action == "rotate":
        audit_dir = Path(args.audit_dir) if args.audit_dir else meridian_home() / "audit-keys"
        # The signing key loads, and every ring, before any is rotated: a bad one stops
        # the whole rotation with nothing written.
        witnessing, unwitnessed = _rotation_witnessing(args, directory, audit_dir)
        pairs = [(ring, ring.rotated()) for ring in map(provider.load, regions)]
        # Audited (and witnessed) before the new rings are written (audit before effect).
        appended = _audit_rotations(args, directory, audit_dir, pairs, witnessing)
        witnessed = unwitnessed or _witnessed_line(audit_dir, appended)
        checkpoint = _checkpoint_json(appended)
        for (_, ring), receipt in zip(pairs, appended.receipts, strict=True):
            row = _ring_row(ring.region, ring, provider.save(ring))
            rows.append({**row, "audit_seq": receipt.sequence, "audit_chain": str(audit_dir),
                         "audit_checkpoint": checkpoint})  # fmt: skip
    else:
        for region in regions:
            try:
                rows.append(_ring_row(region, provider.load(region), provider.path(region)))
            except KeyRingError as exc:
                rows.append(_ring_row(region, None, provider.path(region), exc.message))
    if args.json:
        print(json.dumps(rows, indent=2))
        if witnessed:  # stdout stays JSON
            print(witnessed, file=sys.stderr)
        return 0
    note = "rotated; {n}; audit seq {seq}" if args.action == "rotate" else "{n}: {ids}"
    print(render_table(["region", "active key", "file", "note"], [
        (r["region"], r["active_key"], r["file"], r["error"] or note.format(
            n=f"{len(r['key_ids'])} key{'' if len(r['key_ids']) == 1 else 's'}",
            ids=", ".join(r["key_ids"]), seq=r.get("audit_seq")))
        for r in rows
    ]))  # fmt: skip
    if witnessed:
        print(witnessed)
    return 0


def _rotation_witnessing(
    args: argparse.Namespace, keys: Path, audit_dir: Path
) -> tuple[Witnessing | None, str]:
    """How ``keys rotate`` checkpoints its chain: the signing key (--audit-signing-key-file,
    else ``<keys-dir>/audit-signing.key`` when present) and the witness directory
    (--witness-dir, else the config's audit.witness_dir, else ``witness/`` beside the
    chain: ``$MERIDIAN_HOME/witness``, where ``meridian dev`` publishes too). Without a
    signing key: None, and the line that tells the user the chain stays unwitnessed
    (an auditor's witnessed verify of it fails), rather than leaving it to be found."""
    from router.audit.offline import Witnessing
    from router.audit.signing import SIGNING_KEY, load_signing_key
    from router.audit.witness import DirectoryWitness
    from router.config.load import load

    signing = Path(args.audit_signing_key_file) if args.audit_signing_key_file else None
    if signing is None and not (keys / SIGNING_KEY).exists():
        return None, (
            f"audit chain {audit_dir}: NOT witnessed: no audit signing key at "
            f"{keys / SIGNING_KEY} (`meridian keys init` makes one; or give "
            "--audit-signing-key-file), so no checkpoint was signed or published and a "
            "witnessed `meridian audit verify` of this chain fails as unwitnessed"
        )
    key = load_signing_key(signing or keys / SIGNING_KEY)
    witness = witness_dir(load(args.config), args.witness_dir, audit_dir.parent / "witness")
    return Witnessing(key, "keys-rotate", [DirectoryWitness(witness)]), ""


def _checkpoint_json(appended: Appended) -> dict[str, Any] | None:
    cp = appended.checkpoint
    if cp is None:
        return None
    return {
        "chain_id": cp.chain_id, "seq": cp.seq, "digest": cp.digest, "key_id": cp.key_id,
        "witnesses": appended.witnesses, "record_error": appended.record_error,
    }  # fmt: skip


def _witnessed_line(audit_dir: Path, appended: Appended) -> str:
    """What the user is told of the run's checkpoint: witnessed, or why not."""
    cp = appended.checkpoint
    if cp is None:
        return ""
    head = f"audit chain {cp.chain_id} ({audit_dir}): checkpoint seq {cp.seq} (key {cp.key_id})"
    failed = {n: o for n, o in appended.witnesses.items() if o != "published"}
    lines = []
    if failed:
        why = "; ".join(o.removeprefix("failed: ") for o in failed.values())
        lines.append(
            f"{head} NOT witnessed: publishing failed: {why}. A witnessed `meridian audit "
            "verify` of this chain fails until a later run (or this one again) publishes a "
            "checkpoint of it"
        )
    else:
        names = ", ".join(appended.witnesses)
        lines.append(f"{head} signed and published to {names}")
    if appended.record_error:
        lines.append(f"  (its audit.checkpoint record was not written: {appended.record_error})")
    return "\n".join(lines)


def _audit_rotations(
    args: argparse.Namespace,
    keys: Path,
    directory: Path,
    pairs: list[tuple[KeyRing, KeyRing]],
    witnessing: Witnessing | None,
) -> Appended:
    """One ``key.rotation`` record per region in the tool's own chain (never a running
    router's: a second writer would fork it), ``$MERIDIAN_HOME/audit-keys`` by default,
    then (with ``witnessing``) a signed checkpoint of the chain published to the witness."""
    import getpass
    import socket

    from router.audit import key_rotation_record, load_key
    from router.audit.offline import append_locked
    from router.codec import RingChange

    key_file = Path(args.audit_key_file) if args.audit_key_file else keys / "audit.key"
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = str(os.getuid())
    records = [
        key_rotation_record(
            RingChange(old.region, old.active, new.active, (new.active,), ()),
            component="keys-rotate", os_user=user, host=socket.gethostname(),
        )
        for old, new in pairs
    ]  # fmt: skip
    key = load_key(key_file if args.audit_key_file or key_file.exists() else None)
    return append_locked(directory, records, key=key, witnessing=witnessing)


VALIDATE_COUNTS = ("zones", "regions", "clusters", "rules")


def cmd_config_validate(args: argparse.Namespace) -> int:
    from router.config.load import load_file
    from router.errors import ConfigError

    try:
        config = load_file(args.file)
    except ConfigError as exc:
        if not args.json:
            raise  # main() prints it on stderr
        errors = [{"path": e.path, "message": e.message} for e in exc.errors]
        # The valid answer's keys too (nothing is known of them: null), so a tool reads
        # one shape.
        answer = {"valid": False, "version": None, "source": exc.source, "errors": errors}
        print(json.dumps({**answer, **dict.fromkeys(VALIDATE_COUNTS)}, indent=2))
        return 2
    table = config.table
    counts = dict(zip(VALIDATE_COUNTS, (len(table.zones), len(table.regions),
                                        len(table.clusters), sum(map(len, table.rules.values()))),
                      strict=True))  # fmt: skip
    if args.json:
        # The same shape as an invalid file's answer, "errors": [] included.
        print(json.dumps({"valid": True, "version": config.version, "source": config.source,
                          "errors": [], **counts}, indent=2))  # fmt: skip
    else:
        parts = ", ".join(f"{n} {what[:-1] if n == 1 else what}" for what, n in counts.items())
        print(f"{args.file}: valid (version {config.version}): {parts}")
    return 0


def _consul(args: argparse.Namespace) -> Any:
    import os

    from router.consul import ConsulAddress, ConsulClient

    if not args.consul:
        raise MeridianError("--consul: required (host:port of a Consul agent)")
    address = ConsulAddress.parse(
        args.consul, args.consul_prefix, os.environ.get("CONSUL_HTTP_TOKEN")
    )
    return ConsulClient(address)


async def _consul_config(client: Any) -> tuple[int, str]:
    """The pushed config document and its ModifyIndex (0, "" when there is none)."""
    _, entry = await client.get(client.address.key("config"))
    if entry is None:
        return 0, ""
    return int(entry["ModifyIndex"]), (entry.get("Value") or b"").decode("utf-8")


def cmd_config_push(args: argparse.Namespace) -> int:
    import asyncio

    from router.config.load import load_file

    config = load_file(args.file)  # the whole document must be valid on its own
    text = Path(args.file).read_text(encoding="utf-8")
    client = _consul(args)

    async def push() -> tuple[bool, int]:
        try:
            index, _ = await _consul_config(client)
            cas = index if args.cas is None else args.cas
            return await client.put(client.address.key("config"), text, cas=cas), cas
        finally:
            await client.close()

    ok, cas = asyncio.run(push())
    if not ok:
        raise MeridianError(
            f"{client.address.key('config')} changed since index {cas} (someone else pushed): "
            "nothing was written; run `meridian config diff` and push again"
        )
    print(f"pushed {args.file} (version {config.version}) to {client.address.key('config')}")
    return 0


def cmd_config_diff(args: argparse.Namespace) -> int:
    import asyncio

    from router.config.diff import diff, request_change_json
    from router.config.load import load, load_file, load_text
    from router.core.samples import describe

    new = load_file(args.file)
    if args.consul:
        client = _consul(args)

        async def fetch() -> str:
            try:
                return (await _consul_config(client))[1]
            finally:
                await client.close()

        text = asyncio.run(fetch())
        if not text:
            print(
                f"note: Consul has no {args.consul_prefix}config yet: comparing with "
                f"{args.against or 'the embedded default'}",
                file=sys.stderr,
            )
        old = load_text(text, source="consul") if text else load(args.against)
    else:
        old = load(args.against)
    changes, routes = diff(old, new)
    if args.json:
        print(json.dumps({
            "from": old.source, "to": new.source, "from_version": old.version,
            "to_version": new.version, "changes": [c.to_json() for c in changes],
            "route_changes": [request_change_json(r) for r in routes],
        }, indent=2))  # fmt: skip
        return 0
    print(f"{old.source} ({old.version}) -> {new.source} ({new.version})")
    print("\n".join(str(c) for c in changes) if changes else "no changes to the document")
    if routes:
        print()
        print(render_table(
            ["requests", "now routed to", "would route to"],
            [(r.requests, describe(r.before), describe(r.after, r.before)) for r in routes],
        ))  # fmt: skip
    else:
        print("no route changes (with every primary healthy)")
    return 0


def _audit_paths(args: argparse.Namespace) -> list[Path]:
    from router.paths import meridian_home

    paths = [Path(p) for p in args.paths] or [meridian_home() / "audit"]
    for p in paths:
        if not p.exists():
            raise MeridianError(f"{p}: no such file or directory")
    return paths


def _audit_key(args: argparse.Namespace) -> bytes | None:
    from router.audit import load_key

    return load_key(Path(args.key_file) if args.key_file else None)


def _chain_json(directory: Path, result: VerifyResult) -> dict[str, Any]:
    p = result.problem
    return {
        "path": str(directory), "ok": result.ok, "records": result.records,
        "files": result.files, "last_seq": result.last_seq, "last_hash": result.last_hash,
        "algorithms": sorted(result.algs), "notes": result.notes,
        "problem": None if p is None else {
            "file": p.file, "line": p.line, "seq": p.seq, "kind": p.kind, "detail": p.detail,
        },
        "chain_id": result.chain_id,
        "witness": result.witness.to_json() if result.witness is not None else None,
    }  # fmt: skip


def _public_keys(args: argparse.Namespace) -> tuple[Any, list[str]]:
    """The public keys witnessed signatures are checked with: --public-key files, else
    the local signing key's (a convenience on the router's own machine, said so)."""
    from router.audit.signing import SIGNING_KEY, PublicKeys, load_signing_key
    from router.paths import keys_dir

    if args.public_key:
        return PublicKeys.load(Path(p) for p in args.public_key), []
    local = keys_dir(None) / SIGNING_KEY
    if local.exists():
        key = load_signing_key(local)
        return PublicKeys([key.public]), [
            f"public key: the local signing key's ({local}, key id {key.key_id}); an auditor "
            "pins its own copy with --public-key"
        ]
    return PublicKeys(), []


def _evidence(args: argparse.Namespace) -> Any:
    """Every checkpoint the witnesses given hold (--witness DIR..., --consul), with the
    public keys' verdict on each; None when no witness is given."""
    import asyncio

    from router.audit.proof import Evidence
    from router.audit.witness import Witnessed, read_consul, read_directory
    from router.errors import ConsulUnavailable

    if not args.witness and not args.consul:
        return None
    keys, notes = _public_keys(args)
    found: list[Witnessed] = []
    sources: list[str] = []
    for d in args.witness:
        got, more = read_directory(Path(d))
        found += got
        notes += more
        sources.append(f"dir:{d}")
    if args.consul:
        client = _consul(args)

        async def fetch() -> tuple[list[Witnessed], list[str]]:
            try:
                return await read_consul(client)
            finally:
                await client.close()

        try:
            got, more = asyncio.run(fetch())
        except ConsulUnavailable as exc:
            raise MeridianError(f"--consul: reading the witness: {exc.message}") from None
        found += got
        notes += more
        a = client.address
        sources.append(f"consul:{a.host}:{a.port}/{a.key('witness/')}")
    return Evidence.of(found, keys, sources, notes)


def _witness_line(r: VerifyResult) -> str:
    w = r.witness.latest if r.witness is not None else None
    if w is None:
        return ""
    cp = w.checkpoint
    own = r.witness.own_records
    after = (
        f" (then {'seq' if len(own) == 1 else 'seqs'} {', '.join(map(str, own))}: that "
        f"checkpoint's own {'record' if len(own) == 1 else 'records'}, written after it)"
        if own
        else ""
    )
    return (
        f"; chain {r.chain_id} witnessed up to seq {cp.seq} by checkpoint {cp.digest[:16]} "
        f"of {cp.time} (key {cp.key_id}) at {w.source}{after}"
    )


@dataclass(frozen=True)
class _Verified:
    results: list[tuple[Path, VerifyResult]]
    evidence: Any  # router.audit.proof.Evidence, when witnesses were given
    others: list[dict[str, Any]]  # chains the witnesses hold that no path given is


def _verify(args: argparse.Namespace, paths: list[Path]) -> _Verified:
    """The one verification `audit verify` and `audit report` both run: each directory
    its own chain (a replica's, a codec server's), verified alone; with witnesses given,
    also against the checkpoints witnessed off the box."""
    from router.audit import verify_chains
    from router.audit.proof import unverified_chains, verify_witnessed

    evidence = _evidence(args)
    key = _audit_key(args)
    if evidence is None:
        results = verify_chains(paths, key=key)
    else:
        results = verify_witnessed(paths, key=key, evidence=evidence)
    others = unverified_chains(results, evidence) if evidence is not None else []
    return _Verified(results, evidence, others)


def cmd_audit_verify(args: argparse.Namespace) -> int:
    verified = _verify(args, _audit_paths(args))
    results, evidence, others = verified.results, verified.evidence, verified.others
    if args.json:
        print(json.dumps({
            "ok": all(r.ok for _, r in results),
            "chains": [_chain_json(directory, r) for directory, r in results],
            "witness": None if evidence is None else {
                "sources": evidence.sources, "notes": evidence.notes,
                "unverified_chains": others,
            },
        }, indent=2))  # fmt: skip
    else:
        for note in evidence.notes if evidence is not None else []:
            print(f"note: witness: {note}")
        for directory, r in results:
            for note in r.notes:
                print(f"note: {directory}: {note}")
            if r.problem is None:
                algs = ", ".join(sorted(r.algs)) or "no records"
                print(f"{directory}: OK: {r.records} records in {r.files} file(s), chain intact "
                      f"({algs}); last seq {r.last_seq} hash {r.last_hash}"
                      f"{_witness_line(r)}")  # fmt: skip
            else:
                print(f"{directory}: FAILED: {r.problem}")
        for o in others:
            print(f"note: the witness holds chain {o['chain_id']} (replica {o['replica_id']}, "
                  f"up to seq {o['witnessed_seq']} at {o['time']}), which no directory given "
                  "is: an earlier chain, or one not given")  # fmt: skip
        if evidence is None:
            print("note: no witness given (--witness DIR, --consul): each chain was checked "
                  "against itself only")  # fmt: skip
    kinds = {r.problem.kind for _, r in results if r.problem is not None}
    # A broken chain outweighs one that could not be checked without its key.
    if kinds - {"key-required"}:
        return 1
    return 2 if kinds else 0


def cmd_audit_prove(args: argparse.Namespace) -> int:
    from router.audit.proof import ProofRefused, prove
    from router.paths import meridian_home

    if args.receipt == "-":
        text = sys.stdin.read()
    elif args.receipt.lstrip().startswith("{"):
        text = args.receipt
    else:
        try:
            text = Path(args.receipt).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise MeridianError(f"{args.receipt}: cannot read it: {exc}") from None
    evidence = _evidence(args)
    directories = [Path(d) for d in args.audit_dir] or [meridian_home() / "audit"]

    def refused(kind: str, reason: str) -> int:
        if args.json:
            print(json.dumps({"proven": False, "kind": kind, "reason": reason}, indent=2))
        else:
            print(f"REFUSED ({kind}): {reason}")
        return 2 if kind == "key-required" else 1

    if evidence is None:
        return refused("key-required", "no witness given (--witness DIR, --consul): a receipt "
                                       "is proven against the witness")  # fmt: skip
    try:
        doc = json.loads(text)
        proof = prove(doc, directories=directories, key=_audit_key(args), evidence=evidence,
                      keys=evidence.keys)  # fmt: skip
    except ValueError as exc:
        return refused("malformed", f"not JSON: {exc}")
    except ProofRefused as exc:
        return refused(exc.kind, exc.reason)
    rec, cp, d = proof.record, proof.checkpoint.checkpoint, proof.decision
    if args.json:
        print(json.dumps({
            "proven": True, "chain_id": proof.claim.chain_id, "seq": proof.claim.seq,
            "hash": proof.claim.hash, "key_id": proof.claim.key_id,
            "directory": str(proof.directory), "record": rec, "decision": d,
            "checkpoint": {"seq": cp.seq, "time": cp.time, "digest": cp.digest,
                           "source": proof.checkpoint.source},
            "notes": proof.notes,
        }, indent=2))  # fmt: skip
        return 0
    what = rec.get("kind", "?")
    if what == "route.explain":
        what += f" (a dry run, no start) of a {rec.get('workflow_type')} for {rec.get('tenant')}"
    if what == "start.outcome":
        what += (
            f" of workflow {rec.get('workflow_id')} run {rec.get('run_id')} "
            f"on cluster {rec.get('cluster')}"
        )
    print(
        f"PROVEN: record seq {proof.claim.seq} of chain {proof.claim.chain_id} in "
        f"{proof.directory}: {what}"
    )
    if d is not None:
        print(
            f"  decision seq {d['seq']}: zone {d.get('zone')}, region {d.get('region')}, "
            f"cluster {d.get('cluster')}, namespace {d.get('namespace')}, rule {d.get('rule')}"
        )
    print(
        f"  signed by key {proof.claim.key_id}; the record's hash matches; the chain verifies "
        f"({', '.join(proof.algorithms)})"
    )
    print(
        f"  witnessed: checkpoint seq {cp.seq} of {cp.time} (digest {cp.digest[:16]}) at "
        f"{proof.checkpoint.source}"
    )
    return 0


def cmd_audit_public_key(args: argparse.Namespace) -> int:
    from router.audit.signing import SIGNING_KEY, load_signing_key
    from router.paths import keys_dir

    path = (
        Path(args.signing_key_file)
        if args.signing_key_file
        else keys_dir(args.keys_dir) / SIGNING_KEY
    )
    key = load_signing_key(path)
    if args.json:
        print(json.dumps({"key_id": key.key_id, "public_key": key.public_pem()}, indent=2))
    else:
        sys.stdout.write(key.public_pem())
        print(f"key id {key.key_id}", file=sys.stderr)
    return 0


def _filter(args: argparse.Namespace) -> Any:
    from router.audit.query import Filter, parse_time

    try:
        since = parse_time(args.since) if args.since else None
        until = parse_time(args.until) if args.until else None
    except ValueError as exc:
        raise MeridianError(f"--since/--until: not an ISO 8601 time: {exc}") from None
    return Filter(
        workflow_id=getattr(args, "workflow_id", None), tenant=getattr(args, "tenant", None),
        region=getattr(args, "region", None), zone=getattr(args, "zone", None),
        kind=getattr(args, "kind", None), seq=getattr(args, "seq", None), since=since, until=until,
    )  # fmt: skip


def cmd_audit_query(args: argparse.Namespace) -> int:
    from router.audit.query import records

    match = _filter(args)
    found = [r for r in records(_audit_paths(args)) if match(r)]
    if args.json:
        for r in found:
            print(json.dumps(r, sort_keys=True))
        return 0
    rows = [
        (r.get("seq"), r.get("time", ""), r.get("kind", ""),
         r.get("outcome") or r.get("refusal") or "", r.get("workflow_id", ""),
         r.get("tenant", ""), r.get("data_class", ""),
         "/".join(x for x in (r.get("zone", ""), r.get("region", ""), r.get("cluster", "")) if x),
         r.get("rule", ""))
        for r in found
    ]  # fmt: skip
    print(render_table(["seq", "time", "kind", "outcome", "workflow", "tenant", "class",
                        "zone/region/cluster", "rule"], rows))  # fmt: skip
    if args.explain:
        for r in found:
            if r.get("reasons") or r.get("message"):
                print(f"\nseq {r.get('seq')} ({r.get('kind')}, rule {r.get('rule', '-')}):")
                for reason in r.get("reasons", []):
                    print(f"  - {reason}")
                if r.get("message"):
                    print(f"  => {r['message']}")
    print(f"({len(found)} record(s))")
    return 0


def cmd_audit_report(args: argparse.Namespace) -> int:
    from router.audit.query import Filter, prove, report
    from router.cli import audit_report

    paths = _audit_paths(args)
    # Verification first: only what it proves is counted (README: exit codes).
    proofs = prove(paths, _verify(args, paths).results)
    match = _filter(args)
    rep = report(proofs, Filter(since=match.since, until=match.until))
    return audit_report.run(rep, since=args.since, until=args.until, as_json=args.json)


def cmd_audit_ship(args: argparse.Namespace) -> int:
    """Ship what a chain has not shipped yet: once (a tool's chain, like `keys rotate`'s),
    or with --follow until SIGTERM (how `serve` ships its own chain, as a child)."""
    import asyncio

    from router.audit.ship import OtlpSink, Shipper, lock_chain

    paths = _audit_paths(args)
    service = os.environ.get("OTEL_SERVICE_NAME", "meridian-audit-ship")
    if args.follow:
        if len(paths) != 1:
            raise MeridianError("--follow ships one chain: give one directory")
        return _ship_follow(paths[0], OtlpSink(args.endpoint, service_name=service), args.chain)
    failed = False
    for directory in paths:
        lock = lock_chain(directory)
        if lock is None:
            raise MeridianError(f"{directory}: another shipper ships this chain now")
        sink = OtlpSink(args.endpoint, service_name=service)
        shipper = Shipper(directory, sink, chain=args.chain or directory.name)
        before = shipper.cursor.seq
        try:
            n = asyncio.run(shipper.ship_available())
        except MeridianError as exc:
            failed = True
            n = shipper.cursor.seq - before
            print(f"{directory}: FAILED after {n} record(s): {exc.message}")
        else:
            print(f"{directory}: shipped {n} record(s) to {sink.name}; shipped up to seq "
                  f"{shipper.cursor.seq}")  # fmt: skip
        finally:
            sink.close()
            os.close(lock)
    return 1 if failed else 0


def _ship_follow(directory: Path, sink: Any, chain: str | None) -> int:
    import asyncio
    import contextlib

    from router.audit.ship import Shipper, lock_chain
    from router.cli.common import until_signalled

    async def follow(stop: asyncio.Event) -> None:
        lock = lock_chain(directory)
        while lock is None:  # the previous shipper of this chain finishes its last batch
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)
            if stop.is_set():
                return
            lock = lock_chain(directory)
        try:
            shipper = Shipper(directory, sink, chain=chain or directory.name, publish=True)
            shipper.start()
            await stop.wait()
            await shipper.stop()
        finally:
            os.close(lock)

    asyncio.run(until_signalled(follow))
    return 0


def add_parsers(sub: Any) -> None:
    keys = sub.add_parser(
        "keys",
        help="secrets: init (key rings, codec tokens, audit key), rotate (new active key), list",
    )
    keys_sub = keys.add_subparsers(
        dest="action", required=True, metavar="ACTION", help="what to do with the secrets"
    )
    init = keys_sub.add_parser("init", help="create the secrets that are missing; keep the rest")
    rotate = keys_sub.add_parser(
        "rotate", help="give a region's ring a new active key; old keys stay to decrypt"
    )
    listing = keys_sub.add_parser("list", help="each region's active key and key ids")
    for sp in (init, rotate, listing):
        config_args(sp)
        sp.set_defaults(func=cmd_keys)
    init.add_argument("--region", help="one region (default: every region in the config)")
    init.add_argument("--json", action="store_true", help="print the files created, as JSON")
    which = rotate.add_mutually_exclusive_group(required=True)
    which.add_argument("--region", help="the region to rotate")
    which.add_argument("--all", action="store_true", help="rotate every region in the config")
    rotate.add_argument("--json", action="store_true", help="print the rotated rings as JSON")
    rotate.add_argument(
        "--audit-dir",
        help="the chain that records rotations (default: $MERIDIAN_HOME/audit-keys; never a "
        "running router's own log)",
    )
    rotate.add_argument(
        "--audit-key-file",
        help="its HMAC key (default: $MERIDIAN_AUDIT_KEY, else <keys-dir>/audit.key if present)",
    )
    rotate.add_argument(
        "--witness-dir",
        help="where the chain's signed checkpoint is published (default: the config's "
        "audit.witness_dir, else witness/ beside the audit directory: $MERIDIAN_HOME/witness)",
    )
    rotate.add_argument(
        "--audit-signing-key-file",
        help="Ed25519 key (PEM, 0600) that signs the checkpoint (default: "
        "<keys-dir>/audit-signing.key if present; without one the chain is not witnessed, "
        "and the output says so)",
    )
    listing.add_argument("--region", help="one region (default: every region in the config)")
    listing.add_argument("--json", action="store_true", help="print the rings as JSON")

    audit = sub.add_parser("audit", help="verify, query and report on the audit log")
    audit_sub = audit.add_subparsers(
        dest="audit_command", required=True, metavar="ACTION", help="what to do with the log"
    )
    paths_help = "log directories or files (default: $MERIDIAN_HOME/audit)"
    av = audit_sub.add_parser(
        "verify", help="check each directory's hash chain alone; exit 0 when all are intact"
    )
    av.add_argument("paths", nargs="*", help=paths_help)
    av.add_argument("--key-file", help="the audit HMAC key (or $MERIDIAN_AUDIT_KEY)")
    witness_args(av)
    av.add_argument("--json", action="store_true", help="print the result as JSON")
    av.set_defaults(func=cmd_audit_verify)
    prove = audit_sub.add_parser(
        "prove",
        help="prove a start's (or explain's) receipt: its signature, its record, the witness",
    )
    prove.add_argument(
        "receipt", metavar="RECEIPT_JSON",
        help="a file holding a signed receipt's JSON (or a whole `meridian start --json` or "
        "`meridian explain --json` output), '-' for stdin, or the JSON itself",
    )  # fmt: skip
    prove.add_argument(
        "--audit-dir", action="append", default=[],
        help="audit directories to find the receipt's chain in (repeatable; default "
        "$MERIDIAN_HOME/audit)",
    )  # fmt: skip
    prove.add_argument("--key-file", help="the audit HMAC key (or $MERIDIAN_AUDIT_KEY)")
    witness_args(prove)
    prove.add_argument("--json", action="store_true", help="print the result as JSON")
    prove.set_defaults(func=cmd_audit_prove)
    pk = audit_sub.add_parser(
        "public-key", help="print the audit signing key's public key (PEM) for auditors"
    )
    pk.add_argument("--keys-dir", help="where audit-signing.key is (default: as keys init)")
    pk.add_argument("--signing-key-file", help="the signing key file itself")
    pk.add_argument("--json", action="store_true", help='print {"key_id", "public_key"}')
    pk.set_defaults(func=cmd_audit_public_key)
    aq = audit_sub.add_parser("query", help="find records")
    aq.add_argument("paths", nargs="*", help=paths_help)
    aq.add_argument("--workflow-id", help="records of this workflow")
    aq.add_argument("--tenant", help="records of this tenant")
    aq.add_argument(
        "--region", help="records whose region is this (decisions, flips, auth failures)"
    )
    aq.add_argument("--zone", help="records whose zone is this")
    aq.add_argument("--kind", help="prefix: route, route.decision, start, flip, config, auth")
    aq.add_argument("--seq", type=int, help="one record by sequence number (a receipt)")
    aq.add_argument("--since", help="ISO 8601, inclusive")
    aq.add_argument("--until", help="ISO 8601, exclusive")
    aq.add_argument("--explain", action="store_true", help="show each decision's rule and reasons")
    aq.add_argument("--json", action="store_true", help="JSON Lines")
    aq.set_defaults(func=cmd_audit_query)
    ar = audit_sub.add_parser(
        "report",
        help="verify first, then counts and the residency check over proven records "
        "(exit 0 pass, 1 failed, 2 key required, 3 no evidence in range)",
    )
    ar.add_argument("paths", nargs="*", help=paths_help)
    ar.add_argument("--key-file", help="the audit HMAC key (or $MERIDIAN_AUDIT_KEY)")
    witness_args(ar)
    ar.add_argument("--since", help="ISO 8601, inclusive")
    ar.add_argument("--until", help="ISO 8601, exclusive")
    ar.add_argument("--json", action="store_true", help="print the report as JSON")
    ar.set_defaults(func=cmd_audit_report)
    ash = audit_sub.add_parser(
        "ship", help="ship a chain's unshipped records to an OTLP collector, once"
    )
    ash.add_argument("paths", nargs="*", help=paths_help)
    ash.add_argument(
        "--endpoint", help="OTLP/gRPC collector (default: $OTEL_EXPORTER_OTLP_LOGS_ENDPOINT)"
    )
    ash.add_argument("--chain", help="the chain's name for receivers (default: the directory's)")
    ash.add_argument(
        "--follow", action="store_true", help="keep shipping as the chain grows, until SIGTERM"
    )
    ash.set_defaults(func=cmd_audit_ship)

    config = sub.add_parser("config", help="routing config tools")
    config_sub = config.add_subparsers(
        dest="config_command", required=True, metavar="ACTION", help="what to do with a config"
    )
    validate = config_sub.add_parser("validate", help="check a config file; list every error")
    validate.add_argument("file", help="the config YAML")
    validate.add_argument(
        "--json", action="store_true",
        help='print {"valid": ..., "source": ..., "errors": [{"path", "message"}]}',
    )  # fmt: skip
    validate.set_defaults(func=cmd_config_validate)

    def consul_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--consul", help="host:port of a Consul agent ($CONSUL_HTTP_TOKEN for ACLs)"
        )
        sp.add_argument(
            "--consul-prefix", default="meridian/", help="KV prefix (default meridian/)"
        )

    push = config_sub.add_parser("push", help="validate a config, then write it to Consul (CAS)")
    push.add_argument("file", help="the config YAML to push")
    consul_args(push)
    push.add_argument("--cas", type=int, help="expected ModifyIndex (default: the one just read)")
    push.set_defaults(func=cmd_config_push)
    cdiff = config_sub.add_parser("diff", help="what would change in routing")
    cdiff.add_argument("file", help="the new config YAML")
    consul_args(cdiff)
    cdiff.add_argument(
        "--against", help="compare with this file (default: Consul's, else the embedded default)"
    )
    cdiff.add_argument("--json", action="store_true", help="print the changes as JSON")
    cdiff.set_defaults(func=cmd_config_diff)


def witness_args(sp: argparse.ArgumentParser) -> None:
    """Where witnessed checkpoints are read from, and the keys that vouch for them."""
    sp.add_argument(
        "--witness", action="append", default=[], metavar="DIR",
        help="a witness directory of signed checkpoints (repeatable)",
    )  # fmt: skip
    sp.add_argument(
        "--consul", help="host:port of a Consul agent whose <prefix>witness/ keys to read"
    )
    sp.add_argument("--consul-prefix", default="meridian/", help="KV prefix (default meridian/)")
    sp.add_argument(
        "--public-key", action="append", default=[], metavar="FILE",
        help="trusted public key(s) of the audit signing key, PEM (repeatable; default: the "
        "local signing key's, if there is one)",
    )  # fmt: skip
