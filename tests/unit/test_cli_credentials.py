"""How client commands pick their credentials (router.cli.common.client_credentials),
without a server; then `meridian status` against a real grpc.aio server with mutual TLS
that checks who the caller is."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from router import tls
from router.cli import build_parser, main
from router.cli.common import Credentials, client_credentials
from router.errors import MeridianError
from router.v1 import router_pb2 as pb
from router.v1 import router_pb2_grpc as pb_grpc
from tests.helpers import free_port

# The least each client command needs to parse, and the dev identity it uses by default.
COMMANDS = {
    "status": ([], "sre"),
    "failover": (["--region", "eu-west", "--to", "eu-west-b", "--reason", "drill"], "sre"),
    "explain": (["--tenant", "acme", "--country", "DE", "--class", "pii"], "service"),
    "start": (["--tenant", "acme", "--country", "DE", "--class", "pii"], "service"),
    "query": (["--tenant", "acme", "--id", "w", "--name", "getProgress"], "service"),
    "result": (["--tenant", "acme", "--id", "w"], "service"),
}


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory whose ./.meridian is $MERIDIAN_HOME's default (nothing in it)."""
    monkeypatch.chdir(tmp_path)
    for name in ("MERIDIAN_HOME", "MERIDIAN_KEYS_DIR", "MERIDIAN_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / ".meridian"


@pytest.fixture
def dev_home(home: Path) -> Path:
    tls.ensure_dev_pki(home / "tls")
    return home


def chosen(command: str, *flags: str) -> Credentials:
    needed, _ = COMMANDS[command]
    return client_credentials(build_parser().parse_args([command, *needed, *flags]))


@pytest.mark.parametrize("command", list(COMMANDS))
def test_each_command_uses_the_dev_stack_with_its_default_identity(
    dev_home: Path, command: str
) -> None:
    tls_dir = dev_home / "tls"
    identity = COMMANDS[command][1]
    creds = chosen(command)
    assert not creds.plaintext
    assert (creds.ca, creds.cert, creds.key) == (
        tls_dir / "ca.pem", tls_dir / f"{identity}.pem", tls_dir / f"{identity}-key.pem"
    )  # fmt: skip
    assert creds.token is None
    assert creds.source == f"TLS as dev identity {identity!r} from .meridian/tls"


@pytest.mark.parametrize("command", list(COMMANDS))
def test_without_a_dev_ca_each_command_is_plaintext(home: Path, command: str) -> None:
    creds = chosen(command)
    assert creds.plaintext and creds.source.startswith(
        "plaintext (no dev CA at .meridian/tls/ca.pem: run where `meridian dev` runs, or set "
        "MERIDIAN_HOME"
    )
    assert chosen(command, "--insecure").plaintext


def test_flags_override_discovery(dev_home: Path, tmp_path: Path) -> None:
    tls_dir = dev_home / "tls"
    mine = tmp_path / "mine"
    explicit = ["--tls-ca", str(mine / "ca.pem"), "--tls-cert", str(mine / "c.pem"),
                "--tls-key", str(mine / "k.pem")]  # fmt: skip
    creds = chosen("status", *explicit)
    assert (creds.ca, creds.cert, creds.key) == (mine / "ca.pem", mine / "c.pem", mine / "k.pem")
    creds = chosen("status", "--tls-ca", str(mine / "ca.pem"))
    assert (creds.ca, creds.cert, creds.key) == (mine / "ca.pem", None, None)
    creds = chosen("start", "--identity", "acme")
    assert (creds.ca, creds.cert, creds.key) == (
        tls_dir / "ca.pem", tls_dir / "acme.pem", tls_dir / "acme-key.pem"
    )  # fmt: skip
    creds = chosen("status", "--identity", "acme", "--tls-ca", str(mine / "ca.pem"))
    assert (creds.ca, creds.cert) == (mine / "ca.pem", tls_dir / "acme.pem")
    insecure = chosen("failover", "--insecure")
    assert insecure.plaintext and insecure.source == "plaintext (--insecure)"


def test_a_token_rides_along_and_never_shows(dev_home: Path, home: Path, tmp_path: Path) -> None:
    token = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhY21lIn0.c2ln"
    creds = chosen("start", "--token", token)
    assert creds.token == token and creds.cert == dev_home / "tls" / "service.pem"
    assert token not in repr(creds) and token not in creds.source
    file = tmp_path / "token"
    file.write_text(token + "\n")
    file.chmod(0o600)
    assert chosen("status", "--token", f"@{file}").token == token
    file.chmod(0o644)
    with pytest.raises(MeridianError, match="chmod 600"):
        chosen("status", "--token", f"@{file}")


def test_a_token_without_a_dev_ca_goes_over_tls_with_the_system_cas(home: Path) -> None:
    creds = chosen("start", "--token", "abc.def.ghi")
    assert not creds.plaintext and (creds.ca, creds.cert, creds.key) == (None, None, None)
    assert (
        creds.source == "TLS trusting the system's CAs, no client certificate with a bearer token"
    )


IDENTITY_AND_CERT = "--identity and --tls-cert/--tls-key both name the client certificate"
PLAINTEXT = "--insecure is plaintext: it cannot go with"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        pytest.param(["--tls-cert", "c.pem"], "--tls-cert needs --tls-key", id="cert-no-key"),
        pytest.param(["--tls-key", "k.pem"], "--tls-key needs --tls-cert", id="key-no-cert"),
        pytest.param(
            ["--identity", "bob"],
            "no dev identity 'bob' under .meridian/tls (have: acme, service, sre)",
            id="unknown-identity",
        ),
        pytest.param(
            ["--identity", "../tls/ca"], "no dev identity '../tls/ca' under", id="identity-path"
        ),
        pytest.param(
            ["--identity", "sre", "--tls-cert", "c", "--tls-key", "k"],
            IDENTITY_AND_CERT,
            id="identity-and-cert",
        ),
        pytest.param(["--insecure", "--identity", "sre"], f"{PLAINTEXT} --identity", id="i-id"),
        pytest.param(["--insecure", "--token", "abc"], f"{PLAINTEXT} --token", id="i-token"),
        pytest.param(
            ["--token", "a b\r\nx-admin: 1"], "--token: not a bearer token", id="token-injection"
        ),
    ],
)
def test_mistakes_are_one_clear_message(
    dev_home: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    assert main(["status", *flags]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"meridian: {message}"), err
    assert "x-admin" not in err, "a token is never echoed"


def test_no_dev_pki_says_how_to_make_one(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--identity", "sre"]) == 1
    assert capsys.readouterr().err == (
        "meridian: no dev identity 'sre' under .meridian/tls (have: none; "
        "`meridian keys init` or `meridian dev` creates them)\n"
    )


def test_keys_init_creates_the_dev_pki_under_meridian_home(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "init", "--keys-dir", str(home / "keys")]) == 0
    assert (home / "tls" / "ca.pem").is_file() and (home / "tls" / "sre-key.pem").is_file()
    assert "dev TLS sre-key.pem" in capsys.readouterr().out
    assert chosen("status").cert == home / "tls" / "sre.pem"


# --- against a real server ------------------------------------------------------------------


@dataclass
class Admin(pb_grpc.RoutingAdminServicer):
    """GetTopology for the dev identity 'sre' only, as the router's authorization will."""

    calls: list[tuple[str | None, str | None]] = field(default_factory=list)

    async def GetTopology(self, request: Any, context: Any) -> Any:
        pem = context.auth_context().get("x509_pem_cert", [None])[0]
        who = tls.identity_of(pem) if pem else None
        bearer = dict(context.invocation_metadata()).get("authorization")
        self.calls.append((who, bearer))
        if who != tls.spiffe_id("sre"):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{who} may not read topology")
        return pb.Topology(config_version="v-tls", default_region="eu-west", config_source="t")

    async def SetActiveCluster(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in this test")


@contextlib.contextmanager
def admin_server(tls_dir: Path) -> Iterator[tuple[str, Admin]]:
    """A grpc.aio server with mutual TLS on its own thread and loop (the CLI under test
    is synchronous and runs on this one)."""
    admin, port = Admin(), free_port()
    ready, loop_box = threading.Event(), []

    async def serve() -> None:
        server = grpc.aio.server()
        pb_grpc.add_RoutingAdminServicer_to_server(admin, server)
        creds = tls.server_credentials(tls_dir / "server.pem", tls_dir / "server-key.pem",
                                       tls_dir / "ca.pem", require_client_cert=True)  # fmt: skip
        server.add_secure_port(f"127.0.0.1:{port}", creds)
        await server.start()
        stop = asyncio.Event()
        loop_box.append((asyncio.get_running_loop(), stop))
        ready.set()
        await stop.wait()
        await server.stop(None)

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(10), "server did not start"
    try:
        yield f"127.0.0.1:{port}", admin
    finally:
        loop, stop = loop_box[0]
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)


def test_status_connects_as_the_discovered_sre_identity(
    dev_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sre = tls.spiffe_id("sre")
    with admin_server(dev_home / "tls") as (address, admin):
        assert main(["status", "--router", address, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["config_version"] == "v-tls"
        assert admin.calls == [(sre, None)]

        assert main(["status", "--router", address, "--token", "abc.def", "--json"]) == 0
        assert admin.calls[-1] == (sre, "Bearer abc.def")

        assert main(["status", "--router", address, "--identity", "acme"]) == 1
        assert capsys.readouterr().err == (
            f"meridian: router {address}: PERMISSION_DENIED: "
            "spiffe://meridian.local/acme may not read topology\n"
        )
        calls = len(admin.calls)
        assert main(["status", "--router", address, "--insecure", "--timeout", "2"]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"meridian: router {address}: UNAVAILABLE: failed to connect")
        assert "[client: plaintext (--insecure)]; if the router is running, it may serve TLS" in err
        assert len(admin.calls) == calls, "a plaintext client never reaches the service"
