"""Talking to a running router: status, failover, explain, start, query, result."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from router.cli.common import DEFAULT_ROUTER, render_table
from router.errors import MeridianError


def _stub(router: str) -> tuple[Any, Any]:
    import grpc

    from router.v1 import router_pb2_grpc as pb_grpc

    channel = grpc.insecure_channel(router)
    return pb_grpc.WorkflowRouterStub(channel), pb_grpc.RoutingAdminStub(channel)


def _rpc(call: Callable[[], Any], router: str) -> Any:
    import grpc

    try:
        return call()
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details()
        raise MeridianError(f"router {router}: {code.name}: {details}") from None


def cmd_status(args: argparse.Namespace) -> int:
    from google.protobuf import json_format

    from router.v1 import router_pb2 as pb

    _, admin = _stub(args.router)
    topo = _rpc(
        lambda: admin.GetTopology(pb.GetTopologyRequest(), timeout=args.timeout), args.router
    )
    if args.json:
        print(
            json.dumps(json_format.MessageToDict(topo, preserving_proto_field_name=True), indent=2)
        )
        return 0
    print(f"config version {topo.config_version} from {topo.config_source}; "
          f"default region {topo.default_region}")  # fmt: skip
    if topo.consul:
        reach = "reachable" if topo.consul_reachable else "UNREACHABLE"
        me = " (this replica)" if topo.is_leader else ""
        print(f"consul {topo.consul} ({reach}); replica {topo.replica_id}; "
              f"leader {topo.leader or 'none'}{me}")  # fmt: skip
    if topo.HasField("last_rejected"):
        r = topo.last_rejected
        print(
            f"last rejected config change: {r.time.ToDatetime():%Y-%m-%d %H:%M:%SZ} from {r.source}"
        )
        for e in r.errors:
            print(f"  - {e}")
    print(render_table(STATUS_HEADERS, status_rows(topo)))
    return 0


STATUS_HEADERS = ["zone", "region", "cluster", "role", "health", "active", "endpoint", "last flip"]


def _health_word(c: Any) -> str:
    if not c.probed:
        return "unknown"
    return "healthy" if c.healthy else f"UNHEALTHY ({c.last_error})"


def _flip_text(region: Any) -> str:
    if not region.HasField("last_flip"):
        return ""
    f = region.last_flip
    when = f.time.ToDatetime().strftime("%Y-%m-%d %H:%M:%SZ")
    return f"{when} {f.from_cluster}->{f.to_cluster} {f.rule} by {f.actor}: {f.reason}"


def status_rows(topo: Any) -> list[tuple[str, ...]]:
    from router.v1 import router_pb2 as pb

    rows: list[tuple[str, ...]] = []
    for r in topo.regions:
        for c in r.clusters:
            rows.append((
                r.zone, r.name, c.name, pb.ClusterRole.Name(c.role).lower(), _health_word(c),
                "*" if c.active else "", c.endpoint, _flip_text(r) if c.active else "",
            ))  # fmt: skip
    return rows


def cmd_failover(args: argparse.Namespace) -> int:
    from google.protobuf import json_format

    from router.v1 import router_pb2 as pb

    _, admin = _stub(args.router)
    req = pb.SetActiveClusterRequest(
        region=args.region, cluster=args.to, reason=args.reason, force=args.force,
        dry_run=args.dry_run, actor=args.actor or _default_actor(),
    )  # fmt: skip
    resp = _rpc(lambda: admin.SetActiveCluster(req, timeout=args.timeout), args.router)
    if args.json:
        print(
            json.dumps(json_format.MessageToDict(resp, preserving_proto_field_name=True), indent=2)
        )
        return 1 if resp.refused_rule else 0
    for title, region in (("before", resp.before), ("after", resp.after)):
        print(
            f"{title}{' (dry run)' if title == 'after' and resp.dry_run else ''}: "
            f"{region.name} active {next(c.name for c in region.clusters if c.active)}"
        )
    if resp.dry_run:
        if resp.refused_rule:
            print(f"would be REFUSED by rule {resp.refused_rule}: {resp.refused_message}")
        imp = resp.impact
        running = (
            str(imp.running_workflows)
            if imp.running_workflows_known
            else f"unknown ({imp.running_workflows_error})"
        )
        print(f"running workflows on {imp.leaving_cluster}: {running}")
        if imp.route_changes:
            rows = [(c.requests, c.before, c.after) for c in imp.route_changes]
            print(render_table(["requests", "now routed to", "would route to"], rows))
        else:
            print("no route changes")
        print("dry run: nothing changed")
        return 1 if resp.refused_rule else 0
    print(f"flipped {resp.after.name}: {_flip_text(resp.after)}")
    return 0


def _default_actor() -> str:
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def cmd_explain(args: argparse.Namespace) -> int:
    from google.protobuf import json_format

    from router.v1 import router_pb2 as pb

    workflows, _ = _stub(args.router)
    req = pb.StartWorkflowRequest(
        workflow_type=args.type,
        tenant_id=args.tenant,
        user_country=args.country,
        user_subdivision=args.subdivision or "",
        data_class=pb.DataClass.Value(args.data_class.upper()),
        priority=pb.Priority.Value(args.priority.upper()),
    )
    d = _rpc(lambda: workflows.ExplainRoute(req, timeout=args.timeout), args.router)
    if args.json:
        print(json.dumps(json_format.MessageToDict(d, preserving_proto_field_name=True), indent=2))
        return 0
    rows = [
        (k, getattr(d, k))
        for k in (
            "zone",
            "region",
            "cluster",
            "endpoint",
            "namespace",
            "task_queue",
            "rule",
            "failed_over",
            "config_version",
        )
    ]
    print(render_table(["field", "value"], rows))
    print("why:")
    for reason in d.reasons:
        print(f"  - {reason}")
    return 0


def _print_message(msg: Any, as_json: bool) -> None:
    from google.protobuf import json_format

    data = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    if as_json:
        print(json.dumps(data, indent=2))
        return
    rows = []
    for key, val in data.items():
        if isinstance(val, dict) and key in ("decision", "location"):
            rows += [
                (f"{key}.{k}", v if not isinstance(v, list) else "; ".join(v))
                for k, v in val.items()
            ]
        else:
            rows.append((key, json.dumps(val) if isinstance(val, dict | list) else val))
    print(render_table(["field", "value"], rows))


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
    from router.v1 import router_pb2 as pb

    workflows, _ = _stub(args.router)
    req = pb.StartWorkflowRequest(
        workflow_type=args.type,
        workflow_id=args.id or "",
        args=_json_args(args.arg),
        tenant_id=args.tenant,
        user_country=args.country,
        user_subdivision=args.subdivision or "",
        data_class=pb.DataClass.Value(args.data_class.upper()),
        priority=pb.Priority.Value(args.priority.upper()),
    )
    _print_message(
        _rpc(lambda: workflows.StartWorkflow(req, timeout=args.timeout), args.router), args.json
    )
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from router.v1 import router_pb2 as pb

    workflows, _ = _stub(args.router)
    req = pb.QueryWorkflowRequest(
        ref=pb.WorkflowRef(workflow_id=args.id, tenant_id=args.tenant),
        query_name=args.name,
        args=_json_args(args.arg),
    )
    _print_message(
        _rpc(lambda: workflows.QueryWorkflow(req, timeout=args.timeout), args.router), args.json
    )
    return 0


def cmd_result(args: argparse.Namespace) -> int:
    from router.v1 import router_pb2 as pb

    workflows, _ = _stub(args.router)
    ref = pb.WorkflowRef(workflow_id=args.id, tenant_id=args.tenant)
    _print_message(
        _rpc(lambda: workflows.GetWorkflowResult(ref, timeout=args.timeout), args.router), args.json
    )
    return 0


def add_parsers(sub: Any) -> None:
    def client_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--router", default=DEFAULT_ROUTER, help=f"router address (default {DEFAULT_ROUTER})"
        )
        sp.add_argument("--timeout", type=float, default=5.0, help="seconds")
        sp.add_argument("--json", action="store_true", help="print JSON for tools")

    status = sub.add_parser("status", help="zones, regions, clusters: role, health, active")
    client_args(status)
    status.set_defaults(func=cmd_status)

    def routing_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--type", default="DataProcessingWorkflow", help="workflow type")
        sp.add_argument("--tenant", required=True)
        sp.add_argument("--country", required=True, help="ISO 3166-1 alpha-2")
        sp.add_argument("--subdivision", help="ISO 3166-2, e.g. US-CA")
        sp.add_argument(
            "--class",
            dest="data_class",
            required=True,
            choices=["public", "internal", "pii", "financial"],
        )
        sp.add_argument("--priority", default="normal", choices=["low", "normal", "high"])

    failover = sub.add_parser(
        "failover", help="flip a region's active cluster (safety rules, dry run)"
    )
    client_args(failover)
    failover.add_argument("--region", required=True)
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
    query.add_argument("--tenant", required=True)
    query.add_argument("--name", required=True, help="query name, e.g. getProgress")
    query.add_argument("--arg", action="append", default=[], help="a JSON argument (repeatable)")
    query.set_defaults(func=cmd_query)

    result = sub.add_parser("result", help="wait for a workflow's result (bounded by --timeout)")
    client_args(result)
    result.add_argument("--id", required=True, help="workflow id")
    result.add_argument("--tenant", required=True)
    result.set_defaults(func=cmd_result)
