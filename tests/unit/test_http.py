"""The router's HTTP port, in-process: the status page answers only loopback callers while
auth is on (it has no mTLS), /metrics and the health endpoints answer anyone."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry, Counter

from router import metrics
from router.api.http import HttpServer, loopback


def outward_address() -> str:
    """An address of this machine that is not loopback (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.254", 9))  # TEST-NET-1: a route lookup, nothing sent
        address: str = s.getsockname()[0]
    if ipaddress.ip_address(address).is_loopback:
        pytest.fail("this machine has no non-loopback IPv4 address to test from")
    return address


def server(auth_on: bool) -> HttpServer:
    registry = CollectorRegistry()
    Counter("probe_total", "a counter", registry=registry).inc()
    return HttpServer(
        admin=None,  # type: ignore[arg-type]  # the refused routes never reach it
        latency={},
        audit=None,
        ready=lambda: True,
        auth_on=lambda: auth_on,
        exposition=metrics.Exposition(registry),
    )


@pytest.mark.parametrize("auth_on", [True, False], ids=["auth-on", "auth-off"])
async def test_the_status_page_is_loopback_only_while_auth_is_on(auth_on: bool) -> None:
    host = outward_address()
    http = server(auth_on)
    async with TestServer(http.app, host=host) as srv, ClientSession() as s:
        base = f"http://{host}:{srv.port}"
        async with s.get(f"{base}/") as r:
            if auth_on:
                assert r.status == 403 and "loopback" in await r.text()
            else:
                assert r.status == 200 and "<title>Meridian" in await r.text()
        async with s.get(f"{base}/metrics") as r:
            assert r.status == 200 and "probe_total 1.0" in await r.text()
        for path in ("/healthz", "/readyz"):
            async with s.get(base + path) as r:
                assert r.status == 200


@pytest.mark.parametrize(
    ("remote", "expected"),
    [("127.0.0.1", True), ("::1", True), ("192.0.2.2", False), (None, False), ("x", False)],
)
def test_loopback(remote: Any, expected: bool) -> None:
    assert loopback(remote) is expected
