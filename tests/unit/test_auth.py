"""Authentication, authorization, quotas and the aggregated audit of denials, without a
server: JWTs signed here and verified against a JWKS file, the pure policy as a table,
token buckets with a test clock."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from router.auth.denials import DenialLog
from router.auth.identity import Authenticator
from router.auth.jwt import jwks_document
from router.auth.quotas import Quotas
from router.config import compile_config
from router.config.settings import AuthSettings, JWTSettings, QuotaSettings
from router.core.authz import (
    AuthMethod,
    AuthPolicy,
    Grant,
    Principal,
    Request,
    Role,
    authorize,
)
from router.core.model import DataClass
from router.core.quota import Bucket, Quota, take
from router.errors import ConfigError, QuotaExceeded, Unauthenticated
from tests.helpers import default_doc
from tests.unit.seams import Audit

# -- the policy ------------------------------------------------------------------------

POLICY = AuthPolicy(
    enabled=True,
    grants={
        "service": Grant(tenants=("*",)),
        "acme": Grant(tenants=("acme",), data_classes=frozenset({DataClass.PUBLIC, DataClass.PII})),
        "reader": Grant(rpcs=frozenset({"DescribeWorkflow"}), tenants=("acme-*",)),
        "batch": Grant(tenants=("*",), workflow_types=("Batch*",)),
        "sre": Grant(roles=frozenset({Role.SRE})),
        "viewer": Grant(roles=frozenset({Role.VIEWER})),
    },
)


def who(name: str, roles: frozenset[Role] = frozenset()) -> Principal:
    return Principal(name, AuthMethod.MTLS, roles)


START = "StartWorkflow"


@pytest.mark.parametrize(
    ("principal", "req", "denied"),
    [
        (who("service"), Request(START, "globex", "EchoWorkflow", DataClass.PII), ""),
        (who("service"), Request("CancelWorkflow", "globex"), ""),
        (who("service"), Request("SetActiveCluster"), "needs role sre"),
        (who("service"), Request("GetTopology"), "needs role sre or viewer"),
        (who("acme"), Request(START, "acme", "EchoWorkflow", DataClass.PII), ""),
        (who("acme"), Request(START, "globex", "EchoWorkflow", DataClass.PII), "tenant globex"),
        (who("acme"), Request("DescribeWorkflow", "globex"), "tenant globex"),
        (who("acme"), Request(START, "acme", "EchoWorkflow", DataClass.FINANCIAL), "financial"),
        (who("reader"), Request("DescribeWorkflow", "acme-eu"), ""),
        (who("reader"), Request("DescribeWorkflow", "acme"), "tenant acme"),
        (who("reader"), Request("SignalWorkflow", "acme-eu"), "may not call SignalWorkflow"),
        (who("batch"), Request(START, "t", "BatchExport", DataClass.PUBLIC), ""),
        (who("batch"), Request(START, "t", "EchoWorkflow", DataClass.PUBLIC), "workflow type"),
        (who("sre"), Request("SetActiveCluster"), ""),
        (who("sre"), Request("GetTopology"), ""),
        (who("sre"), Request(START, "acme", "EchoWorkflow", DataClass.PUBLIC), "tenant acme"),
        (who("viewer"), Request("GetTopology"), ""),
        (who("viewer"), Request("SetActiveCluster"), "needs role sre"),
        (who("stranger"), Request("DescribeWorkflow", "acme"), "may not call"),
        (who("stranger"), Request("GetTopology"), "needs role"),
        # A JWT's roles claim grants roles, never tenants.
        (who("stranger", frozenset({Role.SRE})), Request("SetActiveCluster"), ""),
        (who("stranger", frozenset({Role.SRE})), Request("DescribeWorkflow", "a"), "may not"),
        (who("service"), Request("NoSuchRpc"), "may not call NoSuchRpc"),
    ],
)
def test_policy(principal: Principal, req: Request, denied: str) -> None:
    denial = authorize(POLICY, principal, req)
    if not denied:
        assert denial is None
    else:
        assert denial is not None and denied in denial.message
        assert principal.name in denial.message


def test_off_allows_everything() -> None:
    assert authorize(AuthPolicy(enabled=False), who("x"), Request("SetActiveCluster")) is None


def test_policy_compiles_from_config_with_every_error_named() -> None:
    doc = default_doc()
    config = compile_config(doc)
    grant = config.auth.policy.grants["spiffe://meridian.local/acme"]
    assert grant.tenants == ("acme",) and config.auth.enabled
    doc["auth"]["principals"]["x"] = {"rpcs": ["SetActiveCluster"], "roles": ["root"]}
    doc["auth"]["jwt"] = {"issuer": "i", "audience": "a"}
    with pytest.raises(ConfigError) as info:
        compile_config(doc)
    text = str(info.value)
    assert "auth.principals.x.rpcs[0]" in text and "auth.principals.x.roles[0]" in text
    assert "auth.jwt: give exactly one of jwks_file and jwks_url" in text


# -- quotas ------------------------------------------------------------------------------


def test_token_bucket() -> None:
    q = Quota(rate=2.0, burst=2)
    b = Bucket.full(q, 0.0)
    b, w1 = take(b, q, 0.0)
    b, w2 = take(b, q, 0.0)
    b, w3 = take(b, q, 0.0)
    assert (w1, w2) == (0.0, 0.0) and w3 == pytest.approx(0.5)
    b, w4 = take(b, q, 0.5)
    assert w4 == 0.0, "refilled at 2/s"


def test_quotas_charge_both_buckets_only_when_both_allow() -> None:
    now = [0.0]
    quotas = Quotas(clock=lambda: now[0])
    settings = QuotaSettings(
        tenant=Quota(100, 100), principal=None, tenants={"small": Quota(1, 1)},
        principals={"tight": Quota(1, 1)},
    )  # fmt: skip
    quotas.check(settings, tenant="small", principal="p")
    with pytest.raises(QuotaExceeded) as info:
        quotas.check(settings, tenant="small", principal="p")
    assert info.value.scope == "tenant" and info.value.retry_after == pytest.approx(1.0)
    assert "retry in 1.00 s" in info.value.message
    quotas.check(settings, tenant="big", principal="tight")
    with pytest.raises(QuotaExceeded) as info:
        quotas.check(settings, tenant="big", principal="tight")
    assert info.value.scope == "principal"
    assert quotas.exceeded == {"tenant": 1, "principal": 1}
    now[0] = 1.0
    quotas.check(settings, tenant="small", principal="tight")


# -- JWT ---------------------------------------------------------------------------------

ISSUER, AUDIENCE = "https://idp.example", "meridian"


class Issuer:
    """Signs tokens; its public keys are in a JWKS file."""

    def __init__(self, tmp: Path) -> None:
        self.keys: dict[str, Any] = {
            "rsa-1": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "ec-1": ec.generate_private_key(ec.SECP256R1()),
            "ed-1": ed25519.Ed25519PrivateKey.generate(),
        }
        self.jwks = tmp / "jwks.json"
        self.jwks.write_text(jwks_document({k: v.public_key() for k, v in self.keys.items()}))

    def token(self, kid: str = "rsa-1", alg: str = "RS256", **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now, "exp": now + 60}
        body.update(claims)
        return jwt.encode(body, self.keys[kid], algorithm=alg, headers={"kid": kid})


def settings(jwks: Path, **kw: Any) -> AuthSettings:
    j = JWTSettings(
        jwks_file=jwks, jwks_url=None, issuer=ISSUER, audience=AUDIENCE,
        algorithms=("RS256", "ES256", "EdDSA"), leeway=5.0, principal_claim="sub",
        roles_claim="roles",
    )  # fmt: skip
    return AuthSettings(
        policy=POLICY, identity=("uri_san",), jwt=replace(j, **kw), denial_audit_interval=10
    )


@pytest.fixture
def issuer(tmp_path: Path) -> Issuer:
    return Issuer(tmp_path)


@pytest.mark.parametrize(("kid", "alg"), [("rsa-1", "RS256"), ("ec-1", "ES256"), ("ed-1", "EdDSA")])
async def test_a_valid_token_names_the_principal_and_its_roles(
    issuer: Issuer, kid: str, alg: str
) -> None:
    token = issuer.token(kid, alg, roles=["sre", "unknown-role"])
    p = await Authenticator().authenticate(
        settings(issuer.jwks), peer_identity="spiffe://x/svc", authorization=f"Bearer {token}"
    )
    assert (p.name, p.method, p.roles) == ("alice", AuthMethod.JWT, frozenset({Role.SRE}))
    assert p.peer_identity == "spiffe://x/svc"


def _foreign() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "exp": now + 60}
    return jwt.encode(body, key, algorithm="RS256", headers={"kid": "not-in-jwks"})


def _tamper(token: str) -> str:
    head, body, sig = token.split(".")
    body = jwt.utils.base64url_encode(
        jwt.utils.base64url_decode(body).replace(b"alice", b"admin")
    ).decode()
    return ".".join((head, body, sig))


def _hs256(i: Issuer) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "exp": now + 60}
    return jwt.encode(body, "secret" * 8, algorithm="HS256", headers={"kid": "rsa-1"})


BAD_TOKENS: list[tuple[str, Callable[[Issuer], str], str]] = [
    ("expired", lambda i: i.token(exp=int(time.time()) - 60), "expired"),
    ("not yet valid", lambda i: i.token(nbf=int(time.time()) + 60), "not valid yet"),
    ("wrong issuer", lambda i: i.token(iss="https://evil.example"), "wrong issuer"),
    ("wrong audience", lambda i: i.token(aud="other"), "another audience"),
    ("no principal", lambda i: i.token(sub=""), "no sub claim"),
    ("unknown key", lambda i: _foreign(), "key the JWKS does not hold"),
    ("tampered", lambda i: _tamper(i.token()), "invalid"),
    ("hs256 with a public key", _hs256, "not allowed"),
    ("garbage", lambda i: "not-a-jwt", "malformed"),
]


@pytest.mark.parametrize(("name", "make", "why"), BAD_TOKENS, ids=[b[0] for b in BAD_TOKENS])
async def test_bad_tokens_are_unauthenticated(
    issuer: Issuer, name: str, make: Callable[[Issuer], str], why: str
) -> None:
    token = make(issuer)
    with pytest.raises(Unauthenticated) as info:
        await Authenticator().authenticate(
            settings(issuer.jwks), peer_identity="spiffe://x/svc", authorization=f"Bearer {token}"
        )
    assert why in info.value.message
    assert token not in info.value.message, "a token is never echoed"


async def test_no_credentials_or_a_non_bearer_header(issuer: Issuer) -> None:
    authn = Authenticator()
    with pytest.raises(Unauthenticated, match="no credentials"):
        await authn.authenticate(settings(issuer.jwks), peer_identity=None, authorization=None)
    with pytest.raises(Unauthenticated, match="not a bearer token"):
        await authn.authenticate(
            settings(issuer.jwks), peer_identity=None, authorization="Basic YTpi"
        )
    p = await authn.authenticate(
        settings(issuer.jwks), peer_identity="spiffe://x/acme", authorization=None
    )
    assert (p.name, p.method) == ("spiffe://x/acme", AuthMethod.MTLS)


async def test_a_rotated_jwks_file_is_read_again(issuer: Issuer, tmp_path: Path) -> None:
    authn = Authenticator()
    s = settings(issuer.jwks)
    await authn.authenticate(s, peer_identity=None, authorization=f"Bearer {issuer.token()}")
    new = ec.generate_private_key(ec.SECP256R1())
    issuer.keys["ec-2"] = new
    issuer.jwks.write_text(jwks_document({"ec-2": new.public_key()}))
    token = issuer.token("ec-2", "ES256")
    p = await authn.authenticate(s, peer_identity=None, authorization=f"Bearer {token}")
    assert p.name == "alice"
    with pytest.raises(Unauthenticated):  # the old key left the JWKS
        await authn.authenticate(s, peer_identity=None, authorization=f"Bearer {issuer.token()}")


# -- denials in the audit log ---------------------------------------------------------


async def test_denials_are_audited_once_per_principal_per_interval() -> None:
    audit = Audit()
    now = [100.0]
    denials = DenialLog(audit, clock=lambda: now[0], wall=lambda: 1_700_000_000.0)
    for i in range(500):
        await denials.record("auth.denied", "acme", auth="mtls", rpc="StartWorkflow",
                             reason=f"may not act for tenant t{i % 3}", interval=10)  # fmt: skip
    await denials.record("auth.denied", "other", auth="jwt", rpc="GetTopology",
                         reason="needs role", interval=10)  # fmt: skip
    records = audit.journal.records("auth.denied")
    assert [(r["principal"], r["count"], r["aggregated"]) for r in records] == [
        ("acme", 1, False), ("other", 1, False),
    ]  # fmt: skip
    now[0] += 10
    await denials.flush(interval=10)
    records = audit.journal.records("auth.denied")
    assert len(records) == 3
    rest = records[-1]
    assert (rest["principal"], rest["count"], rest["aggregated"]) == ("acme", 499, True)
    assert rest["rpcs"] == {"StartWorkflow": 499} and sum(rest["reasons"].values()) == 499
    assert denials.counts["auth.denied"] == 501


async def test_denials_of_too_many_callers_share_one_bucket() -> None:
    audit = Audit()
    denials = DenialLog(audit, max_keys=3, clock=lambda: 0.0)
    for i in range(50):
        await denials.record("auth.failure", f"ipv4:10.0.0.{i}", auth="none", rpc="X",
                             reason="no credentials", interval=10)  # fmt: skip
    await denials.flush(interval=10, force=True)
    records = audit.journal.records("auth.failure")
    assert len(records) <= 5 and sum(r["count"] for r in records) == 50


def test_default_config_is_secure_by_default() -> None:
    doc = yaml.safe_load(Path("config/default.yaml").read_text())
    assert doc["auth"]["enabled"] is True
