"""`meridian dev` as a user runs it: clear refusal of a taken port before anything
starts, and a clean stop of every child on Ctrl-C, also after a child crashed."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import free_port
from tests.integration.conftest import pid_alive, start_dev, stop_dev, wait_serving

pytestmark = pytest.mark.integration


def small_doc() -> dict[str, Any]:
    return {
        "zones": {"us": {"countries": ["US"], "home_region": "us-east"}},
        "regions": {
            "us-east": {
                "zone": "us",
                "clusters": [
                    {"name": "us-east-a", "endpoint": f"127.0.0.1:{free_port()}"},
                    {"name": "us-east-b", "endpoint": f"127.0.0.1:{free_port()}"},
                ],
            }
        },
        "default_region": "us-east",
    }


def test_taken_port_is_a_clear_error_before_anything_starts(tmp_path: Path) -> None:
    doc = small_doc()
    taken = int(doc["regions"]["us-east"]["clusters"][1]["endpoint"].rsplit(":", 1)[1])
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", taken))
        holder.listen()
        dev = start_dev(tmp_path, doc)
        try:
            code = dev.proc.wait(timeout=60)
        finally:
            leaked = stop_dev(dev)
    assert code == 1
    out = dev.output()
    assert f"port {taken} is already in use" in out and "cluster us-east-b" in out, out
    assert "nothing was started" in out
    assert not (tmp_path / "children.json").exists(), "a child was started"
    assert not leaked


def test_ctrl_c_stops_every_child_even_after_one_crashed(tmp_path: Path) -> None:
    dev = start_dev(tmp_path, small_doc())
    try:
        wait_serving(dev)
        pids = dev.child_pids()
        assert set(pids) == {
            "temporal-us-east-a",
            "temporal-us-east-b",
            "worker-us-east-a",
            "worker-us-east-b",
        }
        assert all(pid_alive(p) for p in pids.values())
        os.kill(pids["worker-us-east-b"], signal.SIGKILL)  # a child crashes
        deadline = time.monotonic() + 20
        while "worker-us-east-b" not in dev.output() or "exited with code" not in dev.output():
            assert time.monotonic() < deadline, dev.output()
            time.sleep(0.1)
        assert dev.proc.poll() is None, "the stack keeps serving after a child crashed"
    finally:
        leaked = stop_dev(dev, signal.SIGINT)
    assert dev.proc.returncode == 0, dev.output()
    assert not leaked, f"left running: {leaked}"
    assert not any(pid_alive(p) for p in pids.values())
    assert "stopped" in dev.output().splitlines()[-1]


def test_router_port_taken_is_named(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        dev = start_dev(tmp_path, small_doc(), port=port)
        try:
            code = dev.proc.wait(timeout=60)
        finally:
            stop_dev(dev)
    assert code == 1
    assert f"port {port} is already in use: needed by router" in dev.output()


def test_children_die_with_a_killed_stack(tmp_path: Path) -> None:
    dev = start_dev(tmp_path, small_doc())
    try:
        wait_serving(dev)
        pids = dev.child_pids()
        os.kill(dev.proc.pid, signal.SIGKILL)  # no chance to clean up
        dev.proc.wait(timeout=10)
        deadline = time.monotonic() + 20
        while any(pid_alive(p) for p in pids.values()) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        leaked = stop_dev(dev)
    assert not leaked, f"children outlived a SIGKILLed meridian dev: {leaked}"
