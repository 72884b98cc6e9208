"""Decision throughput of the pure core: ``route()`` on a compiled table, one thread,
over a realistic mix (zones, data classes, a tenant with declared residency, zone-less
public data, a few rules, some subdivisions, all priorities)."""

from __future__ import annotations

import argparse
import gc
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
    for region in doc["regions"].values():  # the mix's three types, as large_doc's regions
        region["workflow_types"] = ["DataProcessingWorkflow", "EchoWorkflow", "Billing"]
    return compile_config(doc).table


def large_doc(regions: int, tenants: int, rules: int, seed: int = 11) -> dict[str, Any]:
    """The default topology grown to ``regions`` regions (spread over its three zones,
    two clusters each), ``tenants`` tenants (a fifth with declared residency) and
    ``rules`` rules (country and zone rules qualified by tenants and data classes, each
    sending its matches to a region of the right zone)."""
    rnd = random.Random(seed)
    doc = load().document.model_dump(mode="json")
    zones: dict[str, Any] = doc["zones"]
    regions_by_zone: dict[str, list[str]] = {z: [z_["home_region"]] for z, z_ in zones.items()}
    port = 20000
    for i in range(regions - len(doc["regions"])):
        zone = list(zones)[i % len(zones)]
        name = f"{zone}-r{i:03d}"
        regions_by_zone[zone].append(name)
        clusters = []
        for suffix in "ab":
            clusters.append({"name": f"{name}-{suffix}", "endpoint": f"127.0.0.1:{port}"})
            port += 1
        doc["regions"][name] = {
            "zone": zone, "clusters": clusters,
            "workflow_types": ["DataProcessingWorkflow", "EchoWorkflow", "Billing"],
        }  # fmt: skip
    for r in doc["regions"].values():
        r["workflow_types"] = ["DataProcessingWorkflow", "EchoWorkflow", "Billing"]
    names = [f"tenant-{i:05d}" for i in range(tenants)]
    doc["tenants"] = {
        t: ({"residency_zone": rnd.choice(list(zones))} if rnd.random() < 0.2 else {})
        for t in names
    }
    doc["rules"] = []
    for i in range(rules):
        zone = rnd.choice(list(zones))
        # Each rule names tenants of its own (no two rules with the same match).
        mine = [names[(i * 3 + k) % len(names)] for k in range(rnd.randint(1, 3))] if names else []
        match: dict[str, Any] = {"tenants": mine} if mine else {}
        if rnd.random() < 0.7:
            match["country"] = rnd.choice(zones[zone]["countries"])
        else:
            match["zone"] = zone
        if rnd.random() < 0.5:
            match["data_classes"] = rnd.sample(["public", "internal", "pii", "financial"], 2)
        doc["rules"].append(
            {"name": f"rule-{i:04d}", "match": match, "region": rnd.choice(regions_by_zone[zone])}
        )
    return doc


def requests(n: int, seed: int = 7, tenants: list[str] | None = None) -> list[RouteRequest]:
    rnd = random.Random(seed)
    countries = ["DE", "FR", "GB", "US", "CA", "JP", "IN", "AU", "BR", "MX", "ZA"]
    pool = tenants or ["acme", "acme", "acme", "globex", "initech"]
    out = []
    for _ in range(n):
        country = rnd.choice(countries)
        sub = "US-CA" if country == "US" and rnd.random() < 0.3 else None
        out.append(RouteRequest(
            workflow_type=rnd.choice(["DataProcessingWorkflow", "EchoWorkflow", "Billing"]),
            tenant_id=rnd.choice(pool),
            user_country=country,
            data_class=rnd.choices(list(DataClass), weights=[2, 2, 5, 1])[0],
            user_subdivision=sub,
            priority=rnd.choice(list(Priority)),
        ))  # fmt: skip
    return out


SIZES: list[tuple[str, int, int, int]] = [
    # (label, regions, tenants, rules); the first is the default topology as it ships.
    ("3 regions, no tenants, no rules", 3, 0, 0),
    ("300 regions", 300, 0, 0),
    ("3 regions, 10k tenants", 3, 10_000, 0),
    ("300 regions, 10k tenants, 2k rules", 300, 10_000, 2_000),
]


def _one_round(t: RoutingTable, mix: list[RouteRequest], seconds: float) -> float:
    view = ClusterView.all_primaries_healthy(t)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for r in mix:
            route(r, t, view)
        n += len(mix)
    return n / (time.perf_counter() - start)


def run(seconds: float, rounds: int, sizes: bool = True) -> dict[str, Any]:
    """The default mix on the shipped topology (with three rules); and, with ``sizes``,
    the same kind of mix on grown configs: compile time and decisions/s of each. Rounds
    alternate between the configs (A, B, C, D, A, ...), so drift on a shared machine
    hits all of them; the median round of each is reported."""
    cases: list[tuple[str, RoutingTable, list[RouteRequest], float]] = [
        ("default", table(), requests(10_000), 0.0)
    ]
    for label, regions, tenants, rules in SIZES if sizes else []:
        doc = large_doc(regions, tenants, rules)
        t0 = time.perf_counter()
        t = compile_config(doc).table
        compile_s = time.perf_counter() - t0
        cases.append((label, t, requests(10_000, tenants=list(doc["tenants"]) or None), compile_s))
    # As `meridian serve` does once serving: the tables live as long as the process, so
    # the collector's passes need not rescan them (a large table would otherwise be
    # paid for by every collection the decisions' garbage triggers).
    gc.collect()
    gc.freeze()
    rates: dict[str, list[float]] = {label: [] for label, *_ in cases}
    for _ in range(rounds):
        for label, t, mix, _ in cases:
            rates[label].append(_one_round(t, mix, seconds / rounds / len(cases)))
    return {
        "benchmark": "core",
        "machine": machine(),
        "decisions_per_s": statistics.median(rates["default"]),
        "rounds": rounds,
        "goal": 200_000,
        "sizes": [
            {"config": label, "compile_ms": compile_s * 1e3,
             "decisions_per_s": statistics.median(rates[label])}
            for label, _, _, compile_s in cases[1:]
        ],
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks core", description=__doc__)
    parser.add_argument("--seconds", type=float, default=30.0, help="in all")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--no-sizes", action="store_true", help="the default mix only")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.seconds, args.rounds, sizes=not args.no_sizes)
    table_ = render(["decisions/s (one thread, median)", "goal"],
                    [(f"{result['decisions_per_s']:,.0f}", f"{result['goal']:,}")])  # fmt: skip
    if result["sizes"]:
        table_ += "\n\n" + render(
            ["config", "compile ms", "route() decisions/s"],
            [(x["config"], f"{x['compile_ms']:.0f}", f"{x['decisions_per_s']:,.0f}")
             for x in result["sizes"]],
        )  # fmt: skip
    emit(result, args.json, table_)
