"""Reading the audit log for people: filters, and the report an auditor runs.

The report proves before it counts. Each chain is verified first (the verification
``meridian audit verify`` runs); only the records that verification proves are counted,
and from a chain's first bad record on everything is **unproven** and named as such.

Residency is then re-derived, not read back: a decision names its config version, and
the ``config.change`` record that put that version in force (earlier in the same
chain) carries the topology — each region's zone and clusters, each zone's countries,
the tenants that declare a zone. Under that topology the report derives the zone of the
decision's region and the zone its data is bound to, and checks that the data stayed
there and that the record's own ``zone`` and ``residency_zone`` agree. A decision whose
version has no such config record cannot be checked: it is unproven, never a pass.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from router.audit.records import topology_hash
from router.audit.verify import VerifyResult, chains, expand

REGULATED = frozenset({"pii", "financial"})
DECISION_KINDS = frozenset({"route.decision", "route.explain"})
# The outcomes of a config change that put its version in force.
IN_FORCE = frozenset({"loaded", "accepted"})
AUTH_KINDS = frozenset({"auth.failure", "auth.denied"})
KEY_KINDS = frozenset({"key.rotation", "key.ring"})

# Exit codes of `meridian audit report` (also in README): every chain proven, at least
# one zone-bound decision in range, each checked and compliant -> PASS.
PASS, FAILED, KEY_REQUIRED, NO_EVIDENCE = 0, 1, 2, 3


def parse_time(text: str) -> datetime:
    """ISO 8601, date or date-time; naive means UTC."""
    value = datetime.fromisoformat(text.strip())
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _numbered(files: Iterable[Path]) -> Iterator[tuple[str, int, dict[str, Any] | None]]:
    """(file name, line number, record or None) of every line, as ``verify`` numbers them."""
    for f in files:
        with open(f, "rb") as fh:
            for number, raw in enumerate(fh, start=1):
                try:
                    rec = json.loads(raw)
                except ValueError:
                    rec = None
                yield f.name, number, rec if isinstance(rec, dict) else None


def records(paths: Iterable[Path]) -> Iterator[dict[str, Any]]:
    """Every parsable record of the chain's files, in order (run ``verify`` for trust)."""
    files, _ = expand(paths)
    for _, _, rec in _numbered(files):
        if rec is not None:
            yield rec


@dataclass(frozen=True)
class Filter:
    workflow_id: str | None = None
    tenant: str | None = None
    region: str | None = None
    zone: str | None = None
    kind: str | None = None
    seq: int | None = None
    since: datetime | None = None
    until: datetime | None = None

    def __call__(self, rec: dict[str, Any]) -> bool:
        if self.seq is not None and rec.get("seq") != self.seq:
            return False
        if self.kind and not str(rec.get("kind", "")).startswith(self.kind):
            return False
        for name in ("workflow_id", "tenant", "region", "zone"):
            want = getattr(self, name)
            if want is not None and rec.get(name) != want:
                return False
        if self.since or self.until:
            try:
                at = parse_time(str(rec.get("time", "")))
            except ValueError:
                return False
            if (self.since and at < self.since) or (self.until and at >= self.until):
                return False
        return True


# -- proof: what verification vouches for ----------------------------------------------


@dataclass(frozen=True)
class ChainProof:
    """One chain after verification: the records it proves, in order, and how many
    records follow its first bad one (unproven; 0 when the chain is intact)."""

    path: Path
    result: VerifyResult
    proven: tuple[dict[str, Any], ...]
    unproven: int
    first_unproven_seq: int | None

    @property
    def name(self) -> str:
        return str(self.path)


def prove(paths: Sequence[Path], verified: Sequence[tuple[Path, VerifyResult]]) -> list[ChainProof]:
    """Split each chain's records at its first bad record. ``verified``: what
    verification said of ``paths``, one result per chain (``verify_chains``)."""
    results = {d.resolve(): r for d, r in verified}
    out = []
    for directory, members in chains(paths):
        result = results[directory.resolve()]
        problem = result.problem
        files, _ = expand(members)
        proven: list[dict[str, Any]] = []
        unproven, first = 0, None
        bad = False
        for name, number, rec in _numbered(files):
            if problem is not None and name == problem.file and number >= problem.line:
                bad = True
            if rec is None:
                continue  # a torn final line (verify notes it) or the bad line itself
            seq = rec.get("seq")
            if not bad and isinstance(seq, int) and seq <= result.last_seq:
                proven.append(rec)
                continue
            unproven += 1
            if first is None and isinstance(seq, int):
                first = seq
        out.append(ChainProof(directory, result, tuple(proven), unproven, first))
    return out


# -- residency, re-derived ----------------------------------------------------------------


@dataclass(frozen=True)
class Topology:
    """The residency-relevant part of one config version, as its config record says."""

    version: str
    region_zone: dict[str, str]
    region_clusters: dict[str, frozenset[str]]
    country_zone: dict[str, str]
    tenant_zone: dict[str, str]

    @classmethod
    def of(cls, version: str, topo: dict[str, Any]) -> Topology:
        regions = topo.get("regions", {})
        return cls(
            version,
            {r: spec["zone"] for r, spec in regions.items()},
            {r: frozenset(spec.get("clusters", [])) for r, spec in regions.items()},
            {c: z for z, spec in topo.get("zones", {}).items() for c in spec.get("countries", [])},
            dict(topo.get("tenants", {})),
        )

    def binding(self, rec: dict[str, Any]) -> tuple[str | None, str]:
        """The zone the decision's data is bound to under this config, and why."""
        tenant, country = rec.get("tenant", ""), rec.get("user_country", "")
        if tenant in self.tenant_zone:
            zone = self.tenant_zone[tenant]
            return zone, f"tenant {tenant} declares residency zone {zone}"
        if rec.get("data_class") not in REGULATED:
            return None, ""
        found = self.country_zone.get(country)
        return found, f"user country {country} is in {'zone ' + found if found else 'no zone'}"


@dataclass(frozen=True)
class Finding:
    """A decision that failed its check (``violation``) or could not be checked
    (``unproven``), with every reason."""

    chain: str
    record: dict[str, Any]
    why: tuple[str, ...]
    derived_zone: str = ""
    bound_zone: str = ""

    def to_json(self) -> dict[str, Any]:
        r = self.record
        return {
            "chain": self.chain, "seq": r.get("seq"), "time": r.get("time", ""),
            "kind": r.get("kind", ""), "workflow_id": r.get("workflow_id", ""),
            "tenant": r.get("tenant", ""), "user_country": r.get("user_country", ""),
            "data_class": r.get("data_class", ""), "region": r.get("region", ""),
            "cluster": r.get("cluster", ""), "zone": r.get("zone", ""),
            "residency_zone": r.get("residency_zone", ""),
            "config_version": r.get("config_version", ""),
            "derived_zone": self.derived_zone, "bound_zone": self.bound_zone,
            "why": list(self.why),
        }  # fmt: skip


def check_decision(rec: dict[str, Any], topo: Topology) -> tuple[list[str], str, str | None]:
    """(what is wrong, the region's zone, the zone the data is bound to) under ``topo``."""
    region, version = rec.get("region", ""), topo.version
    derived = topo.region_zone.get(region)
    if derived is None:
        return [f"region {region!r} is not a region of config {version}"], "", None
    wrong = []
    if rec.get("zone") != derived:
        wrong.append(
            f"the record says zone {rec.get('zone')!r}, but region {region} is in zone "
            f"{derived} under config {version}"
        )
    cluster = rec.get("cluster")
    if cluster and cluster not in topo.region_clusters.get(region, ()):
        wrong.append(f"cluster {cluster} is not a cluster of {region} under config {version}")
    bound, why = topo.binding(rec)
    data = rec.get("data_class", "")
    if bound is None and data in REGULATED:
        wrong.append(f"{data} data, {why}: it is bound to no zone and should have been refused")
    if (rec.get("residency_zone") or None) != bound:
        wrong.append(
            f"the record's residency zone is {rec.get('residency_zone') or 'none'}, but config "
            f"{version} binds this data to {bound or 'none'}" + (f" ({why})" if why else "")
        )
    if bound is not None and derived != bound:
        wrong.append(
            f"{data} data bound to zone {bound} ({why}) was routed to region {region} "
            f"of zone {derived}"
        )
    return wrong, derived, bound


class InForce:
    """Which config versions each chain put in force, and with what topology, from its
    proven ``config.change`` records (loaded or accepted)."""

    def __init__(self, proofs: Sequence[ChainProof]) -> None:
        # Each version's topology, or why it cannot be used.
        self.topologies: dict[str, Topology | str] = {}
        # Where each chain first put each version in force: (chain, version) -> seq.
        self.first: dict[tuple[str, str], int] = {}
        hashes: dict[str, str] = {}
        for proof in proofs:
            for r in proof.proven:
                if r.get("kind") == "config.change" and r.get("outcome") in IN_FORCE:
                    self._add(proof.name, r, hashes)

    def _add(self, chain: str, r: dict[str, Any], hashes: dict[str, str]) -> None:
        version, seq = str(r.get("version", "")), int(r["seq"])
        self.first.setdefault((chain, version), seq)
        topo, where = r.get("topology"), f"{chain} seq {seq}"
        if not isinstance(topo, dict):
            self.topologies.setdefault(
                version, f"its config record ({where}) carries no topology (written before "
                         "config records carried it)",
            )  # fmt: skip
            return
        digest = topology_hash(topo)
        if digest != r.get("topology_hash"):
            self.topologies[version] = f"its config record ({where}) mismatches its topology_hash"
        elif hashes.setdefault(version, digest) != digest:
            self.topologies[version] = f"config records disagree on its topology (one: {where})"
        elif not isinstance(self.topologies.get(version), Topology):
            self.topologies[version] = Topology.of(version, topo)

    def topology(self, chain: str, rec: dict[str, Any]) -> Topology | str:
        """The topology in force for decision ``rec`` of ``chain``, or why there is none."""
        version = str(rec.get("config_version", ""))
        since = self.first.get((chain, version))
        if since is None or since > int(rec["seq"]):
            return f"no config record of version {version} precedes it in its chain"
        topo = self.topologies[version]
        return topo if isinstance(topo, Topology) else f"config version {version}: {topo}"


# -- the report ------------------------------------------------------------------------


@dataclass
class Summary:
    decisions: int = 0
    zone_bound: int = 0
    refusals: int = 0
    violations: int = 0
    unproven: int = 0


DIMENSIONS = ("zone", "region", "tenant", "data_class")


@dataclass
class Report:
    proofs: list[ChainProof]
    records: int = 0
    decisions: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    refusals: Counter[tuple[str, str]] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    flips: list[dict[str, Any]] = field(default_factory=list)
    configs: list[dict[str, Any]] = field(default_factory=list)
    auth: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)
    key_changes: list[dict[str, Any]] = field(default_factory=list)
    # Decisions (and dry runs) checked against their config's topology.
    checked: int = 0
    # Zone-bound starts checked: the evidence a residency verdict rests on.
    zone_bound: int = 0
    violations: list[Finding] = field(default_factory=list)
    unproven: list[Finding] = field(default_factory=list)
    summary: dict[str, dict[str, Summary]] = field(
        default_factory=lambda: {d: {} for d in DIMENSIONS}
    )

    @property
    def verified_records(self) -> int:
        return sum(len(p.proven) for p in self.proofs)

    @property
    def broken(self) -> list[ChainProof]:
        return [
            p for p in self.proofs if p.result.problem and p.result.problem.kind != "key-required"
        ]

    @property
    def key_required(self) -> list[ChainProof]:
        return [
            p for p in self.proofs if p.result.problem and p.result.problem.kind == "key-required"
        ]

    @property
    def exit_code(self) -> int:
        if self.broken or self.violations or self.unproven:
            return FAILED
        if self.key_required:
            return KEY_REQUIRED
        return NO_EVIDENCE if self.zone_bound == 0 else PASS

    @property
    def verdict(self) -> str:
        return {PASS: "pass", FAILED: "failed", KEY_REQUIRED: "key-required",
                NO_EVIDENCE: "no-evidence"}[self.exit_code]  # fmt: skip

    def _count(self, rec: dict[str, Any], zone: str, what: str) -> None:
        keys = {
            "zone": zone,
            "region": rec.get("region", ""),
            "tenant": rec.get("tenant", ""),
            "data_class": rec.get("data_class", ""),
        }
        for dim, key in keys.items():
            if key:
                row = self.summary[dim].setdefault(key, Summary())
                setattr(row, what, getattr(row, what) + 1)


def report(proofs: list[ChainProof], in_range: Filter) -> Report:
    """Count and check the proven records that ``in_range`` selects. Config records
    are read from the whole of each proven chain: a version put in force before the
    range began still governs decisions inside it."""
    rep = Report(proofs)
    forces = InForce(proofs)
    for proof in proofs:
        for r in proof.proven:
            if in_range(r):
                rep.records += 1
                _add(rep, proof.name, r, forces)
    return rep


def _add(rep: Report, chain: str, r: dict[str, Any], forces: InForce) -> None:
    kind = r.get("kind")
    if kind in DECISION_KINDS:
        _check(rep, chain, r, forces.topology(chain, r))
    elif kind == "route.refusal":
        rep.refusals[(r.get("refusal", ""), r.get("data_class", ""))] += 1
        rep._count(r, r.get("residency_zone", ""), "refusals")
    elif kind == "start.outcome":
        rep.outcomes[r.get("outcome", "")] += 1
    elif kind == "flip":
        rep.flips.append(r)
    elif kind == "config.change":
        rep.configs.append(r)
    elif kind in AUTH_KINDS:
        why = r.get("why") or ", ".join(sorted(r.get("reasons", {})))
        key = (str(kind), r.get("component", ""), r.get("region", ""), why)
        rep.auth[key] += int(r.get("count", 1))
    elif kind in KEY_KINDS:
        rep.key_changes.append(r)


def _check(rep: Report, chain: str, r: dict[str, Any], topo: Topology | str) -> None:
    start = r.get("kind") == "route.decision"
    if not isinstance(topo, Topology):
        rep.unproven.append(Finding(chain, r, (topo,)))
        if start:
            rep.decisions[(r.get("zone", ""), r.get("region", ""), r.get("data_class", ""))] += 1
            rep._count(r, r.get("zone", ""), "decisions")
            rep._count(r, r.get("zone", ""), "unproven")
        return
    wrong, derived, bound = check_decision(r, topo)
    rep.checked += 1
    zone_bound = bound is not None or r.get("data_class") in REGULATED
    if wrong:
        rep.violations.append(Finding(chain, r, tuple(wrong), derived, bound or ""))
    if not start:
        return
    zone = derived or r.get("zone", "")
    rep.decisions[(zone, r.get("region", ""), r.get("data_class", ""))] += 1
    rep._count(r, zone, "decisions")
    if zone_bound:
        rep.zone_bound += 1
        rep._count(r, zone, "zone_bound")
    if wrong:
        rep._count(r, zone, "violations")
