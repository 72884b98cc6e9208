"""The codec server over HTTP (aiohttp's in-process test server): auth, namespaces,
CORS, bad input and size limits, and the protocol's round trip."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from router.audit import AuditLog, auth_failure_record, verify
from router.audit.query import records
from router.codec import RegionCodec, new_ring
from router.codec.server import CodecServer

TOKEN = "t" * 32
AUTH = {"Authorization": f"Bearer {TOKEN}"}
UI = "http://localhost:8233"


def payloads(*texts: str) -> dict[str, Any]:
    return {
        "payloads": [
            {
                "metadata": {"encoding": base64.b64encode(b"json/plain").decode()},
                "data": base64.b64encode(json.dumps(t).encode()).decode(),
            }
            for t in texts
        ]
    }


@pytest.fixture
async def client() -> AsyncIterator[TestClient[Any, Any]]:
    server = CodecServer(
        RegionCodec(new_ring("eu-west")),
        namespaces=frozenset({"eu-west"}),
        tokens=[TOKEN.encode()],
        cors_origins=[UI],
        max_body_bytes=64 * 1024,
    )
    async with TestClient(TestServer(server.app)) as c:
        yield c


async def test_round_trip_header_and_path_forms(client: TestClient[Any, Any]) -> None:
    body = payloads("hello", "world")
    enc = await client.post("/encode", json=body, headers={**AUTH, "X-Namespace": "eu-west"})
    assert enc.status == 200
    sealed = await enc.json()
    assert len(sealed["payloads"]) == 2
    meta = sealed["payloads"][0]["metadata"]
    assert base64.b64decode(meta["encoding"]) == b"binary/encrypted"
    assert b"hello" not in json.dumps(sealed).encode()
    dec = await client.post("/eu-west/decode", json=sealed, headers=AUTH)
    assert dec.status == 200
    assert await dec.json() == body


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-token-wrong-token"}, {"Authorization": TOKEN}],
    ids=["none", "wrong", "no-bearer"],
)
async def test_token_required(client: TestClient[Any, Any], headers: dict[str, str]) -> None:
    resp = await client.post(
        "/decode", json=payloads("x"), headers={**headers, "X-Namespace": "eu-west"}
    )
    assert resp.status == 401
    assert (await resp.json())["error"] == "missing or invalid bearer token"
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")


async def test_namespaces(client: TestClient[Any, Any]) -> None:
    other = await client.post("/us-east/decode", json=payloads("x"), headers=AUTH)
    assert other.status == 403
    assert "not served by the eu-west codec server" in (await other.json())["error"]
    missing = await client.post("/decode", json=payloads("x"), headers=AUTH)
    assert missing.status == 400 and "namespace required" in (await missing.json())["error"]
    clash = await client.post(
        "/eu-west/decode", json=payloads("x"), headers={**AUTH, "X-Namespace": "us-east"}
    )
    assert clash.status == 400 and "differ" in (await clash.json())["error"]


@pytest.fixture
async def audited(tmp_path: Path) -> AsyncIterator[tuple[TestClient[Any, Any], Path]]:
    """The eu-west codec server with its own audit chain, wired as `meridian codec-server`
    wires it."""
    audit = AuditLog(tmp_path / "audit-codec-eu-west")
    audit.open()

    async def auth_failed(remote: str, path: str, why: str) -> None:
        await audit.append(auth_failure_record(
            component="codec-server", region="eu-west", remote=remote, path=path, why=why
        ))  # fmt: skip

    server = CodecServer(
        RegionCodec(new_ring("eu-west")),
        namespaces=frozenset({"eu-west"}),
        tokens=[TOKEN.encode()],
        on_auth_failure=auth_failed,
    )
    try:
        async with TestClient(TestServer(server.app)) as c:
            yield c, audit.directory
    finally:
        await audit.close()


@pytest.mark.parametrize(
    ("path", "namespace_header"),
    [("/us-east/decode", None), ("/encode", "us-east")],
    ids=["path form", "header form"],
)
async def test_wrong_region_namespace_is_audited(
    audited: tuple[TestClient[Any, Any], Path], path: str, namespace_header: str | None
) -> None:
    client, directory = audited
    body = payloads("a-secret-payload")
    headers = {**AUTH, **({"X-Namespace": namespace_header} if namespace_header else {})}
    resp = await client.post(path, json=body, headers=headers)
    assert resp.status == 403
    failures = [r for r in records([directory]) if r["kind"] == "auth.failure"]
    assert len(failures) == 1, failures
    (f,) = failures
    assert (f["component"], f["region"], f["path"], f["why"]) == (
        "codec-server",
        "eu-west",
        path,
        "namespace 'us-east' is not a namespace of region eu-west",
    )
    assert f["remote"] == "127.0.0.1"
    raw = "".join(p.read_text() for p in directory.glob("audit-*.jsonl"))
    assert TOKEN not in raw and body["payloads"][0]["data"] not in raw
    assert verify([directory]).ok


async def test_a_request_for_the_regions_namespace_is_not_audited(
    audited: tuple[TestClient[Any, Any], Path],
) -> None:
    client, directory = audited
    resp = await client.post("/eu-west/encode", json=payloads("x"), headers=AUTH)
    assert resp.status == 200
    assert list(records([directory])) == []
    # The 401 path is audited (the check above can see a record when there is one).
    resp = await client.post("/eu-west/encode", json=payloads("x"))
    assert resp.status == 401
    assert [r["why"] for r in records([directory])] == ["missing bearer token"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "not proto3 JSON Payloads"),
        (b'{"payloads": "nope"}', "not proto3 JSON Payloads"),
        (b'{"payload": []}', "not proto3 JSON Payloads"),
        (b"\xff\xfe", "not proto3 JSON Payloads"),
    ],
    ids=["invalid json", "wrong shape", "unknown field", "not utf-8"],
)
async def test_bad_bodies_are_400_json(
    client: TestClient[Any, Any], body: bytes, fragment: str
) -> None:
    resp = await client.post(
        "/decode",
        data=body,
        headers={**AUTH, "X-Namespace": "eu-west", "Content-Type": "application/json"},
    )
    assert resp.status == 400
    assert fragment in (await resp.json())["error"]


async def test_undecodable_payload_is_400(client: TestClient[Any, Any]) -> None:
    enc = await client.post("/eu-west/encode", json=payloads("secret"), headers=AUTH)
    sealed = await enc.json()
    data = bytearray(base64.b64decode(sealed["payloads"][0]["data"]))
    data[-1] ^= 1
    sealed["payloads"][0]["data"] = base64.b64encode(bytes(data)).decode()
    resp = await client.post("/eu-west/decode", json=sealed, headers=AUTH)
    assert resp.status == 400
    assert "failed authentication" in (await resp.json())["error"]


async def test_other_regions_payload_is_400(client: TestClient[Any, Any]) -> None:
    us = RegionCodec(new_ring("us-east"))
    from google.protobuf import json_format
    from temporalio.api.common.v1 import Payloads

    sealed = await us.encode(json_format.ParseDict(payloads("secret"), Payloads()).payloads)
    body = json_format.MessageToDict(Payloads(payloads=sealed))
    resp = await client.post("/eu-west/decode", json=body, headers=AUTH)
    assert resp.status == 400
    assert "encrypted for region us-east" in (await resp.json())["error"]


async def test_body_cap_is_413_json(client: TestClient[Any, Any]) -> None:
    resp = await client.post("/eu-west/decode", json=payloads("x" * 70_000), headers=AUTH)
    assert resp.status == 413
    assert "limit of 65536 bytes" in (await resp.json())["error"]


async def test_cors_preflight(client: TestClient[Any, Any]) -> None:
    ok = await client.options(
        "/eu-west/decode",
        headers={
            "Origin": UI,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "X-Namespace, Content-Type, Authorization",
        },
    )
    assert ok.status == 200
    assert ok.headers["Access-Control-Allow-Origin"] == UI
    allowed = {h.strip().lower() for h in ok.headers["Access-Control-Allow-Headers"].split(",")}
    assert allowed == {"x-namespace", "content-type", "authorization"}
    assert "POST" in ok.headers["Access-Control-Allow-Methods"]
    evil = await client.options(
        "/eu-west/decode",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert evil.status == 403
    assert "Access-Control-Allow-Origin" not in evil.headers
    # Actual request from the UI origin carries the CORS header too.
    real = await client.post("/eu-west/encode", json=payloads("x"), headers={**AUTH, "Origin": UI})
    assert real.status == 200 and real.headers["Access-Control-Allow-Origin"] == UI


async def test_requests_are_counted_by_status_and_served_at_metrics() -> None:
    """The codec's requests by status (health checks and scrapes not among them), and
    /metrics serving the process's exposition, only when it has one."""
    from prometheus_client import CollectorRegistry

    from router.codec.server import _requests
    from router.metrics import Exposition

    def counted(status: str) -> float:
        return _requests.value("eu-west", status)

    registry = CollectorRegistry()
    before = {s: counted(s) for s in ("200", "401", "403")}
    server = CodecServer(RegionCodec(new_ring("eu-west")), namespaces=frozenset({"eu-west"}),
                         tokens=[TOKEN.encode()], exposition=Exposition(registry))  # fmt: skip
    async with TestClient(TestServer(server.app)) as c:
        assert (await c.post("/eu-west/encode", json=payloads("x"), headers=AUTH)).status == 200
        assert (await c.post("/eu-west/encode", json=payloads("x"))).status == 401
        assert (await c.post("/us-east/encode", json=payloads("x"), headers=AUTH)).status == 403
        assert (await c.post("/us-east/encode", json=payloads("x"), headers=AUTH)).status == 403
        for _ in range(3):
            assert (await c.get("/healthz")).status == 200
        scrape = await c.get("/metrics")
        assert scrape.status == 200 and scrape.content_type == "text/plain"
    after = {s: counted(s) - before[s] for s in before}
    assert after == {"200": 1, "401": 1, "403": 2}, after
    bare = CodecServer(RegionCodec(new_ring("eu-west")), namespaces=frozenset({"eu-west"}),
                       tokens=[TOKEN.encode()])  # fmt: skip
    async with TestClient(TestServer(bare.app)) as c:
        assert (await c.get("/metrics")).status == 404


async def test_health_and_unknown_routes(client: TestClient[Any, Any]) -> None:
    health = await client.get("/healthz")
    assert await health.json() == {"status": "ok", "region": "eu-west"}
    missing = await client.get("/nope")
    assert missing.status == 404 and "error" in await missing.json()
    wrong_method = await client.get("/decode")
    assert wrong_method.status == 405 and "error" in await wrong_method.json()


# -- namespace-scoped JWTs (the Temporal Web UI forwards its user's access token) --------


async def test_a_jwt_decodes_only_the_namespaces_it_grants(tmp_path: Path) -> None:
    """Besides the region's static tokens, a JWT from the configured issuer works, but
    only for namespaces its permissions claim lists; a token scoped to another region's
    namespace is refused here, and a token that does not verify is a 401."""
    import time

    import jwt as pyjwt
    from cryptography.hazmat.primitives.asymmetric import ec

    from router.auth.codec import NamespaceTokens
    from router.auth.jwt import jwks_document
    from router.config.settings import JWTSettings

    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "jwks.json").write_text(jwks_document({"k1": key.public_key()}))
    settings = JWTSettings(
        jwks_file=tmp_path / "jwks.json", jwks_url=None, issuer="https://idp", audience="codec",
        algorithms=("ES256",), leeway=5.0, principal_claim="sub", roles_claim="roles",
    )  # fmt: skip

    def token(permissions: list[str], **claims: Any) -> dict[str, str]:
        body = {"iss": "https://idp", "aud": "codec", "sub": "ui-user",
                "exp": int(time.time()) + 60, "permissions": permissions, **claims}  # fmt: skip
        signed = pyjwt.encode(body, key, algorithm="ES256", headers={"kid": "k1"})
        return {"Authorization": f"Bearer {signed}"}

    failures: list[str] = []

    async def audit(remote: str, path: str, why: str) -> None:
        failures.append(why)

    server = CodecServer(
        RegionCodec(new_ring("eu-west")), namespaces=frozenset({"eu-west"}),
        tokens=[TOKEN.encode()], on_auth_failure=audit,
        token_check=NamespaceTokens(settings, "permissions"),
    )  # fmt: skip
    async with TestClient(TestServer(server.app)) as c:
        body = payloads("hello")
        sealed = await (await c.post("/eu-west/encode", json=body, headers=AUTH)).json()
        ok = await c.post("/eu-west/decode", json=sealed, headers=token(["eu-west:read"]))
        assert ok.status == 200
        data = (await ok.json())["payloads"][0]["data"]
        assert json.loads(base64.b64decode(data)) == "hello"
        plain = await c.post("/eu-west/decode", json=sealed, headers=token(["eu-west"]))
        assert plain.status == 200
        other = await c.post("/eu-west/decode", json=sealed, headers=token(["us-east:admin"]))
        assert other.status == 403 and "payloads" not in await other.json()
        foreign = await c.post("/us-east/decode", json=sealed, headers=token(["us-east:read"]))
        assert foreign.status == 403, "another region's namespace is never served here"
        expired = token(["eu-west:read"], exp=int(time.time()) - 60)
        assert (await c.post("/eu-west/decode", json=sealed, headers=expired)).status == 401
        forged = {"Authorization": "Bearer a.b.c"}
        assert (await c.post("/eu-west/decode", json=sealed, headers=forged)).status == 401
    assert any("does not grant namespace 'eu-west'" in w for w in failures)
    assert any("expired" in w for w in failures)


# -- the development mode of `meridian dev --ui` (loopback, the UI's origin, no token) ----

DEV_UI = "http://127.0.0.1:8235"


@pytest.fixture
async def dev_ui() -> AsyncIterator[tuple[CodecServer, TestClient[Any, Any], list[str]]]:
    failures: list[str] = []

    async def audit(remote: str, path: str, why: str) -> None:
        failures.append(f"{remote} {path} {why}")

    server = CodecServer(
        RegionCodec(new_ring("eu-west")), namespaces=frozenset({"eu-west"}),
        tokens=[TOKEN.encode()], cors_origins=[UI], on_auth_failure=audit,
        dev_loopback_origins=[DEV_UI, "http://localhost:8235"],
    )  # fmt: skip
    async with TestClient(TestServer(server.app)) as c:
        yield server, c, failures


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Origin": DEV_UI}, 200),
        ({"Origin": "http://localhost:8235"}, 200),
        ({}, 401),
        ({"Origin": "http://127.0.0.1:8236"}, 401),
        ({"Origin": UI}, 401),
        ({"Origin": "http://evil.example"}, 401),
        ({"Origin": DEV_UI, "Authorization": "Bearer wrong-token-wrong-token"}, 401),
        ({"Origin": DEV_UI, "Authorization": ""}, 401),
        ({"Origin": DEV_UI, **AUTH}, 200),
    ],
    ids=[
        "the-ui", "the-ui-as-localhost", "no-origin", "another-ui-port", "a-configured-cors-origin",
        "a-foreign-origin", "the-ui-with-a-bad-token", "the-ui-with-an-empty-token",
        "the-ui-with-a-good-token",
    ],
)  # fmt: skip
async def test_dev_mode_accepts_only_the_ui_origin_without_a_token(
    dev_ui: tuple[CodecServer, TestClient[Any, Any], list[str]],
    headers: dict[str, str],
    status: int,
) -> None:
    _, client, failures = dev_ui
    body = payloads("hello")
    resp = await client.post("/eu-west/encode", json=body, headers=headers)
    assert resp.status == status
    if status == 200:
        sealed = await resp.json()
        dec = await client.post("/eu-west/decode", json=sealed, headers=headers)
        assert dec.status == 200 and await dec.json() == body
        assert failures == []
    else:
        assert len(failures) == 1 and failures[0].startswith("127.0.0.1 /eu-west/encode")


async def test_dev_mode_still_serves_only_the_regions_namespaces(
    dev_ui: tuple[CodecServer, TestClient[Any, Any], list[str]],
) -> None:
    _, client, failures = dev_ui
    resp = await client.post("/us-east/decode", json=payloads("x"), headers={"Origin": DEV_UI})
    assert resp.status == 403
    assert failures == ["127.0.0.1 /us-east/decode namespace 'us-east' is not a namespace of "
                        "region eu-west"]  # fmt: skip


async def test_dev_mode_refuses_a_peer_that_is_not_on_loopback(
    dev_ui: tuple[CodecServer, TestClient[Any, Any], list[str]],
) -> None:
    """The peer is the socket's address: the UI's origin from another host needs a token."""
    from unittest import mock

    from aiohttp.test_utils import make_mocked_request

    from router.codec.server import Refused

    server, _, failures = dev_ui

    def from_peer(peer: tuple[Any, ...]) -> Any:
        transport = mock.Mock()
        transport.get_extra_info.side_effect = lambda name, default=None: (
            peer if name == "peername" else default
        )
        return make_mocked_request(
            "POST", "/us-east/decode", headers={"Origin": DEV_UI},
            match_info={"namespace": "us-east"}, transport=transport, app=server.app,
        )  # fmt: skip

    assert (await server.decode(from_peer(("10.1.2.3", 40000)))).status == 401
    with pytest.raises(Refused) as refused:  # past authentication, at the namespace check
        await server.decode(from_peer(("::1", 40000, 0, 0)))
    assert refused.value.status == 403
    assert failures == [
        "10.1.2.3 /us-east/decode missing bearer token",
        "::1 /us-east/decode namespace 'us-east' is not a namespace of region eu-west",
    ]


async def test_dev_mode_origins_are_cors_origins(
    dev_ui: tuple[CodecServer, TestClient[Any, Any], list[str]],
) -> None:
    _, client, _ = dev_ui
    preflight = {"Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "X-Namespace, Content-Type"}  # fmt: skip
    for origin in (DEV_UI, UI):
        ok = await client.options("/decode", headers={"Origin": origin, **preflight})
        assert ok.status == 200 and ok.headers["Access-Control-Allow-Origin"] == origin


@pytest.mark.parametrize(
    ("origin", "ok"),
    [
        ("http://127.0.0.1:8233", True),
        ("http://127.9.9.9:8233", True),
        ("http://localhost:8233", True),
        ("http://[::1]:8233", True),
        ("http://127.0.0.1", False),
        ("https://127.0.0.1:8233", False),
        ("http://10.0.0.1:8233", False),
        ("http://0.0.0.0:8233", False),
        ("http://localhost.example:8233", False),
        ("http://127.0.0.1:8233/", False),
        ("http://user@127.0.0.1:8233", False),
        ("http://127.0.0.1:99999", False),
        ("*", False),
    ],
)
def test_loopback_origin(origin: str, ok: bool) -> None:
    from router.codec.server import loopback_origin

    assert loopback_origin(origin) is ok


def test_dev_mode_refuses_an_origin_off_loopback() -> None:
    with pytest.raises(ValueError, match="http://<loopback>:<port>"):
        CodecServer(
            RegionCodec(new_ring("eu-west")), namespaces=frozenset({"eu-west"}),
            tokens=[TOKEN.encode()], dev_loopback_origins=["http://192.168.1.5:8233"],
        )  # fmt: skip
