"""Reading the audit log for people: filters, the per-period report, and the residency
check an auditor runs ("did any record route regulated data outside its zone?")."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from router.audit.verify import expand

REGULATED = frozenset({"pii", "financial"})
DECISION_KINDS = frozenset({"route.decision", "route.explain"})


def parse_time(text: str) -> datetime:
    """ISO 8601, date or date-time; naive means UTC."""
    value = datetime.fromisoformat(text.strip())
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def records(paths: Iterable[Path]) -> Iterator[dict[str, Any]]:
    """Every parsable record of the chain's files, in order (run ``verify`` for trust)."""
    files, _ = expand(paths)
    for f in files:
        with open(f, "rb") as fh:
            for raw in fh:
                try:
                    rec = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(rec, dict):
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


def residency_violations(recs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Decisions that sent data bound to a zone elsewhere: regulated data whose record
    names no residency zone, or any bound data whose zone differs from its binding."""
    out = []
    for r in recs:
        if r.get("kind") not in DECISION_KINDS:
            continue
        bound = r.get("residency_zone") or ""
        if (r.get("data_class") in REGULATED and not bound) or (bound and r.get("zone") != bound):
            out.append(r)
    return out


@dataclass
class Report:
    records: int = 0
    decisions: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    refusals: Counter[tuple[str, str]] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    flips: list[dict[str, Any]] = field(default_factory=list)
    configs: list[dict[str, Any]] = field(default_factory=list)
    auth_failures: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    regulated_checked: int = 0
    violations: list[dict[str, Any]] = field(default_factory=list)


def report(recs: Iterable[dict[str, Any]]) -> Report:
    rep = Report()
    selected = list(recs)
    rep.records = len(selected)
    for r in selected:
        kind = r.get("kind")
        if kind == "route.decision":
            rep.decisions[(r.get("zone", ""), r.get("region", ""), r.get("data_class", ""))] += 1
        if kind in DECISION_KINDS and (r.get("data_class") in REGULATED or r.get("residency_zone")):
            rep.regulated_checked += 1
        elif kind == "route.refusal":
            rep.refusals[(r.get("refusal", ""), r.get("data_class", ""))] += 1
        elif kind == "start.outcome":
            rep.outcomes[r.get("outcome", "")] += 1
        elif kind == "flip":
            rep.flips.append(r)
        elif kind == "config.change":
            rep.configs.append(r)
        elif kind == "auth.failure":
            rep.auth_failures[(r.get("component", ""), r.get("region", ""), r.get("why", ""))] += 1
    rep.violations = residency_violations(selected)
    return rep
