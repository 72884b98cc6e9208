"""Entry point: python -m benchmarks <name> [options]."""

from __future__ import annotations

import sys

BENCHMARKS = {
    "audit": "benchmarks.audit",
    "codec": "benchmarks.codec",
    "contact_sync": "benchmarks.contact_sync",
    "core": "benchmarks.core",
    "failover": "benchmarks.failover",
    "followups": "benchmarks.followups",
    "profile": "benchmarks.profile",
    "propagation": "benchmarks.propagation",
    "router_vs_direct": "benchmarks.router_vs_direct",
    "workers": "benchmarks.workers",
}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in BENCHMARKS:
        names = ", ".join(BENCHMARKS)
        print(f"usage: python -m benchmarks {{{names}}} [--json] [--help]", file=sys.stderr)
        sys.exit(2)
    import importlib

    module = importlib.import_module(BENCHMARKS[sys.argv[1]])
    module.main(sys.argv[2:])


if __name__ == "__main__":
    main()
