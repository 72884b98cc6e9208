"""The regional worker: one process per cluster, polling every (namespace, task queue)
the routing config can send work to in its region.

Deliberately small and independent of the router: it receives the endpoint, the
namespaces, the task queues and the TLS settings as arguments (``meridian worker``
resolves them from config and reads the cluster's TLS files), so the regional side can
be deployed and scaled on its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.converter import DataConverter
from temporalio.runtime import OpenTelemetryConfig, PrometheusConfig, Runtime, TelemetryConfig
from temporalio.service import TLSConfig
from temporalio.worker import Worker

from regions.activities import BookingActivities, ContactActivities
from regions.store import BookingStore, ContactStore, StoreLocation
from regions.workflows import WORKFLOWS, RegionalActivities, WorkerIdentity
from router.codec import KeyRingHolder, RegionCodec, data_converter


def _tracing() -> bool:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    return isinstance(trace.get_tracer_provider(), TracerProvider)


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerPlan:
    region: str
    cluster: str
    endpoint: str
    # (namespace, task queue) pairs to poll.
    queues: tuple[tuple[str, str], ...]
    # TLS to the cluster (None: plaintext) and an API key sent as a bearer token.
    # Not in repr: temporalio's TLSConfig prints the private key.
    tls: TLSConfig | None = field(default=None, repr=False)
    api_key: str | None = field(default=None, repr=False)
    # The region's own database (contacts, bookings): SQLite files in a directory
    # (``$MERIDIAN_HOME/regions/<region>``, given by ``meridian worker``), or PostgreSQL.
    # None: a directory ``regions/<region>`` under the working directory.
    store: StoreLocation | None = field(default=None, repr=False)
    # Directories a contact sync may read source files from (relative names resolve
    # below them); empty: none, only inline records.
    source_roots: tuple[Path, ...] = ()
    # The SDK's own metrics (the standard Temporal dashboards): "host:port" to serve
    # them for Prometheus, an http(s) URL to push them over OTLP, None for neither.
    metrics: str | None = None

    def store_location(self) -> StoreLocation:
        return self.store or StoreLocation(directory=Path("regions", self.region).resolve())


def sdk_runtime(metrics: str | None) -> Runtime | None:
    """A temporalio Runtime exporting the SDK's metrics as ``metrics`` says; None keeps
    the default runtime (no export)."""
    if not metrics:
        return None
    if metrics.startswith(("http://", "https://")):
        exporter: PrometheusConfig | OpenTelemetryConfig = OpenTelemetryConfig(url=metrics)
    else:
        exporter = PrometheusConfig(bind_address=metrics)
    return Runtime(telemetry=TelemetryConfig(metrics=exporter))


def _never(exc: BaseException) -> bool:
    return False


async def connect(
    endpoint: str,
    namespace: str,
    converter: DataConverter,
    *,
    wait: float,
    tls: TLSConfig | None = None,
    api_key: str | None = None,
    give_up: Callable[[BaseException], bool] = _never,
    runtime: Runtime | None = None,
) -> Client:
    """Connect, retrying while the cluster is still starting (up to ``wait`` seconds)
    unless ``give_up(error)`` says waiting cannot help (a TLS certificate the worker
    does not trust, say). With tracing on (a provider installed), workflows and
    activities continue the trace the router started (TracingInterceptor, inherited by
    workers built on the client)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    interceptors = [TracingInterceptor()] if _tracing() else []
    while True:
        try:
            return await Client.connect(
                endpoint,
                namespace=namespace,
                data_converter=converter,
                interceptors=interceptors,
                tls=tls if tls is not None else False,
                api_key=api_key,
                runtime=runtime,
            )
        except RuntimeError as exc:
            if give_up(exc) or loop.time() >= deadline:
                raise
            await asyncio.sleep(0.2)


async def run(
    plan: WorkerPlan,
    stop: asyncio.Event,
    *,
    keys: KeyRingHolder,
    compression: bool = False,
    connect_wait: float = 30.0,
    give_up: Callable[[BaseException], bool] = _never,
) -> None:
    """Poll until ``stop`` is set, then shut the workers down gracefully.

    Everything the workers write back (activity results, workflow results, failures) is
    encrypted with the region's active key; the ring is reloaded in the background so a
    key rotation reaches the worker without a restart.
    """
    if keys.region != plan.region:
        raise ValueError(f"key ring of {keys.region} given to a worker of {plan.region}")
    converter = data_converter(RegionCodec(keys, compression=compression))
    refresher = asyncio.create_task(keys.refresh_forever())
    try:
        await _poll(plan, stop, converter, connect_wait, give_up)
    finally:
        refresher.cancel()


async def _poll(
    plan: WorkerPlan,
    stop: asyncio.Event,
    converter: DataConverter,
    connect_wait: float,
    give_up: Callable[[BaseException], bool],
) -> None:
    identity = WorkerIdentity(region=plan.region, cluster=plan.cluster)
    activities = RegionalActivities(identity)
    runtime = sdk_runtime(plan.metrics)
    location = plan.store_location()
    contacts = ContactActivities(ContactStore(location), plan.source_roots)
    bookings = BookingActivities(BookingStore(location))
    # Database activities block: they run here, a few at a time per process.
    executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="activity")
    registered: list[Callable[..., Any]] = [
        activities.process_record,
        contacts.describe_source,
        contacts.sync_chunk,
        contacts.sync_chunk_v2,
        *bookings.all(),
    ]
    workers: list[Worker] = []
    clients: dict[str, Client] = {}
    for ns, queue in plan.queues:
        if ns not in clients:
            clients[ns] = await connect(
                plan.endpoint,
                ns,
                converter,
                wait=connect_wait,
                tls=plan.tls,
                api_key=plan.api_key,
                give_up=give_up,
                runtime=runtime,
            )
        workers.append(
            Worker(
                clients[ns],
                task_queue=queue,
                workflows=list(WORKFLOWS),
                activities=registered,
                activity_executor=executor,
                identity=f"meridian-worker/{plan.cluster}/{ns}",
                # Many queues per process: a couple of pollers each is plenty.
                max_concurrent_workflow_task_polls=2,
                max_concurrent_activity_task_polls=2,
                max_concurrent_activities=8,
            )
        )
    log.info(
        "worker for %s (%s%s) polling %d queue(s) in namespace(s) %s; store %s",
        plan.cluster,
        plan.endpoint,
        ", TLS" if plan.tls is not None else "",
        len(workers),
        ", ".join(clients),
        location,
    )
    tasks = [asyncio.create_task(w.run()) for w in workers]
    waiter = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([*tasks, waiter], return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    await asyncio.gather(*(w.shutdown() for w in workers), return_exceptions=True)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    executor.shutdown(wait=False, cancel_futures=True)
    if waiter not in done:
        # A worker stopped on its own: that is a failure, report the first error.
        errors = [r for r in results if isinstance(r, BaseException)]
        raise RuntimeError(f"worker for {plan.cluster} stopped unexpectedly") from (
            errors[0] if errors else None
        )
