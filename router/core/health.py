"""Envoy-style health thresholds as a pure function of the previous state and one probe.

A cluster turns unhealthy after ``unhealthy_threshold`` consecutive failed probes and
healthy again after ``healthy_threshold`` consecutive good ones; a cluster never probed
(``healthy is None``) takes the first result as is, so a router that just started does
not route to a cluster it has never seen answer.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Thresholds:
    unhealthy: int
    healthy: int


@dataclass(frozen=True, slots=True)
class ProbeState:
    healthy: bool | None = None
    successes: int = 0
    failures: int = 0
    # The last failed probe's reason, shown in status views; empty when healthy.
    last_error: str = ""


def observe(state: ProbeState, ok: bool, error: str, t: Thresholds) -> ProbeState:
    if ok:
        successes = state.successes + 1
        healthy = state.healthy
        if healthy is None or (not healthy and successes >= t.healthy):
            healthy = True
        return ProbeState(healthy, successes, 0, "" if healthy else state.last_error)
    failures = state.failures + 1
    healthy = state.healthy
    if healthy is None or (healthy and failures >= t.unhealthy):
        healthy = False
    return ProbeState(healthy, 0, failures, error)
