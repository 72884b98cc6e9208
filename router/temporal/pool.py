"""One connection per cluster, one namespace-bound client per (cluster, namespace).

Connections are lazy (``ConnectConfig(lazy=True)``): a router starts even when a
cluster is down, and the first call to a dead cluster fails in about a millisecond
with "tcp connect error" instead of blocking startup for 30 s (FIELD_NOTES). Clients
on one connection share it; temporalio reconnects by itself when a server returns.

A cluster with a ``tls`` section is reached over TLS with the material its files hold
(``router.temporal.tls``), read when the connection is made: on ``sync`` and, through
``refresh`` (which the prober calls before each probe), whenever one of the files
changes, so a renewed certificate or API key is used without a restart. When the
material cannot be used (a missing file, a private key others can read), the cluster
has no connection: calls to it raise ``ClusterUnavailable`` naming the file (nothing
was sent) and its probes fail with that reason, while the other clusters are served;
only a connection already made with the same settings is kept (and the problem logged),
as a key ring keeps its last good keys.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import timedelta

from temporalio.client import Client
from temporalio.converter import DataConverter
from temporalio.service import ConnectConfig, GrpcCompression, RetryConfig, ServiceClient

from router import telemetry
from router.config.settings import ClusterTLS
from router.core.model import ClusterSpec
from router.errors import ClusterUnavailable, KeyRingError
from router.temporal import tls as tls_files

log = logging.getLogger(__name__)

IDENTITY = f"meridian-router@{socket.gethostname()}"

# The SDK's own retry loop (up to ~10 s) is bounded anyway by our per-call deadline;
# keep it short so a retry never outlives the caller.
_RETRY = RetryConfig(max_retries=2, initial_interval_millis=50, max_elapsed_time_millis=1500)


@dataclass(frozen=True, slots=True)
class _Conn:
    endpoint: str
    settings: ClusterTLS | None
    # What the connection was made with (None: plaintext); its repr hides every secret.
    credentials: tls_files.Credentials | None
    service: ServiceClient | None
    # The TLS files' signature when they were read: refresh() re-reads on a change.
    stamp: tls_files.Stamp = ()
    # Why there is no connection ("" when there is one).
    problem: str = ""
    # Why changed files were not used and this connection kept (logged once).
    kept_despite: str = ""


class ClientPool:
    """Every client gets its region's converter (and so its region's codec): there is
    no default, so no code path can send a payload unencrypted."""

    def __init__(self, *, connect_timeout: float = 2.0) -> None:
        self._connect_timeout = connect_timeout
        self._conns: dict[str, _Conn] = {}
        self._clients: dict[tuple[str, str], Client] = {}
        self._specs: dict[str, ClusterSpec] = {}
        self._converters: Mapping[str, DataConverter] = {}
        self._tls: dict[str, ClusterTLS] = {}
        # sync() and refresh() both replace connections; one at a time.
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        conns = ", ".join(
            f"{name}={c.endpoint} {c.credentials or 'plaintext'}"
            + (f" (not connected: {c.problem})" if c.problem else "")
            for name, c in self._conns.items()
        )
        return f"ClientPool({conns})"

    async def sync(
        self,
        clusters: Iterable[ClusterSpec],
        converters: Mapping[str, DataConverter],
        *,
        tls: Mapping[str, ClusterTLS] | None = None,
        connect_timeout: float | None = None,
    ) -> None:
        """Open connections for new clusters (or changed endpoints, TLS settings or
        TLS files' contents), drop removed ones, and keep exactly one client per
        (cluster, namespace) the config names, built on its region's converter
        (``converters``: region -> converter; a client whose converter changed, e.g.
        new codec settings, is rebuilt). ``tls``: cluster -> its TLS settings, for the
        clusters reached over TLS."""
        async with self._lock:
            if connect_timeout is not None:
                self._connect_timeout = connect_timeout
            self._specs = {c.name: c for c in clusters}
            self._converters = converters
            self._tls = dict(tls or {})
            for name in list(self._conns):
                if name not in self._specs:
                    del self._conns[name]
            for name in self._specs:
                await self._open(name)
            self._sync_clients()

    async def refresh(self, cluster: str) -> None:
        """Read ``cluster``'s TLS files again if they changed (or could not be used
        last time) and reconnect if what they hold changed. Cheap when nothing did:
        a ``stat`` of each file."""
        async with self._lock:
            conn, settings = self._conns.get(cluster), self._tls.get(cluster)
            if conn is None or settings is None:
                return
            if not conn.problem and conn.stamp == tls_files.stamp(settings):
                return
            await self._open(cluster)
            self._sync_clients()

    def problem(self, cluster: str) -> str:
        """Why ``cluster`` has no connection (its TLS material is unusable), or ""."""
        conn = self._conns.get(cluster)
        return conn.problem if conn is not None else ""

    def service(self, cluster: str) -> ServiceClient:
        conn = self._conns.get(cluster)
        if conn is None:
            raise _gone(cluster, "")
        if conn.service is None:
            raise ClusterUnavailable(
                f"cluster {cluster}: cannot connect: {conn.problem}",
                cluster=cluster,
                may_have_reached=False,
            )
        return conn.service

    def client(self, cluster: str, namespace: str, *, region: str | None = None) -> Client:
        """The client for ``namespace`` on ``cluster``; with ``region``, only if the
        cluster is that region's in the config the pool holds (a decision made on an
        older config must not reach a cluster that moved: its codec would be another
        region's). ``ClusterUnavailable`` (nothing sent) otherwise."""
        spec = self._specs.get(cluster)
        if spec is None or (region is not None and spec.region != region):
            raise _gone(cluster, namespace)
        client = self._clients.get((cluster, namespace))
        if client is None:
            self.service(cluster)  # ClusterUnavailable when it has no connection
            raise _gone(cluster, namespace)
        return client

    async def _open(self, name: str) -> None:
        """(Re)connect ``name`` unless its endpoint and credentials are unchanged."""
        spec, settings, old = self._specs[name], self._tls.get(name), self._conns.get(name)
        credentials, stamp = None, tls_files.stamp(settings) if settings else ()
        if settings is not None:
            try:
                credentials = tls_files.load(settings)
            except KeyRingError as exc:
                self._unusable(name, spec.endpoint, settings, stamp, exc.message)
                return
        if (
            old is not None
            and old.service is not None
            and old.endpoint == spec.endpoint
            and old.credentials == credentials
        ):
            self._conns[name] = replace(old, settings=settings, stamp=stamp, kept_despite="")
            return
        if old is not None and old.service is not None and old.endpoint == spec.endpoint:
            log.info("cluster %s: TLS settings or files changed; reconnecting", name)
        service = await self._connect(spec.endpoint, credentials)
        self._conns[name] = _Conn(spec.endpoint, settings, credentials, service, stamp)

    def _unusable(
        self, name: str, endpoint: str, settings: ClusterTLS, stamp: tls_files.Stamp, why: str
    ) -> None:
        """The files ``settings`` names cannot be used now. A connection made with the
        same settings is kept, as a key ring keeps its last good keys (a file caught
        half-written, a key chmod-ed by mistake); otherwise the cluster has none."""
        old = self._conns.get(name)
        if (
            old is not None
            and old.service is not None
            and (old.endpoint, old.settings) == (endpoint, settings)
        ):
            if old.kept_despite != why:
                log.error("cluster %s: TLS files not used, keeping the connection: %s", name, why)
            # The old stamp stays, so the next refresh() reads the files again.
            self._conns[name] = replace(old, kept_despite=why)
            return
        if old is None or old.problem != why:
            log.warning("cluster %s: not connecting: %s", name, why)
        self._conns[name] = _Conn(endpoint, settings, None, None, stamp, why)

    def _sync_clients(self) -> None:
        keys = {
            (c.name, ns)
            for c in self._specs.values()
            if self._conns[c.name].service is not None
            for ns in c.namespaces
        }
        for key in list(self._clients):
            client = self._clients[key]
            if (
                key not in keys
                or client.service_client is not self._conns[key[0]].service
                or client.data_converter is not self._converters[self._specs[key[0]].region]
            ):
                del self._clients[key]
        for name, ns in keys - self._clients.keys():
            self._clients[(name, ns)] = Client(
                self.service(name),
                namespace=ns,
                data_converter=self._converters[self._specs[name].region],
                interceptors=telemetry.temporal_interceptors(),
            )

    async def _connect(
        self, endpoint: str, credentials: tls_files.Credentials | None
    ) -> ServiceClient:
        return await ServiceClient.connect(
            ConnectConfig(
                target_host=endpoint,
                # False, not None: without a tls section nothing turns TLS on.
                tls=credentials.tls_config() if credentials is not None else False,
                api_key=credentials.api_key if credentials is not None else None,
                lazy=True,
                identity=IDENTITY,
                retry_config=_RETRY,
                grpc_compression=GrpcCompression.NONE,
                connect_timeout=timedelta(seconds=self._connect_timeout),
            )
        )


def _gone(cluster: str, namespace: str) -> ClusterUnavailable:
    where = f"namespace {namespace} of cluster {cluster}" if namespace else f"cluster {cluster}"
    return ClusterUnavailable(
        f"{where} is not (or no longer) in the config in force; nothing was sent",
        cluster=cluster,
        may_have_reached=False,
    )
