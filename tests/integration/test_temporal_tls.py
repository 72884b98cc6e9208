"""TLS to Temporal, end to end: a real TLS endpoint in front of a real dev server.

The dev server speaks plaintext only, so Debian's nginx terminates TLS in front of it
(``grpc_pass``), with three listeners: server TLS only, mutual TLS (a client certificate
of the test CA required) and TLS plus an API key (``Authorization: Bearer ...`` required).
One router (``meridian serve``) has one region with one cluster; each test points that
cluster at a listener with a ``tls`` section (config file + SIGHUP, as an operator would)
and checks the effect at the source: a direct plaintext client to the dev server's own
port describes the workflow (its input is ciphertext), or finds nothing at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from temporalio.client import Client

from benchmarks.fleet import Cluster, Replica, free_port
from router.codec import FileKeyProvider, KeyRingHolder, RegionCodec, data_converter, new_ring
from router.config import load_file
from router.devstack import die_with_parent
from router.v1 import router_pb2 as pb
from router.v1 import router_pb2_grpc as pb_grpc
from tests.helpers import eventually, workflow_exists
from tests.integration.test_routing import start_req
from tests.tls_certs import Pki, make_pki

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

REGION = NAMESPACE = "eu-west"
CLUSTER = "eu-west-a"
API_KEY = f"api-key-{uuid.uuid4().hex}"  # what the API-key listener wants
API_KEY_ENV = "MERIDIAN_TEST_TEMPORAL_API_KEY"


def nginx_binary() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        pytest.fail(
            "nginx is not installed: scripts/test installs it (apt-get install nginx-light)"
        )
    return found


def nginx_version(binary: str) -> tuple[int, ...]:
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, check=True).stderr
    match = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out)
    assert match, out
    return tuple(int(g) for g in match.groups())


@dataclass
class Nginx:
    """nginx as a TLS terminator in front of one plaintext gRPC upstream, ours by PID."""

    home: Path
    upstream: str
    pki: Pki
    tls_port: int
    mtls_port: int
    key_port: int
    proc: subprocess.Popen[bytes] | None = None

    def access_log(self, name: str) -> str:
        path = self.home / f"{name}.access.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def error_log(self) -> str:
        path = self.home / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def config(self, version: tuple[int, ...]) -> str:
        tmp = self.home / "tmp"

        def listen(port: int) -> str:
            # `http2 on;` exists from 1.25.1; older versions take it on `listen`.
            if version >= (1, 25, 1):
                return f"listen 127.0.0.1:{port} ssl; http2 on;"
            return f"listen 127.0.0.1:{port} ssl http2;"

        def server(name: str, port: int, extra: str = "", check: str = "") -> str:
            return f"""
  server {{
    {listen(port)}
    ssl_certificate {self.pki.server_cert};
    ssl_certificate_key {self.pki.server_key};
    access_log {self.home / f"{name}.access.log"} meridian;
    {extra}
    location / {{ {check} grpc_pass grpc://{self.upstream}; }}
  }}"""

        return f"""
pid {self.home / "nginx.pid"};
error_log {self.home / "error.log"} info;
worker_processes 1;
events {{ worker_connections 128; }}
http {{
  client_body_temp_path {tmp / "body"};
  proxy_temp_path {tmp / "proxy"};
  fastcgi_temp_path {tmp / "fastcgi"};
  uwsgi_temp_path {tmp / "uwsgi"};
  scgi_temp_path {tmp / "scgi"};
  log_format meridian '$request_method $uri $status client_dn="$ssl_client_s_dn"';
  {server("tls", self.tls_port)}
  {server("mtls", self.mtls_port,
          f"ssl_client_certificate {self.pki.ca}; ssl_verify_client on;")}
  {server("key", self.key_port,
          check=f'if ($http_authorization != "Bearer {API_KEY}") {{ return 401; }}')}
}}
"""  # fmt: skip

    def start(self) -> None:
        binary = nginx_binary()
        (self.home / "tmp").mkdir(parents=True, exist_ok=True)
        conf = self.home / "nginx.conf"
        conf.write_text(self.config(nginx_version(binary)))
        argv = [binary, "-p", str(self.home), "-e", str(self.home / "error.log"),
                "-c", str(conf), "-g", "daemon off;"]  # fmt: skip
        with open(self.home / "nginx.out", "ab") as out:
            self.proc = subprocess.Popen(
                die_with_parent(argv), stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip

    async def wait_ready(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        for port in (self.tls_port, self.mtls_port, self.key_port):
            while True:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise AssertionError(f"nginx exited: {self.error_log()}")
                with contextlib.suppress(OSError):
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.close()
                    break
                assert time.monotonic() < deadline, f"nginx not listening: {self.error_log()}"
                await asyncio.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM to the master by PID (it stops its worker), SIGKILL if it lingers;
        then any worker left behind, by PID too."""
        if self.proc is None:
            return
        workers = _children(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


@dataclass
class Stack:
    home: Path
    pki: Pki
    dev: Cluster
    nginx: Nginx
    router: Replica
    router_stub: pb_grpc.WorkflowRouterStub
    admin: pb_grpc.RoutingAdminStub
    config_path: Path
    keys_dir: Path

    def write(self, endpoint: str, tls: dict[str, Any] | None, path: Path | None = None) -> str:
        """The router's config (or another file) with the cluster at ``endpoint``;
        returns its version."""
        cluster: dict[str, Any] = {"name": CLUSTER, "endpoint": endpoint}
        if tls is not None:
            cluster["tls"] = {k: str(v) for k, v in tls.items()}
        doc = {
            "zones": {"eu": {"countries": ["DE", "FR"], "home_region": REGION}},
            "regions": {REGION: {"zone": "eu", "clusters": [cluster]}},
            "default_region": REGION,
            # Quick probes: each test waits for a health change.
            "health": {"interval_ms": 200, "failure_interval_ms": 50},
            # The router's own port is not what this file tests: plaintext, said so.
            "auth": {"enabled": False},
        }
        path = path or self.config_path
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return load_file(path).version

    async def apply(self, endpoint: str, tls: dict[str, Any] | None) -> None:
        """Rewrite the config and SIGHUP the router; return once it serves that version."""
        version = self.write(endpoint, tls)
        os.kill(self.router.pid, signal.SIGHUP)

        async def applied() -> bool:
            topo = await self.admin.GetTopology(pb.GetTopologyRequest(), timeout=5)
            return bool(topo.config_version == version)

        await eventually(applied, what=f"config {version} applied")

    async def cluster(self) -> pb.Cluster:
        topo = await self.admin.GetTopology(pb.GetTopologyRequest(), timeout=5)
        cluster: pb.Cluster = next(c for r in topo.regions for c in r.clusters if c.name == CLUSTER)
        return cluster

    async def wait_health(self, healthy: bool, last_error: str = "") -> None:
        async def reached() -> bool:
            c = await self.cluster()
            return c.healthy == healthy and c.last_error == last_error

        try:
            await eventually(reached, what=f"{CLUSTER} healthy={healthy}", timeout=15)
        except AssertionError:
            c = await self.cluster()
            raise AssertionError(
                f"{CLUSTER}: healthy={c.healthy} last_error={c.last_error!r}\n{self.router.log()}"
            ) from None

    async def on_dev_server(self, workflow_id: str) -> bool:
        """Asked of the dev server itself, on its plaintext port (not through nginx)."""
        return await workflow_exists(self.dev.endpoint, NAMESPACE, workflow_id)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def api_key_env() -> Iterator[None]:
    """The API key in the router's environment (``meridian serve`` inherits ours)."""
    before = os.environ.get(API_KEY_ENV)
    os.environ[API_KEY_ENV] = API_KEY
    try:
        yield
    finally:
        if before is None:
            del os.environ[API_KEY_ENV]
        else:
            os.environ[API_KEY_ENV] = before


@pytest.fixture(scope="module")
async def stack(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, api_key_env: None
) -> AsyncIterator[Stack]:
    home = tmp_path_factory.mktemp("tls-stack")
    dev = Cluster("dev", free_port(), (NAMESPACE,), home / "logs")
    nginx = Nginx(home / "nginx", dev.endpoint, pki, free_port(), free_port(), free_port())
    router = Replica("router", home / "router")
    try:
        dev.start()
        nginx.start()
        await asyncio.gather(dev.wait_ready(), nginx.wait_ready())
        FileKeyProvider(home / "keys").save(new_ring(REGION))
        async with grpc.aio.insecure_channel(router.address) as channel:
            s = Stack(
                home, pki, dev, nginx, router, pb_grpc.WorkflowRouterStub(channel),
                pb_grpc.RoutingAdminStub(channel), home / "config.yaml", home / "keys",
            )  # fmt: skip
            s.write(f"127.0.0.1:{nginx.tls_port}", {"ca_file": pki.ca})
            router.start(s.config_path, s.keys_dir, [])
            await router.wait_serving()
            yield s
    finally:
        router.stop()
        nginx.stop()
        dev.terminate()


async def start_and_check_at_the_source(stack: Stack, listener: str) -> None:
    marker = f"tls-marker-{uuid.uuid4().hex}"
    req = start_req("DE", args=[marker])
    resp = await stack.router_stub.StartWorkflow(req, timeout=10)
    assert (resp.decision.cluster, resp.started) == (CLUSTER, True)

    # The dev server has it, and stores only ciphertext of the input.
    client = await Client.connect(stack.dev.endpoint, namespace=NAMESPACE)
    handle = client.get_workflow_handle(req.workflow_id)
    assert (await handle.describe()).run_id == resp.run_id
    history = await handle.fetch_history()
    start = history.events[0].workflow_execution_started_event_attributes
    (payload,) = start.input.payloads
    assert payload.metadata["encoding"] == b"binary/encrypted"
    assert marker.encode() not in payload.data
    region = data_converter(RegionCodec(KeyRingHolder(FileKeyProvider(stack.keys_dir), REGION)))
    assert await region.decode([payload]) == [marker]

    # And it travelled through that nginx listener (TLS), not around it.
    assert "POST /temporal.api.workflowservice.v1.WorkflowService/StartWorkflowExecution 200" in (
        stack.nginx.access_log(listener)
    )


async def test_start_through_a_tls_endpoint_lands_on_the_cluster(stack: Stack) -> None:
    await stack.apply(f"127.0.0.1:{stack.nginx.tls_port}", {"ca_file": stack.pki.ca})
    await stack.wait_health(True)
    await start_and_check_at_the_source(stack, "tls")

    # server_name: the name verified (and sent as SNI) instead of the endpoint's host.
    tls = {"ca_file": stack.pki.ca, "server_name": "localhost"}
    await stack.apply(f"127.0.0.1:{stack.nginx.tls_port}", tls)
    await stack.wait_health(True)
    await start_and_check_at_the_source(stack, "tls")


async def test_mutual_tls_with_the_client_certificate(stack: Stack) -> None:
    tls = {
        "ca_file": stack.pki.ca,
        "cert_file": stack.pki.client_cert,
        "key_file": stack.pki.client_key,
    }
    await stack.apply(f"127.0.0.1:{stack.nginx.mtls_port}", tls)
    await stack.wait_health(True)
    await start_and_check_at_the_source(stack, "mtls")
    # nginx verified the router's certificate: the subject is in its own log.
    assert 'client_dn="CN=meridian-router"' in stack.nginx.access_log("mtls")


async def test_api_key_from_the_environment_is_sent_and_never_printed(stack: Stack) -> None:
    tls = {"ca_file": stack.pki.ca, "api_key_env": API_KEY_ENV}
    await stack.apply(f"127.0.0.1:{stack.nginx.key_port}", tls)
    await stack.wait_health(True)
    await start_and_check_at_the_source(stack, "key")  # nginx answers 401 without the key
    audit = "".join(p.read_text() for p in stack.router.audit_dir.rglob("*") if p.is_file())
    private_key = stack.pki.client_key.read_text().splitlines()[1]
    for text in (stack.router.log(), audit, stack.config_path.read_text()):
        assert API_KEY not in text
        assert private_key not in text


def worker_argv(stack: Stack, config: Path) -> list[str]:
    return die_with_parent([
        sys.executable, "-m", "router.cli", "worker", "--config", str(config),
        "--region", REGION, "--cluster", CLUSTER, "--keys-dir", str(stack.keys_dir),
    ])  # fmt: skip


def spawn_worker(stack: Stack, config: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            worker_argv(stack, config), stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, cwd=ROOT,
        )  # fmt: skip


def stop(proc: subprocess.Popen[bytes]) -> None:
    """By PID: SIGTERM (a graceful worker shutdown), SIGKILL if it lingers."""
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def test_the_regional_worker_connects_with_the_clusters_tls(
    stack: Stack, tmp_path: Path
) -> None:
    mtls = f"127.0.0.1:{stack.nginx.mtls_port}"
    tls = {"ca_file": stack.pki.ca, "cert_file": stack.pki.client_cert,
           "key_file": stack.pki.client_key}  # fmt: skip
    await stack.apply(mtls, tls)
    await stack.wait_health(True)
    config = tmp_path / "worker.yaml"
    stack.write(mtls, tls, path=config)
    worker = spawn_worker(stack, config, tmp_path / "worker.log")
    try:
        marker = f"worker-marker-{uuid.uuid4().hex}"
        req = start_req("DE", args=[marker])
        await stack.router_stub.StartWorkflow(req, timeout=10)
        ref = pb.WorkflowRef(workflow_id=req.workflow_id, tenant_id="acme")
        result = await stack.router_stub.GetWorkflowResult(ref, timeout=60)
        assert result.status == pb.COMPLETED, (tmp_path / "worker.log").read_text()
        assert result.result.string_value == marker
    finally:
        stop(worker)
    # At the source: completed on the dev server, by a worker that polled through
    # nginx's mutual-TLS listener with the router's client certificate.
    client = await Client.connect(stack.dev.endpoint, namespace=NAMESPACE)
    described = await client.get_workflow_handle(req.workflow_id).describe()
    assert described.status is not None and described.status.name == "COMPLETED"
    polls = [
        line for line in stack.nginx.access_log("mtls").splitlines()
        if "RespondWorkflowTaskCompleted 200" in line
    ]  # fmt: skip
    assert polls and all('client_dn="CN=meridian-router"' in line for line in polls)


async def test_a_worker_that_cannot_trust_the_cluster_stops_at_once(
    stack: Stack, tmp_path: Path
) -> None:
    config = tmp_path / "worker.yaml"
    endpoint = f"127.0.0.1:{stack.nginx.tls_port}"
    stack.write(endpoint, {"ca_file": stack.pki.other_ca}, path=config)
    started = time.monotonic()
    run = await asyncio.to_thread(
        subprocess.run, worker_argv(stack, config), capture_output=True, text=True,
        timeout=60, cwd=ROOT, check=False,
    )  # fmt: skip
    assert run.returncode == 1, run.stderr
    assert (
        f"meridian: worker for {CLUSTER}: cannot connect to {endpoint}: TLS handshake failed: "
        "the server's certificate is not signed by a CA the router trusts; check the "
        "cluster's tls.ca_file"
    ) in run.stderr
    # No waiting out the 30 s the worker gives a cluster that is still starting.
    assert time.monotonic() - started < 20


CHECK_CA = "check the cluster's tls.ca_file"
CHECK_CLIENT = "check the cluster's tls.cert_file and tls.key_file"
CHECK_KEY = "check the cluster's tls.api_key_file or tls.api_key_env"


def failure_cases(pki: Pki, home: Path) -> dict[str, tuple[str, dict[str, Any] | None, str]]:
    """id -> (listener, tls section, the reason the router must give)."""
    wrong_key = home / "wrong-api.key"
    wrong_key.write_text("not-the-key\n")
    wrong_key.chmod(0o600)
    loose_key = home / "loose-client.key"
    loose_key.write_bytes(pki.client_key.read_bytes())
    loose_key.chmod(0o644)
    mtls_400 = (
        "the endpoint answered HTTP 400 Bad Request, as a TLS proxy does to a missing or "
        f"untrusted client certificate; {CHECK_CLIENT}"
    )
    return {
        "wrong-ca": ("tls", {"ca_file": pki.other_ca},
                     "TLS handshake failed: the server's certificate is not signed by a CA "
                     f"the router trusts; {CHECK_CA}"),
        "wrong-server-name": ("tls", {"ca_file": pki.ca, "server_name": "temporal.example.com"},
                              "TLS handshake failed: the server's certificate is not valid for "
                              "temporal.example.com; check the cluster's tls.server_name"),
        "mtls-without-client-cert": ("mtls", {"ca_file": pki.ca}, mtls_400),
        "mtls-with-a-stranger-cert": ("mtls", {"ca_file": pki.ca,
                                               "cert_file": pki.stranger_cert,
                                               "key_file": pki.stranger_key}, mtls_400),
        "key-file-readable-by-others": ("mtls", {"ca_file": pki.ca,
                                                 "cert_file": pki.client_cert,
                                                 "key_file": loose_key},
                                        f"regions.eu-west.clusters[0].tls.key_file {loose_key} "
                                        "is accessible by group/other (mode 0644); refusing to "
                                        f"use it. Fix: chmod 600 {loose_key}"),
        "no-api-key": ("key", {"ca_file": pki.ca},
                       f"the endpoint answered HTTP 401 Unauthorized; {CHECK_KEY}"),
        "wrong-api-key": ("key", {"ca_file": pki.ca, "api_key_file": wrong_key},
                          f"the endpoint answered HTTP 401 Unauthorized; {CHECK_KEY}"),
        "plaintext-to-a-tls-endpoint": ("tls", None,
                                        "the endpoint broke off the connection while "
                                        "connecting, as a TLS endpoint does to a plaintext "
                                        "client; does the cluster need a tls section?"),
        "tls-to-a-plaintext-endpoint": ("dev", {"ca_file": pki.ca},
                                        "TLS handshake failed: the endpoint does not speak TLS"),
    }  # fmt: skip


CASES = [
    "wrong-ca", "wrong-server-name", "mtls-without-client-cert", "mtls-with-a-stranger-cert",
    "key-file-readable-by-others", "no-api-key", "wrong-api-key", "plaintext-to-a-tls-endpoint",
    "tls-to-a-plaintext-endpoint",
]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
async def test_a_tls_problem_fails_clearly_and_sends_nothing(
    stack: Stack, case: str, tmp_path: Path
) -> None:
    listener, tls, reason = failure_cases(stack.pki, tmp_path)[case]
    endpoint = {
        "tls": f"127.0.0.1:{stack.nginx.tls_port}",
        "mtls": f"127.0.0.1:{stack.nginx.mtls_port}",
        "key": f"127.0.0.1:{stack.nginx.key_port}",
        "dev": stack.dev.endpoint,
    }[listener]
    # From a healthy cluster, as a bad change would meet it in production.
    await stack.apply(f"127.0.0.1:{stack.nginx.tls_port}", {"ca_file": stack.pki.ca})
    await stack.wait_health(True)
    sent_before = stack.nginx.access_log(listener).count("StartWorkflowExecution")

    await stack.apply(endpoint, tls)
    # The topology shows the cluster unhealthy, with the reason.
    await stack.wait_health(False, reason)

    req = start_req("DE")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stack.router_stub.StartWorkflow(req, timeout=10)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert f"active cluster {CLUSTER} is not healthy ({reason})" in (info.value.details() or "")

    # Nothing reached the dev server (asked on its own plaintext port), nor nginx's upstream.
    assert not await stack.on_dev_server(req.workflow_id)
    assert stack.nginx.access_log(listener).count("StartWorkflowExecution") == sent_before
