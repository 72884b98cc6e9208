"""The committed generated modules must be exactly what scripts/gen_proto.py makes."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def _load_generator() -> Any:
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_matches_proto(tmp_path: Path) -> None:
    generated = _load_generator().generate(tmp_path)
    assert generated, "the generator produced nothing"
    stale = []
    for fresh in generated:
        rel = fresh.relative_to(tmp_path)
        committed = ROOT / rel
        if not committed.exists() or committed.read_bytes() != fresh.read_bytes():
            stale.append(str(rel))
    committed_all = {p.relative_to(ROOT) for p in (ROOT / "router" / "v1").glob("*_pb2*.py*")}
    extra = committed_all - {p.relative_to(tmp_path) for p in generated}
    assert not stale and not extra, (
        f"generated code drifted from proto/ (stale: {stale}, extra: {sorted(map(str, extra))}); "
        "run: .venv/bin/python scripts/gen_proto.py"
    )


def test_contract_names_are_kept() -> None:
    from router.v1 import router_pb2 as pb

    services = pb.DESCRIPTOR.services_by_name
    assert services["WorkflowRouter"].full_name == "meridian.router.v1.WorkflowRouter"
    methods = {m.name for m in services["WorkflowRouter"].methods}
    assert methods >= {
        "StartWorkflow",
        "ExplainRoute",
        "DescribeWorkflow",
        "SignalWorkflow",
        "QueryWorkflow",
        "CancelWorkflow",
        "GetWorkflowResult",
    }
    assert {m.name for m in services["RoutingAdmin"].methods} >= {"GetTopology"}
    fields = {f.name for f in pb.StartWorkflowRequest.DESCRIPTOR.fields}
    assert fields >= {
        "workflow_type",
        "workflow_id",
        "args",
        "tenant_id",
        "user_country",
        "user_subdivision",
        "data_class",
        "priority",
        "request_id",
    }
    assert [v.name for v in pb.DataClass.DESCRIPTOR.values] == [
        "DATA_CLASS_UNSPECIFIED",
        "PUBLIC",
        "INTERNAL",
        "PII",
        "FINANCIAL",
    ]
    assert [v.name for v in pb.Priority.DESCRIPTOR.values] == [
        "PRIORITY_UNSPECIFIED",
        "LOW",
        "NORMAL",
        "HIGH",
    ]
