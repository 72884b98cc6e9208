"""The codec server of one region: Temporal's remote codec protocol over HTTP.

``POST /encode``, ``POST /decode`` and the ``/{namespace}/encode|decode`` forms; body and
reply are proto3 JSON ``Payloads``. The Temporal CLI (``--codec-endpoint``) and Web UI
use it to show (and, for ``workflow start``, write) the region's encrypted payloads.

It serves only its own region's namespaces (403 otherwise), only with a bearer token: one
of its own region's static tokens, or a JWT that a ``token_check`` hook verifies and
finds scoped to the requested namespace (the Temporal Web UI forwards its user's access
token). No or a bad token is 401; a token not scoped to the namespace is 403; both are
handed to its audit hook. ``GET /metrics`` (unauthenticated, like any Prometheus target)
serves its request counts by status and the codec's counters. It answers CORS preflights
for configured UI origins, caps bodies (413), and reports bad input as 400 with a JSON
error, never a 500 with a trace.

Development only, off unless asked for (``dev_loopback_origins``, which ``meridian dev
--ui`` sets): a request *without* a token is accepted when it comes from a loopback
address and carries the Origin of a local Temporal Web UI, because the dev server's UI
sends no token. Any local process that sets that Origin header can then decode the
region's payloads: acceptable on a developer's machine, nowhere else.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol
from urllib.parse import urlsplit

import aiohttp_cors
from aiohttp import web
from google.protobuf import json_format
from opentelemetry import metrics
from temporalio.api.common.v1 import Payloads

from router.codec.aead import RegionCodec
from router.codec.tally import Tally
from router.codec.tokens import token_ok
from router.errors import CodecError


class Exposition(Protocol):
    """What ``/metrics`` serves (``router.metrics.Exposition``; this package does not
    import the router's)."""

    def render(self) -> tuple[bytes, str]: ...


log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# (bearer token, namespace) -> None when the token is valid and scoped to the namespace;
# else (401 for a token that does not verify, 403 for one not scoped to it, why).
TokenCheck = Callable[[str, str], Awaitable[tuple[int, str] | None]]
BEARER = "Bearer "
ALLOWED_HEADERS = ("X-Namespace", "Content-Type", "Authorization")
MAX_BODY = web.AppKey("max_body_bytes", int)
REGION = web.AppKey("region", str)


def loopback_origin(origin: str) -> bool:
    """``http://HOST:PORT`` with a loopback HOST (127.0.0.0/8, ::1, localhost): the
    only origins the development mode may trust."""
    try:
        url = urlsplit(origin)
        port = url.port
    except ValueError:
        return False
    host = url.hostname or ""
    plain = origin == f"http://{url.netloc}" and "@" not in url.netloc
    if url.scheme != "http" or port is None or not plain:
        return False
    return host == "localhost" or loopback_address(host)


def loopback_address(address: str | None) -> bool:
    try:
        return ipaddress.ip_address(address or "").is_loopback
    except ValueError:
        return False


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class Refused(Exception):
    """An answer other than 200, with the JSON error message the client will read."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


_requests = Tally(
    metrics.get_meter("meridian"), "meridian.codec_server.requests", labels=("region", "status"),
    description="codec server requests by region and status",
)  # fmt: skip


@web.middleware
async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """meridian_codec_server_requests_total, by region and HTTP status: the codec's own
    requests (and refusals), not the health checks' and scrapes'."""
    response = await handler(request)
    if request.path not in UNCOUNTED:
        _requests.add(1, request.app[REGION], str(response.status))
    return response


UNCOUNTED = frozenset({"/healthz", "/metrics"})


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure as JSON; unexpected ones logged here, a generic message out there."""
    try:
        return await handler(request)
    except Refused as exc:
        return error(exc.status, exc.message)
    except web.HTTPRequestEntityTooLarge:
        return error(413, f"body larger than the limit of {request.app[MAX_BODY]} bytes")
    except web.HTTPException as exc:
        if exc.status >= 400:
            return error(exc.status, exc.reason)
        raise
    except Exception:
        log.exception("codec server: unexpected error on %s %s", request.method, request.path)
        return error(500, "internal error in the codec server; it was logged")


class CodecServer:
    def __init__(
        self,
        codec: RegionCodec,
        *,
        namespaces: frozenset[str],
        tokens: Sequence[bytes],
        cors_origins: Sequence[str] = (),
        max_body_bytes: int = 4 * 1024 * 1024,
        on_auth_failure: Callable[[str, str, str], Awaitable[None]] | None = None,
        token_check: TokenCheck | None = None,
        dev_loopback_origins: Sequence[str] = (),
        exposition: Exposition | None = None,
    ) -> None:
        if not tokens:
            raise ValueError("a codec server needs at least one bearer token")
        bad = [o for o in dev_loopback_origins if not loopback_origin(o)]
        if bad:
            raise ValueError(f"dev-loopback UI origins must be http://<loopback>:<port>: {bad}")
        # Origins whose tokenless requests from a loopback peer are accepted (development).
        self.dev_loopback_origins = frozenset(dev_loopback_origins)
        if self.dev_loopback_origins:
            log.warning(
                "codec server %s: DEVELOPMENT MODE: requests without a token from a loopback "
                "address with Origin %s are accepted; any local process can decode this "
                "region's payloads",
                codec.region, ", ".join(sorted(self.dev_loopback_origins)),
            )  # fmt: skip
        self.codec = codec
        self.namespaces = namespaces
        self.tokens = tuple(tokens)
        # (remote, path, why) of each request refused for its token (401) or for a
        # namespace of another region (403): the audit log's auth.failure.
        self.on_auth_failure = on_auth_failure
        self.token_check = token_check
        self.app = web.Application(
            middlewares=[count_requests, json_errors], client_max_size=max_body_bytes
        )
        self.app[MAX_BODY] = max_body_bytes
        self.app[REGION] = codec.region
        routes = [
            self.app.router.add_post("/encode", self.encode),
            self.app.router.add_post("/decode", self.decode),
            self.app.router.add_post("/{namespace}/encode", self.encode),
            self.app.router.add_post("/{namespace}/decode", self.decode),
            self.app.router.add_get("/healthz", self.healthz),
        ]
        self.exposition = exposition
        if exposition is not None:
            # Unauthenticated as a Prometheus target expects: request counts by status and
            # codec counters, no payload, token or key.
            self.app.router.add_get("/metrics", self.metrics)
        cors = aiohttp_cors.setup(
            self.app,
            defaults={
                origin: aiohttp_cors.ResourceOptions(  # type: ignore[no-untyped-call]
                    allow_credentials=True,
                    allow_headers=ALLOWED_HEADERS,
                    allow_methods=["POST", "GET", "OPTIONS"],
                    max_age=600,
                )
                for origin in dict.fromkeys([*cors_origins, *dev_loopback_origins])
            },
        )
        for route in routes:
            cors.add(route)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "region": self.codec.region})

    async def metrics(self, request: web.Request) -> web.Response:
        assert self.exposition is not None
        body, content_type = self.exposition.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    def _namespace(self, request: web.Request) -> str:
        header = request.headers.get("X-Namespace", "")
        path = request.match_info.get("namespace", "")
        if header and path and header != path:
            raise Refused(400, f"X-Namespace {header!r} and path namespace {path!r} differ")
        ns = path or header
        if not ns:
            raise Refused(400, "namespace required: X-Namespace header or /{namespace}/ path")
        return ns

    async def _payloads(self, request: web.Request) -> Payloads:
        body = await request.read()
        try:
            return json_format.Parse(body, Payloads())
        except (json_format.ParseError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise Refused(400, f"body is not proto3 JSON Payloads: {exc}") from None

    async def _rejected(self, request: web.Request, why: str) -> None:
        """Log and audit a request refused for who asks (401) or what they ask for (403)."""
        region = self.codec.region
        log.warning("codec server %s: rejected %s %s from %s: %s",
                    region, request.method, request.path, request.remote, why)  # fmt: skip
        if self.on_auth_failure is not None:
            try:
                await self.on_auth_failure(request.remote or "", request.path, why)
            except Exception:
                log.exception("codec server %s: could not audit an auth failure", region)

    def _unauthorized(self) -> web.Response:
        return web.json_response(
            {"error": "missing or invalid bearer token"},
            status=401,
            headers={"WWW-Authenticate": 'Bearer realm="meridian-codec"'},
        )

    def _dev_loopback_ui(self, request: web.Request) -> bool:
        """A tokenless request of a local Web UI, in the development mode only. The peer
        address is the socket's (no forwarding headers are read)."""
        origin = request.headers.get("Origin", "")
        return origin in self.dev_loopback_origins and loopback_address(request.remote)

    async def _serve(self, request: web.Request, op: str) -> web.Response:
        presented = request.headers.get("Authorization")
        static = token_ok(presented, self.tokens)
        jwt = ""
        if not static and not (presented is None and self._dev_loopback_ui(request)):
            if presented and self.token_check is not None and presented.startswith(BEARER):
                jwt = presented[len(BEARER) :].strip()
            if not jwt:
                await self._rejected(
                    request, "invalid bearer token" if presented else "missing bearer token"
                )
                return self._unauthorized()
        ns = self._namespace(request)
        if ns not in self.namespaces:
            region = self.codec.region
            await self._rejected(request, f"namespace {ns!r} is not a namespace of region {region}")
            raise Refused(403, f"namespace {ns!r} is not served by the {region} codec server")
        if jwt:
            assert self.token_check is not None
            refusal = await self.token_check(jwt, ns)
            if refusal is not None:
                status, why = refusal
                await self._rejected(request, why)
                if status == 401:
                    return self._unauthorized()
                raise Refused(403, f"the token does not grant namespace {ns!r}")
        payloads = await self._payloads(request)
        try:
            if op == "encode":
                out = await self.codec.encode(payloads.payloads)
            else:
                out = await self.codec.decode(payloads.payloads)
        except CodecError as exc:
            raise Refused(400, exc.message) from None
        log.debug("codec server %s: %s %d payload(s) in %s", self.codec.region, op, len(out), ns)
        return web.Response(
            text=json_format.MessageToJson(Payloads(payloads=out), indent=None),
            content_type="application/json",
        )

    async def encode(self, request: web.Request) -> web.Response:
        return await self._serve(request, "encode")

    async def decode(self, request: web.Request) -> web.Response:
        return await self._serve(request, "decode")
