"""Running things: the dev stack, the router, a regional worker, a codec server."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from router.cli.common import (
    config_args,
    race,
    render_table,
    tracing,
    until_signalled,
    witness_dir,
)
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


def _audit_key_file(args: argparse.Namespace) -> Path | None:
    """The audit HMAC key: --audit-key-file, else ``<keys-dir>/audit.key`` when it exists
    (what `meridian keys init` and `meridian dev` make, and `keys rotate` uses), else none
    ($MERIDIAN_AUDIT_KEY, if set, wins over both: ``load_key``)."""
    from router.paths import keys_dir

    if args.audit_key_file:
        return Path(args.audit_key_file)
    default = keys_dir(args.keys_dir) / "audit.key"
    return default if default.exists() else None


def _checkpointer(
    config: Any,
    audit: Any,
    *,
    replica_id: str,
    key_file: Path,
    witness_dir: Path,
    create_key: bool,
    consul: Any = None,
    warn_same_disk: bool = True,
) -> Any:
    """The audit log's signed checkpoints: the Ed25519 key (made on first run when
    ``create_key``), the witness directory, and Consul's witness key when ``consul`` (a
    ConsulClient) is given. Started here; the caller closes it before the log."""
    import logging

    from router.audit.checkpoint import Checkpointer, Witness
    from router.audit.signing import ensure_signing_key, load_signing_key
    from router.audit.witness import ConsulWitness, DirectoryWitness

    if create_key:
        key, made = ensure_signing_key(key_file)
    else:
        key, made = load_signing_key(key_file), False
    logger = logging.getLogger("meridian")
    if made:
        logger.warning("generated the audit signing key %s (key id %s); give auditors its "
                       "public key: meridian audit public-key", key_file, key.key_id)  # fmt: skip
    witnesses: list[Witness] = [DirectoryWitness(witness_dir)]
    if consul is not None:
        witnesses.append(ConsulWitness(consul, replica_id))
    with contextlib.suppress(OSError):
        witness_dir.mkdir(parents=True, exist_ok=True)
        if warn_same_disk and witness_dir.stat().st_dev == audit.directory.stat().st_dev:
            logger.warning("audit witness %s is on the same filesystem as the log %s: it "
                           "guards nothing against whoever owns this disk; put it on another "
                           "volume or host", witness_dir, audit.directory)  # fmt: skip
    checkpointer = Checkpointer(
        audit, key, replica_id=replica_id, witnesses=witnesses,
        interval=float(config.document.audit.checkpoint_interval_s),
    )  # fmt: skip
    checkpointer.start()
    return checkpointer


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
    from router import metrics
    from router.api.server import RouterServer
    from router.app import Router
    from router.audit.signing import SIGNING_KEY
    from router.codec import FileKeyProvider
    from router.config.load import resolve_path
    from router.config.sources import ConfigSources
    from router.devstack import DevStack, check_ports, ui_ports, write_dev_overlay
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
    ui = ui_ports(config, args.ui_port_base) if args.ui else {}
    check_ports(config, args.host, args.port, http_port=args.http_port or None, ui=ui)
    keys = Path(args.keys_dir).resolve() if args.keys_dir else home / "keys"

    def say(line: str) -> None:
        print(line, flush=True)

    witness = witness_dir(config, None, home / "witness")

    async def main(stop: asyncio.Event) -> None:
        stack = DevStack(
            config, path, home=home, keys_dir=keys, say=say, persist=args.persist, ui=ui,
            witness_dir=witness,
        )  # fmt: skip
        server: RouterServer | None = None
        audit: Any = None
        checkpointer: Any = None
        shipper: Any = None
        say(f"meridian dev: config {path} (version {config.version}); logs in {stack.logs}")
        try:
            stack.ensure_secrets()
            for step in (stack.start_clusters, stack.start_workers, stack.start_codec_servers):
                if not await race(step(), stop):
                    return
            say(f"[4/4] starting the router on {args.host}:{args.port}")
            audit = _open_audit(config, home / "audit", keys / "audit.key")
            checkpointer = _checkpointer(
                config, audit, replica_id="dev", key_file=keys / SIGNING_KEY,
                witness_dir=witness, create_key=False, warn_same_disk=False,
            )  # fmt: skip
            shipper = _shipper(args, audit, "dev-router", "meridian-router")
            router = Router(
                sources,
                config,
                FileKeyProvider(keys),
                audit=audit,
                store=LocalStore(home / "state" / "failover.json"),
                checkpointer=checkpointer,
            )
            server = RouterServer(
                router, host=args.host, port=args.port,
                http=(args.host, args.http_port) if args.http_port else None,
                exposition=exposition,
            )  # fmt: skip
            if shipper is not None:
                router.admin.shipping = shipper.status
                await shipper.start()
            if not await race(server.start(), stop):
                return
            _print_summary(say, config, args.host, server.port, stack.ui_urls)
            if args.http_port:
                say(f"status page and metrics: http://{args.host}:{server.http.port}/ "
                    f"(/metrics, /healthz, /readyz)")  # fmt: skip
            say(
                f"audit log: {home / 'audit'} (verify: meridian audit verify {home / 'audit'} "
                f"--key-file {keys / 'audit.key'} --witness {witness})"
            )
            # A child that crashes is reported by its watcher; the rest keep serving
            # (a dead cluster is a failure mode worth trying out) until Ctrl-C/SIGTERM.
            await stop.wait()
        finally:
            say("stopping: router, workers, clusters ...")
            if server is not None:
                await server.stop(grace=2.0)
            if checkpointer is not None:
                await checkpointer.close()
            if shipper is not None:
                await shipper.stop()
            if audit is not None:
                await audit.close()
            await stack.stop()
            say("stopped")

    exposition = metrics.setup("meridian-router")
    stop_tracing = tracing("meridian-router")
    try:
        asyncio.run(until_signalled(main))
    finally:
        stop_tracing()
    return 0


def _print_summary(
    say: Callable[[str], None], config: Any, host: str, port: int, ui: dict[str, str]
) -> None:
    table = config.table
    rows = [
        (
            r.zone,
            r.name,
            c.name,
            c.role.value,
            c.endpoint,
            f"http://{r.codec_server}" if r.codec_server else "",
            *([ui.get(c.name, "")] if ui else []),
        )
        for r in table.regions.values()
        for c in r.clusters
    ]
    headers = ["zone", "region", "cluster", "role", "endpoint", "codec server"]
    say(render_table([*headers, *(["web ui"] if ui else [])], rows))
    if ui:
        name, url = next(iter(ui.items()))
        ns = table.clusters[name].namespaces[0]
        say(
            f"Web UI: open a workflow at {url}/namespaces/{ns}/workflows/<workflow id>; each UI "
            "decodes through its region's codec server, which accepts that UI's requests "
            "without a token (development mode, loopback only: see SECURITY.md)"
        )
    say(
        f"router ready on {host}:{port} (grpc.health.v1: meridian.router.v1.WorkflowRouter SERVING)"
    )
    say("press Ctrl-C to stop everything")


def cmd_serve(args: argparse.Namespace) -> int:
    import socket

    from router import homes, metrics
    from router.api.server import RouterServer
    from router.app import Router
    from router.audit.signing import SIGNING_KEY
    from router.codec import default_provider
    from router.config.load import resolve_path
    from router.config.sources import ConfigSources
    from router.consul import ConsulAddress, ConsulClient
    from router.failover import FlipStore, LocalStore, SharedFileStore
    from router.live import Live
    from router.paths import keys_dir, meridian_home
    from router.workers import FileFollower, Worker, die_with_supervisor

    count = args.workers if args.workers is not None else (os.cpu_count() or 1)
    if count < 1:
        raise MeridianError(f"--workers: {count}; at least 1")
    if count > 1 and args.worker_index is None:
        return _supervise(args, count)
    if args.worker_index is not None:
        die_with_supervisor()
    worker = Worker(args.worker_index or 0, count)
    home = meridian_home()
    state_dir = Path(args.state_dir) if args.state_dir else home / "state"
    audit_base = Path(args.audit_dir) if args.audit_dir else home / "audit"
    sources = ConfigSources.read([resolve_path(args.config), *(Path(p) for p in args.overlay)])
    replica = worker.replica_id(args.replica_id or f"{socket.gethostname()}:{args.port}")
    live: Live | None = None
    if args.consul:
        address = ConsulAddress.parse(
            args.consul, args.consul_prefix, os.environ.get("CONSUL_HTTP_TOKEN")
        )
        live = Live(
            ConsulClient(address), cache_dir=worker.cache_dir(state_dir), replica_id=replica,
            lock_delay=args.lock_delay,
        )  # fmt: skip
    else:
        sources.resolve()  # invalid files are fatal before anything starts
    shared = SharedFileStore(state_dir / "failover.json") if count > 1 and not live else None

    async def main(stop: asyncio.Event) -> None:
        problems: list[ConfigError] = []
        start_sources = sources
        if live is not None:
            start_sources, problems = await live.initial(sources)
        first, start_sources, rejected = start_sources.initial()
        audit = _open_audit(first, worker.audit_dir(audit_base), _audit_key_file(args))
        witness_consul = ConsulClient(live.client.address) if live is not None else None
        checkpointer = _checkpointer(
            first, audit, replica_id=replica,
            key_file=Path(args.audit_signing_key_file or keys_dir(args.keys_dir) / SIGNING_KEY),
            witness_dir=witness_dir(first, args.witness_dir, audit_base.parent / "witness"),
            create_key=not args.audit_signing_key_file, consul=witness_consul,
        )  # fmt: skip
        local = LocalStore(worker.cache_dir(state_dir) / "failover.json")
        store: FlipStore = live.store(local) if live else shared or local
        if live is not None:
            authority: Callable[[], bool] = live.authority
        else:
            authority = (lambda: True) if worker.authority else (lambda: False)
        shipper = _shipper(args, audit, replica, "meridian-router")
        router = Router(
            start_sources,
            first,
            default_provider(keys_dir(args.keys_dir)),
            audit=audit,
            store=store,
            authority=authority,
            live_status=live.status if live else None,
            early_rejections=[*problems, *rejected],
            homes=homes.load(keys_dir(args.keys_dir)),
            checkpointer=checkpointer,
        )
        http_port = worker.http_port(args.http_port)
        server = RouterServer(
            router, host=args.host, port=args.port,
            http=(args.http_host, http_port) if http_port is not None else None,
            exposition=exposition, reuse_port=count > 1,
        )  # fmt: skip
        follower = FileFollower(shared) if shared is not None else None
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
                if follower is not None:
                    follower.start(router.clusters)
                # What start-up built (config, clients, modules) lives as long as the
                # process: out of the collector's way, so its passes scan only what
                # requests allocate.
                gc.freeze()
                http = (
                    f"; status page and metrics: http://{args.http_host}:{server.http.port}/"
                    if http_port is not None
                    else ""
                )
                print(
                    f"router {replica} ready on {args.host}:{server.port} "
                    f"(config {router.config.config.version}){http}",
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
            if follower is not None:
                await follower.stop()
            await server.stop(grace=args.grace)
            await checkpointer.close()
            if witness_consul is not None:
                await witness_consul.close()
            if shipper is not None:
                await shipper.stop()  # after one last attempt to ship what is left
            await audit.close()

    exposition = None if args.no_metrics else metrics.setup("meridian-router")
    stop_tracing = tracing("meridian-router")
    try:
        asyncio.run(until_signalled(main))
    finally:
        stop_tracing()
    return 0


def _supervise(args: argparse.Namespace, count: int) -> int:
    """Run ``count`` workers of this same command line on one port (router.workers)."""
    from router.workers import free_port, supervise

    argv = [sys.executable, "-m", "router.cli", *args.argv, "--workers", str(count)]
    if args.port == 0:  # one port for all: chosen here, once
        argv += ["--port", str(free_port(args.host))]
    return supervise(argv, count, grace=args.grace)


def cmd_worker(args: argparse.Namespace) -> int:
    from regions.worker import WorkerPlan, run
    from regions.workflows import WORKFLOW_TYPES
    from router.cli.regional import region_store
    from router.codec import KeyRingHolder, default_provider
    from router.config.compile import worker_queues
    from router.config.load import load
    from router.paths import keys_dir, meridian_home
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
        store=region_store(config, region.name, args.data_dir, meridian_home()),
        source_roots=tuple(Path(r).resolve() for r in (args.source_root or ["."])),
        metrics=args.sdk_metrics or None,
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

    from router import metrics
    from router.audit import auth_failure_record, key_rotation_record
    from router.audit.signing import SIGNING_KEY
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
    audit = _open_audit(config, audit_dir, _audit_key_file(args))
    # Its chain is checkpointed when it has a witness and a signing key (a codec server
    # holds its region's secrets only: the key is given to it, never made here).
    signing_key = Path(args.audit_signing_key_file or keys_dir(args.keys_dir) / SIGNING_KEY)
    witness = args.witness_dir or config.document.audit.witness_dir
    checkpoints = bool(witness) and (bool(args.audit_signing_key_file) or signing_key.exists())

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
    dev_origins = _dev_loopback_origins(args.dev_loopback_ui, listen, host)
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
        dev_loopback_origins=dev_origins,
        exposition=None if args.no_metrics else metrics.setup("meridian-codec-server"),
    )

    shipper = _shipper(args, audit, f"codec-server-{region.name}", "meridian-codec-server")

    async def main(stop: asyncio.Event) -> None:
        runner = web.AppRunner(server.app, access_log=None)
        await runner.setup()
        checkpointer: Any = None
        try:
            if checkpoints:
                checkpointer = _checkpointer(
                    config, audit, replica_id=f"codec-{region.name}", key_file=signing_key,
                    witness_dir=witness_dir(config, witness, audit_dir), create_key=False,
                )  # fmt: skip
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
            if dev_origins:
                print(
                    f"DEVELOPMENT MODE (--dev-loopback-ui): requests without a token from "
                    f"loopback with Origin {', '.join(dev_origins)} are accepted; any local "
                    f"process can decode {region.name}'s payloads",
                    flush=True,
                )
            await stop.wait()
            refresher.cancel()
        finally:
            await runner.cleanup()
            if checkpointer is not None:
                await checkpointer.close()
            if shipper is not None:
                await shipper.stop()
            await audit.close()

    asyncio.run(until_signalled(main))
    return 0


def _dev_loopback_origins(origins: list[str], listen: str, host: str) -> list[str]:
    """``--dev-loopback-ui``: loopback UI origins, and only on a loopback listen address."""
    from router.codec.server import loopback_address, loopback_origin

    if not origins:
        return []
    bad = [o for o in origins if not loopback_origin(o)]
    if bad:
        raise MeridianError(
            f"--dev-loopback-ui: {bad[0]!r} is not http://<loopback host>:<port> "
            "(127.0.0.1, localhost or [::1])"
        )
    bare = host.strip("[]")
    if bare != "localhost" and not loopback_address(bare):
        raise MeridianError(
            f"--dev-loopback-ui: the codec server must listen on loopback, not {listen}"
        )
    return list(dict.fromkeys(origins))


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
        "--http-port", type=int, default=8080,
        help="the router's HTTP port: status page, /metrics, /healthz, /readyz "
        "(default 8080; 0: none)",
    )  # fmt: skip
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
    dev.add_argument(
        "--ui", action="store_true",
        help="run each cluster's Temporal Web UI (on its gRPC port + 1000), decoding "
        "through its region's codec server in development mode: tokenless requests of "
        "that UI's origin from loopback are accepted",
    )  # fmt: skip
    dev.add_argument(
        "--ui-port-base", type=int, metavar="PORT",
        help="with --ui: the clusters' UIs take consecutive ports from PORT, in config order",
    )  # fmt: skip
    dev.set_defaults(func=cmd_dev)

    serve = sub.add_parser("serve", help="run the router only (clusters and workers run elsewhere)")
    config_args(serve)
    serve.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=50051, help="gRPC port (default 50051)")
    serve.add_argument(
        "--http-port", type=int,
        help="serve the status page, /metrics, /healthz and /readyz on this port "
        "(default: none; 0 picks a free one)",
    )  # fmt: skip
    serve.add_argument(
        "--no-metrics", action="store_true",
        help="record no metrics (measures what they cost; /metrics then answers 404)",
    )  # fmt: skip
    serve.add_argument(
        "--http-host", default="127.0.0.1",
        help="the HTTP port's address (default 127.0.0.1; while auth is on the status page "
        "answers loopback callers only, /metrics anyone)",
    )  # fmt: skip
    serve.add_argument(
        "--grace", type=float, default=5.0, help="seconds to drain in-flight calls on stop"
    )
    serve.add_argument(
        "--workers", type=int,
        help="router processes sharing the port (SO_REUSEPORT), each a full replica with "
        "its own audit chain (<audit-dir>/worker-<i>) and HTTP port (--http-port + i); "
        "default: the number of cores",
    )  # fmt: skip
    serve.add_argument(
        "--worker-index", type=int,
        help="which worker this process is (set by the supervisor --workers starts; not "
        "for use by hand)",
    )  # fmt: skip
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
        "(or $MERIDIAN_AUDIT_KEY; default: <keys-dir>/audit.key if present)",
    )
    witness_args(
        serve, "witness/ beside the audit directory: $MERIDIAN_HOME/witness",
        "<keys-dir>/audit-signing.key, made on first run",
    )  # fmt: skip
    _audit_ship_arg(serve)
    serve.set_defaults(func=cmd_serve)

    worker = sub.add_parser("worker", help="run the regional worker for one cluster")
    config_args(worker)
    worker.add_argument(
        "--sdk-metrics",
        help="export the Temporal SDK's own metrics: host:port to serve them for "
        "Prometheus, or an http(s) URL of an OTLP collector (default: none)",
    )
    worker.add_argument("--region", required=True, help="the region the cluster belongs to")
    worker.add_argument("--cluster", required=True, help="the cluster whose queues it polls")
    worker.add_argument(
        "--data-dir",
        help="the region's SQLite store (default: $MERIDIAN_HOME/regions/<region>; "
        "ignored when regions.<region>.store names PostgreSQL)",
    )
    worker.add_argument(
        "--source-root", action="append",
        help="a directory contact syncs may read source files from (repeatable; "
        "default: the working directory)",
    )  # fmt: skip
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
    codec.add_argument(
        "--audit-key-file",
        help="audit HMAC key (or $MERIDIAN_AUDIT_KEY; default: <keys-dir>/audit.key if present)",
    )
    codec.add_argument(
        "--dev-loopback-ui", action="append", default=[], metavar="ORIGIN",
        help="DEVELOPMENT ONLY (meridian dev --ui sets it): accept requests without a token "
        "from a loopback address whose Origin is ORIGIN, a local Temporal Web UI such as "
        "http://127.0.0.1:8233 (repeatable; any local process can then decode this "
        "region's payloads)",
    )  # fmt: skip
    codec.add_argument(
        "--no-metrics", action="store_true",
        help="record no metrics (GET /metrics then answers 404)",
    )  # fmt: skip
    witness_args(codec, "audit.witness_dir; none: no checkpoints", "<keys-dir>/audit-signing.key")
    _audit_ship_arg(codec)
    codec.set_defaults(func=cmd_codec_server)


def witness_args(sp: argparse.ArgumentParser, witness_default: str, key_default: str) -> None:
    sp.add_argument(
        "--witness-dir",
        help="where signed audit checkpoints are published: another volume or host "
        f"(default: the config's audit.witness_dir, else {witness_default})",
    )
    sp.add_argument(
        "--audit-signing-key-file",
        help="Ed25519 key (PEM, 0600) that signs checkpoints and receipts "
        f"(default: {key_default})",
    )
