"""What a config change does to requests: sample requests derived from two routing
tables, routed under each (every primary healthy), and the request classes whose
outcome differs. Pure: ``meridian config diff`` prints the result, and a flip's dry run
compares the same samples under two cluster views (``view_changes``).

Why samples, and which: routing depends on the user's country and subdivision, the
tenant, the data class, the workflow type and the priority. One request per zone cannot
show what a rule on ``DE`` or on a tenant does, so the samples come from what *both*
configs name (for a flip, the one config twice):

- locations: a representative country of every zone, one country in no zone, every
  country and subdivision a rule names, and every country whose zone differs between
  the configs; each with every data class (tenant and workflow type unnamed);
- each rule's match: its location (a zone's representative for a zone rule, every
  representative for a rule with no location), each tenant and workflow type it lists
  (paired up, not multiplied), each data class it lists (all of them when none);
- each tenant with a residency zone, with every data class, for a user in no zone;
- each workflow type whose serving regions differ, and each priority whose task-queue
  suffix differs, at every representative.

Bound (``sample_bound``): with L locations (zones + 1 + the countries and
subdivisions rules name, a subdivision counting twice as its country is sampled too +
the countries whose zone changed), every count over the union of both configs,

    4·L + Σ_rules 4·w·r + 4·T + 4·K·(Z+1) + 3·(Z+1)

where w = max(1, |tenants|, |workflow_types|) of a rule, r = 1 for a located rule and
Z + 1 for one with no location, T the tenants with a residency zone, K the workflow types
whose serving changed and Z the zones: linear in the size of the rules and tenants.
Duplicates are dropped (the first description of a request wins).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from router.core.model import (
    ClusterView,
    DataClass,
    Decision,
    Level,
    Priority,
    RefusalKind,
    RouteRequest,
    RoutingTable,
    Rule,
)
from router.core.policy import route

# The workflow type of a sample that stands for every type no rule names. It shows as
# is in rendered task queues ("eu-west-*-queue"), which reads as "any type".
ANY_TYPE = "*"
# The tenant of a sample that stands for every tenant no rule or residency names.
ANY_TENANT = "*"
# Data classes in their declared order (a rule's set is sorted by it).
_DC_ORDER = list(DataClass)


@dataclass(frozen=True, slots=True)
class Sample:
    """One request, and how its location reads for people ("DE", "zone eu (e.g. AT)")."""

    where: str
    request: RouteRequest


@dataclass(frozen=True, slots=True)
class Routed:
    """Where a request goes: what a caller and a worker see. ``rule`` says which rule
    decided, for context; it is not part of the comparison (a renamed rule that
    routes the same way moves nothing)."""

    zone: str
    region: str
    cluster: str
    namespace: str
    task_queue: str
    rule: str = field(compare=False)


@dataclass(frozen=True, slots=True)
class Refused:
    kind: RefusalKind
    message: str


Outcome = Routed | Refused


@dataclass(frozen=True, slots=True)
class RequestChange:
    """A class of requests whose outcome differs between two configs.

    ``data_classes``: the data classes of ``request``'s class that change the same way
    (one row for "any data of tenant globex", not four)."""

    requests: str
    request: RouteRequest
    data_classes: tuple[DataClass, ...]
    before: Outcome
    after: Outcome

    def change(self) -> str:
        """``before -> after`` in words, the after side naming only what changes when
        both are routed."""
        return f"{describe(self.before)} -> {describe(self.after, self.before)}"

    def summary(self) -> str:
        return f"{self.requests}: {self.change()}"


def _grouped(outcome: Outcome) -> object:
    """What makes two data classes' outcomes "the same way" for one row: a refusal by its
    kind (its message names the data class, so it would never match), a route whole."""
    return outcome.kind if isinstance(outcome, Refused) else outcome


def describe(outcome: Outcome, was: Outcome | None = None) -> str:
    """An outcome in words; given ``was`` (and both routed), only the parts that differ:
    ``eu-west/eu-west-a ns eu-west tq eu-west-*-queue`` -> ``ns eu-west-finance``."""
    if isinstance(outcome, Refused):
        return f"refused ({outcome.kind.value}): {outcome.message}"
    same_zone = same_place = same_ns = same_tq = False
    if isinstance(was, Routed):
        same_zone = was.zone == outcome.zone
        same_place = (was.region, was.cluster) == (outcome.region, outcome.cluster)
        same_ns, same_tq = was.namespace == outcome.namespace, was.task_queue == outcome.task_queue
    # The zone is said only when it alone changed (a region moved to another zone):
    # otherwise the region says where, and the row is never empty.
    parts = [] if same_place else [f"{outcome.region}/{outcome.cluster}"]
    parts += [] if same_ns else [f"ns {outcome.namespace}"]
    parts += [] if same_tq else [f"tq {outcome.task_queue}"]
    return " ".join(parts) or ("" if same_zone else f"zone {outcome.zone}")


def outcome(req: RouteRequest, table: RoutingTable, view: ClusterView | None = None) -> Outcome:
    """``req`` routed under ``table`` and ``view`` (default: every primary healthy). A
    sample of an unnamed workflow type stands for every type (``route``'s
    ``any_workflow_type``); one of a named type is routed as that type, so a region that
    stops running it shows."""
    decided = route(
        req,
        table,
        view if view is not None else ClusterView.all_primaries_healthy(table),
        any_workflow_type=req.workflow_type == ANY_TYPE,
    )
    if isinstance(decided, Decision):
        return Routed(
            decided.zone, decided.region, decided.cluster, decided.namespace,
            decided.task_queue, decided.rule,
        )  # fmt: skip
    return Refused(decided.kind, decided.message)


def _representatives(old: RoutingTable, new: RoutingTable) -> dict[str, str]:
    """Zone name -> a country standing for it: the first one in the zone under both
    configs (so the sample means the same zone on both sides), else the first one it has
    in either."""
    reps = {}
    for name in sorted(old.zones.keys() | new.zones.keys()):
        was = old.zones[name].countries if name in old.zones else frozenset()
        will = new.zones[name].countries if name in new.zones else frozenset()
        reps[name] = min(was & will or was | will)
    return reps


def _zoneless(old: RoutingTable, new: RoutingTable) -> str | None:
    """A known country in no zone under either config (None if every one is zoned)."""
    free = (old.known_countries | new.known_countries) - old.country_zone.keys()
    free -= new.country_zone.keys()
    return min(free) if free else None


def _all_rules(old: RoutingTable, new: RoutingTable) -> list[Rule]:
    """Both configs' rules, old first, each in file order."""
    out: list[Rule] = []
    for table in (old, new):
        out += sorted((r for rs in table.rules.values() for r in rs), key=lambda r: r.order)
    return out


def _changed_types(old: RoutingTable, new: RoutingTable) -> list[str]:
    """Workflow types some region runs under one config and not the other (as far as the
    declared lists say: a region that declares none runs every type)."""
    changed: set[str] = set()
    for name in old.regions.keys() & new.regions.keys():
        was, will = old.regions[name].workflow_types, new.regions[name].workflow_types
        if was is None and will is not None:
            changed |= will
        elif will is None and was is not None:
            changed |= was
        elif was is not None and will is not None:
            changed |= was ^ will
    return sorted(changed)


def samples(old: RoutingTable, new: RoutingTable) -> tuple[Sample, ...]:
    """The requests whose outcomes ``config diff`` compares (see the module docstring for
    which, and for the bound). Deterministic: same tables, same samples, same order."""
    out: dict[RouteRequest, Sample] = {}

    def add(
        where: str,
        country: str,
        data_classes: Iterable[DataClass] = DataClass,
        *,
        subdivision: str | None = None,
        tenant: str = ANY_TENANT,
        workflow_type: str = ANY_TYPE,
        priority: Priority = Priority.NORMAL,
    ) -> None:
        for dc in data_classes:
            req = RouteRequest(
                workflow_type=workflow_type, tenant_id=tenant, user_country=country,
                data_class=dc, user_subdivision=subdivision, priority=priority,
            )  # fmt: skip
            out.setdefault(req, Sample(where, req))

    reps = _representatives(old, new)
    zoneless = _zoneless(old, new)
    # (how it reads, country) of every representative: each zone's, then no zone's.
    everywhere = [(f"zone {z} (e.g. {c})", c) for z, c in reps.items()]
    if zoneless is not None:
        everywhere.append((f"no zone (e.g. {zoneless})", zoneless))
    rules = _all_rules(old, new)

    # Locations, with every data class.
    for where, country in everywhere:
        add(where, country)
    for rule in rules:
        if rule.level is Level.COUNTRY and rule.location is not None:
            add(rule.location, rule.location)
        elif rule.level is Level.SUBDIVISION and rule.location is not None:
            country = rule.location.split("-")[0]
            add(country, country)
            add(rule.location, country, subdivision=rule.location)
    moved = {
        c for c in old.country_zone.keys() | new.country_zone.keys()
        if old.country_zone.get(c) != new.country_zone.get(c)
    }  # fmt: skip
    for country in sorted(moved):
        add(country, country)

    # Each rule's match.
    for rule in rules:
        located = _rule_locations(rule, reps, everywhere)
        tenants = sorted(rule.tenants) or [ANY_TENANT]
        types = sorted(rule.workflow_types) or [ANY_TYPE]
        dcs = sorted(rule.data_classes, key=_DC_ORDER.index) or list(DataClass)
        for i in range(max(len(tenants), len(types))):
            for where, country, subdivision in located:
                add(
                    where, country, dcs, subdivision=subdivision,
                    tenant=tenants[i % len(tenants)], workflow_type=types[i % len(types)],
                )  # fmt: skip

    # Tenants whose residency decides for all their data.
    tenant_home = zoneless if zoneless is not None else everywhere[0][1]
    tenant_where = f"no zone (e.g. {zoneless})" if zoneless is not None else everywhere[0][0]
    for tenant in sorted(old.residency.keys() | new.residency.keys()):
        add(tenant_where, tenant_home, tenant=tenant)

    # Workflow types some region starts or stops running; priorities renamed.
    for wt in _changed_types(old, new):
        for where, country in everywhere:
            add(where, country, workflow_type=wt)
    for priority in Priority:
        if old.naming.priority_suffix[priority] != new.naming.priority_suffix[priority]:
            for where, country in everywhere:
                add(where, country, (DataClass.PUBLIC,), priority=priority)
    return tuple(out.values())


def _rule_locations(
    rule: Rule, reps: dict[str, str], everywhere: Sequence[tuple[str, str]]
) -> list[tuple[str, str, str | None]]:
    """(how it reads, country, subdivision) of the requests a rule's location matches."""
    if rule.level is Level.SUBDIVISION and rule.location is not None:
        return [(rule.location, rule.location.split("-")[0], rule.location)]
    if rule.level is Level.COUNTRY and rule.location is not None:
        return [(rule.location, rule.location, None)]
    if rule.level is Level.ZONE and rule.location in reps:
        return [(f"zone {rule.location} (e.g. {reps[rule.location]})", reps[rule.location], None)]
    return [(where, country, None) for where, country in everywhere]


def sample_bound(old: RoutingTable, new: RoutingTable) -> int:
    """The most samples ``samples(old, new)`` can return (the module docstring's bound)."""
    zones = len(old.zones.keys() | new.zones.keys())
    rules = _all_rules(old, new)
    located = {r.location for r in rules if r.level in (Level.COUNTRY, Level.SUBDIVISION)}
    moved = {
        c for c in old.country_zone.keys() | new.country_zone.keys()
        if old.country_zone.get(c) != new.country_zone.get(c)
    }  # fmt: skip
    # A subdivision rule samples its country too: count it twice.
    locations = zones + 1 + len(located) * 2 + len(moved)
    per_rule = sum(
        4 * max(1, len(r.tenants), len(r.workflow_types))
        * (zones + 1 if r.level is Level.DEFAULT else 1)
        for r in rules
    )  # fmt: skip
    tenants = len(old.residency.keys() | new.residency.keys())
    types = len(_changed_types(old, new))
    return 4 * locations + per_rule + 4 * tenants + 4 * types * (zones + 1) + 3 * (zones + 1)


def describe_requests(sample: Sample, data_classes: Sequence[DataClass]) -> str:
    """A class of requests in words: "DE financial data", "no zone (e.g. AD) any data,
    tenant globex", "zone eu (e.g. AT) public data, workflow type Payroll, priority
    low"."""
    req = sample.request
    if set(data_classes) == set(DataClass):
        what = "any"
    else:
        what = "/".join(dc.value for dc in data_classes)
    text = f"{sample.where} {what} data"
    if req.tenant_id != ANY_TENANT:
        text += f", tenant {req.tenant_id}"
    if req.workflow_type != ANY_TYPE:
        text += f", workflow type {req.workflow_type}"
    if req.priority is not Priority.NORMAL:
        text += f", priority {req.priority.value}"
    return text


def request_changes(old: RoutingTable, new: RoutingTable) -> tuple[RequestChange, ...]:
    """Every sample whose outcome differs between ``old`` and ``new`` (every primary
    healthy), in sample order; the data classes of one request class that change the
    same way are one change. What ``meridian config diff`` shows."""
    return _changes(samples(old, new), lambda r: outcome(r, old), lambda r: outcome(r, new))


def view_changes(
    table: RoutingTable, before: ClusterView, after: ClusterView
) -> tuple[RequestChange, ...]:
    """The same for one config under two cluster views: what a flip would change for
    callers (the dry run of ``SetActiveCluster``). A request refused before and after
    for the same reason is no change for its caller, whatever the health details in
    the two messages."""
    return _changes(
        samples(table, table),
        lambda r: outcome(r, table, before),
        lambda r: outcome(r, table, after),
        same=lambda was, will: _grouped(was) == _grouped(will),
    )


def _changes(
    sampled: Iterable[Sample],
    was_of: Callable[[RouteRequest], Outcome],
    will_of: Callable[[RouteRequest], Outcome],
    same: Callable[[Outcome, Outcome], bool] = lambda was, will: was == will,
) -> tuple[RequestChange, ...]:
    groups: dict[tuple[object, ...], tuple[Sample, list[DataClass], Outcome, Outcome]] = {}
    for sample in sampled:
        req = sample.request
        was, will = was_of(req), will_of(req)
        if same(was, will):
            continue
        key = (
            sample.where, req.tenant_id, req.user_country, req.user_subdivision,
            req.workflow_type, req.priority, _grouped(was), _grouped(will),
        )  # fmt: skip
        if key in groups:
            groups[key][1].append(req.data_class)
        else:
            groups[key] = (sample, [req.data_class], was, will)
    return tuple(
        RequestChange(describe_requests(s, dcs), s.request, tuple(dcs), was, will)
        for s, dcs, was, will in groups.values()
    )
