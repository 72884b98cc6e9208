"""Integration fixtures: the real stack, started the way the README starts it.

One `meridian dev` per test session (six real `temporal server start-dev` clusters, six
regional workers, the router), on free loopback ports; stopped with SIGTERM at the end,
and every child PID it reported is checked gone (and killed by PID if not).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.workflowservice.v1 import DescribeWorkflowExecutionRequest
from temporalio.client import Client
from temporalio.converter import DataConverter
from temporalio.service import RPCError, RPCStatusCode

from router.codec import FileKeyProvider, KeyRingHolder, RegionCodec, data_converter
from router.config import ResolvedConfig, load_file
from router.config.sources import ConfigSources
from router.tls import channel_credentials
from router.v1 import router_pb2_grpc as pb_grpc
from tests.helpers import default_doc, free_port, with_free_ports, write_config
from tests.otlp_collector import Collector

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class DevProcess:
    proc: subprocess.Popen[bytes]
    home: Path
    router: str
    config: ResolvedConfig
    log: Path
    # The router's HTTP port: status page, /metrics, /healthz, /readyz.
    http: str = ""

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def child_pids(self) -> dict[str, int]:
        path = self.home / "children.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def served_config(self) -> ResolvedConfig:
        """What the router serves: the topology file and the overlay `meridian dev`
        writes over it (the router's TLS files)."""
        files = [self.home / "config.yaml", self.home / "dev-overlay.yaml"]
        return ConfigSources.read(files, use_env=False).resolve()

    def credentials(self, identity: str = "service") -> grpc.ChannelCredentials:
        """mTLS as one of the dev stack's identities (service, acme, sre)."""
        tls = self.home / "tls"
        return channel_credentials(
            tls / "ca.pem", tls / f"{identity}.pem", tls / f"{identity}-key.pem"
        )

    def channel(self, identity: str = "service") -> grpc.aio.Channel:
        return grpc.aio.secure_channel(self.router, self.credentials(identity))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purpose.
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"
    return True


def start_dev(
    home: Path,
    doc: dict[str, Any],
    *,
    port: int | None = None,
    env: dict[str, str] | None = None,
    args: Sequence[str] = (),
) -> DevProcess:
    home.mkdir(parents=True, exist_ok=True)
    cfg = write_config(home / "config.yaml", doc)
    port = port or free_port()
    http_port = free_port()
    log = home / "dev.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "router.cli",
                "dev",
                "--config",
                str(cfg),
                "--port",
                str(port),
                "--http-port",
                str(http_port),
                "--home",
                str(home),
                *args,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    return DevProcess(
        proc, home, f"127.0.0.1:{port}", load_file(cfg), log, f"http://127.0.0.1:{http_port}"
    )


def wait_serving(dev: DevProcess, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    tls = dev.home / "tls"
    while not (tls / "service-key.pem").exists() and time.monotonic() < deadline:
        if dev.proc.poll() is not None:
            raise AssertionError(f"meridian dev exited with {dev.proc.returncode}:\n{dev.output()}")
        time.sleep(0.2)
    with grpc.secure_channel(dev.router, dev.credentials()) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if dev.proc.poll() is not None:
                raise AssertionError(
                    f"meridian dev exited with {dev.proc.returncode}:\n{dev.output()}"
                )
            with contextlib.suppress(grpc.RpcError):
                resp = stub.Check(
                    health_pb2.HealthCheckRequest(service="meridian.router.v1.WorkflowRouter"),
                    timeout=1,
                )
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            time.sleep(0.2)
    raise AssertionError(f"router not SERVING after {timeout} s:\n{dev.output()}")


def stop_dev(dev: DevProcess, sig: int = signal.SIGTERM, timeout: float = 60.0) -> list[str]:
    """Stop meridian dev with ``sig``; return the children it left alive (then kill them)."""
    pids = dev.child_pids()
    if dev.proc.poll() is None:
        dev.proc.send_signal(sig)
        try:
            dev.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            dev.proc.kill()
            dev.proc.wait()
    leaked = [name for name, pid in pids.items() if pid_alive(pid)]
    for name in leaked:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pids[name], signal.SIGKILL)
    return leaked


@contextlib.contextmanager
def serving(process: DevProcess) -> Iterator[DevProcess]:
    """``process`` once its router is SERVING; then stopped with SIGTERM, checked to exit
    cleanly and to leave none of its children running."""
    try:
        wait_serving(process)
        yield process
    finally:
        leaked = stop_dev(process)
    assert process.proc.returncode == 0, process.output()
    assert not leaked, f"meridian dev left children running: {leaked}"


@pytest.fixture(scope="session")
def collector() -> Iterator[Collector]:
    c = Collector()
    c.start(free_port())
    yield c
    c.stop()


@pytest.fixture(scope="session")
def dev(tmp_path_factory: pytest.TempPathFactory, collector: Collector) -> Iterator[DevProcess]:
    tracing = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    process = start_dev(
        tmp_path_factory.mktemp("stack"), with_free_ports(default_doc()), env=tracing
    )
    with serving(process):
        yield process


@pytest.fixture(scope="session")
async def router(dev: DevProcess) -> AsyncIterator[pb_grpc.WorkflowRouterStub]:
    """The router as the dev stack's ``service`` identity (every tenant, no admin)."""
    async with dev.channel("service") as channel:
        yield pb_grpc.WorkflowRouterStub(channel)


@pytest.fixture(scope="session")
async def admin(dev: DevProcess) -> AsyncIterator[pb_grpc.RoutingAdminStub]:
    """RoutingAdmin as the dev stack's ``sre`` identity."""
    async with dev.channel("sre") as channel:
        yield pb_grpc.RoutingAdminStub(channel)


class Clusters:
    """Direct temporalio clients to each cluster: the source of truth in assertions.

    ``client`` decodes with the region's keys (as the region's own tools would);
    ``raw`` has no codec, to read what Temporal actually stores.
    """

    def __init__(self, config: ResolvedConfig, keys_dir: Path) -> None:
        self.config = config
        self.keys = FileKeyProvider(keys_dir)
        self._holders: dict[str, KeyRingHolder] = {}
        self._clients: dict[tuple[str, bool], Client] = {}

    def holder(self, region: str) -> KeyRingHolder:
        """The region's ring, re-read on each use: tests rotate keys mid-session."""
        if region not in self._holders:
            self._holders[region] = KeyRingHolder(self.keys, region)
        self._holders[region].refresh()
        return self._holders[region]

    async def _connect(self, cluster: str, *, codec: bool) -> Client:
        if (cluster, codec) not in self._clients:
            spec = self.config.table.clusters[cluster]
            converter = (
                data_converter(RegionCodec(self.holder(spec.region)))
                if codec
                else DataConverter.default
            )
            self._clients[(cluster, codec)] = await Client.connect(
                spec.endpoint, namespace=spec.namespaces[0], data_converter=converter
            )
        return self._clients[(cluster, codec)]

    async def client(self, cluster: str) -> Client:
        self.holder(self.config.table.clusters[cluster].region)
        return await self._connect(cluster, codec=True)

    async def raw(self, cluster: str) -> Client:
        return await self._connect(cluster, codec=False)

    async def holding(self, workflow_id: str) -> set[str]:
        """Names of the clusters on which ``workflow_id`` exists, in any namespace the
        cluster serves (a workflow in a second namespace is found too). A cluster that
        does not answer fails the call: an empty set always means "asked, not there"."""
        found = set()
        for name, spec in self.config.table.clusters.items():
            client = await self.raw(name)
            for ns in spec.namespaces:
                service = client.workflow_service
                req = DescribeWorkflowExecutionRequest(
                    namespace=ns, execution=WorkflowExecution(workflow_id=workflow_id)
                )
                try:
                    await service.describe_workflow_execution(req, timeout=timedelta(seconds=5))
                except RPCError as exc:
                    if exc.status != RPCStatusCode.NOT_FOUND:
                        raise
                else:
                    found.add(name)
        return found


@pytest.fixture(scope="session")
def clusters(dev: DevProcess) -> Clusters:
    return Clusters(dev.config, dev.home / "keys")
