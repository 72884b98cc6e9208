"""The README's examples and the `meridian` client commands, run for real."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.integration.conftest import ROOT, Clusters, DevProcess

pytestmark = pytest.mark.integration


def meridian(home: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI as a user of the dev stack at ``home`` runs it: it finds the stack's
    credentials under $MERIDIAN_HOME/tls by itself."""
    return subprocess.run(
        [sys.executable, "-m", "router.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
        env={**os.environ, "MERIDIAN_HOME": str(home)},
        input=stdin,
    )


def test_readme_python_example_runs(dev: DevProcess, tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(
        r"<!-- readme-example:start -->\n```python\n(.*?)```\n<!-- readme-example:end -->",
        readme,
        re.S,
    )
    assert block, "README lost its tested Python example"
    code = block.group(1).replace('"127.0.0.1:50051"', repr(dev.router))
    script = tmp_path / "example.py"
    script.write_text(code)
    out = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
        env={**os.environ, "MERIDIAN_HOME": str(dev.home)},
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[1:] == ["eu-west-a", "eu-west-DataProcessingWorkflow-queue"]
    assert "'total': 3" in lines[1]
    assert lines[2].startswith("COMPLETED") and "'region': 'eu-west'" in lines[2]


def test_cli_start_query_result_status(dev: DevProcess, clusters: Clusters) -> None:
    wid = f"cli-{uuid.uuid4()}"
    r = dev.router
    out = meridian(
        dev.home,
        "start",
        "--router",
        r,
        "--tenant",
        "acme",
        "--country",
        "jp",
        "--class",
        "pii",
        "--id",
        wid,
        "--arg",
        '{"items": 2, "delay_ms": 50}',
        "--json",
    )
    assert out.returncode == 0, out.stderr
    started = json.loads(out.stdout)
    assert started["decision"]["cluster"] == "ap-southeast-a" and started["started"] is True

    out = meridian(
        dev.home, "query", "--router", r, "--tenant", "acme", "--id", wid, "--name", "getProgress"
    )
    assert out.returncode == 0, out.stderr
    assert "location.cluster" in out.stdout and "ap-southeast-a" in out.stdout

    out = meridian(dev.home, "result", "--router", r, "--tenant", "acme", "--id", wid, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["status"] == "COMPLETED"

    out = meridian(dev.home, "status", "--router", r)
    assert out.returncode == 0, out.stderr
    rows = {line.split()[2]: line.split() for line in out.stdout.splitlines()[3:]}
    endpoints = {name: c.endpoint for name, c in dev.config.table.clusters.items()}
    assert rows["eu-west-a"] == [
        "eu",
        "eu-west",
        "eu-west-a",
        "primary",
        "healthy",
        "*",
        endpoints["eu-west-a"],
    ]
    assert rows["eu-west-b"] == [
        "eu",
        "eu-west",
        "eu-west-b",
        "standby",
        "healthy",
        endpoints["eu-west-b"],
    ]

    out = meridian(
        dev.home, "explain", "--router", r, "--tenant", "acme", "--country", "BR", "--class", "pii"
    )
    assert out.returncode == 1
    assert "FAILED_PRECONDITION" in out.stderr and "BR is in no residency zone" in out.stderr
    assert "Traceback" not in out.stderr


def test_cli_failover_dry_run_and_refusal(dev: DevProcess) -> None:
    r = dev.router
    out = meridian(dev.home, "failover", "--router", r, "--region", "us-east", "--to", "us-east-b",
                   "--reason", "preview", "--dry-run")  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "pii data of users in zone us (e.g. CA)" in out.stdout
    assert "us-east-a (us-east)" in out.stdout and "us-east-b (us-east)" in out.stdout
    assert "running workflows on us-east-a:" in out.stdout
    assert out.stdout.rstrip().endswith("dry run: nothing changed")
    refused = meridian(dev.home, "failover", "--router", r, "--region", "us-east",
                       "--to", "eu-west-b", "--reason", "wrong region", "--force")  # fmt: skip
    assert refused.returncode == 1
    assert "FAILED_PRECONDITION" in refused.stderr and "target-in-region" in refused.stderr
    status = meridian(dev.home, "status", "--router", r, "--json")
    regions = {g["name"]: g for g in json.loads(status.stdout)["regions"]}
    active = [c["name"] for c in regions["us-east"]["clusters"] if c.get("active")]
    assert active == ["us-east-a"], "a dry run and a refused flip change nothing"
