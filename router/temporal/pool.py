"""One connection per cluster, one namespace-bound client per (cluster, namespace).

Connections are lazy (``ConnectConfig(lazy=True)``): a router starts even when a
cluster is down, and the first call to a dead cluster fails in about a millisecond
with "tcp connect error" instead of blocking startup for 30 s (FIELD_NOTES). Clients
on one connection share it; temporalio reconnects by itself when a server returns.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Mapping
from datetime import timedelta

from temporalio.client import Client
from temporalio.converter import DataConverter
from temporalio.service import ConnectConfig, GrpcCompression, RetryConfig, ServiceClient

from router import telemetry
from router.core.model import ClusterSpec
from router.errors import ClusterUnavailable

IDENTITY = f"meridian-router@{socket.gethostname()}"

# The SDK's own retry loop (up to ~10 s) is bounded anyway by our per-call deadline;
# keep it short so a retry never outlives the caller.
_RETRY = RetryConfig(max_retries=2, initial_interval_millis=50, max_elapsed_time_millis=1500)


class ClientPool:
    """Every client gets its region's converter (and so its region's codec): there is
    no default, so no code path can send a payload unencrypted."""

    def __init__(self, *, connect_timeout: float = 2.0) -> None:
        self._connect_timeout = connect_timeout
        self._services: dict[str, tuple[str, ServiceClient]] = {}
        self._clients: dict[tuple[str, str], Client] = {}
        # Each cluster's region in the config the clients were built for.
        self._regions: dict[str, str] = {}

    async def sync(
        self,
        clusters: Iterable[ClusterSpec],
        converters: Mapping[str, DataConverter],
        *,
        connect_timeout: float | None = None,
    ) -> None:
        """Open connections for new clusters (or changed endpoints), drop removed ones,
        and keep exactly one client per (cluster, namespace) the config names, built
        on its region's converter (``converters``: region -> converter; a client whose
        converter changed, e.g. new codec settings, is rebuilt)."""
        if connect_timeout is not None:
            self._connect_timeout = connect_timeout
        wanted = {c.name: c for c in clusters}
        self._regions = {name: spec.region for name, spec in wanted.items()}
        for name in list(self._services):
            if name not in wanted or self._services[name][0] != wanted[name].endpoint:
                del self._services[name]
        for name, spec in wanted.items():
            if name not in self._services:
                self._services[name] = (spec.endpoint, await self._connect(spec.endpoint))
        keys = {(c.name, ns) for c in wanted.values() for ns in c.namespaces}
        for key in list(self._clients):
            client = self._clients[key]
            if (
                key not in keys
                or client.service_client is not self.service(key[0])
                or client.data_converter is not converters[wanted[key[0]].region]
            ):
                del self._clients[key]
        for name, ns in keys - self._clients.keys():
            self._clients[(name, ns)] = Client(
                self.service(name),
                namespace=ns,
                data_converter=converters[wanted[name].region],
                interceptors=telemetry.temporal_interceptors(),
            )

    async def _connect(self, endpoint: str) -> ServiceClient:
        return await ServiceClient.connect(
            ConnectConfig(
                target_host=endpoint,
                lazy=True,
                identity=IDENTITY,
                retry_config=_RETRY,
                grpc_compression=GrpcCompression.NONE,
                connect_timeout=timedelta(seconds=self._connect_timeout),
            )
        )

    def service(self, cluster: str) -> ServiceClient:
        entry = self._services.get(cluster)
        if entry is None:
            raise _gone(cluster, "")
        return entry[1]

    def client(self, cluster: str, namespace: str, *, region: str | None = None) -> Client:
        """The client for ``namespace`` on ``cluster``; with ``region``, only if the
        cluster is that region's in the config the pool holds (a decision made on an
        older config must not reach a cluster that moved: its codec would be another
        region's). ``ClusterUnavailable`` (nothing sent) otherwise."""
        found = self._clients.get((cluster, namespace))
        if found is None or (region is not None and self._regions.get(cluster) != region):
            raise _gone(cluster, namespace)
        return found


def _gone(cluster: str, namespace: str) -> ClusterUnavailable:
    where = f"namespace {namespace} of cluster {cluster}" if namespace else f"cluster {cluster}"
    return ClusterUnavailable(
        f"{where} is not (or no longer) in the config in force; nothing was sent",
        cluster=cluster,
        may_have_reached=False,
    )
