"""Translate temporalio's exceptions into Meridian's, at this adapter's boundary only."""

from __future__ import annotations

import asyncio
import re

from temporalio.client import WorkflowQueryRejectedError
from temporalio.service import RPCError, RPCStatusCode

from router.errors import (
    ClusterUnavailable,
    InvalidArgument,
    MeridianError,
    WorkflowNotFound,
    WorkflowOperationFailed,
)


def refused_before_sending(exc: BaseException) -> bool:
    """True when the request cannot have reached the server (TCP connect failed).

    temporalio reports a lazy client's failed first connect as RuntimeError("Failed
    client connect: ... tcp connect error") and a dropped connection's reconnect failure
    as RPCError(UNAVAILABLE, "tcp connect error"); both mean nothing was sent.
    """
    text = str(exc)
    if isinstance(exc, RuntimeError) and text.startswith("Failed client connect"):
        return True
    return (
        isinstance(exc, RPCError)
        and exc.status == RPCStatusCode.UNAVAILABLE
        and "connect error" in text
    )


# rustls/tonic's words for why a connection could not be set up, and what to check.
_CERT_PROBLEMS = {
    "UnknownIssuer": "the server's certificate is not signed by a CA the router trusts; "
    "check the cluster's tls.ca_file",
    "Expired": "the server's certificate has expired",
    "NotValidYet": "the server's certificate is not valid yet",
    "Revoked": "the server's certificate is revoked",
}
_NAME_MISMATCH = re.compile(r'NotValidForName.*?expected: \w+\("([^"]*)"\)')
_CERT_KIND = re.compile(r"InvalidCertificate\((\w+)")
_ALERT = re.compile(r"AlertReceived\((\w+)\)")
_CLIENT_CERT_ALERTS = frozenset(
    {"CertificateRequired", "BadCertificate", "UnknownCA", "CertificateUnknown", "AccessDenied"}
)
_HTTP_STATUS = re.compile(r"with status: (\d{3})([ A-Za-z]*)")
_CHECK_KEY = "check the cluster's tls.api_key_file or tls.api_key_env"
_CHECK_CLIENT = "check the cluster's tls.cert_file and tls.key_file"


def connect_failure(exc: BaseException) -> str | None:
    """Why the connection to a cluster could not be set up (TLS, credentials, not a
    gRPC endpoint) in a few words, with what to check; None when ``exc`` is not such a
    failure. In every case the connection failed before the request was sent."""
    text = str(exc)
    connecting = isinstance(exc, RuntimeError) and text.startswith("Failed client connect")
    reconnecting = isinstance(exc, RPCError) and exc.status == RPCStatusCode.UNAVAILABLE
    if not (connecting or reconnecting):
        return None
    if "InvalidCertificate(" in text:
        name = _NAME_MISMATCH.search(text)
        if name is not None:
            return (
                "TLS handshake failed: the server's certificate is not valid for "
                f"{name.group(1)}; check the cluster's tls.server_name"
            )
        kind = _CERT_KIND.search(text)
        what = kind.group(1) if kind is not None else "invalid"
        problem = _CERT_PROBLEMS.get(what, f"the server's certificate was rejected ({what})")
        return f"TLS handshake failed: {problem}"
    alert = _ALERT.search(text)
    if alert is not None:
        if alert.group(1) in _CLIENT_CERT_ALERTS:
            return (
                f"TLS handshake failed: the server refused the client certificate "
                f"({alert.group(1)}); {_CHECK_CLIENT}"
            )
        return f"TLS handshake failed: the server sent alert {alert.group(1)}"
    if "InvalidContentType" in text or "CorruptMessage" in text:
        return "TLS handshake failed: the endpoint does not speak TLS"
    if "PrivateKeyParseError" in text or "InconsistentKeys" in text:
        return (
            "TLS set-up failed: the client key is unusable or not the certificate's; "
            + _CHECK_CLIENT
        )
    if not connecting:
        # A later call's HTTP status may come from a proxy after forwarding it.
        return None
    if "connection closed" in text or "h2 protocol error" in text:
        return (
            "the endpoint broke off the connection while connecting, as a TLS endpoint "
            "does to a plaintext client; does the cluster need a tls section?"
        )
    # The connect's own first call (GetSystemInfo) was answered, but not by Temporal.
    if "code: Unauthenticated" in text or "code: PermissionDenied" in text:
        return f"the cluster refused the router's credentials; {_CHECK_KEY}"
    status = _HTTP_STATUS.search(text)
    if status is not None:
        answer = f"the endpoint answered HTTP {status.group(1)}{status.group(2).rstrip()}"
        if status.group(1) in ("401", "403"):
            return f"{answer}; {_CHECK_KEY}"
        if status.group(1) == "400":
            # nginx checks a required client certificate after the handshake and
            # answers a missing or untrusted one with 400.
            return (
                f"{answer}, as a TLS proxy does to a missing or untrusted client "
                f"certificate; {_CHECK_CLIENT}"
            )
        return f"{answer} instead of gRPC"
    return None


def translate(
    exc: BaseException, *, cluster: str, what: str, workflow_id: str | None = None
) -> MeridianError:
    """Map a foreign exception raised while talking to ``cluster`` to a MeridianError."""
    if isinstance(exc, MeridianError):
        return exc
    if isinstance(exc, WorkflowQueryRejectedError):
        run_status = exc.status.name if exc.status is not None else "unknown"
        return WorkflowOperationFailed(f"{what} rejected: the run is {run_status}")
    reason = connect_failure(exc)
    if reason is not None:
        return ClusterUnavailable(
            f"cluster {cluster}: {reason} ({what} was not sent)",
            cluster=cluster,
            may_have_reached=False,
        )
    if refused_before_sending(exc):
        return ClusterUnavailable(
            f"cluster {cluster} refused the connection ({what} was not sent)",
            cluster=cluster,
            may_have_reached=False,
        )
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return ClusterUnavailable(
            f"cluster {cluster} did not answer {what} in time",
            cluster=cluster,
            may_have_reached=True,
        )
    if isinstance(exc, RPCError):
        status = exc.status
        if status == RPCStatusCode.NOT_FOUND and workflow_id is not None:
            return WorkflowNotFound(f"workflow {workflow_id} not found", workflow_id=workflow_id)
        if status in (RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.CANCELLED):
            # temporalio reports its own rpc_timeout as CANCELLED("Timeout expired").
            return ClusterUnavailable(
                f"cluster {cluster} did not answer {what} in time",
                cluster=cluster,
                may_have_reached=True,
            )
        if status in (RPCStatusCode.UNAUTHENTICATED, RPCStatusCode.PERMISSION_DENIED):
            # Refused before it was acted on: safe to send elsewhere.
            return ClusterUnavailable(
                f"cluster {cluster} refused the router's credentials for {what} "
                f"({exc.message}); {_CHECK_KEY}",
                cluster=cluster,
                may_have_reached=False,
            )
        if status == RPCStatusCode.INVALID_ARGUMENT:
            return InvalidArgument(field=what, reason=f"rejected by Temporal: {exc.message}")
        if status in (RPCStatusCode.FAILED_PRECONDITION, RPCStatusCode.NOT_FOUND):
            return WorkflowOperationFailed(f"{what} rejected by Temporal: {exc.message}")
        return ClusterUnavailable(
            f"cluster {cluster} failed {what}: {exc.message} ({status.name})",
            cluster=cluster,
            may_have_reached=True,
        )
    return ClusterUnavailable(
        f"cluster {cluster} failed {what}: {type(exc).__name__}",
        cluster=cluster,
        may_have_reached=True,
    )
