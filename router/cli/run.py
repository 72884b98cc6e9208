"""Running things: the dev stack, the router, a regional worker, a codec server."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from router.cli.common import config_args, race, render_table, tracing, until_signalled
from router.errors import ConfigError, MeridianError, StackError


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


def _shipper(args: argparse.Namespace, audit: Any, chain: str, service: str) -> Any:
    """Shipping of ``audit``'s chain off the box, when a sink is named (``--audit-ship``,
    else the standard $OTEL_EXPORTER_OTLP_LOGS_ENDPOINT): a child process (not started
    yet; router.cli.sidecar says why); None otherwise."""
    from router.audit.ship import ENDPOINT_ENV
    from router.cli.sidecar import ShipSidecar

    endpoint = getattr(args, "audit_ship", None) or os.environ.get(ENDPOINT_ENV)
    if not endpoint:
        return None
    return ShipSidecar(audit.directory, endpoint=endpoint, chain=chain, service_name=service,
                       committed=lambda: audit.sequence)  # fmt: skip


def cmd_dev(args: argparse.Namespace) -> int:
    from router.api.server import RouterServer
    from router.app import Router
    from router.codec import FileKeyProvider
    from router.config.load import resolve_path
    from router.config.sources import ConfigSources
    from router.devstack import DevStack, check_ports, write_dev_overlay
    from router.failover import LocalStore
    from router.paths import meridian_home

    path = resolve_path(args.config).resolve()
    home = Path(args.home).resolve() if args.home else meridian_home()
    # The file, and the dev overlay (the router's TLS files, or auth off with
    # --insecure); no environment layer: the workers and codec servers the stack starts
    # read the same file and must see the same topology.
    overlay = write_dev_overlay(home, insecure=args.insecure)
    sources = ConfigSources.read([path, overlay], use_env=False)
    config = sources.resolve()
    check_ports(config, args.host, args.port)
    keys = Path(args.keys_dir).resolve() if args.keys_dir else home / "keys"

    def say(line: str) -> None:
        print(line, flush=True)

    async def main(stop: asyncio.Event) -> None:
        stack = DevStack(config, path, home=home, keys_dir=keys, say=say, persist=args.persist)
        server: RouterServer | None = None
        audit: Any = None
        shipper: Any = None
        say(f"meridian dev: config {path} (version {config.version}); logs in {stack.logs}")
        try:
            stack.ensure_secrets()
            for step in (stack.start_clusters, stack.start_workers, stack.start_codec_servers):
                if not await race(step(), stop):
                    return
            say(f"[4/4] starting the router on {args.host}:{args.port}")
            audit = _open_audit(config, home / "audit", keys / "audit.key")
            shipper = _shipper(args, audit, "dev-router", "meridian-router")
            router = Router(
                sources,
                config,
                FileKeyProvider(keys),
                audit=audit,
                store=LocalStore(home / "state" / "failover.json"),
            )
            server = RouterServer(router, host=args.host, port=args.port)
            if shipper is not None:
                router.admin.shipping = shipper.status
                await shipper.start()
            if not await race(server.start(), stop):
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
            if shipper is not None:
                await shipper.stop()
            if audit is not None:
                await audit.close()
            await stack.stop()
            say("stopped")

    stop_tracing = tracing("meridian-router")
    try:
        asyncio.run(until_signalled(main))
    finally:
        stop_tracing()
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
    import socket

    from router.api.server import RouterServer
    from router.app import Router
    from router.codec import default_provider
    from router.config.load import resolve_path
    from router.config.sources import ConfigSources
    from router.consul import ConsulAddress, ConsulClient
    from router.failover import LocalStore
    from router.live import Live
    from router.paths import keys_dir, meridian_home

    home = meridian_home()
    state_dir = Path(args.state_dir) if args.state_dir else home / "state"
    sources = ConfigSources.read([resolve_path(args.config), *(Path(p) for p in args.overlay)])
    replica = args.replica_id or f"{socket.gethostname()}:{args.port}"
    live: Live | None = None
    if args.consul:
        address = ConsulAddress.parse(
            args.consul, args.consul_prefix, os.environ.get("CONSUL_HTTP_TOKEN")
        )
        live = Live(
            ConsulClient(address), cache_dir=state_dir, replica_id=replica,
            lock_delay=args.lock_delay,
        )  # fmt: skip
    else:
        sources.resolve()  # invalid files are fatal before anything starts

    async def main(stop: asyncio.Event) -> None:
        problems: list[ConfigError] = []
        start_sources = sources
        if live is not None:
            start_sources, problems = await live.initial(sources)
        first, start_sources, rejected = start_sources.initial()
        audit = _open_audit(
            first,
            Path(args.audit_dir) if args.audit_dir else home / "audit",
            Path(args.audit_key_file) if args.audit_key_file else None,
        )
        shipper = _shipper(args, audit, replica, "meridian-router")
        local = LocalStore(state_dir / "failover.json")
        router = Router(
            start_sources,
            first,
            default_provider(keys_dir(args.keys_dir)),
            audit=audit,
            store=live.store(local) if live else local,
            authority=live.authority if live else (lambda: True),
            live_status=live.status if live else None,
            early_rejections=[*problems, *rejected],
        )
        server = RouterServer(router, host=args.host, port=args.port)
        if shipper is not None:
            router.admin.shipping = shipper.status
            await shipper.start()
        reloads: set[asyncio.Task[Any]] = set()

        def sighup() -> None:
            """SIGHUP: read the files again; applied whole, or rejected whole (audited)."""
            task = asyncio.create_task(router.config.reload(), name="config-reload")
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, sighup)
        try:
            if await race(server.start(), stop):
                if live is not None:
                    await live.start(router.config, router.clusters)
                print(
                    f"router {replica} ready on {args.host}:{server.port} "
                    f"(config {router.config.config.version})",
                    flush=True,
                )
                await stop.wait()
        finally:
            loop.remove_signal_handler(signal.SIGHUP)
            for task in reloads:  # a reload in progress is not half-done at exit
                task.cancel()
            await asyncio.gather(*reloads, return_exceptions=True)
            if live is not None:
                await live.stop()
            await server.stop(grace=args.grace)
            if shipper is not None:
                await shipper.stop()  # after one last attempt to ship what is left
            await audit.close()

    stop_tracing = tracing("meridian-router")
    try:
        asyncio.run(until_signalled(main))
    finally:
        stop_tracing()
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from regions.worker import WorkerPlan, run
    from regions.workflows import WORKFLOW_TYPES
    from router.codec import KeyRingHolder, default_provider
    from router.config.compile import worker_queues
    from router.config.load import load
    from router.paths import keys_dir
    from router.temporal import tls
    from router.temporal.errors import connect_failure

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
    # The cluster's tls section, read now (KeyRingError naming the file if unusable).
    settings = config.cluster_tls.get(cluster.name)
    credentials = tls.load(settings) if settings is not None else None
    plan = WorkerPlan(
        region=region.name,
        cluster=cluster.name,
        endpoint=cluster.endpoint,
        queues=worker_queues(table, region.name, WORKFLOW_TYPES),
        tls=credentials.tls_config() if credentials is not None else None,
        api_key=credentials.api_key if credentials is not None else None,
    )
    holder = KeyRingHolder(default_provider(keys_dir(args.keys_dir)), region.name)
    compression = config.codec.compression

    def give_up(exc: BaseException) -> bool:
        return connect_failure(exc) is not None  # TLS or credentials: waiting cannot help

    stop_tracing = tracing(f"meridian-worker-{cluster.name}")
    try:
        asyncio.run(
            until_signalled(
                lambda stop: run(plan, stop, keys=holder, compression=compression, give_up=give_up)
            )
        )
    except RuntimeError as exc:
        reason = connect_failure(exc)
        if reason is None:
            raise
        raise MeridianError(
            f"worker for {cluster.name}: cannot connect to {cluster.endpoint}: {reason}"
        ) from None
    finally:
        stop_tracing()
    return 0


def cmd_codec_server(args: argparse.Namespace) -> int:
    from aiohttp import web

    from router.audit import auth_failure_record, key_rotation_record
    from router.auth.codec import NamespaceTokens
    from router.codec import KeyRingHolder, RegionCodec, RingChange, default_provider
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

    async def ring_changed(change: RingChange) -> None:
        # Audited before the server decodes with the new ring.
        await audit.append(key_rotation_record(change, component="codec-server"))

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
        token_check=(
            NamespaceTokens(settings.jwt, settings.namespaces_claim) if settings.jwt else None
        ),
    )

    shipper = _shipper(args, audit, f"codec-server-{region.name}", "meridian-codec-server")

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
            refresher = asyncio.create_task(holder.refresh_forever(on_change=ring_changed))
            if shipper is not None:
                await shipper.start()
            print(f"codec server of {region.name} on http://{listen}", flush=True)
            await stop.wait()
            refresher.cancel()
        finally:
            await runner.cleanup()
            if shipper is not None:
                await shipper.stop()
            await audit.close()

    asyncio.run(until_signalled(main))
    return 0


def _audit_ship_arg(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--audit-ship",
        metavar="ENDPOINT",
        help="ship the audit chain to this OTLP/gRPC collector (http://host:4317; "
        "default: $OTEL_EXPORTER_OTLP_LOGS_ENDPOINT; neither: not shipped)",
    )


def add_parsers(sub: Any) -> None:
    dev = sub.add_parser("dev", help="run the whole default multi-region stack on loopback")
    config_args(dev)
    dev.add_argument(
        "--host", default="127.0.0.1", help="router listen address (default 127.0.0.1)"
    )
    dev.add_argument("--port", type=int, default=50051, help="router gRPC port (default 50051)")
    dev.add_argument(
        "--home", help="state and logs directory (default: $MERIDIAN_HOME or ./.meridian)"
    )
    dev.add_argument(
        "--persist", action="store_true", help="keep workflows across restarts (SQLite per cluster)"
    )
    dev.add_argument(
        "--insecure",
        action="store_true",
        help="plaintext with authentication and authorization OFF, for quick experiments "
        "(default: mTLS with the development CA under $MERIDIAN_HOME/tls, deny by default)",
    )
    dev.set_defaults(func=cmd_dev)

    serve = sub.add_parser("serve", help="run the router only (clusters and workers run elsewhere)")
    config_args(serve)
    serve.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=50051, help="gRPC port (default 50051)")
    serve.add_argument(
        "--grace", type=float, default=5.0, help="seconds to drain in-flight calls on stop"
    )
    serve.add_argument(
        "--state-dir",
        help="where active-cluster choices persist (default: $MERIDIAN_HOME/state)",
    )
    serve.add_argument("--audit-dir", help="the audit log (default: $MERIDIAN_HOME/audit)")
    serve.add_argument(
        "--overlay", action="append", default=[],
        help="another YAML layer over --config (repeatable; later wins)",
    )  # fmt: skip
    serve.add_argument(
        "--consul", help="host:port of a Consul agent: live config, flips and leadership"
    )
    serve.add_argument("--consul-prefix", default="meridian/", help="KV prefix (default meridian/)")
    serve.add_argument("--replica-id", help="this replica's name (default: hostname:port)")
    serve.add_argument(
        "--lock-delay", type=int, default=1,
        help="seconds the leader lock stays blocked after the leader's session dies "
        "(Consul's lock-delay; default 1)",
    )  # fmt: skip
    serve.add_argument(
        "--audit-key-file",
        help="base64 HMAC key (0600) that makes the audit chain unforgeable "
        "(or $MERIDIAN_AUDIT_KEY)",
    )
    _audit_ship_arg(serve)
    serve.set_defaults(func=cmd_serve)

    worker = sub.add_parser("worker", help="run the regional worker for one cluster")
    config_args(worker)
    worker.add_argument("--region", required=True, help="the region the cluster belongs to")
    worker.add_argument("--cluster", required=True, help="the cluster whose queues it polls")
    worker.set_defaults(func=cmd_worker)

    codec = sub.add_parser(
        "codec-server", help="run a region's codec server (Temporal CLI/UI remote codec)"
    )
    config_args(codec)
    codec.add_argument("--region", required=True, help="the region whose keys it holds")
    codec.add_argument("--listen", help="host:port (default: the region's codec_server in config)")
    codec.add_argument(
        "--audit-dir", help="its audit log (default: $MERIDIAN_HOME/audit-codec-<region>)"
    )
    codec.add_argument("--audit-key-file", help="audit HMAC key (or $MERIDIAN_AUDIT_KEY)")
    _audit_ship_arg(codec)
    codec.set_defaults(func=cmd_codec_server)
