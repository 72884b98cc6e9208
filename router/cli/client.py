"""Talking to a running router: status, failover, explain, start, query, result."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from router.cli.common import (
    DEFAULT_ROUTER,
    client_credentials,
    credential_args,
    log,
    open_channel,
    positive_seconds,
    render_table,
)
from router.cli.render import message_rows, message_to_json
from router.errors import MeridianError

DATA_CLASSES = ("public", "internal", "pii", "financial")
PRIORITIES = ("low", "normal", "high")


def _stub(args: argparse.Namespace) -> tuple[Any, Any]:
    """Both stubs on one channel to ``--router``, with the command's credentials (kept in
    ``args.credentials`` for ``_rpc``'s messages)."""
    from router.v1 import router_pb2_grpc as pb_grpc

    args.credentials = client_credentials(args)
    log.debug("router %s: %s", args.router, args.credentials.source)
    channel = open_channel(args.router, args.credentials)
    return pb_grpc.WorkflowRouterStub(channel), pb_grpc.RoutingAdminStub(channel)


def _rpc(call: Callable[[], Any], args: argparse.Namespace) -> Any:
    import grpc

    try:
        return call()
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details()
        message = f"router {args.router}: {code.name}: {details}"
        creds = getattr(args, "credentials", None)
        if details.startswith("failed to connect") and creds is not None:
            # A TLS client at a plaintext port (or the reverse), or a certificate the
            # router refused, fails with an opaque handshake error: say what we tried.
            message += f" [client: {creds.source}]"
        raise MeridianError(message) from None


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def cmd_status(args: argparse.Namespace) -> int:
    from router.v1 import router_pb2 as pb

    _, admin = _stub(args)
    topo = message_to_json(
        _rpc(lambda: admin.GetTopology(pb.GetTopologyRequest(), timeout=args.timeout), args)
    )
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
    return 0


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
    from router.v1 import router_pb2 as pb

    _, admin = _stub(args)
    req = pb.SetActiveClusterRequest(
        region=args.region, cluster=args.to, reason=args.reason, force=args.force,
        dry_run=args.dry_run, actor=args.actor or _default_actor(),
    )  # fmt: skip
    resp = message_to_json(_rpc(lambda: admin.SetActiveCluster(req, timeout=args.timeout), args))
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


def _routing_request(cli: argparse.Namespace, **extra: Any) -> Any:
    """The StartWorkflowRequest that explain and start send (``extra``: start's fields)."""
    from router.v1 import router_pb2 as pb

    return pb.StartWorkflowRequest(
        workflow_type=cli.type,
        tenant_id=cli.tenant,
        user_country=cli.country,
        user_subdivision=cli.subdivision or "",
        data_class=pb.DataClass.Value(cli.data_class.upper()),
        priority=pb.Priority.Value(cli.priority.upper()),
        **extra,
    )


def cmd_explain(args: argparse.Namespace) -> int:
    workflows, _ = _stub(args)
    req = _routing_request(args)
    d = _rpc(lambda: workflows.ExplainRoute(req, timeout=args.timeout), args)
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
    from google.protobuf import json_format, struct_pb2

    out = []
    for i, text in enumerate(raw):
        try:
            out.append(json_format.ParseDict(json.loads(text), struct_pb2.Value()))
        except ValueError as exc:
            raise MeridianError(f"--arg #{i + 1}: not JSON: {exc}") from None
    return out


def cmd_start(args: argparse.Namespace) -> int:
    workflows, _ = _stub(args)
    req = _routing_request(args, workflow_id=args.id or "", args=_json_args(args.arg))
    _print_message(
        _rpc(lambda: workflows.StartWorkflow(req, timeout=args.timeout), args), args.json
    )
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from router.v1 import router_pb2 as pb

    workflows, _ = _stub(args)
    req = pb.QueryWorkflowRequest(
        ref=pb.WorkflowRef(workflow_id=args.id, tenant_id=args.tenant),
        query_name=args.name,
        args=_json_args(args.arg),
    )
    _print_message(
        _rpc(lambda: workflows.QueryWorkflow(req, timeout=args.timeout), args), args.json
    )
    return 0


def cmd_result(args: argparse.Namespace) -> int:
    from router.v1 import router_pb2 as pb

    workflows, _ = _stub(args)
    ref = pb.WorkflowRef(workflow_id=args.id, tenant_id=args.tenant)
    _print_message(
        _rpc(lambda: workflows.GetWorkflowResult(ref, timeout=args.timeout), args), args.json
    )
    return 0


def add_parsers(sub: Any) -> None:
    def client_args(sp: argparse.ArgumentParser, default_identity: str = "service") -> None:
        """``default_identity``: the dev identity the command uses when none is named."""
        sp.add_argument(
            "--router", default=DEFAULT_ROUTER, help=f"router address (default {DEFAULT_ROUTER})"
        )
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

    query = sub.add_parser("query", help="query a workflow started through the router")
    client_args(query)
    query.add_argument("--id", required=True, help="workflow id")
    query.add_argument("--tenant", required=True, help="the tenant that started it")
    query.add_argument("--name", required=True, help="query name, e.g. getProgress")
    query.add_argument("--arg", action="append", default=[], help="a JSON argument (repeatable)")
    query.set_defaults(func=cmd_query)

    result = sub.add_parser("result", help="wait for a workflow's result (bounded by --timeout)")
    client_args(result)
    result.add_argument("--id", required=True, help="workflow id")
    result.add_argument("--tenant", required=True, help="the tenant that started it")
    result.set_defaults(func=cmd_result)
