"""A small fleet of real processes for failover drills and their tests: Temporal dev
servers we can SIGKILL, SIGSTOP and restart on the same port, and a router
(`meridian serve`). Every process is ours by PID and dies with us (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from temporalio.service import ConnectConfig, ServiceClient

from router.codec import FileKeyProvider, new_ring
from router.devstack import die_with_parent, port_free, temporal_binary

ROOT = Path(__file__).resolve().parents[1]


# Below Linux's ephemeral range (32768-60999): the kernel hands those out to every
# outgoing connection and to servers asking for "any port" (a Temporal dev server opens
# three), so a port picked there can be taken before we bind it.
_PORTS = (20000, 32000)
_used: set[int] = set()


def free_port() -> int:
    """A free loopback port outside the ephemeral range, never the same twice per process."""
    for _ in range(1000):
        port = random.randrange(*_PORTS)
        if port not in _used and port_free("127.0.0.1", port):
            _used.add(port)
            return port
    raise RuntimeError(f"no free port in {_PORTS}")


def claim(port: int) -> bool:
    """Take ``port`` too, if it is free and not handed out yet (a port a program derives
    from another, like a dev server's Web UI at +1000): then ``free_port`` never returns
    it."""
    if port in _used or not 0 < port < 65536 or not port_free("127.0.0.1", port):
        return False
    _used.add(port)
    return True


def _popen(argv: list[str], log: Path, cwd: Path = ROOT) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(
            die_with_parent(argv), stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, cwd=cwd,
        )  # fmt: skip


def _stop(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
        proc.send_signal(sig)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class Cluster:
    name: str
    port: int
    namespaces: tuple[str, ...]
    logs: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        deadline = time.monotonic() + 10
        while not port_free("127.0.0.1", self.port):  # the old process may still hold it
            if time.monotonic() > deadline:
                raise RuntimeError(f"port {self.port} of {self.name} is still taken")
            time.sleep(0.05)
        argv = [temporal_binary(), "server", "start-dev", "--headless", "--ip", "127.0.0.1",
                "--port", str(self.port), "--log-level", "error"]  # fmt: skip
        for ns in self.namespaces:
            argv += ["--namespace", ns]
        self.proc = _popen(argv, self.logs / f"{self.name}.log")

    async def wait_ready(self, timeout: float = 30) -> None:
        service = await ServiceClient.connect(ConnectConfig(target_host=self.endpoint, lazy=True))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if await service.check_health(timeout=timedelta(seconds=1)):
                    return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready after {timeout} s")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def terminate(self) -> None:
        _stop(self.proc)


@dataclass
class Replica:
    """One router process (``meridian serve``) with its own state and audit dirs."""

    name: str
    home: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    argv: list[str] = field(default_factory=list)
    source: Path = ROOT

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"router {self.name} was never started"
        return self.proc.pid

    @property
    def audit_dir(self) -> Path:
        return self.home / "audit"

    def log(self) -> str:
        path = self.home / "router.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, config: Path, keys: Path, extra: list[str], *, source: Path = ROOT) -> None:
        """``source``: the tree whose ``router`` runs (``python -m`` finds the working
        directory's first): another checkout runs that version, for before/after."""
        self.source = source
        self.argv = [
            sys.executable, "-m", "router.cli", "serve", "--config", str(config),
            "--keys-dir", str(keys), "--state-dir", str(self.home / "state"),
            "--audit-dir", str(self.audit_dir), "--port", str(self.port),
            "--replica-id", self.name,
            # One process unless the caller asks for workers: drills signal and measure
            # the router by its PID, and read its one audit directory.
            # (Versions before router/workers.py run one process and know no --workers.)
            *([] if "--workers" in extra or not (source / "router" / "workers.py").exists()
              else ["--workers", "1"]), *extra,
        ]  # fmt: skip
        self.proc = _popen(self.argv, self.home / "router.log", source)

    async def restart(self) -> None:
        """Stop, then start again with the same arguments (same state and audit dirs)."""
        self.stop()
        self.proc = _popen(self.argv, self.home / "router.log", self.source)
        await self.wait_serving()

    async def wait_serving(
        self, timeout: float = 60, credentials: grpc.ChannelCredentials | None = None
    ) -> None:
        """Until the router reports SERVING (over TLS with ``credentials`` if given)."""
        deadline = time.monotonic() + timeout
        channel = (
            grpc.aio.secure_channel(self.address, credentials)
            if credentials is not None
            else grpc.aio.insecure_channel(self.address)
        )
        async with channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise RuntimeError(f"router {self.name} exited: {self.log()}")
                with contextlib.suppress(grpc.RpcError):
                    resp = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if resp.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                await asyncio.sleep(0.1)
        raise RuntimeError(f"router {self.name} not serving after {timeout} s: {self.log()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        _stop(self.proc, sig)


@dataclass
class Fleet:
    """Clusters per region (primary first) plus one router, under ``home``."""

    home: Path
    regions: dict[str, tuple[str, list[Cluster]]]  # region -> (zone, clusters)
    countries: dict[str, list[str]]  # zone -> countries
    extra: dict[str, Any] = field(default_factory=dict)
    replicas: list[Replica] = field(default_factory=list)
    router: Replica | None = None

    @classmethod
    def create(
        cls,
        home: Path,
        layout: dict[str, tuple[str, int]],
        countries: dict[str, list[str]],
        **extra: Any,
    ) -> Fleet:
        """``layout``: region -> (zone, number of clusters)."""
        regions = {
            region: (zone, [
                Cluster(f"{region}-{chr(97 + i)}", free_port(), (region,), home / "logs")
                for i in range(n)
            ])
            for region, (zone, n) in layout.items()
        }  # fmt: skip
        return cls(home, regions, countries, extra)

    @property
    def address(self) -> str:
        assert self.router is not None, "start() the fleet first"
        return self.router.address

    @property
    def config_path(self) -> Path:
        return self.home / "config.yaml"

    @property
    def keys_dir(self) -> Path:
        return self.home / "keys"

    def cluster(self, name: str) -> Cluster:
        return next(c for _, cs in self.regions.values() for c in cs if c.name == name)

    def clusters(self) -> Iterator[Cluster]:
        for _, cs in self.regions.values():
            yield from cs

    def write_config(self) -> None:
        doc: dict[str, Any] = {
            "zones": {
                zone: {
                    "countries": countries,
                    "home_region": next(r for r, (z, _) in self.regions.items() if z == zone),
                }
                for zone, countries in self.countries.items()
            },
            "regions": {
                region: {
                    "zone": zone,
                    "clusters": [{"name": c.name, "endpoint": c.endpoint} for c in cs],
                }
                for region, (zone, cs) in self.regions.items()
            },
            "default_region": self.extra.get("default_region", next(iter(self.regions))),
            # Drills and benchmarks talk plaintext to the router, so they say so;
            # ``extra`` may give an auth section (and server.tls) instead.
            "auth": {"enabled": False},
            **{k: v for k, v in self.extra.items() if k != "default_region"},
        }
        self.home.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(doc, sort_keys=False))
        provider = FileKeyProvider(self.keys_dir)
        for region in self.regions:
            if not provider.path(region).exists():
                provider.save(new_ring(region))

    async def start(self) -> None:
        """The clusters, and one router (``self.router``) in front of them."""
        await self.start_clusters()
        self.router = self.replica("router")
        self.router.start(self.config_path, self.keys_dir, [])
        await self.router.wait_serving()

    async def start_clusters(self) -> None:
        self.write_config()
        for c in self.clusters():
            c.start()
        await asyncio.gather(*(c.wait_ready() for c in self.clusters()))

    def replica(self, name: str) -> Replica:
        """A router replica of this fleet (not started); ``stop`` stops it too."""
        r = Replica(name, self.home / name)
        self.replicas.append(r)
        return r

    def stop(self) -> None:
        for r in self.replicas:
            r.stop()
        for c in self.clusters():
            c.terminate()


@dataclass
class Outcome:
    sent: float
    done: float
    cluster: str = ""
    code: grpc.StatusCode | None = None
    details: str = ""
    workflow_id: str = ""


async def start_stream(
    router: Any,
    make_request: Callable[[], Any],
    seconds: float,
    fault_at: float,
    fault: Callable[[], None],
    *,
    every: float = 0.025,
) -> tuple[float, list[Outcome]]:
    """A steady stream of starts (one every ``every`` s, each its own task so a hung
    call never holds the stream) for ``seconds``; ``fault()`` runs ``fault_at`` s in.
    Returns the monotonic time of the fault and every outcome, by send time."""
    outcomes: list[Outcome] = []
    tasks = []

    async def one() -> None:
        req = make_request()
        o = Outcome(sent=time.monotonic(), done=0.0, workflow_id=req.workflow_id)
        try:
            resp = await router.StartWorkflow(req, timeout=10)
            o.cluster = resp.decision.cluster
        except grpc.aio.AioRpcError as exc:
            o.code, o.details = exc.code(), exc.details() or ""
        o.done = time.monotonic()
        outcomes.append(o)

    t0 = time.monotonic()
    t_fault = 0.0
    while time.monotonic() - t0 < seconds:
        if not t_fault and time.monotonic() - t0 >= fault_at:
            t_fault = time.monotonic()
            fault()
        tasks.append(asyncio.create_task(one()))
        await asyncio.sleep(every)
    await asyncio.gather(*tasks)
    return t_fault, sorted(outcomes, key=lambda o: o.sent)


@dataclass
class RegionWorker:
    """A regional worker process (``meridian worker``) for one cluster of a fleet, with
    its own store directory; killed, restarted and measured by PID."""

    region: str
    cluster: str
    config: Path
    keys: Path
    data_dir: Path
    source_roots: tuple[Path, ...] = ()
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"worker-{self.cluster}.log"

    def start(self) -> None:
        argv = [
            sys.executable, "-m", "router.cli", "worker", "--config", str(self.config),
            "--keys-dir", str(self.keys), "--region", self.region, "--cluster", self.cluster,
            "--data-dir", str(self.data_dir),
        ]  # fmt: skip
        for root in self.source_roots:
            argv += ["--source-root", str(root)]
        self.proc = _popen(argv, self.log_path)

    async def wait_polling(self, endpoint: str, namespace: str, task_queue: str) -> None:
        """Until the cluster reports a poller on ``task_queue`` (asked of the cluster)."""
        from temporalio.api.enums.v1 import TaskQueueType
        from temporalio.api.taskqueue.v1 import TaskQueue
        from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

        service = await ServiceClient.connect(ConnectConfig(target_host=endpoint, lazy=True))
        req = DescribeTaskQueueRequest(
            namespace=namespace,
            task_queue=TaskQueue(name=task_queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited: {self.log_path.read_text(errors='replace')}")
            with contextlib.suppress(Exception):
                resp = await service.workflow_service.describe_task_queue(
                    req, retry=False, timeout=timedelta(seconds=1)
                )
                if resp.pollers:
                    return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"worker for {self.cluster} not polling {task_queue} after 60 s")

    def peak_rss_bytes(self) -> int:
        """The process's peak resident set (VmHWM), read while it still runs."""
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmHWM in /proc/<pid>/status")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        _stop(self.proc)


TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (the kernel's accounting)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def children(pid: int) -> list[int]:
    """The direct children of a process (every thread's, from /proc)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


def otlp_collector(port: int, logs: Path) -> subprocess.Popen[bytes]:
    """The in-test OTLP collector (``tests/otlp_collector.py``) in a process of its own,
    on ``port``: the sink benchmarks ship audit records to. Stop it with ``_stop``."""
    proc = _popen([sys.executable, "-m", "tests.otlp_collector", "--port", str(port)], logs)
    deadline = time.monotonic() + 10
    while port_free("127.0.0.1", port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the OTLP collector did not start on {port}: see {logs}")
        time.sleep(0.02)
    return proc
