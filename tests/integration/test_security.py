"""Who is asking, checked through real gRPC ports: the dev stack (mTLS with its
development identities, deny by default) and a second router (`meridian serve`) in front
of the same clusters that takes JWT bearer tokens over TLS, with tight quotas and a
policy that changes live.

Every check is made on the wire (status codes, messages) and at the source (the audit
log on disk, the clusters themselves)."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf.descriptor import FieldDescriptor
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.fleet import Replica
from router.api.values import from_python
from router.audit.query import records
from router.auth.jwt import jwks_document
from router.tls import channel_credentials, ensure_dev_pki
from router.v1 import router_pb2 as pb
from router.v1 import router_pb2_grpc as pb_grpc
from tests.helpers import eventually
from tests.integration.conftest import Clusters, DevProcess
from tests.integration.test_routing import start_req

pytestmark = pytest.mark.integration


async def code_of(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code(), info.value.details() or ""


def denied_records(dev: DevProcess, principal: str) -> list[dict[str, Any]]:
    return [
        r
        for r in records([dev.home / "audit"])
        if r["kind"] == "auth.denied" and r.get("principal") == principal
    ]


# -- the dev stack: mTLS identities ------------------------------------------------------


async def test_a_caller_without_a_certificate_never_reaches_the_router(dev: DevProcess) -> None:
    """The dev stack's port demands a client certificate of its CA: a plaintext caller,
    or a TLS caller without a certificate, fails before any RPC runs."""
    tls = dev.home / "tls"
    for channel in (
        grpc.aio.insecure_channel(dev.router),
        grpc.aio.secure_channel(dev.router, channel_credentials(tls / "ca.pem", None, None)),
    ):
        async with channel:
            stub = pb_grpc.WorkflowRouterStub(channel)
            code, _ = await code_of(stub.StartWorkflow(start_req("DE"), timeout=5))
            assert code is grpc.StatusCode.UNAVAILABLE


async def test_acme_may_not_start_for_globex_and_is_audited(
    dev: DevProcess, clusters: Clusters
) -> None:
    async with dev.channel("acme") as channel:
        stub = pb_grpc.WorkflowRouterStub(channel)
        own = await stub.StartWorkflow(start_req("DE", tenant="acme"), timeout=10)
        assert own.started
        assert await clusters.holding(own.workflow_id) == {own.decision.cluster}
        req = start_req("DE", tenant="globex")
        code, details = await code_of(stub.StartWorkflow(req, timeout=10))
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert details == "principal spiffe://meridian.local/acme may not act for tenant globex"
    assert await clusters.holding(req.workflow_id) == set(), "nothing was started"

    async def audited() -> list[dict[str, Any]]:
        return denied_records(dev, "spiffe://meridian.local/acme")

    (record,) = (await eventually(audited, "the denial in the audit log"))[:1]
    assert record["auth"] == "mtls" and record["rpcs"] == {"StartWorkflow": 1}
    decisions = [
        r for r in records([dev.home / "audit"]) if r.get("workflow_id") == req.workflow_id
    ]
    assert decisions == [], "a denied start is never routed or decided"


async def test_acme_may_not_read_globex_workflows_nor_learn_they_exist(
    dev: DevProcess, router: pb_grpc.WorkflowRouterStub
) -> None:
    req = start_req("DE", tenant="globex", workflow_type="DataProcessingWorkflow",
                    args=[{"items": 30, "delay_ms": 200}])  # fmt: skip
    await router.StartWorkflow(req, timeout=10)
    async with dev.channel("acme") as channel:
        stub = pb_grpc.WorkflowRouterStub(channel)
        answers = []
        for wid in (req.workflow_id, f"nope-{uuid.uuid4()}"):
            ref = pb.WorkflowRef(workflow_id=wid, tenant_id="globex")
            answers.append(await code_of(stub.DescribeWorkflow(ref, timeout=10)))
            code, _ = await code_of(stub.CancelWorkflow(ref, timeout=10))
            assert code is grpc.StatusCode.PERMISSION_DENIED
        # The same answer whether or not the workflow exists: nothing leaks.
        assert answers[0] == answers[1]
        assert answers[0][0] is grpc.StatusCode.PERMISSION_DENIED
        # Naming its own tenant for globex's workflow: the memo decides, NOT_FOUND.
        ref = pb.WorkflowRef(workflow_id=req.workflow_id, tenant_id="acme")
        code, _ = await code_of(stub.DescribeWorkflow(ref, timeout=10))
        assert code is grpc.StatusCode.NOT_FOUND
    desc = await router.DescribeWorkflow(
        pb.WorkflowRef(workflow_id=req.workflow_id, tenant_id="globex"), timeout=10
    )
    assert desc.status == pb.RUNNING, "acme's cancel did nothing"


async def test_only_sre_flips_and_the_flip_names_the_sre(
    dev: DevProcess, admin: pb_grpc.RoutingAdminStub
) -> None:
    flip = pb.SetActiveClusterRequest(
        region="ap-southeast", cluster="ap-southeast-b", reason="security test",
        actor="ceo@corp",
    )  # fmt: skip
    async with dev.channel("service") as channel:
        code, details = await code_of(
            pb_grpc.RoutingAdminStub(channel).SetActiveCluster(flip, timeout=10)
        )
    assert code is grpc.StatusCode.PERMISSION_DENIED and "needs role sre" in details
    out = await admin.SetActiveCluster(flip, timeout=10)
    assert out.changed and out.after.last_flip.actor == "spiffe://meridian.local/sre"
    assert out.after.last_flip.on_behalf_of == "ceo@corp", "kept, as what it is"
    back = pb.SetActiveClusterRequest(
        region="ap-southeast", cluster="ap-southeast-a", reason="security test back", force=True
    )
    await admin.SetActiveCluster(back, timeout=10)
    flips = [r for r in records([dev.home / "audit"]) if r.get("reason") == "security test"]
    assert [(r["outcome"], r["actor"], r["auth"]) for r in flips] == [
        ("done", "spiffe://meridian.local/sre", "mtls")
    ]


async def test_oversized_messages_are_refused_clearly_and_the_router_keeps_serving(
    router: pb_grpc.WorkflowRouterStub, clusters: Clusters
) -> None:
    big = start_req("DE", args=["x" * (6 * 1024 * 1024)])
    code, details = await code_of(router.StartWorkflow(big, timeout=30))
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details
    over_limit = start_req("DE", args=["x" * (3 * 1024 * 1024)])
    code, details = await code_of(router.StartWorkflow(over_limit, timeout=30))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and details.startswith("args: encoded size")
    assert await clusters.holding(over_limit.workflow_id) == set(), "nothing was started"
    ok = await router.StartWorkflow(start_req("DE"), timeout=10)
    assert ok.started and await clusters.holding(ok.workflow_id) == {ok.decision.cluster}


# -- a second router: TLS + JWT bearer tokens, quotas, a live policy -----------------------

ISSUER, AUDIENCE = "https://idp.test", "meridian"


@dataclass
class JwtRouter:
    replica: Replica
    key: ec.EllipticCurvePrivateKey
    overlay: Path
    policy: dict[str, Any]
    credentials: grpc.ChannelCredentials

    def token(self, sub: str, **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now, "exp": now + 300}
        body.update(claims)
        return jwt.encode(body, self.key, algorithm="ES256", headers={"kid": "test-1"})

    def channel(self) -> grpc.aio.Channel:
        return grpc.aio.secure_channel(self.replica.address, self.credentials)

    def write_policy(self) -> None:
        self.overlay.write_text(yaml.safe_dump(self.policy))


@pytest.fixture(scope="module")
async def jwt_router(
    dev: DevProcess, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[JwtRouter]:
    home = tmp_path_factory.mktemp("jwt-router")
    ensure_dev_pki(home / "tls")
    key = ec.generate_private_key(ec.SECP256R1())
    (home / "jwks.json").write_text(jwks_document({"test-1": key.public_key()}))
    policy: dict[str, Any] = {
        "server": {"tls": {
            "cert_file": str(home / "tls" / "server.pem"),
            "key_file": str(home / "tls" / "server-key.pem"),
        }},
        "auth": {
            "enabled": True,
            "jwt": {"jwks_file": str(home / "jwks.json"), "issuer": ISSUER, "audience": AUDIENCE},
            "principals": {"alice": {"tenants": ["acme"]}},
        },
        "quotas": {"tenants": {"quota-tenant": {"rate_per_s": 0.2, "burst": 2}}},
    }  # fmt: skip
    overlay = home / "overlay.yaml"
    overlay.write_text(yaml.safe_dump(policy))
    replica = Replica("jwt-router", home)
    replica.start(dev.home / "config.yaml", dev.home / "keys", ["--overlay", str(overlay)])
    credentials = channel_credentials(home / "tls" / "ca.pem", None, None)
    try:
        await replica.wait_serving(credentials=credentials)
        yield JwtRouter(replica, key, overlay, policy, credentials)
    finally:
        replica.stop()


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


async def test_without_a_token_or_with_a_bad_one_it_is_unauthenticated(
    jwt_router: JwtRouter,
) -> None:
    j = jwt_router
    now = int(time.time())
    bad = {
        "none": None,
        "expired": j.token("alice", exp=now - 120, iat=now - 600),
        "wrong issuer": j.token("alice", iss="https://evil.test"),
        "wrong audience": j.token("alice", aud="someone-else"),
    }
    async with j.channel() as channel:
        stub = pb_grpc.WorkflowRouterStub(channel)
        for name, token in bad.items():
            md = bearer(token) if token else None
            code, details = await code_of(
                stub.StartWorkflow(start_req("DE"), timeout=10, metadata=md)
            )
            assert code is grpc.StatusCode.UNAUTHENTICATED, (name, code, details)
            if token:
                assert token not in details
        resp = await stub.StartWorkflow(
            start_req("DE"), timeout=10, metadata=bearer(j.token("alice"))
        )
        assert resp.started and resp.decision.region == "eu-west"
    failures = [r for r in records([j.replica.audit_dir]) if r["kind"] == "auth.failure"]
    assert failures and failures[0]["component"] == "router", "refusals are audited"
    decided = [
        r for r in records([j.replica.audit_dir]) if r.get("workflow_id") == resp.workflow_id
    ]
    assert {r["principal"] for r in decided} == {"alice"} and decided[0]["auth"] == "jwt"


async def test_a_spent_quota_is_resource_exhausted_with_a_retry_hint(
    jwt_router: JwtRouter,
) -> None:
    j = jwt_router
    j.policy["auth"]["principals"]["quota-caller"] = {"tenants": ["quota-tenant"]}
    j.write_policy()
    os.kill(j.replica.pid, signal.SIGHUP)
    md = bearer(j.token("quota-caller"))
    async with j.channel() as channel:
        stub = pb_grpc.WorkflowRouterStub(channel)

        async def allowed() -> bool:
            try:
                await stub.StartWorkflow(start_req("US", tenant="quota-tenant"), timeout=10,
                                         metadata=md)  # fmt: skip
            except grpc.aio.AioRpcError as exc:
                return exc.code() is not grpc.StatusCode.PERMISSION_DENIED
            return True

        await eventually(allowed, "the new grant, applied live by SIGHUP")
        codes = []
        for _ in range(4):
            try:
                await stub.StartWorkflow(start_req("US", tenant="quota-tenant"), timeout=10,
                                         metadata=md)  # fmt: skip
                codes.append("OK")
            except grpc.aio.AioRpcError as exc:
                codes.append(exc.code().name)
                last = exc
        assert "RESOURCE_EXHAUSTED" in codes, codes
    status = rpc_status.from_call(last)
    assert status is not None
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info) and info.retry_delay.ToTimedelta().total_seconds() > 0
    trailers = dict(last.trailing_metadata() or ())
    assert float(trailers["retry-after"]) > 0
    assert "quota of tenant quota-tenant exceeded" in (last.details() or "")


async def test_a_policy_change_applies_live(jwt_router: JwtRouter) -> None:
    j = jwt_router
    md = bearer(j.token("bob"))
    async with j.channel() as channel:
        stub = pb_grpc.WorkflowRouterStub(channel)
        code, _ = await code_of(stub.ExplainRoute(start_req("DE"), timeout=10, metadata=md))
        assert code is grpc.StatusCode.PERMISSION_DENIED
        j.policy["auth"]["principals"]["bob"] = {"tenants": ["acme"], "rpcs": ["ExplainRoute"]}
        j.write_policy()
        os.kill(j.replica.pid, signal.SIGHUP)

        async def granted() -> bool:
            try:
                await stub.ExplainRoute(start_req("DE"), timeout=10, metadata=md)
            except grpc.aio.AioRpcError:
                return False
            return True

        await eventually(granted, "bob's grant applied by SIGHUP")
        code, details = await code_of(stub.StartWorkflow(start_req("DE"), timeout=10, metadata=md))
        assert code is grpc.StatusCode.PERMISSION_DENIED and "StartWorkflow" in details
    changes = [r for r in records([j.replica.audit_dir]) if r["kind"] == "config.change"]
    assert changes[-1]["outcome"] == "accepted"
    assert json.dumps(changes).count("accepted") >= 2


# -- robustness: every RPC, arbitrary field values and sizes, with and without credentials --

REAL = ["acme", "globex", "DE", "us-east", "eu-west-b", "EchoWorkflow", "getStatus", ""]
TEXT = st.one_of(
    st.sampled_from(REAL),
    st.text(max_size=40),
    st.text(min_size=1000, max_size=5000),
)
SCALARS = st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers(-(2**53), 2**53)
JSON = st.recursive(
    SCALARS | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=10,
)


def message_of(cls: Any, depth: int = 0) -> st.SearchStrategy[Any]:
    """Any message of this type: each field set or not, to arbitrary values."""
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for f in cls.DESCRIPTOR.fields:
        value: st.SearchStrategy[Any]
        if f.message_type is not None and f.message_type.full_name == "google.protobuf.Value":
            value = JSON.map(from_python)
        elif f.message_type is not None:
            if depth > 2:
                continue
            value = message_of(type(getattr(cls(), f.name)), depth + 1)
        elif f.type == FieldDescriptor.TYPE_STRING:
            value = TEXT
        elif f.type == FieldDescriptor.TYPE_BOOL:
            value = st.booleans()
        elif f.type == FieldDescriptor.TYPE_ENUM:
            value = st.integers(-3, 12)  # proto3 enums are open: unknown numbers too
        else:
            value = st.integers(0, 2**31)
        if f.is_repeated:
            value = st.lists(value, max_size=3)
        fields[f.name] = st.one_of(st.none(), value)

    def build(values: dict[str, Any]) -> Any:
        msg = cls()
        for name, v in values.items():
            if v is None:
                continue
            field = getattr(msg, name)
            if isinstance(v, list):
                for item in v:
                    if hasattr(item, "DESCRIPTOR"):
                        field.add().CopyFrom(item)
                    else:
                        field.append(item)
            elif hasattr(v, "DESCRIPTOR"):
                field.CopyFrom(v)
            else:
                setattr(msg, name, v)
        return msg

    return st.fixed_dictionaries(fields).map(build)


RPCS = [
    (service, method.name, getattr(pb, method.input_type.name))
    for service in ("WorkflowRouter", "RoutingAdmin")
    for method in pb.DESCRIPTOR.services_by_name[service].methods
]
STUBS: dict[str, Any] = {
    "WorkflowRouter": pb_grpc.WorkflowRouterStub,
    "RoutingAdmin": pb_grpc.RoutingAdminStub,
}
NEVER = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DEADLINE_EXCEEDED}


@pytest.fixture(scope="module")
async def channels(
    dev: DevProcess, jwt_router: JwtRouter
) -> AsyncIterator[tuple[grpc.aio.Channel, grpc.aio.Channel]]:
    async with dev.channel("acme") as mtls, jwt_router.channel() as tls:
        yield mtls, tls


@pytest.mark.parametrize(("service", "rpc", "request_type"), RPCS, ids=[r[1] for r in RPCS])
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
async def test_any_request_gets_a_clear_answer(
    channels: tuple[grpc.aio.Channel, grpc.aio.Channel],
    jwt_router: JwtRouter,
    service: str,
    rpc: str,
    request_type: Any,
    data: st.DataObject,
) -> None:
    """Arbitrary field values and sizes, as an mTLS identity (acme), as a JWT caller,
    and with no credentials: never UNKNOWN/INTERNAL, never a hang (every answer before
    the deadline). Admin requests never name a real region, so nothing is flipped."""
    request = data.draw(message_of(request_type))
    if rpc == "SetActiveCluster":
        request.region = "fuzz-" + request.region
    mtls, tls = channels
    token = bearer(jwt_router.token("alice"))
    for channel, metadata in ((mtls, None), (tls, token), (tls, None)):
        call = getattr(STUBS[service](channel), rpc)
        try:
            await call(request, timeout=15, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            assert exc.code() not in NEVER, (rpc, exc.code(), exc.details())
            if metadata is None and channel is tls:
                assert exc.code() is grpc.StatusCode.UNAUTHENTICATED
        else:
            assert not (metadata is None and channel is tls), "no credentials, yet served"


async def test_the_router_serves_after_the_fuzz(
    router: pb_grpc.WorkflowRouterStub, clusters: Clusters
) -> None:
    ok = await router.StartWorkflow(start_req("DE"), timeout=10)
    assert ok.started and await clusters.holding(ok.workflow_id) == {ok.decision.cluster}
