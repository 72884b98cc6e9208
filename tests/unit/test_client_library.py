"""``meridian.client`` without a Temporal cluster: its errors come from a real grpc.aio
server that aborts with the router's own status table (``router.api.status.abort``), and
its retry rules are checked against stubs that fail the way the router does."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from meridian import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    MeridianClient,
    MeridianError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    SyncMeridianClient,
    TLSConfig,
    Unavailable,
    WorkflowFailed,
)
from regions.contact_sync import ContactSyncWorkflow
from router import errors as server_errors
from router.api.status import abort
from router.v1 import router_pb2 as pb
from router.v1 import router_pb2_grpc as pb_grpc
from tests.helpers import free_port

RAISE: dict[str, server_errors.MeridianError] = {}


class Servicer(pb_grpc.WorkflowRouterServicer):
    """Every RPC aborts with the error set for it, through the router's status table."""

    async def DescribeWorkflow(self, request: Any, context: Any) -> Any:
        await abort(context, RAISE["describe"])

    async def StartWorkflow(self, request: Any, context: Any) -> Any:
        await abort(context, RAISE["start"])


@pytest.fixture(scope="module")
async def address() -> AsyncIterator[str]:
    server = grpc.aio.server()
    pb_grpc.add_WorkflowRouterServicer_to_server(Servicer(), server)  # type: ignore[abstract]
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(None)


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (server_errors.WorkflowNotFound("no such workflow", workflow_id="w"), NotFound),
        (server_errors.PermissionDenied("not yours"), PermissionDenied),
        (server_errors.ResidencyUnsatisfiable("BR is in no zone"), FailedPrecondition),
        (server_errors.NoHealthyTarget("eu-west down"), Unavailable),
        (server_errors.DeadlineExceeded("still running"), DeadlineExceeded),
        (server_errors.WorkflowIdTaken("id in use", workflow_id="w"), AlreadyExists),
    ],
    ids=["not-found", "denied", "residency", "no-healthy", "deadline", "id-taken"],
)
async def test_status_maps_to_one_hierarchy(
    address: str, raised: server_errors.MeridianError, expected: type[MeridianError]
) -> None:
    RAISE["describe"] = raised
    async with await MeridianClient.connect(address, max_retries=0) as client:
        with pytest.raises(expected) as info:
            await client.get_workflow_handle("w", tenant="acme").describe(timeout=5)
    assert isinstance(info.value, MeridianError)
    assert raised.message in str(info.value)


async def test_spent_quota_carries_the_retry_hint(address: str) -> None:
    RAISE["start"] = server_errors.QuotaExceeded("slow down", retry_after=1.25, scope="tenant")
    async with await MeridianClient.connect(address) as client:
        with pytest.raises(ResourceExhausted) as info:
            await client.start_workflow(
                ContactSyncWorkflow, {}, tenant="acme", user_country="DE", data_class="pii"
            )
    assert info.value.retry_after == 1.25


async def test_nothing_listening_is_a_connect_failure_retried_then_raised() -> None:
    async with await MeridianClient.connect(f"127.0.0.1:{free_port()}", max_retries=2) as client:
        client.retry_backoff = 0.01
        with pytest.raises(Unavailable) as info:
            await client.get_workflow_handle("w", tenant="acme").signal("pause", timeout=5)
    assert info.value.connect_failed and not info.value.safe_to_retry


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


class Flaky:
    """A WorkflowRouter stub whose StartWorkflow fails with ``failures`` first."""

    def __init__(self, *failures: grpc.aio.AioRpcError) -> None:
        self.failures = list(failures)
        self.requests: list[pb.StartWorkflowRequest] = []

    async def StartWorkflow(self, request: Any, timeout: float) -> Any:
        self.requests.append(request)
        if self.failures:
            raise self.failures.pop(0)
        return pb.StartWorkflowResponse(
            workflow_id=request.workflow_id, run_id="r1", started=True,
            decision=pb.RouteDecision(region="eu-west", receipt=pb.AuditReceipt(sequence=7)),
            receipt=pb.AuditReceipt(sequence=8),
        )  # fmt: skip

    async def GetWorkflowResult(self, request: Any, timeout: float) -> Any:
        return pb.WorkflowResult(
            workflow_id=request.workflow_id, status=pb.FAILED, failure="booking failed"
        )


SAFE = rpc_error(
    grpc.StatusCode.UNAVAILABLE,
    "start of w may have reached eu-west-a: safe to retry with the same id",
)


async def test_safe_to_retry_start_is_retried_with_the_same_generated_id() -> None:
    stub = Flaky(SAFE, SAFE)
    client = MeridianClient(stub, retry_backoff=0.001)
    handle = await client.start_workflow(
        "EchoWorkflow", 1, tenant="acme", user_country="DE", data_class="PII"
    )
    ids = {r.workflow_id for r in stub.requests}
    assert len(stub.requests) == 3 and ids == {handle.id} and handle.id.startswith("wf-")
    assert handle.started is True and handle.decision is not None
    assert handle.decision.region == "eu-west" and handle.decision.receipt is not None
    assert handle.decision.receipt.sequence == 7
    assert handle.receipt is not None and handle.receipt.sequence == 8


@pytest.mark.parametrize(
    "failure",
    [
        rpc_error(grpc.StatusCode.UNAVAILABLE, "audit log unavailable: disk full"),
        rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"),
        rpc_error(grpc.StatusCode.INTERNAL, "boom"),
    ],
    ids=["unavailable-not-safe", "deadline", "internal"],
)
async def test_other_start_failures_are_never_retried(failure: grpc.aio.AioRpcError) -> None:
    stub = Flaky(failure)
    client = MeridianClient(stub, retry_backoff=0.001)
    with pytest.raises(MeridianError):
        await client.start_workflow(
            "EchoWorkflow", id="x", tenant="acme", user_country="DE", data_class="pii"
        )
    assert len(stub.requests) == 1


async def test_retries_are_bounded() -> None:
    stub = Flaky(*[SAFE] * 10)
    client = MeridianClient(stub, retry_backoff=0.001, max_retries=3)
    with pytest.raises(Unavailable) as info:
        await client.start_workflow(
            "EchoWorkflow", id="x", tenant="acme", user_country="DE", data_class="pii"
        )
    assert info.value.safe_to_retry and len(stub.requests) == 4


def test_sync_client_and_failed_result() -> None:
    async def make() -> MeridianClient:
        return MeridianClient(Flaky())

    with SyncMeridianClient(make) as client:
        handle = client.start_workflow(
            "PropertyBookingWorkflow", {}, id="b1", tenant="acme", user_country="DE",
            data_class="financial",
        )  # fmt: skip
        assert handle.id == "b1" and handle.decision.region == "eu-west"
        with pytest.raises(WorkflowFailed) as info:
            handle.result()
    assert info.value.status == "FAILED" and info.value.failure == "booking failed"


def test_bad_arguments_fail_before_sending() -> None:
    with pytest.raises(ValueError, match="data_class"):
        SyncMeridianClient(_client).start_workflow(
            "EchoWorkflow", tenant="acme", user_country="DE", data_class="secret"
        )
    with pytest.raises(TypeError, match="workflow type"):
        SyncMeridianClient(_client).start_workflow(
            object, tenant="acme", user_country="DE", data_class="pii"
        )


async def _client() -> MeridianClient:
    return MeridianClient(Flaky())


async def test_token_needs_tls() -> None:
    with pytest.raises(ValueError, match="only over TLS"):
        await MeridianClient.connect("127.0.0.1:1", token="abc")
    tls = TLSConfig.dev_identity("acme", home="/tmp/h")
    assert str(tls.cert_file) == "/tmp/h/tls/acme.pem"
    # Missing files: the client's own error, naming the file and where dev files are.
    with pytest.raises(MeridianError, match=r"/tmp/h/tls/ca.pem does not exist.*MERIDIAN_HOME"):
        await MeridianClient.connect("127.0.0.1:1", tls=tls)


class Homes(pb_grpc.WorkflowRouterServicer):
    """Answers with home references and records the ones it is sent."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def StartWorkflow(self, request: Any, context: Any) -> Any:
        return pb.StartWorkflowResponse(
            workflow_id=request.workflow_id, run_id="r1", started=True, home="from-start"
        )

    async def DescribeWorkflow(self, request: Any, context: Any) -> Any:
        self.sent.append(request.home)
        return pb.DescribeWorkflowResponse(
            workflow_id=request.workflow_id, location=pb.WorkflowLocation(home="from-describe")
        )

    async def SignalWorkflow(self, request: Any, context: Any) -> Any:
        self.sent.append(request.ref.home)
        return pb.SignalWorkflowResponse(location=pb.WorkflowLocation(home="from-signal"))


async def test_handles_keep_the_home_reference_and_send_it_back() -> None:
    homes = Homes()  # type: ignore[abstract]
    server = grpc.aio.server()
    pb_grpc.add_WorkflowRouterServicer_to_server(homes, server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        async with await MeridianClient.connect(f"127.0.0.1:{port}") as client:
            started = await client.start_workflow(
                "EchoWorkflow", tenant="acme", user_country="DE", data_class="pii"
            )
            assert started.home == "from-start"
            await started.describe(timeout=5)
            await started.signal("pause", timeout=5)
            # A handle made from a kept reference sends it; one without learns it.
            kept = client.get_workflow_handle(started.id, tenant="acme", home="kept")
            await kept.describe(timeout=5)
            bare = client.get_workflow_handle(started.id, tenant="acme")
            await bare.describe(timeout=5)
            await bare.describe(timeout=5)
        assert homes.sent == ["from-start", "from-describe", "kept", "", "from-describe"]
    finally:
        await server.stop(None)
