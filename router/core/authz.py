"""Authorization: deny by default. Pure: a principal, an RPC and what it touches in,
allowed or a denial out.

A principal is named by its certificate identity (mTLS) or by a JWT claim; the policy
(config ``auth.principals``) grants it RPCs, tenants (globs), workflow types (globs),
data classes and roles. Roles carry fixed meanings: RoutingAdmin's flips need ``sre``;
reading the topology needs ``sre`` or ``viewer``; ``auditor`` is reserved for auditor
endpoints. A JWT's roles claim adds roles; it never adds tenants.

A denial's message names what the principal may not do, in the caller's own terms (the
RPC, the tenant it named): it never says whether a tenant or a workflow exists.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from router.core.model import DataClass


class Role(enum.Enum):
    SRE = "sre"
    VIEWER = "viewer"
    AUDITOR = "auditor"


class AuthMethod(enum.Enum):
    MTLS = "mtls"
    JWT = "jwt"
    # Auth is off: the caller is whoever it says it is (plaintext development only).
    NONE = "none"


WORKFLOW_RPCS = frozenset(
    {
        "StartWorkflow",
        "ExplainRoute",
        "DescribeWorkflow",
        "SignalWorkflow",
        "QueryWorkflow",
        "CancelWorkflow",
        "GetWorkflowResult",
    }
)
# RoutingAdmin RPCs and the roles any one of which allows them.
ADMIN_RPCS: Mapping[str, frozenset[Role]] = {
    "GetTopology": frozenset({Role.SRE, Role.VIEWER}),
    "SetActiveCluster": frozenset({Role.SRE}),
}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking, as authenticated (never as self-asserted)."""

    name: str
    method: AuthMethod
    # Roles the credential itself carries (a JWT's roles claim).
    roles: frozenset[Role] = frozenset()
    # The certificate identity of the connection, when a token named someone else.
    peer_identity: str = ""


@dataclass(frozen=True, slots=True)
class Grant:
    rpcs: frozenset[str] = WORKFLOW_RPCS
    tenants: tuple[str, ...] = ()
    workflow_types: tuple[str, ...] = ("*",)
    data_classes: frozenset[DataClass] = frozenset(DataClass)
    roles: frozenset[Role] = frozenset()


@dataclass(frozen=True, slots=True)
class AuthPolicy:
    enabled: bool = True
    grants: Mapping[str, Grant] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Request:
    """What an RPC touches, as far as authorization cares (empty: not named; the
    request's own validation rejects what is required and missing)."""

    rpc: str
    tenant: str = ""
    workflow_type: str = ""
    data_class: DataClass | None = None


@dataclass(frozen=True, slots=True)
class Denial:
    message: str


def _matches(value: str, globs: tuple[str, ...]) -> bool:
    return any(fnmatchcase(value, g) for g in globs)


def authorize(policy: AuthPolicy, principal: Principal, req: Request) -> Denial | None:
    """None when ``principal`` may make ``req``; else why not."""
    if not policy.enabled:
        return None
    grant = policy.grants.get(principal.name)
    roles = principal.roles | (grant.roles if grant else frozenset())
    who = f"principal {principal.name}"
    needs = ADMIN_RPCS.get(req.rpc)
    if needs is not None:
        if roles & needs:
            return None
        wanted = " or ".join(sorted(r.value for r in needs))
        return Denial(f"{who} may not call {req.rpc}: it needs role {wanted}")
    if req.rpc not in WORKFLOW_RPCS:
        return Denial(f"{who} may not call {req.rpc}")
    if grant is None or req.rpc not in grant.rpcs:
        return Denial(f"{who} may not call {req.rpc}")
    if req.tenant and not _matches(req.tenant, grant.tenants):
        return Denial(f"{who} may not act for tenant {req.tenant}")
    if req.workflow_type and not _matches(req.workflow_type, grant.workflow_types):
        return Denial(f"{who} may not start workflow type {req.workflow_type}")
    if req.data_class is not None and req.data_class not in grant.data_classes:
        return Denial(f"{who} may not send {req.data_class.value} data")
    return None
