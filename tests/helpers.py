"""Shared test helpers: free loopback ports and config documents derived from the
embedded default."""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import yaml
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from benchmarks.fleet import free_port
from router.config.load import DEFAULT_CONFIG

__all__ = [
    "default_doc", "eventually", "free_port", "with_free_ports", "workflow_exists", "write_config",
]  # fmt: skip


async def eventually(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 30) -> Any:
    """Poll ``check`` until it returns something true; fail naming ``what`` after
    ``timeout`` (a bound that catches "never", not a speed assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def default_doc() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(DEFAULT_CONFIG.read_text())
    # PyYAML's YAML 1.1 booleans: the embedded file is read by Meridian's own loader,
    # which keeps NO as Norway; safe_load here turns it into False. Undo that.
    for zone in doc["zones"].values():
        zone["countries"] = ["NO" if c is False else c for c in zone["countries"]]
    return doc


def with_free_ports(doc: dict[str, Any]) -> dict[str, Any]:
    """The same topology with every cluster and codec server on a free 127.0.0.1 port."""
    out = copy.deepcopy(doc)
    for region in out["regions"].values():
        if "codec_server" in region:
            region["codec_server"] = f"127.0.0.1:{free_port()}"
        for cluster in region["clusters"]:
            cluster["endpoint"] = f"127.0.0.1:{free_port()}"
    return out


def write_config(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


async def workflow_exists(endpoint: str, namespace: str, workflow_id: str) -> bool:
    """Asked of the Temporal cluster at ``endpoint`` itself (plaintext), not the router."""
    client = await Client.connect(endpoint, namespace=namespace)
    try:
        await client.get_workflow_handle(workflow_id).describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True
