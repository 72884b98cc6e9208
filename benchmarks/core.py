"""Decision throughput of the pure core: ``route()`` on a compiled table, one thread,
over a realistic mix (zones, data classes, a tenant with declared residency, zone-less
public data, a few rules, some subdivisions, all priorities)."""

from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import Any

from benchmarks.common import emit, machine, render
from router.config import compile_config, load
from router.core.model import ClusterView, DataClass, Priority, RouteRequest, RoutingTable
from router.core.policy import route


def table() -> RoutingTable:
    doc = load().document.model_dump(mode="json")
    doc["rules"] = [
        {"name": "california", "match": {"subdivision": "US-CA"}, "region": "us-east"},
        {"name": "de-finance", "match": {"country": "DE", "data_classes": ["financial"]},
         "region": "eu-west", "task_queue": "fin-{workflow_type}"},
        {"name": "public-default", "match": {"data_classes": ["public"]}, "region": "us-east"},
    ]  # fmt: skip
    return compile_config(doc).table


def requests(n: int, seed: int = 7) -> list[RouteRequest]:
    rnd = random.Random(seed)
    countries = ["DE", "FR", "GB", "US", "CA", "JP", "IN", "AU", "BR", "MX", "ZA"]
    out = []
    for _ in range(n):
        country = rnd.choice(countries)
        sub = "US-CA" if country == "US" and rnd.random() < 0.3 else None
        out.append(RouteRequest(
            workflow_type=rnd.choice(["DataProcessingWorkflow", "EchoWorkflow", "Billing"]),
            tenant_id=rnd.choice(["acme", "acme", "acme", "globex", "initech"]),
            user_country=country,
            data_class=rnd.choices(list(DataClass), weights=[2, 2, 5, 1])[0],
            user_subdivision=sub,
            priority=rnd.choice(list(Priority)),
        ))  # fmt: skip
    return out


def run(seconds: float, rounds: int) -> dict[str, Any]:
    t = table()
    view = ClusterView.all_primaries_healthy(t)
    mix = requests(10_000)
    rates = []
    for _ in range(rounds):
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / rounds:
            for r in mix:
                route(r, t, view)
            n += len(mix)
        rates.append(n / (time.perf_counter() - start))
    return {
        "benchmark": "core",
        "machine": machine(),
        "decisions_per_s": statistics.median(rates),
        "rounds": rounds,
        "goal": 200_000,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks core", description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.seconds, args.rounds)
    table_ = render(["decisions/s (one thread, median)", "goal"],
                    [(f"{result['decisions_per_s']:,.0f}", f"{result['goal']:,}")])  # fmt: skip
    emit(result, args.json, table_)
