"""The `meridian` command: run the stack, the router, a regional worker; inspect it.

Human-readable tables by default, `--json` for tools. Errors are one clear message on
stderr and a non-zero exit, never a traceback for a mistake the user can fix.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from router.errors import ConfigError, MeridianError, StackError

DEFAULT_ROUTER = "127.0.0.1:50051"
log = logging.getLogger("meridian")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # temporalio's core logs every failed poll of a stopped cluster; keep warnings only.
    logging.getLogger("temporalio").setLevel(logging.WARNING)


def render_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


async def _until_signalled(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``main(stop)``; SIGINT/SIGTERM set ``stop`` (once) for a clean shutdown."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await main(stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _race(work: Awaitable[None], stop: asyncio.Event) -> bool:
    """Run ``work`` unless ``stop`` fires first (then cancel it); True if it finished."""
    task = asyncio.ensure_future(work)
    waiter = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task in done:
        task.result()
        return True
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return False


# -- commands -----------------------------------------------------------------------


def _open_audit(config: Any, directory: Path, key_file: Path | None) -> Any:
    from router.audit import AuditLog, load_key

    log_ = AuditLog(
        directory,
        key=load_key(key_file),
        max_file_bytes=config.document.audit.max_file_bytes,
        max_file_age=float(config.document.audit.max_file_age_s),
    )
    log_.open()
    return log_


def cmd_dev(args: argparse.Namespace) -> int:
    from router.api.server import RouterServer
    from router.codec import FileKeyProvider
    from router.config.load import load_file, resolve_path
    from router.devstack import DevStack, check_ports
    from router.paths import meridian_home
    from router.service import Meridian

    path = resolve_path(args.config).resolve()
    config = load_file(path)
    check_ports(config, args.host, args.port)
    home = Path(args.home).resolve() if args.home else meridian_home()
    keys = Path(args.keys_dir).resolve() if args.keys_dir else home / "keys"

    def say(line: str) -> None:
        print(line, flush=True)

    async def main(stop: asyncio.Event) -> None:
        stack = DevStack(config, path, home=home, keys_dir=keys, say=say, persist=args.persist)
        server: RouterServer | None = None
        audit: Any = None
        say(f"meridian dev: config {path} (version {config.version}); logs in {stack.logs}")
        try:
            stack.ensure_secrets()
            for step in (stack.start_clusters, stack.start_workers, stack.start_codec_servers):
                if not await _race(step(), stop):
                    return
            say(f"[4/4] starting the router on {args.host}:{args.port}")
            audit = _open_audit(config, home / "audit", keys / "audit.key")
            meridian = Meridian(
                config,
                FileKeyProvider(keys),
                audit=audit,
                state_file=home / "state" / "failover.json",
            )
            server = RouterServer(meridian, host=args.host, port=args.port)
            if not await _race(server.start(), stop):
                return
            _print_summary(say, config, args.host, server.port)
            say(
                f"audit log: {home / 'audit'} (verify: meridian audit verify {home / 'audit'} "
                f"--key-file {keys / 'audit.key'})"
            )
            # A child that crashes is reported by its watcher; the rest keep serving
            # (a dead cluster is a failure mode worth trying out) until Ctrl-C/SIGTERM.
            await stop.wait()
        finally:
            say("stopping: router, workers, clusters ...")
            if server is not None:
                await server.stop(grace=2.0)
            if audit is not None:
                await audit.close()
            await stack.stop()
            say("stopped")

    asyncio.run(_until_signalled(main))
    return 0


def _print_summary(say: Callable[[str], None], config: Any, host: str, port: int) -> None:
    table = config.table
    rows = [
        (
            r.zone,
            r.name,
            c.name,
            c.role.value,
            c.endpoint,
            f"http://{r.codec_server}" if r.codec_server else "",
        )
        for r in table.regions.values()
        for c in r.clusters
    ]
    say(render_table(["zone", "region", "cluster", "role", "endpoint", "codec server"], rows))
    say(
        f"router ready on {host}:{port} (grpc.health.v1: meridian.router.v1.WorkflowRouter SERVING)"
    )
    say("press Ctrl-C to stop everything")


def cmd_serve(args: argparse.Namespace) -> int:
    from router.api.server import RouterServer
    from router.codec import default_provider
    from router.config.load import load_file, resolve_path
    from router.paths import keys_dir, meridian_home
    from router.service import Meridian

    path = resolve_path(args.config)
    config = load_file(path)
    home = meridian_home()
    state_dir = Path(args.state_dir) if args.state_dir else home / "state"
    audit = _open_audit(
        config,
        Path(args.audit_dir) if args.audit_dir else home / "audit",
        Path(args.audit_key_file) if args.audit_key_file else None,
    )
    meridian = Meridian(
        config,
        default_provider(keys_dir(args.keys_dir)),
        audit=audit,
        state_file=state_dir / "failover.json",
    )

    async def reload() -> None:
        """SIGHUP: read the config file again; apply it whole, or reject it whole."""
        try:
            fresh = load_file(path)
        except ConfigError as exc:
            log.error("config reload rejected; keeping %s\n%s", meridian.config.version, exc)
            await meridian.reject_config(exc)
            return
        if fresh.version != meridian.config.version:
            await meridian.apply_config(fresh)
            log.info("config reloaded: version %s", fresh.version)

    async def main(stop: asyncio.Event) -> None:
        server = RouterServer(meridian, host=args.host, port=args.port)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(reload()))
        try:
            if await _race(server.start(), stop):
                print(
                    f"router ready on {args.host}:{server.port} (config {config.version})",
                    flush=True,
                )
                await stop.wait()
        finally:
            loop.remove_signal_handler(signal.SIGHUP)
            await server.stop(grace=args.grace)
            await audit.close()

    asyncio.run(_until_signalled(main))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from regions.worker import WorkerPlan, run
    from regions.workflows import WORKFLOW_TYPES
    from router.codec import KeyRingHolder, default_provider
    from router.config.compile import worker_queues
    from router.config.load import load
    from router.paths import keys_dir

    config = load(args.config)
    table = config.table
    region = table.regions.get(args.region)
    if region is None:
        raise MeridianError(
            f"--region: unknown region {args.region!r} (known: {', '.join(table.regions)})"
        )
    cluster = next((c for c in region.clusters if c.name == args.cluster), None)
    if cluster is None:
        known = ", ".join(c.name for c in region.clusters)
        raise MeridianError(
            f"--cluster: {args.cluster!r} is not a cluster of {args.region} ({known})"
        )
    plan = WorkerPlan(
        region=region.name,
        cluster=cluster.name,
        endpoint=cluster.endpoint,
        queues=worker_queues(table, region.name, WORKFLOW_TYPES),
    )
    holder = KeyRingHolder(default_provider(keys_dir(args.keys_dir)), region.name)
    compression = config.codec.compression
    asyncio.run(
        _until_signalled(lambda stop: run(plan, stop, keys=holder, compression=compression))
    )
    return 0


def cmd_codec_server(args: argparse.Namespace) -> int:
    from aiohttp import web

    from router.audit import auth_failure_record
    from router.codec import KeyRingHolder, RegionCodec, default_provider
    from router.codec.server import CodecServer
    from router.codec.tokens import load_tokens
    from router.config.load import load
    from router.paths import keys_dir, meridian_home

    config = load(args.config)
    region = config.table.regions.get(args.region)
    if region is None:
        known = ", ".join(config.table.regions)
        raise MeridianError(f"--region: unknown region {args.region!r} (known: {known})")
    audit_dir = (
        Path(args.audit_dir) if args.audit_dir else meridian_home() / f"audit-codec-{region.name}"
    )
    audit = _open_audit(
        config, audit_dir, Path(args.audit_key_file) if args.audit_key_file else None
    )

    async def auth_failed(remote: str, path: str, why: str) -> None:
        await audit.append(auth_failure_record(
            component="codec-server", region=region.name, remote=remote, path=path, why=why
        ))  # fmt: skip

    listen = args.listen or region.codec_server
    if not listen:
        raise MeridianError(
            f"--listen: region {region.name} has no codec_server address in config; give one"
        )
    host, _, port = listen.rpartition(":")
    directory = keys_dir(args.keys_dir)
    holder = KeyRingHolder(default_provider(directory), region.name)
    settings = config.codec
    server = CodecServer(
        RegionCodec(
            holder,
            compression=settings.compression,
            compression_min_bytes=settings.compression_min_bytes,
        ),
        namespaces=frozenset(ns for c in region.clusters for ns in c.namespaces),
        tokens=load_tokens(region.name, directory),
        cors_origins=settings.cors_origins,
        max_body_bytes=settings.max_body_bytes,
        on_auth_failure=auth_failed,
    )

    async def main(stop: asyncio.Event) -> None:
        runner = web.AppRunner(server.app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host.strip("[]"), int(port))
            try:
                await site.start()
            except OSError as exc:
                raise StackError(
                    f"codec server {region.name}: cannot listen on {listen}: {exc.strerror}"
                ) from exc
            refresher = asyncio.create_task(holder.refresh_forever())
            print(f"codec server of {region.name} on http://{listen}", flush=True)
            await stop.wait()
            refresher.cancel()
        finally:
            await runner.cleanup()
            await audit.close()

    asyncio.run(_until_signalled(main))
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from router.codec import FileKeyProvider, KeyRingError, new_ring
    from router.config.load import load
    from router.paths import keys_dir

    provider = FileKeyProvider(keys_dir(args.keys_dir))
    regions = list(load(args.config).table.regions) if args.region is None else [args.region]
    rows = []
    for region in regions:
        path = provider.path(region)
        if args.action == "init":
            if path.exists():
                rows.append((region, provider.load(region).active, str(path), "kept (exists)"))
                continue
            ring = new_ring(region)
            provider.save(ring)
            rows.append((region, ring.active, str(path), "created"))
        elif args.action == "rotate":
            ring = provider.load(region).rotated()
            provider.save(ring)
            rows.append((region, ring.active, str(path), f"rotated; {len(ring.keys)} keys"))
        else:
            try:
                ring = provider.load(region)
            except KeyRingError as exc:
                rows.append((region, "", str(path), exc.message))
                continue
            rows.append(
                (region, ring.active, str(path), f"{len(ring.keys)} keys: {', '.join(ring.keys)}")
            )
    if args.json:
        print(
            json.dumps(
                [dict(zip(("region", "active", "path", "note"), r, strict=True)) for r in rows]
            )
        )
    else:
        print(render_table(["region", "active key", "file", "note"], rows))
    return 0


def _stub(router: str) -> tuple[Any, Any]:
    import grpc

    from router.v1 import router_pb2_grpc as pb_grpc

    channel = grpc.insecure_channel(router)
    return pb_grpc.WorkflowRouterStub(channel), pb_grpc.RoutingAdminStub(channel)


def _rpc(call: Callable[[], Any], router: str) -> Any:
    import grpc

    try:
        return call()
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details()
        raise MeridianError(f"router {router}: {code.name}: {details}") from None


def cmd_status(args: argparse.Namespace) -> int:
    from google.protobuf import json_format

    from router.v1 import router_pb2 as pb

    _, admin = _stub(args.router)
    topo = _rpc(
        lambda: admin.GetTopology(pb.GetTopologyRequest(), timeout=args.timeout), args.router
    )
    if args.json:
        print(
            json.dumps(json_format.MessageToDict(topo, preserving_proto_field_name=True), indent=2)
        )
        return 0
    print(f"config version {topo.config_version}; default region {topo.default_region}")
    print(render_table(STATUS_HEADERS, status_rows(topo)))
    return 0


STATUS_HEADERS = ["zone", "region", "cluster", "role", "health", "active", "endpoint", "last flip"]


def _health_word(c: Any) -> str:
    if not c.probed:
        return "unknown"
    return "healthy" if c.healthy else f"UNHEALTHY ({c.last_error})"


def _flip_text(region: Any) -> str:
    if not region.HasField("last_flip"):
        return ""
    f = region.last_flip
    when = f.time.ToDatetime().strftime("%Y-%m-%d %H:%M:%SZ")
    return f"{when} {f.from_cluster}->{f.to_cluster} {f.rule} by {f.actor}: {f.reason}"


def status_rows(topo: Any) -> list[tuple[str, ...]]:
    from router.v1 import router_pb2 as pb

    rows: list[tuple[str, ...]] = []
    for r in topo.regions:
        for c in r.clusters:
            rows.append((
                r.zone, r.name, c.name, pb.ClusterRole.Name(c.role).lower(), _health_word(c),
                "*" if c.active else "", c.endpoint, _flip_text(r) if c.active else "",
            ))  # fmt: skip
    return rows


def cmd_failover(args: argparse.Namespace) -> int:
    from google.protobuf import json_format

    from router.v1 import router_pb2 as pb

    _, admin = _stub(args.router)
    req = pb.SetActiveClusterRequest(
        region=args.region, cluster=args.to, reason=args.reason, force=args.force,
        dry_run=args.dry_run, actor=args.actor or _default_actor(),
    )  # fmt: skip
    resp = _rpc(lambda: admin.SetActiveCluster(req, timeout=args.timeout), args.router)
    if args.json:
        print(
            json.dumps(json_format.MessageToDict(resp, preserving_proto_field_name=True), indent=2)
        )
        return 1 if resp.refused_rule else 0
    for title, region in (("before", resp.before), ("after", resp.after)):
        print(
            f"{title}{' (dry run)' if title == 'after' and resp.dry_run else ''}: "
            f"{region.name} active {next(c.name for c in region.clusters if c.active)}"
        )
    if resp.dry_run:
        if resp.refused_rule:
            print(f"would be REFUSED by rule {resp.refused_rule}: {resp.refused_message}")
        imp = resp.impact
        running = (
            str(imp.running_workflows)
            if imp.running_workflows_known
            else f"unknown ({imp.running_workflows_error})"
        )
        print(f"running workflows on {imp.leaving_cluster}: {running}")
        if imp.route_changes:
            rows = [(c.requests, c.before, c.after) for c in imp.route_changes]
            print(render_table(["requests", "now routed to", "would route to"], rows))
        else:
            print("no route changes")
        print("dry run: nothing changed")
        return 1 if resp.refused_rule else 0
    print(f"flipped {resp.after.name}: {_flip_text(resp.after)}")
    return 0


def _default_actor() -> str:
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def cmd_explain(args: argparse.Namespace) -> int:
    from google.protobuf import json_format

    from router.v1 import router_pb2 as pb

    workflows, _ = _stub(args.router)
    req = pb.StartWorkflowRequest(
        workflow_type=args.type,
        tenant_id=args.tenant,
        user_country=args.country,
        user_subdivision=args.subdivision or "",
        data_class=pb.DataClass.Value(args.data_class.upper()),
        priority=pb.Priority.Value(args.priority.upper()),
    )
    d = _rpc(lambda: workflows.ExplainRoute(req, timeout=args.timeout), args.router)
    if args.json:
        print(json.dumps(json_format.MessageToDict(d, preserving_proto_field_name=True), indent=2))
        return 0
    rows = [
        (k, getattr(d, k))
        for k in (
            "zone",
            "region",
            "cluster",
            "endpoint",
            "namespace",
            "task_queue",
            "rule",
            "failed_over",
            "config_version",
        )
    ]
    print(render_table(["field", "value"], rows))
    print("why:")
    for reason in d.reasons:
        print(f"  - {reason}")
    return 0


def _print_message(msg: Any, as_json: bool) -> None:
    from google.protobuf import json_format

    data = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    if as_json:
        print(json.dumps(data, indent=2))
        return
    rows = []
    for key, val in data.items():
        if isinstance(val, dict) and key in ("decision", "location"):
            rows += [
                (f"{key}.{k}", v if not isinstance(v, list) else "; ".join(v))
                for k, v in val.items()
            ]
        else:
            rows.append((key, json.dumps(val) if isinstance(val, dict | list) else val))
    print(render_table(["field", "value"], rows))


def _json_args(raw: list[str]) -> list[Any]:
    from google.protobuf import json_format, struct_pb2

    out = []
    for i, text in enumerate(raw):
        try:
            out.append(json_format.ParseDict(json.loads(text), struct_pb2.Value()))
        except ValueError as exc:
            raise MeridianError(f"--arg #{i + 1}: not JSON: {exc}") from None
    return out


def cmd_start(args: argparse.Namespace) -> int:
    from router.v1 import router_pb2 as pb

    workflows, _ = _stub(args.router)
    req = pb.StartWorkflowRequest(
        workflow_type=args.type,
        workflow_id=args.id or "",
        args=_json_args(args.arg),
        tenant_id=args.tenant,
        user_country=args.country,
        user_subdivision=args.subdivision or "",
        data_class=pb.DataClass.Value(args.data_class.upper()),
        priority=pb.Priority.Value(args.priority.upper()),
    )
    _print_message(
        _rpc(lambda: workflows.StartWorkflow(req, timeout=args.timeout), args.router), args.json
    )
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from router.v1 import router_pb2 as pb

    workflows, _ = _stub(args.router)
    req = pb.QueryWorkflowRequest(
        ref=pb.WorkflowRef(workflow_id=args.id, tenant_id=args.tenant),
        query_name=args.name,
        args=_json_args(args.arg),
    )
    _print_message(
        _rpc(lambda: workflows.QueryWorkflow(req, timeout=args.timeout), args.router), args.json
    )
    return 0


def cmd_result(args: argparse.Namespace) -> int:
    from router.v1 import router_pb2 as pb

    workflows, _ = _stub(args.router)
    ref = pb.WorkflowRef(workflow_id=args.id, tenant_id=args.tenant)
    _print_message(
        _rpc(lambda: workflows.GetWorkflowResult(ref, timeout=args.timeout), args.router), args.json
    )
    return 0


def cmd_config_validate(args: argparse.Namespace) -> int:
    from router.config.load import load_file

    config = load_file(args.file)
    table = config.table
    if args.json:
        print(json.dumps({"valid": True, "version": config.version, "source": config.source}))
    else:
        print(
            f"{args.file}: valid (version {config.version}): {len(table.zones)} zones, "
            f"{len(table.regions)} regions, {len(table.clusters)} clusters, "
            f"{sum(len(r) for r in table.rules.values())} rules"
        )
    return 0


def _audit_paths(args: argparse.Namespace) -> list[Path]:
    from router.paths import meridian_home

    return [Path(p) for p in args.paths] or [meridian_home() / "audit"]


def _audit_key(args: argparse.Namespace) -> bytes | None:
    from router.audit import load_key

    return load_key(Path(args.key_file) if args.key_file else None)


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from router.audit import verify

    paths = _audit_paths(args)
    result = verify(paths, key=_audit_key(args))
    if args.json:
        print(json.dumps({
            "ok": result.ok, "records": result.records, "files": result.files,
            "last_seq": result.last_seq, "last_hash": result.last_hash,
            "algorithms": sorted(result.algs), "notes": result.notes,
            "problem": None if result.problem is None else {
                "file": result.problem.file, "line": result.problem.line,
                "seq": result.problem.seq, "kind": result.problem.kind,
                "detail": result.problem.detail,
            },
        }, indent=2))  # fmt: skip
    else:
        for note in result.notes:
            print(f"note: {note}")
        if result.ok:
            algs = ", ".join(sorted(result.algs)) or "no records"
            print(f"OK: {result.records} records in {result.files} file(s), chain intact ({algs}); "
                  f"last seq {result.last_seq} hash {result.last_hash}")  # fmt: skip
        else:
            print(f"FAILED: {result.problem}")
    if result.problem is not None and result.problem.kind == "key-required":
        return 2
    return 0 if result.ok else 1


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
    from router.audit.query import records, report

    match = _filter(args)
    rep = report(r for r in records(_audit_paths(args)) if match(r))
    ok = not rep.violations
    if args.json:
        print(json.dumps({
            "records": rep.records,
            "decisions": [{"zone": z, "region": g, "data_class": c, "count": n}
                          for (z, g, c), n in sorted(rep.decisions.items())],
            "refusals": [{"refusal": k, "data_class": c, "count": n}
                         for (k, c), n in sorted(rep.refusals.items())],
            "start_outcomes": dict(rep.outcomes),
            "flips": rep.flips, "config_changes": rep.configs,
            "auth_failures": [{"component": a, "region": g, "why": w, "count": n}
                              for (a, g, w), n in sorted(rep.auth_failures.items())],
            "residency": {"checked": rep.regulated_checked, "violations": rep.violations},
        }, indent=2))  # fmt: skip
        return 0 if ok else 1
    span = f"{args.since or 'the beginning'} .. {args.until or 'now'}"
    print(f"Audit report, {span}: {rep.records} records\n")
    print("Decisions")
    print(render_table(["zone", "region", "class", "count"],
                       [(*k, n) for k, n in sorted(rep.decisions.items())]))  # fmt: skip
    print("\nRefusals")
    print(render_table(["refusal", "class", "count"],
                       [(*k, n) for k, n in sorted(rep.refusals.items())]))  # fmt: skip
    print(
        "\nStart outcomes: "
        + (", ".join(f"{k} {n}" for k, n in sorted(rep.outcomes.items())) or "none")
    )
    print("\nFlips")
    print(render_table(["time", "region", "outcome", "from", "to", "rule", "actor", "reason"], [
        (f.get("time"), f.get("region"), f.get("outcome"), f.get("from_cluster", ""),
         f.get("to_cluster", ""), f.get("rule"), f.get("actor"), f.get("reason"))
        for f in rep.flips
    ]))  # fmt: skip
    print("\nConfig changes")
    print(render_table(["time", "outcome", "version", "source"], [
        (c.get("time"), c.get("outcome"), c.get("version"), c.get("source")) for c in rep.configs
    ]))  # fmt: skip
    print("\nAuthentication failures")
    print(render_table(["component", "region", "why", "count"],
                       [(*k, n) for k, n in sorted(rep.auth_failures.items())]))  # fmt: skip
    print()
    if ok:
        print(f"Residency: no record routed regulated data outside its zone "
              f"({rep.regulated_checked} zone-bound decisions checked).")  # fmt: skip
    else:
        print(f"Residency: VIOLATION: {len(rep.violations)} record(s) routed zone-bound data "
              "outside its zone:")  # fmt: skip
        for v in rep.violations:
            where = f"{v.get('zone')}/{v.get('region')}/{v.get('cluster')}"
            print(f"  seq {v.get('seq')} {v.get('time')}: {v.get('data_class')} data bound to "
                  f"zone {v.get('residency_zone') or '?'} went to {where} "
                  f"(workflow {v.get('workflow_id')})")  # fmt: skip
    return 0 if ok else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="meridian", description="Residency-aware multi-region routing for Temporal."
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def config_arg(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--config",
            help="routing config YAML (default: $MERIDIAN_CONFIG, else the embedded default)",
        )
        sp.add_argument(
            "--keys-dir",
            help="key rings and codec tokens (default: $MERIDIAN_KEYS_DIR, else "
            "$MERIDIAN_HOME/keys, else ./.meridian/keys)",
        )

    dev = sub.add_parser("dev", help="run the whole default multi-region stack on loopback")
    config_arg(dev)
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=50051, help="router gRPC port (default 50051)")
    dev.add_argument(
        "--home", help="state and logs directory (default: $MERIDIAN_HOME or ./.meridian)"
    )
    dev.add_argument(
        "--persist", action="store_true", help="keep workflows across restarts (SQLite per cluster)"
    )
    dev.set_defaults(func=cmd_dev)

    serve = sub.add_parser("serve", help="run the router only (clusters and workers run elsewhere)")
    config_arg(serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=50051)
    serve.add_argument(
        "--grace", type=float, default=5.0, help="seconds to drain in-flight calls on stop"
    )
    serve.add_argument(
        "--state-dir",
        help="where active-cluster choices persist (default: $MERIDIAN_HOME/state)",
    )
    serve.add_argument("--audit-dir", help="the audit log (default: $MERIDIAN_HOME/audit)")
    serve.add_argument(
        "--audit-key-file",
        help="base64 HMAC key (0600) that makes the audit chain unforgeable "
        "(or $MERIDIAN_AUDIT_KEY)",
    )
    serve.set_defaults(func=cmd_serve)

    worker = sub.add_parser("worker", help="run the regional worker for one cluster")
    config_arg(worker)
    worker.add_argument("--region", required=True)
    worker.add_argument("--cluster", required=True)
    worker.set_defaults(func=cmd_worker)

    codec = sub.add_parser(
        "codec-server", help="run a region's codec server (Temporal CLI/UI remote codec)"
    )
    config_arg(codec)
    codec.add_argument("--region", required=True)
    codec.add_argument("--listen", help="host:port (default: the region's codec_server in config)")
    codec.add_argument(
        "--audit-dir", help="its audit log (default: $MERIDIAN_HOME/audit-codec-<region>)"
    )
    codec.add_argument("--audit-key-file", help="audit HMAC key (or $MERIDIAN_AUDIT_KEY)")
    codec.set_defaults(func=cmd_codec_server)

    keys = sub.add_parser("keys", help="key rings: init (first key), rotate (new active key), list")
    keys.add_argument("action", choices=["init", "rotate", "list"])
    config_arg(keys)
    keys.add_argument("--region", help="one region (default: every region in config)")
    keys.add_argument("--json", action="store_true")
    keys.set_defaults(func=cmd_keys)

    def client_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--router", default=DEFAULT_ROUTER, help=f"router address (default {DEFAULT_ROUTER})"
        )
        sp.add_argument("--timeout", type=float, default=5.0, help="seconds")
        sp.add_argument("--json", action="store_true", help="print JSON for tools")

    status = sub.add_parser("status", help="zones, regions, clusters: role, health, active")
    client_args(status)
    status.set_defaults(func=cmd_status)

    def routing_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--type", default="DataProcessingWorkflow", help="workflow type")
        sp.add_argument("--tenant", required=True)
        sp.add_argument("--country", required=True, help="ISO 3166-1 alpha-2")
        sp.add_argument("--subdivision", help="ISO 3166-2, e.g. US-CA")
        sp.add_argument(
            "--class",
            dest="data_class",
            required=True,
            choices=["public", "internal", "pii", "financial"],
        )
        sp.add_argument("--priority", default="normal", choices=["low", "normal", "high"])

    failover = sub.add_parser(
        "failover", help="flip a region's active cluster (safety rules, dry run)"
    )
    client_args(failover)
    failover.add_argument("--region", required=True)
    failover.add_argument("--to", required=True, help="the cluster to make active")
    failover.add_argument("--reason", required=True, help="why (audited)")
    failover.add_argument(
        "--force",
        action="store_true",
        help="break glass: override health and wait period (never the region)",
    )
    failover.add_argument("--dry-run", action="store_true", help="show the impact, change nothing")
    failover.add_argument("--actor", help="who flips (default: user@host)")
    failover.set_defaults(func=cmd_failover)

    explain = sub.add_parser("explain", help="where would this request go, and why (dry run)")
    client_args(explain)
    routing_args(explain)
    explain.set_defaults(func=cmd_explain)

    start = sub.add_parser("start", help="start a workflow through the router")
    client_args(start)
    routing_args(start)
    start.add_argument("--id", help="workflow id (default: generated)")
    start.add_argument("--arg", action="append", default=[], help="a JSON argument (repeatable)")
    start.set_defaults(func=cmd_start)

    query = sub.add_parser("query", help="query a workflow started through the router")
    client_args(query)
    query.add_argument("--id", required=True, help="workflow id")
    query.add_argument("--tenant", required=True)
    query.add_argument("--name", required=True, help="query name, e.g. getProgress")
    query.add_argument("--arg", action="append", default=[], help="a JSON argument (repeatable)")
    query.set_defaults(func=cmd_query)

    result = sub.add_parser("result", help="wait for a workflow's result (bounded by --timeout)")
    client_args(result)
    result.add_argument("--id", required=True, help="workflow id")
    result.add_argument("--tenant", required=True)
    result.set_defaults(func=cmd_result)

    audit = sub.add_parser("audit", help="verify, query and report on the audit log")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    paths_help = "log directories or files (default: $MERIDIAN_HOME/audit)"
    av = audit_sub.add_parser("verify", help="check the hash chain; exit 0 when intact")
    av.add_argument("paths", nargs="*", help=paths_help)
    av.add_argument("--key-file", help="the audit HMAC key (or $MERIDIAN_AUDIT_KEY)")
    av.add_argument("--json", action="store_true")
    av.set_defaults(func=cmd_audit_verify)
    aq = audit_sub.add_parser("query", help="find records")
    aq.add_argument("paths", nargs="*", help=paths_help)
    aq.add_argument("--workflow-id")
    aq.add_argument("--tenant")
    aq.add_argument("--region")
    aq.add_argument("--zone")
    aq.add_argument("--kind", help="prefix: route, route.decision, start, flip, config, auth")
    aq.add_argument("--seq", type=int, help="one record by sequence number (a receipt)")
    aq.add_argument("--since", help="ISO 8601, inclusive")
    aq.add_argument("--until", help="ISO 8601, exclusive")
    aq.add_argument("--explain", action="store_true", help="show each decision's rule and reasons")
    aq.add_argument("--json", action="store_true", help="JSON Lines")
    aq.set_defaults(func=cmd_audit_query)
    ar = audit_sub.add_parser("report", help="counts, refusals, flips, and the residency check")
    ar.add_argument("paths", nargs="*", help=paths_help)
    ar.add_argument("--since", help="ISO 8601, inclusive")
    ar.add_argument("--until", help="ISO 8601, exclusive")
    ar.add_argument("--json", action="store_true")
    ar.set_defaults(func=cmd_audit_report)

    config = sub.add_parser("config", help="routing config tools")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    validate = config_sub.add_parser("validate", help="check a config file; list every error")
    validate.add_argument("file")
    validate.add_argument("--json", action="store_true")
    validate.set_defaults(func=cmd_config_validate)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    # A file-size limit (ulimit -f) must surface as a write error (EFBIG) that the audit
    # log reports and recovers from, not as a signal that kills the router.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"meridian: invalid config: {exc}", file=sys.stderr)
        return 2
    except StackError as exc:
        print(f"meridian: {exc}", file=sys.stderr)
        return 1
    except MeridianError as exc:
        print(f"meridian: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
