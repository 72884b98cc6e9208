"""Talking to a running router: status, failover, explain, start, and the follow-ups
describe, signal, query, cancel, result; all through ``meridian.client``."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from typing import Any

from router.cli.common import (
    DEFAULT_ROUTER,
    client_credentials,
    credential_args,
    log,
    positive_seconds,
    render_table,
)
from router.cli.render import message_rows, message_to_json
from router.errors import MeridianError

DATA_CLASSES = ("public", "internal", "pii", "financial")
PRIORITIES = ("low", "normal", "high")


def _connect(args: argparse.Namespace) -> Any:
    """A ``meridian.client.SyncMeridianClient`` of ``--router`` with the command's
    credentials (kept in ``args.credentials`` for ``_rpc``'s messages)."""
    from meridian.client import SyncMeridianClient, TLSConfig

    creds = args.credentials = client_credentials(args)
    log.debug("router %s: %s", args.router, creds.source)
    tls = None if creds.plaintext else TLSConfig(creds.ca, creds.cert, creds.key)
    return SyncMeridianClient.connect(
        args.router, tls=tls, token=creds.token, default_timeout=args.timeout
    )


def _rpc(call: Callable[[], Any], args: argparse.Namespace) -> Any:
    """``call()``, with a client error told as ``router ADDRESS: CODE: message``."""
    from meridian.errors import MeridianError as CallError

    try:
        return call()
    except CallError as exc:
        message = f"router {args.router}: {exc}"
        creds = getattr(args, "credentials", None)
        if "failed to connect" in str(exc) and creds is not None:
            # A TLS client at a plaintext port (or the reverse), or a certificate the
            # router refused, fails with an opaque handshake error: say what we tried.
            message += f" [client: {creds.source}]"
            if creds.plaintext:
                message += (
                    "; if the router is running, it may serve TLS (it does unless run with "
                    "--insecure; the dev stack serves mTLS): a plaintext client fails this way"
                )
        raise MeridianError(message) from None


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def cmd_status(args: argparse.Namespace) -> int:
    cli = _connect(args)
    topo = message_to_json(_rpc(cli.get_topology, args))
    if args.json:
        _print_json(topo)
        return 0
    print(f"config version {topo['config_version']} from {topo['config_source']}; "
          f"default region {topo['default_region']}")  # fmt: skip
    if topo["consul"]:
        reach = "reachable" if topo["consul_reachable"] else "UNREACHABLE"
        me = " (this replica)" if topo["is_leader"] else ""
        print(f"consul {topo['consul']} ({reach}); replica {topo['replica_id']}; "
              f"leader {topo['leader'] or 'none'}{me}")  # fmt: skip
    rejected = topo["last_rejected"]
    if rejected is not None:
        print(f"last rejected config change: {rejected['time']} from {rejected['source']}")
        for e in rejected["errors"]:
            print(f"  - {e}")
    if topo["config_pending"]:
        print(f"config change waiting to be applied (retried): {topo['config_pending']}")
    ship = topo.get("audit_shipping")
    if ship is not None:
        print(f"audit shipping to {ship['sink']} (chain {ship['chain']}): shipped seq "
              f"{ship['shipped_seq']} of {ship['committed_seq']}, lag {ship['lag']}"
              + (f"; BEHIND: {ship['last_error']}" if ship["last_error"] else ""))  # fmt: skip
    print(render_table(STATUS_HEADERS, status_rows(topo)))
    for line in checkpoint_lines(topo.get("audit_checkpoints")):
        print(line)
    return 0


def checkpoint_lines(c: dict[str, Any] | None) -> list[str]:
    """The audit chain's signed checkpoints and each witness, from a Topology's JSON."""
    if c is None:
        return []
    when = c["checkpoint_time"] or "never"
    lines = [
        f"audit chain {c['chain_id']} (signing key {c['key_id']}): last checkpoint seq "
        f"{c['checkpoint_seq']} at {when}; log at seq {c['log_seq']}; every "
        f"{c['interval_seconds']:g} s while records are written"
    ]
    for w in c["witnesses"]:
        if w["last_error"]:
            state = f"FAILING ({w['failures']} attempts; retried with backoff): {w['last_error']}"
        elif w["last_published"] is None:
            state = "nothing published yet"
        else:
            state = f"ok, holds seq {w['published_seq']} ({w['last_published']})"
        lines.append(f"  witness {w['name']}: {state}")
    return lines


STATUS_HEADERS = ["zone", "region", "cluster", "role", "health", "active", "endpoint", "last flip"]


def _health_word(c: dict[str, Any]) -> str:
    if not c["probed"]:
        return "unknown"
    return "healthy" if c["healthy"] else f"UNHEALTHY ({c['last_error']})"


def _flip_text(region: dict[str, Any]) -> str:
    f = region["last_flip"]
    if f is None:
        return ""
    return (
        f"{f['time']} {f['from_cluster']}->{f['to_cluster']} {f['rule']} by {f['actor']}: "
        f"{f['reason']}"
    )


def _active(region: dict[str, Any]) -> str:
    return next((c["name"] for c in region["clusters"] if c["active"]), "none")


def status_rows(topo: dict[str, Any]) -> list[tuple[str, ...]]:
    """The status table's rows, from ``message_to_json`` of a Topology."""
    rows: list[tuple[str, ...]] = []
    for r in topo["regions"]:
        for c in r["clusters"]:
            rows.append((
                r["zone"], r["name"], c["name"], str(c["role"]).lower(), _health_word(c),
                "*" if c["active"] else "", c["endpoint"], _flip_text(r) if c["active"] else "",
            ))  # fmt: skip
    return rows


def cmd_failover(args: argparse.Namespace) -> int:
    cli = _connect(args)
    resp = message_to_json(
        _rpc(
            lambda: cli.set_active_cluster(
                args.region, args.to, reason=args.reason, force=args.force,
                dry_run=args.dry_run, actor=args.actor or _default_actor(),
            ),
            args,
        )
    )  # fmt: skip
    refused = 1 if resp["refused_rule"] else 0
    if args.json:
        _print_json(resp)
        return refused
    # Always set by the router; an empty region keeps an odd answer printable.
    unset = {"name": args.region, "clusters": [], "last_flip": None}
    before, after = resp["before"] or unset, resp["after"] or unset
    print(f"before: {before['name']} active {_active(before)}")
    print(
        f"after{' (dry run)' if resp['dry_run'] else ''}: {after['name']} active {_active(after)}"
    )
    if resp["dry_run"]:
        if resp["refused_rule"]:
            print(f"would be REFUSED by rule {resp['refused_rule']}: {resp['refused_message']}")
        imp = resp["impact"]
        if imp is not None:
            running = (
                str(imp["running_workflows"])
                if imp["running_workflows_known"]
                else f"unknown ({imp['running_workflows_error']})"
            )
            print(f"running workflows on {imp['leaving_cluster']}: {running}")
            if imp["route_changes"]:
                rows = [(c["requests"], c["before"], c["after"]) for c in imp["route_changes"]]
                print(render_table(["requests", "now routed to", "would route to"], rows))
            else:
                print("no route changes")
        print("dry run: nothing changed")
        return refused
    print(f"flipped {after['name']}: {_flip_text(after)}")
    return 0


def _default_actor() -> str:
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _routing(cli: argparse.Namespace) -> dict[str, Any]:
    """The routing inputs explain and start send."""
    return {
        "tenant": cli.tenant,
        "user_country": cli.country,
        "user_subdivision": cli.subdivision or "",
        "data_class": cli.data_class,
        "priority": cli.priority,
    }


def cmd_explain(args: argparse.Namespace) -> int:
    cli = _connect(args)
    d = _rpc(lambda: cli.explain(args.type, **_routing(args)), args).raw
    if args.json:
        _print_json(message_to_json(d))
        return 0
    rows = [(k, v) for k, v in message_rows(d) if k != "reasons"]
    print(render_table(["field", "value"], rows))
    print("why:")
    for reason in d.reasons:
        print(f"  - {reason}")
    return 0


def _print_message(msg: Any, as_json: bool) -> None:
    if as_json:
        _print_json(message_to_json(msg))
    else:
        print(render_table(["field", "value"], message_rows(msg)))


def _json_args(raw: list[str]) -> list[Any]:
    out = []
    for i, text in enumerate(raw):
        try:
            out.append(json.loads(text))
        except ValueError as exc:
            raise MeridianError(f"--arg #{i + 1}: not JSON: {exc}") from None
    return out


def cmd_start(args: argparse.Namespace) -> int:
    cli = _connect(args)
    values = _json_args(args.arg)
    handle = _rpc(
        lambda: cli.start_workflow(args.type, *values, id=args.id or None, **_routing(args)),
        args,
    )
    _print_message(handle.start_response, args.json)
    return 0


def _handle(args: argparse.Namespace) -> Any:
    """The workflow a follow-up command names (``--id``, ``--tenant``, ``--run-id``,
    ``--home``)."""
    return _connect(args).get_workflow_handle(
        args.id, tenant=args.tenant, run_id=args.run_id or "", home=args.home or ""
    )


def cmd_query(args: argparse.Namespace) -> int:
    handle, values = _handle(args), _json_args(args.arg)
    _print_message(_rpc(lambda: handle.query_response(args.name, *values), args), args.json)
    return 0


# `meridian result`'s exit code for a run that closed without completing (failed,
# canceled, terminated, timed out): distinct from 1, a call that failed.
NOT_COMPLETED = 3


def cmd_result(args: argparse.Namespace) -> int:
    handle = _handle(args)
    outcome = _rpc(handle.outcome, args)
    _print_message(outcome.raw, args.json)
    return 0 if outcome.status == "COMPLETED" else NOT_COMPLETED


def cmd_describe(args: argparse.Namespace) -> int:
    handle = _handle(args)
    _print_message(_rpc(handle.describe, args).raw, args.json)
    return 0


def cmd_signal(args: argparse.Namespace) -> int:
    from router.v1 import router_pb2 as pb

    handle, values = _handle(args), _json_args(args.arg)
    where = _rpc(lambda: handle.signal(args.name, *values), args)
    _print_message(pb.SignalWorkflowResponse(location=_location(where)), args.json)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from router.v1 import router_pb2 as pb

    handle = _handle(args)
    where = _rpc(handle.cancel, args)
    _print_message(pb.CancelWorkflowResponse(location=_location(where)), args.json)
    return 0


def _location(where: Any) -> Any:
    from router.v1 import router_pb2 as pb

    return pb.WorkflowLocation(
        zone=where.zone, region=where.region, cluster=where.cluster, namespace=where.namespace,
        home=where.home,
    )  # fmt: skip


def add_parsers(sub: Any) -> None:
    def client_args(sp: argparse.ArgumentParser, default_identity: str = "service") -> None:
        """``default_identity``: the dev identity the command uses when none is named."""
        sp.add_argument(
            "--router", default=os.environ.get("MERIDIAN_ROUTER", DEFAULT_ROUTER),
            help=f"router address (default: $MERIDIAN_ROUTER, else {DEFAULT_ROUTER})",
        )  # fmt: skip
        sp.add_argument(
            "--timeout", type=positive_seconds, default=5.0,
            help="seconds to wait for the router's answer (default 5)",
        )  # fmt: skip
        sp.add_argument(
            "--json", action="store_true", help="print JSON for tools (every field, even empty)"
        )
        credential_args(sp, default_identity)

    status = sub.add_parser("status", help="zones, regions, clusters: role, health, active")
    client_args(status, "sre")
    status.set_defaults(func=cmd_status)

    def routing_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--type", default="DataProcessingWorkflow", help="workflow type")
        sp.add_argument("--tenant", required=True, help="the tenant the workflow belongs to")
        sp.add_argument("--country", required=True, help="ISO 3166-1 alpha-2, any case")
        sp.add_argument("--subdivision", help="ISO 3166-2, e.g. US-CA")
        # Lowered before argparse checks choices: PII and pii are the same class.
        sp.add_argument(
            "--class", dest="data_class", required=True, type=str.lower, choices=DATA_CLASSES,
            help="what the request's data is (any case)",
        )  # fmt: skip
        sp.add_argument(
            "--priority", default="normal", type=str.lower, choices=PRIORITIES,
            help="task queue priority (any case; default normal)",
        )  # fmt: skip

    failover = sub.add_parser(
        "failover", help="flip a region's active cluster (safety rules, dry run)"
    )
    client_args(failover, "sre")
    failover.add_argument("--region", required=True, help="the region whose active cluster flips")
    failover.add_argument("--to", required=True, help="the cluster to make active")
    failover.add_argument("--reason", required=True, help="why (audited)")
    failover.add_argument(
        "--force",
        action="store_true",
        help="break glass: override health and wait period (never the region)",
    )
    failover.add_argument("--dry-run", action="store_true", help="show the impact, change nothing")
    failover.add_argument("--actor", help="who flips (default: user@host)")
    failover.set_defaults(func=cmd_failover)

    explain = sub.add_parser("explain", help="where would this request go, and why (dry run)")
    client_args(explain)
    routing_args(explain)
    explain.set_defaults(func=cmd_explain)

    start = sub.add_parser("start", help="start a workflow through the router")
    client_args(start)
    routing_args(start)
    start.add_argument("--id", help="workflow id (default: generated)")
    start.add_argument("--arg", action="append", default=[], help="a JSON argument (repeatable)")
    start.set_defaults(func=cmd_start)

    def followup(name: str, help_: str, func: Callable[[argparse.Namespace], int]) -> Any:
        sp = sub.add_parser(name, help=help_)
        client_args(sp)
        sp.add_argument("--id", required=True, help="workflow id")
        sp.add_argument("--tenant", required=True, help="the tenant that started it")
        sp.add_argument("--run-id", help="a run of the workflow (default: its latest run)")
        sp.add_argument(
            "--home",
            help="the home reference `meridian start` printed for it: the router then asks "
            "its cluster alone instead of searching every cluster the tenant may use",
        )
        sp.set_defaults(func=func)
        return sp

    query = followup("query", "query a workflow started through the router", cmd_query)
    query.add_argument("--name", required=True, help="query name, e.g. getProgress")
    query.add_argument("--arg", action="append", default=[], help="a JSON argument (repeatable)")

    followup(
        "result",
        "wait for a workflow's result (bounded by --timeout); exit 0 when it completed, "
        f"{NOT_COMPLETED} when it closed otherwise (failed, canceled, terminated, timed out), "
        "1 when the call failed",
        cmd_result,
    )
    followup("describe", "status, type, times, history length and where it runs", cmd_describe)

    signal = followup("signal", "send a signal to a workflow", cmd_signal)
    signal.add_argument("--name", required=True, help="signal name, e.g. pause")
    signal.add_argument("--arg", action="append", default=[], help="a JSON argument (repeatable)")

    followup("cancel", "request cancellation of a workflow", cmd_cancel)
