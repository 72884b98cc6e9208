"""The router's HTTP port (aiohttp): what SREs and their tools look at.

- ``/metrics``: Prometheus exposition of ``router.metrics`` (and the process's own).
- ``/healthz``: the process answers (liveness). ``/readyz``: it serves gRPC (readiness).
- ``/``: a read-only status page (HTML and a little JavaScript that polls
  ``/api/status`` every second): zones, regions, clusters with role, health, probe
  latency and which is active, failed over since when, the last flip with who and why,
  the leader and the config in force, decisions per region per second over the last
  minute, the last refusals, audit health. No secrets, no tenant ids.

While authentication is on, the page and ``/api/status`` answer only callers on the
loopback interface (403 with the reason otherwise): they tell more about the deployment
than a caller needs, and this port has no mTLS. ``/metrics``, ``/healthz`` and
``/readyz`` carry no tenant data and answer anyone who can reach the port (Prometheus,
load balancers).
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable
from importlib import resources
from typing import Any

from aiohttp import web

from router import metrics
from router.admin import Admin
from router.errors import StackError

log = logging.getLogger(__name__)

PAGE = resources.files("router.api").joinpath("status.html")


def loopback(remote: str | None) -> bool:
    try:
        return remote is not None and ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False


def status(admin: Admin, latency: dict[str, float], audit: Any) -> dict[str, Any]:
    """The page's data: the topology as this replica sees it, recent activity, audit."""
    config = admin.config
    table = config.table
    probes = admin.probes
    live = admin.live()
    regions = []
    for name, region in table.regions.items():
        state = admin.states[name]
        flip = state.last_flip
        regions.append({
            "name": name, "zone": region.zone, "mode": state.policy.mode.value,
            "failed_over": state.failed_over,
            "failed_over_since": flip.at if state.failed_over and flip else None,
            "last_flip": None if flip is None else {
                "at": flip.at, "from": flip.from_cluster, "to": flip.to_cluster,
                "actor": flip.actor, "reason": flip.reason, "rule": flip.rule,
                "automatic": flip.automatic,
            },
            "clusters": [
                {
                    "name": c.name, "role": c.role.value, "endpoint": c.endpoint,
                    "active": c.name == state.active,
                    "healthy": bool(probes.get(c.name) and probes[c.name].healthy),
                    "probed": c.name in probes and probes[c.name].healthy is not None,
                    "last_error": probes[c.name].last_error if c.name in probes else "",
                    "probe_ms": round(latency[c.name] * 1000, 1) if c.name in latency else None,
                }
                for c in region.clusters
            ],
        })  # fmt: skip
    rejected = admin.last_rejected
    return {
        "time": time.time(),
        "replica": live.replica_id if live else "local",
        "leader": (live.leader if live else "local"),
        "is_leader": live.is_leader if live else True,
        "consul": {"address": live.consul, "reachable": live.consul_reachable} if live else None,
        "config": {
            "version": config.version, "source": config.source,
            "pending": admin.config_pending,
            "last_rejected": None if rejected is None else {
                "at": rejected[0], "source": rejected[1].source,
                "errors": [str(e) for e in rejected[1].errors],
            },
        },
        "zones": [
            {"name": z.name, "home_region": z.home_region, "regions": list(z.regions)}
            for z in table.zones.values()
        ],
        "regions": regions,
        "decisions_per_second": metrics.recent.series(),
        "refusals": list(reversed(metrics.recent.refusals)),
        "audit": {
            "healthy": bool(getattr(audit, "healthy", True)),
            "last_error": str(getattr(audit, "last_error", "")),
            "last_seq": int(getattr(audit, "sequence", 0)),
            "queued": int(getattr(audit, "queued", 0)),
        },
    }  # fmt: skip


class HttpServer:
    def __init__(
        self,
        admin: Admin,
        *,
        latency: dict[str, float],
        audit: Any,
        ready: Callable[[], bool],
        auth_on: Callable[[], bool],
        exposition: metrics.Exposition | None,
    ) -> None:
        self._admin = admin
        self._latency = latency
        self._audit = audit
        self._ready = ready
        self._auth_on = auth_on
        self._exposition = exposition
        self._runner: web.AppRunner | None = None
        self.port = 0
        app = web.Application()
        app.router.add_get("/", self.page)
        app.router.add_get("/api/status", self.api_status)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        self.app = app

    def _local_only(self, request: web.Request) -> None:
        if self._auth_on() and not loopback(request.remote):
            raise web.HTTPForbidden(
                text="the status page answers only the loopback interface while "
                "authentication is on (it has no mTLS); use an SSH tunnel or /metrics"
            )

    async def page(self, request: web.Request) -> web.Response:
        self._local_only(request)
        return web.Response(text=PAGE.read_text(), content_type="text/html")

    async def api_status(self, request: web.Request) -> web.Response:
        self._local_only(request)
        return web.json_response(
            status(self._admin, self._latency, self._audit),
            headers={"Cache-Control": "no-store"},
        )

    async def metrics(self, request: web.Request) -> web.Response:
        if self._exposition is None:
            raise web.HTTPNotFound(text="metrics are not set up in this process")
        body, content_type = self._exposition.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        ready = self._ready()
        return web.json_response(
            {"status": "ready" if ready else "starting"}, status=200 if ready else 503
        )

    async def start(self, host: str, port: int) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise StackError(f"router: cannot serve HTTP on {host}:{port}: {exc.strerror}") from exc
        # Port 0 asks the kernel for one: read back which (aiohttp keeps the listener).
        bound = self._runner.addresses
        self.port = int(bound[0][1]) if bound else port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
