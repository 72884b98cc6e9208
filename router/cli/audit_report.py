"""`meridian audit report`: verification first, then counts and the residency check over
the proven records only; a table for people, JSON for tools.

Exit codes: 0 every chain verified and at least one zone-bound decision in range, each
compliant; 1 a chain is broken, a decision violates residency, or a decision could not
be checked (unproven); 2 an HMAC chain was given without its key; 3 no zone-bound
decision in range ("no evidence in range": nothing was checked, which is not a pass).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from router.audit.query import DIMENSIONS, ChainProof, Finding, Report
from router.cli.common import render_table


def _span(since: str | None, until: str | None) -> str:
    return f"{since or 'the beginning'} .. {until or 'now'}"


def _chain_line(p: ChainProof) -> str:
    r = p.result
    if r.problem is None:
        return f"{p.path}: verified: {r.records} records, last seq {r.last_seq}"
    tail = (
        f"; unproven from seq {p.first_unproven_seq} on: {p.unproven} record(s), not counted"
        if p.unproven
        else ""
    )
    return f"{p.path}: NOT VERIFIED: {r.problem}{tail}"


def verification_summary(rep: Report) -> str:
    n = len(rep.proofs)
    if not rep.broken and not rep.key_required:
        return f"verified: {rep.verified_records} records in {n} chain(s)"
    bad = len(rep.broken) + len(rep.key_required)
    unproven = sum(p.unproven for p in rep.proofs)
    return (
        f"NOT verified: {bad} of {n} chain(s) failed verification; {rep.verified_records} "
        f"records proven, {unproven} unproven (not counted)"
    )


def _finding_line(f: Finding) -> str:
    r = f.record
    where = "/".join(x for x in (r.get("zone"), r.get("region"), r.get("cluster")) if x)
    head = (
        f"  {f.chain} seq {r.get('seq')} {r.get('time', '')} {r.get('kind')}: "
        f"{r.get('data_class')} data of tenant {r.get('tenant')} ({r.get('user_country')}) "
        f"to {where} (workflow {r.get('workflow_id')}, config {r.get('config_version')})"
    )
    return "\n".join([head, *(f"      - {w}" for w in f.why)])


def residency_text(rep: Report, span: str) -> list[str]:
    lines: list[str] = []
    if rep.violations:
        lines.append(
            f"Residency: VIOLATION: {len(rep.violations)} decision(s) fail the check against "
            "the topology of their config version:"
        )
        lines += [_finding_line(f) for f in rep.violations]
    if rep.unproven:
        lines.append(
            f"Residency: UNPROVEN: {len(rep.unproven)} decision(s) could not be checked "
            "(no config record with the topology of their version):"
        )
        lines += [_finding_line(f) for f in rep.unproven]
    if rep.broken:
        lines.append(
            f"Residency: NOT PROVEN: the log failed verification; {rep.zone_bound} zone-bound "
            "decision(s) among the proven records were checked, the rest prove nothing."
        )
    if lines:
        return lines
    if rep.key_required:
        return ["Residency: not checked: give the audit key (--key-file) to verify the chain"]
    if rep.zone_bound == 0:
        return [
            f"Residency: NO EVIDENCE IN RANGE: 0 zone-bound decisions in {span} "
            f"({rep.checked} decision(s) checked). Nothing was checked: this is not a pass."
        ]
    return [
        f"Residency: PASS: {rep.zone_bound} zone-bound decision(s) checked against the "
        f"topology of their config version ({rep.checked} decision(s) checked in all); "
        "none left its zone."
    ]


def print_text(rep: Report, since: str | None, until: str | None) -> None:
    span = _span(since, until)
    print(f"Audit report, {span}")
    print("\nVerification (as `meridian audit verify`, before anything is counted)")
    for p in rep.proofs:
        for note in p.result.notes:
            print(f"  note: {p.path}: {note}")
        print(f"  {_chain_line(p)}")
    print(verification_summary(rep))
    print(f"\n{rep.records} proven record(s) in range\n")
    print("Decisions (zone derived from the region under the config in force)")
    print(render_table(["zone", "region", "class", "count"],
                       [(*k, n) for k, n in sorted(rep.decisions.items())]))  # fmt: skip
    for dim in DIMENSIONS:
        print(f"\nBy {dim.replace('_', ' ')}")
        print(render_table(
            [dim.replace("_", " "), "decisions", "zone-bound", "refusals", "violations",
             "unproven"],
            [(k, s.decisions, s.zone_bound, s.refusals, s.violations, s.unproven)
             for k, s in sorted(rep.summary[dim].items())],
        ))  # fmt: skip
    print("\nRefusals")
    print(render_table(["refusal", "class", "count"],
                       [(*k, n) for k, n in sorted(rep.refusals.items())]))  # fmt: skip
    print(
        "\nStart outcomes: "
        + (", ".join(f"{k} {n}" for k, n in sorted(rep.outcomes.items())) or "none")
    )
    print("\nFlips")
    print(render_table(["time", "region", "outcome", "from", "to", "rule", "actor", "reason"], [
        (f.get("time"), f.get("region"), f.get("outcome"), f.get("from_cluster", ""),
         f.get("to_cluster", ""), f.get("rule"), f.get("actor"), f.get("reason"))
        for f in rep.flips
    ]))  # fmt: skip
    print("\nConfig changes")
    print(render_table(["time", "outcome", "version", "topology", "source"], [
        (c.get("time"), c.get("outcome"), c.get("version"),
         str(c.get("topology_hash", ""))[:16], c.get("source"))
        for c in rep.configs
    ]))  # fmt: skip
    print("\nKey changes")
    print(render_table(["time", "kind", "region", "from key", "to key", "noticed by"], [
        (k.get("time"), k.get("kind"), k.get("region"), k.get("previous_key_id"),
         k.get("key_id"), k.get("component"))
        for k in rep.key_changes
    ]))  # fmt: skip
    print("\nAuthentication failures and denials")
    print(render_table(["kind", "component", "region", "why", "count"],
                       [(*k, n) for k, n in sorted(rep.auth.items())]))  # fmt: skip
    print()
    print("\n".join(residency_text(rep, span)))
    print(f"Result: {rep.verdict.upper()} (exit {rep.exit_code})")


def to_json(rep: Report, since: str | None, until: str | None) -> dict[str, Any]:
    def chain(p: ChainProof) -> dict[str, Any]:
        r, prob = p.result, p.result.problem
        return {
            "path": str(p.path), "ok": r.ok, "records": r.records, "last_seq": r.last_seq,
            "last_hash": r.last_hash, "proven": len(p.proven), "unproven": p.unproven,
            "first_unproven_seq": p.first_unproven_seq, "notes": r.notes,
            "problem": None if prob is None else {
                "file": prob.file, "line": prob.line, "seq": prob.seq, "kind": prob.kind,
                "detail": prob.detail,
            },
        }  # fmt: skip

    def rows(findings: Sequence[Finding]) -> list[dict[str, Any]]:
        return [f.to_json() for f in findings]

    return {
        "range": {"since": since, "until": until},
        "verification": {
            "ok": not rep.broken and not rep.key_required,
            "records": rep.verified_records,
            "chains": [chain(p) for p in rep.proofs],
        },
        "records": rep.records,
        "decisions": [{"zone": z, "region": g, "data_class": c, "count": n}
                      for (z, g, c), n in sorted(rep.decisions.items())],
        "summary": {
            dim: [{dim: k, **vars(s)} for k, s in sorted(rep.summary[dim].items())]
            for dim in DIMENSIONS
        },
        "refusals": [{"refusal": k, "data_class": c, "count": n}
                     for (k, c), n in sorted(rep.refusals.items())],
        "start_outcomes": dict(sorted(rep.outcomes.items())),
        "flips": rep.flips, "config_changes": rep.configs, "key_changes": rep.key_changes,
        "auth_failures": [{"kind": k, "component": a, "region": g, "why": w, "count": n}
                          for (k, a, g, w), n in sorted(rep.auth.items())],
        "residency": {
            "checked": rep.checked, "zone_bound_decisions": rep.zone_bound,
            "violations": rows(rep.violations), "unproven": rows(rep.unproven),
        },
        "verdict": rep.verdict,
        "exit_code": rep.exit_code,
    }  # fmt: skip


def run(rep: Report, *, since: str | None, until: str | None, as_json: bool) -> int:
    if as_json:
        print(json.dumps(to_json(rep, since, until), indent=2))
    else:
        print_text(rep, since, until)
    return rep.exit_code
