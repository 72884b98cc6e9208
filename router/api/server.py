"""The router's gRPC server: WorkflowRouter, RoutingAdmin, standard health and reflection.

Readiness is reported through grpc.health.v1: every service is NOT_SERVING until the
router has probed its clusters once, then SERVING, and NOT_SERVING again while it drains.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from router import metrics, telemetry
from router.api.auth import AuthInterceptor
from router.api.http import HttpServer
from router.api.servicers import RoutingAdminServicer, WorkflowRouterServicer
from router.app import Router
from router.auth.denials import DenialLog
from router.config.settings import ResolvedConfig
from router.errors import FieldError, StackError
from router.tls import server_credentials
from router.v1 import router_pb2 as pb
from router.v1 import router_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICES = tuple(
    pb.DESCRIPTOR.services_by_name[name].full_name for name in ("WorkflowRouter", "RoutingAdmin")
)


class RouterServer:
    def __init__(
        self,
        router: Router,
        *,
        host: str = "127.0.0.1",
        port: int = 50051,
        http: tuple[str, int] | None = None,
        exposition: metrics.Exposition | None = None,
    ) -> None:
        """``http``: (host, port) of the HTTP port (status page, /metrics, /healthz,
        /readyz); None: none. ``exposition``: what /metrics serves."""
        self.router = router
        self.host = host
        self.port = port
        self._http_at = http
        self._serving = False
        self.http = HttpServer(
            router.admin,
            latency=router.clusters.latency,
            audit=router.audit,
            ready=lambda: self._serving,
            auth_on=lambda: router.config.config.auth.enabled,
            exposition=exposition,
        )
        config = router.config.config
        # The listener's TLS is fixed once the port is bound: a config change that would
        # alter it is rejected (rotate certificates by replacing the files instead).
        self._tls = config.server_tls
        router.config.add_check(self._listener_check)
        self.denials = DenialLog(router.audit)
        self.auth = AuthInterceptor(lambda: router.config.config, self.denials)
        self._tasks: list[asyncio.Task[None]] = []
        limit = config.table.limits.max_args_bytes
        # Above the args limit, so an oversized request gets our INVALID_ARGUMENT that
        # names the field, not grpc's RESOURCE_EXHAUSTED.
        max_message = max(4 * 1024 * 1024, 2 * limit + 1024 * 1024)
        self._server = grpc.aio.server(
            # Tracing first (a refused call is traced too), then who is asking.
            interceptors=[*telemetry.server_interceptors(), self.auth],
            options=[
                ("grpc.max_receive_message_length", max_message),
                ("grpc.max_send_message_length", max_message),
                ("grpc.so_reuseport", 0),
            ],
        )
        self._health = health.aio.HealthServicer()
        pb_grpc.add_WorkflowRouterServicer_to_server(
            WorkflowRouterServicer(
                router.starts,
                router.followups,
                router.checkpointer.receipts if router.checkpointer is not None else None,
            ),
            self._server,
        )
        pb_grpc.add_RoutingAdminServicer_to_server(RoutingAdminServicer(router.admin), self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (*SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )

    async def start(self) -> None:
        """Bind and start answering (NOT_SERVING) before the clusters are probed."""
        config = self.router.config.config
        if config.auth.enabled and self._tls is None:
            raise StackError(
                "router: auth is on (the default) but server.tls is not configured: give "
                "server.tls (cert_file, key_file, client_ca_file for mTLS), or set "
                "auth.enabled: false to serve plaintext (development only)"
            )
        await self._set(health_pb2.HealthCheckResponse.NOT_SERVING)
        address = f"{self.host}:{self.port}"
        try:
            if self._tls is None:
                bound = self._server.add_insecure_port(address)
            else:
                t = self._tls
                credentials = server_credentials(
                    t.cert_file, t.key_file, t.client_ca_file,
                    require_client_cert=t.require_client_cert,
                )  # fmt: skip
                bound = self._server.add_secure_port(address, credentials)
        except RuntimeError as exc:
            raise StackError(f"router: cannot listen on {address}: {exc}") from exc
        if bound == 0:
            raise StackError(f"router: port {self.port} on {self.host} is already in use")
        self.port = bound
        await self._server.start()
        if self._http_at is not None:
            await self.http.start(*self._http_at)
        await self.router.start()
        self._tasks = [
            asyncio.create_task(
                self.denials.run(lambda: self.router.config.config.auth.denial_audit_interval),
                name="denial-audit",
            )
        ]
        await self._set(health_pb2.HealthCheckResponse.SERVING)
        self._serving = True
        mode = "plaintext" if self._tls is None else "mTLS" if self._tls.client_ca_file else "TLS"
        auth = "on" if config.auth.enabled else "OFF"
        log.info("router serving on %s:%d (%s, auth %s)", self.host, self.port, mode, auth)

    def _listener_check(self, config: ResolvedConfig) -> list[FieldError]:
        problems = []
        if config.server_tls != self._tls:
            problems.append(
                FieldError(
                    "server.tls",
                    "differs from what the port was bound with; it takes a restart (to "
                    "rotate certificates, replace the files: they are re-read)",
                )
            )
        if config.auth.enabled and self._tls is None:
            problems.append(
                FieldError("auth.enabled", "this router listens in plaintext: auth needs TLS")
            )
        return problems

    async def _set(self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType) -> None:
        await self._health.set("", status)
        for name in SERVICES:
            await self._health.set(name, status)

    async def wait(self) -> None:
        await self._server.wait_for_termination()

    async def stop(self, grace: float = 5.0) -> None:
        """Stop taking new calls, let in-flight ones finish for ``grace`` seconds."""
        self._serving = False
        await self._set(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._server.stop(grace)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.denials.flush(interval=0, force=True)
        await self.http.stop()
        await self.router.close()
