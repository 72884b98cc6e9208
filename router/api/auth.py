"""The gRPC edge of authentication, authorization and quotas: one server interceptor in
front of every WorkflowRouter and RoutingAdmin RPC (health and reflection stay open).

For each call, before the servicer (so before any routing or audit work):

1. authenticate (``router.auth.identity``): no or bad credentials -> UNAUTHENTICATED;
2. authorize (``router.core.authz``, deny by default) against what the request touches
   (its tenant, workflow type, data class; a follow-up's ``WorkflowRef`` tenant) ->
   PERMISSION_DENIED;
3. for starts, take a token from the tenant's and the principal's quota ->
   RESOURCE_EXHAUSTED with a retry hint;

then run the servicer with the principal in ``PRINCIPAL`` (a context variable), which is
what the audit records name. Refusals of 1 and 2 are audited, aggregated per caller and
interval (``router.auth.denials``). With ``auth.enabled: false`` every call passes and
the principal is whatever the caller says (``x-meridian-caller``, else its address).
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from router import metrics
from router.api.status import abort
from router.auth.denials import DenialLog
from router.auth.identity import Authenticator
from router.auth.quotas import Quotas
from router.config.settings import ResolvedConfig
from router.core.authz import AuthMethod, Principal, Request, authorize
from router.core.model import DataClass
from router.errors import MeridianError, PermissionDenied, Unauthenticated
from router.tls import identity_of
from router.v1 import router_pb2 as pb

log = logging.getLogger(__name__)

PACKAGE = "/meridian.router.v1."
CALLER_HEADER = "x-meridian-caller"

PRINCIPAL: contextvars.ContextVar[Principal] = contextvars.ContextVar("meridian_principal")

_DATA_CLASS = {
    pb.PUBLIC: DataClass.PUBLIC,
    pb.INTERNAL: DataClass.INTERNAL,
    pb.PII: DataClass.PII,
    pb.FINANCIAL: DataClass.FINANCIAL,
}


def request_of(rpc: str, message: Any) -> Request:
    """What an RPC's request touches, for authorization."""
    if isinstance(message, pb.StartWorkflowRequest):
        return Request(
            rpc,
            tenant=message.tenant_id,
            workflow_type=message.workflow_type,
            data_class=_DATA_CLASS.get(message.data_class),
        )
    if isinstance(message, pb.WorkflowRef):
        return Request(rpc, tenant=message.tenant_id)
    if isinstance(message, pb.SignalWorkflowRequest | pb.QueryWorkflowRequest):
        return Request(rpc, tenant=message.ref.tenant_id)
    return Request(rpc)


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    return {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}


def peer_address(context: grpc.aio.ServicerContext) -> str:
    """The caller's address without its port (one connection's port changes per call
    site; the host is what a flood's aggregation should key on)."""
    peer: str = context.peer() or "unknown"
    return peer.rsplit(":", 1)[0] if peer.count(":") >= 2 else peer


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(
        self,
        config: Callable[[], ResolvedConfig],
        denials: DenialLog,
        *,
        quotas: Quotas | None = None,
        authenticator: Authenticator | None = None,
    ) -> None:
        self._config = config
        self._denials = denials
        self.quotas = quotas or Quotas()
        self._authn = authenticator or Authenticator()
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method: str = details.method
        if handler is None or not method.startswith(PACKAGE) or handler.unary_unary is None:
            return handler
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]  # one wrapper per method, not one per call
        rpc = method.rsplit("/", 1)[1]
        inner = handler.unary_unary

        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            t0 = time.perf_counter()
            try:
                principal = await self._admit(rpc, request, context)
            except MeridianError as exc:
                if rpc == "StartWorkflow":  # refused at the door: still a decision
                    dc = request_of(rpc, request).data_class
                    metrics.record_start(
                        metrics.outcome_of(exc), data_class=dc.value if dc else "",
                        seconds=time.perf_counter() - t0,
                    )  # fmt: skip
                await abort(context, exc)
            token = PRINCIPAL.set(principal)
            try:
                return await inner(request, context)
            finally:
                PRINCIPAL.reset(token)

        wrapped = grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    async def _admit(self, rpc: str, request: Any, context: grpc.aio.ServicerContext) -> Principal:
        config = self._config()
        auth = config.auth
        meta = _metadata(context)
        if not auth.enabled:
            caller = meta.get(CALLER_HEADER) or context.peer() or "unknown"
            principal = Principal(caller[:256], AuthMethod.NONE)
        else:
            try:
                principal = await self._authn.authenticate(
                    auth,
                    peer_identity=self._peer_identity(context, auth.identity),
                    authorization=meta.get("authorization"),
                )
            except Unauthenticated as exc:
                await self._denials.record(
                    "auth.failure", peer_address(context), auth="none", rpc=rpc,
                    reason=exc.message, interval=auth.denial_audit_interval,
                )  # fmt: skip
                raise
            req = request_of(rpc, request)
            denial = authorize(auth.policy, principal, req)
            if denial is not None:
                await self._denials.record(
                    "auth.denied", principal.name, auth=principal.method.value, rpc=rpc,
                    reason=denial.message, interval=auth.denial_audit_interval,
                )  # fmt: skip
                raise PermissionDenied(denial.message)
        if rpc == "StartWorkflow":
            self.quotas.check(
                config.quotas, tenant=request_of(rpc, request).tenant, principal=principal.name
            )
        return principal

    @staticmethod
    def _peer_identity(context: grpc.aio.ServicerContext, order: tuple[str, ...]) -> str | None:
        """The identity in the client certificate grpc verified (mTLS), if any."""
        certs = context.auth_context().get("x509_pem_cert") or []
        return identity_of(certs[0], order) if certs else None
