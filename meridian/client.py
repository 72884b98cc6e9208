"""A Python client for Meridian's router, shaped like temporalio's ``Client``.

::

    client = await MeridianClient.connect("router:50051", tls=TLSConfig.dev_identity("service"))
    handle = await client.start_workflow(
        "ContactSyncWorkflow", {"tenant": "acme", "source": {"path": "contacts.jsonl"}},
        id="sync-1", tenant="acme", user_country="DE", data_class="pii",
    )
    print(handle.decision.region, handle.receipt.sequence)
    print(await handle.query("getProgress"))
    print(await handle.result(timeout=60))

Adopting Meridian from temporalio is a small diff: ``Client.connect`` becomes
``MeridianClient.connect``, ``start_workflow`` takes the routing inputs (tenant, the
user's country, the data's class, priority) instead of a task queue, and the handle
answers ``describe``, ``signal``, ``query``, ``cancel`` and ``result`` as temporalio's
does, plus the routing ``decision`` and the audit ``receipt``.

- **Errors**: one hierarchy (``meridian.errors``), mapped from the gRPC status.
- **Retries** only where they cannot double an effect: a call that never reached the
  router (no connection), a start the router says is "safe to retry with the same id"
  (always retried with that same id: the client picks the id when the caller did not),
  and reads (describe, query, result, explain) on UNAVAILABLE. Bounded by
  ``max_retries`` and by the call's deadline.
- **Deadlines**: every call has one (``timeout=``, else the client's ``default_timeout``).
- **Sync**: ``SyncMeridianClient`` wraps the same client for scripts.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import grpc
from google.protobuf import struct_pb2

from meridian.errors import (
    DeadlineExceeded,
    MeridianError,
    Unavailable,
    WorkflowFailed,
    from_rpc_error,
)
from router.api.values import from_python, to_python
from router.v1 import router_pb2 as pb
from router.v1 import router_pb2_grpc as pb_grpc

__all__ = [
    "AuditReceipt",
    "MeridianClient",
    "RouteDecision",
    "SyncMeridianClient",
    "SyncWorkflowHandle",
    "TLSConfig",
    "WorkflowDescription",
    "WorkflowHandle",
    "WorkflowLocation",
    "WorkflowOutcome",
]

T = TypeVar("T")
Retry = Literal["never", "connect", "start", "read"]


@dataclass(frozen=True)
class TLSConfig:
    """TLS to the router: trust ``ca_file`` (None: the system's CAs), present
    ``cert_file``/``key_file`` for mutual TLS (the key file must be mode 0600), and
    expect ``server_name`` in the router's certificate when it names another host."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None

    @classmethod
    def dev_identity(cls, name: str = "service", home: str | Path | None = None) -> TLSConfig:
        """A development identity of ``meridian dev`` (``service``, ``acme``, ``sre``)
        under ``<home>/tls`` (default ``$MERIDIAN_HOME``, else ``.meridian``)."""
        base = Path(home or os.environ.get("MERIDIAN_HOME", ".meridian")) / "tls"
        return cls(base / "ca.pem", base / f"{name}.pem", base / f"{name}-key.pem")

    def credentials(self) -> grpc.ChannelCredentials:
        """The channel credentials; ``MeridianError`` naming the file when one is
        missing or unusable (and, for the dev stack's files, where they are looked for)."""
        from router.errors import KeyRingError
        from router.tls import channel_credentials

        try:
            return channel_credentials(self.ca_file, self.cert_file, self.key_file)
        except KeyRingError as exc:
            message = f"TLS credentials: {exc.message}"
            if any(p is not None and not p.exists() for p in (self.ca_file, self.cert_file)):
                message += (
                    " (the dev stack's are under $MERIDIAN_HOME/tls, default ./.meridian/tls "
                    "of the directory `meridian dev` runs in: set MERIDIAN_HOME or home=)"
                )
            raise MeridianError(message) from None


# --- values -------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditReceipt:
    """Where the router's audit log recorded it (``meridian audit query --seq N``). A
    start's ``receipt`` and an explain's are signed (``chain_id``, ``key_id``,
    ``signature``): keep it, and ``meridian audit prove`` shows an auditor where the
    workflow was placed. A start's ``decision.receipt`` is an unsigned pointer (one
    signature per start): the signed ``receipt`` covers it, its record naming the
    decision's."""

    sequence: int
    hash: str
    file: str
    chain_id: str = ""
    key_id: str = ""
    signature: bytes = field(default=b"", repr=False)
    raw: pb.AuditReceipt | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, msg: pb.AuditReceipt) -> AuditReceipt:
        return cls(
            sequence=msg.sequence, hash=msg.hash, file=msg.file, chain_id=msg.chain_id,
            key_id=msg.key_id, signature=msg.signature, raw=msg,
        )  # fmt: skip


@dataclass(frozen=True)
class RouteDecision:
    zone: str
    region: str
    cluster: str
    endpoint: str
    namespace: str
    task_queue: str
    rule: str
    reasons: tuple[str, ...]
    config_version: str
    failed_over: bool
    receipt: AuditReceipt | None
    raw: pb.RouteDecision = field(repr=False, compare=False)

    @classmethod
    def of(cls, msg: pb.RouteDecision) -> RouteDecision:
        return cls(
            zone=msg.zone, region=msg.region, cluster=msg.cluster, endpoint=msg.endpoint,
            namespace=msg.namespace, task_queue=msg.task_queue, rule=msg.rule,
            reasons=tuple(msg.reasons), config_version=msg.config_version,
            failed_over=msg.failed_over,
            receipt=AuditReceipt.of(msg.receipt) if msg.HasField("receipt") else None, raw=msg,
        )  # fmt: skip


@dataclass(frozen=True)
class WorkflowLocation:
    zone: str
    region: str
    cluster: str
    namespace: str
    # The workflow's home reference (opaque): handles keep it, so follow-ups ask one
    # cluster instead of searching.
    home: str = field(default="", repr=False)

    @classmethod
    def of(cls, msg: pb.WorkflowLocation) -> WorkflowLocation:
        return cls(
            zone=msg.zone, region=msg.region, cluster=msg.cluster, namespace=msg.namespace,
            home=msg.home,
        )  # fmt: skip


def _time(has: bool, ts: Any) -> datetime | None:
    return ts.ToDatetime(tzinfo=UTC) if has else None


@dataclass(frozen=True)
class WorkflowDescription:
    workflow_id: str
    run_id: str
    workflow_type: str
    # RUNNING, COMPLETED, FAILED, CANCELED, TERMINATED, CONTINUED_AS_NEW, TIMED_OUT
    status: str
    task_queue: str
    start_time: datetime | None
    close_time: datetime | None
    history_length: int
    location: WorkflowLocation
    tenant: str
    data_class: str
    raw: pb.DescribeWorkflowResponse = field(repr=False, compare=False)

    @classmethod
    def of(cls, msg: pb.DescribeWorkflowResponse) -> WorkflowDescription:
        return cls(
            workflow_id=msg.workflow_id, run_id=msg.run_id, workflow_type=msg.workflow_type,
            status=pb.WorkflowStatus.Name(msg.status), task_queue=msg.task_queue,
            start_time=_time(msg.HasField("start_time"), msg.start_time),
            close_time=_time(msg.HasField("close_time"), msg.close_time),
            history_length=msg.history_length, location=WorkflowLocation.of(msg.location),
            tenant=msg.tenant_id, data_class=pb.DataClass.Name(msg.data_class), raw=msg,
        )  # fmt: skip


@dataclass(frozen=True)
class WorkflowOutcome:
    """How a run closed: ``result`` when COMPLETED, else ``failure``."""

    workflow_id: str
    run_id: str
    status: str
    result: Any
    failure: str
    location: WorkflowLocation
    raw: pb.WorkflowResult = field(repr=False, compare=False)

    @classmethod
    def of(cls, msg: pb.WorkflowResult) -> WorkflowOutcome:
        return cls(
            workflow_id=msg.workflow_id, run_id=msg.run_id,
            status=pb.WorkflowStatus.Name(msg.status),
            result=to_python(msg.result) if msg.HasField("result") else None,
            failure=msg.failure, location=WorkflowLocation.of(msg.location), raw=msg,
        )  # fmt: skip


def _enum(kind: Any, value: str | int, what: str) -> Any:
    if isinstance(value, int):
        return value
    try:
        number = kind.Value(value.upper())
    except ValueError:
        raise ValueError(f"{what}: unknown value {value!r}") from None
    return number


def _workflow_name(workflow: str | type) -> str:
    if isinstance(workflow, str):
        return workflow
    definition = getattr(workflow, "__temporal_workflow_definition", None)
    name = getattr(definition, "name", None)
    if not isinstance(name, str):
        raise TypeError(f"{workflow!r} is neither a workflow type name nor a @workflow.defn class")
    return name


def _values(args: tuple[Any, ...]) -> list[struct_pb2.Value]:
    return [from_python(a) for a in args]


# --- the client ---------------------------------------------------------------------


class MeridianClient:
    """The router's WorkflowRouter API (and RoutingAdmin for tools), over one channel."""

    def __init__(
        self,
        router: Any,
        admin: Any = None,
        *,
        address: str = "",
        channel: grpc.aio.Channel | None = None,
        default_timeout: float = 10.0,
        max_retries: int = 3,
        retry_backoff: float = 0.1,
    ) -> None:
        """Use ``connect``. This constructor takes the stubs themselves: a transport seam
        for tests, as httpx's transports are."""
        self._router = router
        self._admin = admin
        self.address = address
        self._channel = channel
        self.default_timeout = default_timeout
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff

    @classmethod
    async def connect(
        cls,
        address: str,
        *,
        tls: TLSConfig | grpc.ChannelCredentials | bool | None = None,
        token: str | None = None,
        default_timeout: float = 10.0,
        max_retries: int = 3,
    ) -> MeridianClient:
        """A client of the router at ``address`` (``host:port``).

        ``tls``: a ``TLSConfig``, ready ``grpc.ChannelCredentials``, ``True`` (TLS with
        the system's CAs) or ``None``/``False`` (plaintext: a router run without TLS).
        ``token``: a JWT sent as ``authorization: Bearer`` (TLS only). The connection is
        made by the first call, whose error says what went wrong.
        """
        if tls is None or tls is False:
            if token:
                raise ValueError("token= is sent only over TLS: give tls= too")
            channel = grpc.aio.insecure_channel(address)
        else:
            if isinstance(tls, TLSConfig):
                creds = tls.credentials()
            elif tls is True:
                creds = grpc.ssl_channel_credentials()
            else:
                creds = tls
            if token:
                creds = grpc.composite_channel_credentials(
                    creds, grpc.access_token_call_credentials(token)
                )
            options = []
            if isinstance(tls, TLSConfig) and tls.server_name:
                options.append(("grpc.ssl_target_name_override", tls.server_name))
            channel = grpc.aio.secure_channel(address, creds, options=options)
        return cls(
            pb_grpc.WorkflowRouterStub(channel),
            pb_grpc.RoutingAdminStub(channel),
            address=address,
            channel=channel,
            default_timeout=default_timeout,
            max_retries=max_retries,
        )

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()

    async def __aenter__(self) -> MeridianClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(self, rpc: Callable[..., Any], request: Any, timeout: float | None,
                    retry: Retry) -> Any:  # fmt: skip
        """One RPC within ``timeout`` seconds overall, retried as ``retry`` allows."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout if timeout is not None else self.default_timeout)
        attempt = 0
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise DeadlineExceeded("DEADLINE_EXCEEDED: the call's deadline ran out")
            try:
                return await rpc(request, timeout=left)
            except grpc.RpcError as exc:
                error = from_rpc_error(exc)
            delay = self.retry_backoff * 2**attempt
            if not _retryable(error, retry) or attempt >= self.max_retries:
                raise error from None
            if loop.time() + delay >= deadline:
                raise error from None
            attempt += 1
            await asyncio.sleep(delay)

    async def start_workflow(
        self,
        workflow: str | type,
        *args: Any,
        tenant: str,
        user_country: str,
        data_class: str | int,
        id: str | None = None,
        user_subdivision: str = "",
        priority: str | int = "normal",
        request_id: str = "",
        timeout: float | None = None,
    ) -> WorkflowHandle:
        """Route and start ``workflow`` (a type name or a ``@workflow.defn`` class) with
        ``args`` (JSON-shaped values). Idempotent by ``id``: when the workflow already
        runs, its handle comes back with ``started`` False. Without ``id`` the client
        picks one, so its own retries never start a second run."""
        request = pb.StartWorkflowRequest(
            workflow_type=_workflow_name(workflow),
            workflow_id=id or f"wf-{uuid.uuid4()}",
            args=_values(args),
            tenant_id=tenant,
            user_country=user_country,
            user_subdivision=user_subdivision,
            data_class=_enum(pb.DataClass, data_class, "data_class"),
            priority=_enum(pb.Priority, priority, "priority"),
            request_id=request_id,
        )
        resp = await self._call(self._router.StartWorkflow, request, timeout, "start")
        return WorkflowHandle(self, resp.workflow_id, tenant=tenant, start=resp)

    async def explain(
        self,
        workflow: str | type,
        *,
        tenant: str,
        user_country: str,
        data_class: str | int,
        user_subdivision: str = "",
        priority: str | int = "normal",
        timeout: float | None = None,
    ) -> RouteDecision:
        """The decision ``start_workflow`` would take now; nothing is started."""
        request = pb.StartWorkflowRequest(
            workflow_type=_workflow_name(workflow), tenant_id=tenant, user_country=user_country,
            user_subdivision=user_subdivision,
            data_class=_enum(pb.DataClass, data_class, "data_class"),
            priority=_enum(pb.Priority, priority, "priority"),
        )  # fmt: skip
        return RouteDecision.of(
            await self._call(self._router.ExplainRoute, request, timeout, "read")
        )

    def get_workflow_handle(
        self, workflow_id: str, *, tenant: str, run_id: str = "", home: str = ""
    ) -> WorkflowHandle:
        """A handle on an existing workflow (its latest run unless ``run_id``). ``home``:
        the reference its start returned (``handle.home``), if kept: follow-ups then ask
        its cluster alone; without it the router searches where the tenant's workflows
        can live (and the handle learns the reference from the first answer)."""
        return WorkflowHandle(self, workflow_id, tenant=tenant, run_id=run_id, home=home)

    async def get_topology(self, *, timeout: float | None = None) -> pb.Topology:
        """RoutingAdmin: zones, regions, clusters, health (role ``sre`` or ``viewer``)."""
        topology: pb.Topology = await self._call(
            self._admin.GetTopology, pb.GetTopologyRequest(), timeout, "read"
        )
        return topology

    async def set_active_cluster(
        self,
        region: str,
        cluster: str,
        *,
        reason: str,
        force: bool = False,
        dry_run: bool = False,
        actor: str = "",
        timeout: float | None = None,
    ) -> pb.SetActiveClusterResponse:
        """RoutingAdmin: flip ``region``'s active cluster (role ``sre``)."""
        request = pb.SetActiveClusterRequest(
            region=region, cluster=cluster, reason=reason, force=force, dry_run=dry_run,
            actor=actor,
        )  # fmt: skip
        resp: pb.SetActiveClusterResponse = await self._call(
            self._admin.SetActiveCluster, request, timeout, "connect"
        )
        return resp


def _retryable(error: MeridianError, retry: Retry) -> bool:
    if not isinstance(error, Unavailable) or retry == "never":
        return False
    if retry == "read":
        return True
    if retry == "start":
        return error.connect_failed or error.safe_to_retry
    return error.connect_failed


class WorkflowHandle:
    """A workflow Meridian started (or one named by id and tenant). Follow-ups go to the
    workflow's latest run unless the handle names a ``run_id``."""

    def __init__(
        self,
        client: MeridianClient,
        workflow_id: str,
        *,
        tenant: str,
        run_id: str = "",
        home: str = "",
        start: pb.StartWorkflowResponse | None = None,
    ) -> None:
        self._client = client
        self.id = workflow_id
        self.tenant = tenant
        self.run_id = run_id
        # The home reference (opaque; valid on every router replica): from the start, or
        # learned from the first follow-up's answer. Store it with the workflow id to
        # make later handles as cheap.
        self.home = start.home if start else home
        # From the start, when this handle came from start_workflow:
        self.start_response = start
        self.first_execution_run_id = start.run_id if start else ""
        self.started: bool | None = start.started if start else None
        self.request_id = start.request_id if start else ""
        self.decision = RouteDecision.of(start.decision) if start else None
        self.receipt = (
            AuditReceipt.of(start.receipt) if start and start.HasField("receipt") else None
        )

    def __repr__(self) -> str:
        return f"WorkflowHandle(id={self.id!r}, tenant={self.tenant!r}, run_id={self.run_id!r})"

    @property
    def _ref(self) -> pb.WorkflowRef:
        return pb.WorkflowRef(
            workflow_id=self.id, tenant_id=self.tenant, run_id=self.run_id, home=self.home
        )

    def _learn(self, location: pb.WorkflowLocation) -> WorkflowLocation:
        if location.home:
            self.home = location.home
        return WorkflowLocation.of(location)

    async def describe(self, *, timeout: float | None = None) -> WorkflowDescription:
        c = self._client
        resp = await c._call(c._router.DescribeWorkflow, self._ref, timeout, "read")
        self._learn(resp.location)
        return WorkflowDescription.of(resp)

    async def signal(self, name: str, *args: Any, timeout: float | None = None) -> WorkflowLocation:
        c = self._client
        req = pb.SignalWorkflowRequest(ref=self._ref, signal_name=name, args=_values(args))
        resp = await c._call(c._router.SignalWorkflow, req, timeout, "connect")
        return self._learn(resp.location)

    async def query(self, name: str, *args: Any, timeout: float | None = None) -> Any:
        return to_python((await self.query_response(name, *args, timeout=timeout)).result)

    async def query_response(
        self, name: str, *args: Any, timeout: float | None = None
    ) -> pb.QueryWorkflowResponse:
        """The query's raw answer (the result and where it was asked)."""
        c = self._client
        req = pb.QueryWorkflowRequest(ref=self._ref, query_name=name, args=_values(args))
        resp: pb.QueryWorkflowResponse = await c._call(
            c._router.QueryWorkflow, req, timeout, "read"
        )
        self._learn(resp.location)
        return resp

    async def cancel(self, *, timeout: float | None = None) -> WorkflowLocation:
        c = self._client
        resp = await c._call(c._router.CancelWorkflow, self._ref, timeout, "connect")
        return self._learn(resp.location)

    async def outcome(self, *, timeout: float | None = None) -> WorkflowOutcome:
        """Wait (up to ``timeout``) for the run to close; how it closed."""
        c = self._client
        resp = await c._call(c._router.GetWorkflowResult, self._ref, timeout, "read")
        self._learn(resp.location)
        return WorkflowOutcome.of(resp)

    async def result(self, *, timeout: float | None = None) -> Any:
        """The run's result; ``WorkflowFailed`` when it closed without completing,
        ``DeadlineExceeded`` when it is still running after ``timeout``."""
        out = await self.outcome(timeout=timeout)
        if out.status != "COMPLETED":
            raise WorkflowFailed(
                f"workflow {self.id} {out.status}: {out.failure}",
                workflow_id=self.id,
                status=out.status,
                failure=out.failure,
            )
        return out.result


# --- for scripts ----------------------------------------------------------------------


class SyncMeridianClient:
    """``MeridianClient`` for code without an event loop (scripts, the CLI): each call
    runs the async client on a private loop. Not for use inside a running loop."""

    def __init__(self, connect: Callable[[], Awaitable[MeridianClient]]) -> None:
        self._loop = asyncio.new_event_loop()
        self._client = self._run(connect())

    @classmethod
    def connect(
        cls,
        address: str,
        *,
        tls: TLSConfig | grpc.ChannelCredentials | bool | None = None,
        token: str | None = None,
        default_timeout: float = 10.0,
        max_retries: int = 3,
    ) -> SyncMeridianClient:
        return cls(
            lambda: MeridianClient.connect(
                address, tls=tls, token=token, default_timeout=default_timeout,
                max_retries=max_retries,
            )
        )  # fmt: skip

    def _run(self, work: Awaitable[T]) -> T:
        async def wrap() -> T:
            return await work

        coro: Coroutine[Any, Any, T] = wrap()
        return self._loop.run_until_complete(coro)

    @property
    def client(self) -> MeridianClient:
        return self._client

    def close(self) -> None:
        if not self._loop.is_closed():
            self._run(self._client.close())
            self._loop.close()

    def __enter__(self) -> SyncMeridianClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start_workflow(self, workflow: str | type, *args: Any, **kwargs: Any) -> SyncWorkflowHandle:
        """As ``MeridianClient.start_workflow``."""
        return SyncWorkflowHandle(
            self, self._run(self._client.start_workflow(workflow, *args, **kwargs))
        )

    def explain(self, workflow: str | type, **kwargs: Any) -> RouteDecision:
        return self._run(self._client.explain(workflow, **kwargs))

    def get_workflow_handle(
        self, workflow_id: str, *, tenant: str, run_id: str = "", home: str = ""
    ) -> SyncWorkflowHandle:
        return SyncWorkflowHandle(
            self,
            self._client.get_workflow_handle(workflow_id, tenant=tenant, run_id=run_id, home=home),
        )

    def get_topology(self, *, timeout: float | None = None) -> pb.Topology:
        return self._run(self._client.get_topology(timeout=timeout))

    def set_active_cluster(
        self, region: str, cluster: str, **kwargs: Any
    ) -> pb.SetActiveClusterResponse:
        return self._run(self._client.set_active_cluster(region, cluster, **kwargs))


class SyncWorkflowHandle:
    """``WorkflowHandle`` for scripts; its attributes (``id``, ``decision``, ``receipt``,
    ``started``, ...) are the async handle's."""

    def __init__(self, owner: SyncMeridianClient, handle: WorkflowHandle) -> None:
        self._owner = owner
        self.handle = handle

    def __getattr__(self, name: str) -> Any:
        return getattr(self.handle, name)

    def describe(self, *, timeout: float | None = None) -> WorkflowDescription:
        return self._owner._run(self.handle.describe(timeout=timeout))

    def signal(self, name: str, *args: Any, timeout: float | None = None) -> WorkflowLocation:
        return self._owner._run(self.handle.signal(name, *args, timeout=timeout))

    def query(self, name: str, *args: Any, timeout: float | None = None) -> Any:
        return self._owner._run(self.handle.query(name, *args, timeout=timeout))

    def query_response(
        self, name: str, *args: Any, timeout: float | None = None
    ) -> pb.QueryWorkflowResponse:
        return self._owner._run(self.handle.query_response(name, *args, timeout=timeout))

    def cancel(self, *, timeout: float | None = None) -> WorkflowLocation:
        return self._owner._run(self.handle.cancel(timeout=timeout))

    def outcome(self, *, timeout: float | None = None) -> WorkflowOutcome:
        return self._owner._run(self.handle.outcome(timeout=timeout))

    def result(self, *, timeout: float | None = None) -> Any:
        return self._owner._run(self.handle.result(timeout=timeout))
