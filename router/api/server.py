"""The router's gRPC server: WorkflowRouter, RoutingAdmin, standard health and reflection.

Readiness is reported through grpc.health.v1: every service is NOT_SERVING until the
router has probed its clusters once, then SERVING, and NOT_SERVING again while it drains.
"""

from __future__ import annotations

import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from router import telemetry
from router.api.servicers import RoutingAdminServicer, WorkflowRouterServicer
from router.app import Router
from router.errors import StackError
from router.v1 import router_pb2 as pb
from router.v1 import router_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICES = tuple(
    pb.DESCRIPTOR.services_by_name[name].full_name for name in ("WorkflowRouter", "RoutingAdmin")
)


class RouterServer:
    def __init__(self, router: Router, *, host: str = "127.0.0.1", port: int = 50051) -> None:
        self.router = router
        self.host = host
        self.port = port
        limit = router.config.config.table.limits.max_args_bytes
        # Above the args limit, so an oversized request gets our INVALID_ARGUMENT that
        # names the field, not grpc's RESOURCE_EXHAUSTED.
        max_message = max(4 * 1024 * 1024, 2 * limit + 1024 * 1024)
        self._server = grpc.aio.server(
            interceptors=telemetry.server_interceptors(),
            options=[
                ("grpc.max_receive_message_length", max_message),
                ("grpc.max_send_message_length", max_message),
                ("grpc.so_reuseport", 0),
            ],
        )
        self._health = health.aio.HealthServicer()
        pb_grpc.add_WorkflowRouterServicer_to_server(
            WorkflowRouterServicer(router.starts, router.followups), self._server
        )
        pb_grpc.add_RoutingAdminServicer_to_server(RoutingAdminServicer(router.admin), self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (*SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )

    async def start(self) -> None:
        """Bind and start answering (NOT_SERVING) before the clusters are probed."""
        await self._set(health_pb2.HealthCheckResponse.NOT_SERVING)
        try:
            bound = self._server.add_insecure_port(f"{self.host}:{self.port}")
        except RuntimeError as exc:
            raise StackError(f"router: cannot listen on {self.host}:{self.port}: {exc}") from exc
        if bound == 0:
            raise StackError(f"router: port {self.port} on {self.host} is already in use")
        self.port = bound
        await self._server.start()
        await self.router.start()
        await self._set(health_pb2.HealthCheckResponse.SERVING)
        log.info("router serving on %s:%d", self.host, self.port)

    async def _set(self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType) -> None:
        await self._health.set("", status)
        for name in SERVICES:
            await self._health.set(name, status)

    async def wait(self) -> None:
        await self._server.wait_for_termination()

    async def stop(self, grace: float = 5.0) -> None:
        """Stop taking new calls, let in-flight ones finish for ``grace`` seconds."""
        await self._set(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._server.stop(grace)
        await self.router.close()
