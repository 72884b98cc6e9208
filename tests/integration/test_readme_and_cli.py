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

from router.devstack import temporal_binary
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
        # This tree's code (the script's own directory comes first on sys.path).
        env={**os.environ, "MERIDIAN_HOME": str(dev.home), "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[1:] == ["eu-west-a", "eu-west-DataProcessingWorkflow-queue"]
    assert lines[1].startswith("audit record ") and int(lines[1].split()[-1]) > 0
    assert "'total': 3" in lines[2]
    assert "'processed': 3" in lines[3] and "'region': 'eu-west'" in lines[3]
    assert lines[4] == "COMPLETED"


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
    row = next(line for line in out.stdout.splitlines() if "zone us (e.g. CA) any data" in line)
    assert "us-east/us-east-a ns us-east" in row and row.rstrip().endswith("us-east/us-east-b")
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


def walkthrough_commands() -> list[str]:
    """The README walkthrough's shell commands (continuation lines joined)."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(
        r"<!-- walkthrough:start -->\n```sh\n(.*?)```\n<!-- walkthrough:end -->", readme, re.S
    )
    assert block, "README lost its tested walkthrough"
    text = block.group(1).replace("\\\n", " ")
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_walkthrough_runs(dev: DevProcess) -> None:
    """The walkthrough's commands, as written, on this session's dev stack: its ports and
    home instead of the defaults, this tree's code instead of .venv's."""
    eu = dev.config.table.regions["eu-west"]
    subs = {
        ".venv/bin/meridian": f"{sys.executable} -m router.cli",
        ".venv/bin/temporal": temporal_binary(),
        "127.0.0.1:7235": eu.clusters[0].endpoint,
        "127.0.0.1:8092": eu.codec_server or "",
        ".meridian/": f"{dev.home}/",
    }
    script = ["set -e"]
    for i, written in enumerate(walkthrough_commands()):
        command = written
        for old, new in subs.items():
            command = command.replace(old, new)
        script += [f"echo '=== {i}'", command]
    out = subprocess.run(
        ["bash", "-c", "\n".join(script)], capture_output=True, text=True, timeout=180,
        cwd=ROOT, check=False,
        env={**os.environ, "MERIDIAN_HOME": str(dev.home), "MERIDIAN_ROUTER": dev.router},
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    from tests.integration.test_encryption import visible

    steps = re.split(r"^=== \d+$", out.stdout, flags=re.M)[1:]
    assert len(steps) == len(walkthrough_commands())
    start, progress, result, eu_rows, us_rows, raw, _, decoded, audit, *booking = steps
    assert "decision.region" in start and "eu-west" in start and "started" in start
    assert "percent" in progress
    assert "COMPLETED" in result and '"inserted": 32' in result and '"invalid": 2' in result
    assert "32 contacts in eu-west's store for acme" in eu_rows
    assert "0 contacts in us-east's store for acme" in us_rows
    # The human form shows the result in full: the sync's counts, decoded.
    marker = '"inserted":32'
    assert not visible(marker, raw), "the cluster stores the result readable"
    assert marker in decoded and "ResultEncoding  json/plain" in decoded
    assert "ResultEncoding  binary/encrypted" in raw
    print("\n".join(f"--- {c}\n{o}" for c, o in zip(walkthrough_commands(), steps, strict=True)))
    assert "contacts-eu-1" in audit and "eu-west" in audit and "pii" in audit
    booked, booking_result, effects = booking
    assert "eu-west" in booked and "COMPLETED" in booking_result
    assert "charge" in effects and "reserve" in effects and "confirm" in effects, effects
