"""The audit shipper of a running process (`serve`, `dev`, `codec-server`), run beside
it as a child process: `meridian audit ship DIR --follow`.

Why a process of its own: reading, encoding and sending records is CPU work in Python,
and in the writer's process it would hold the GIL against the request path (measured:
up to +1.3 ms p50 on a lone start, README). As a child it uses the other core, and its
failures cannot reach the router. It dies with its parent (SIGTERM, then it finishes the
batch in flight); the parent restarts it if it exits on its own. Its progress is on disk
beside the chain: ``SHIPPED`` (the cursor) and ``SHIPPING`` (why it is behind, if it is);
the parent reads both for its status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from router.audit.ship import ShipStatus, read_cursor, read_state
from router.devstack import die_with_parent

log = logging.getLogger(__name__)


class ShipSidecar:
    def __init__(
        self,
        directory: Path,
        *,
        endpoint: str,
        chain: str,
        service_name: str,
        committed: Callable[[], int],
        restart_initial: float = 1.0,
        restart_max: float = 30.0,
    ) -> None:
        self.directory = directory
        self.endpoint = endpoint
        self.chain = chain
        self._committed = committed
        self._argv = [
            sys.executable, "-m", "router.cli", "audit", "ship", str(directory), "--follow",
            "--endpoint", endpoint, "--chain", chain,
        ]  # fmt: skip
        self._env = {
            **os.environ,
            "OTEL_SERVICE_NAME": os.environ.get("OTEL_SERVICE_NAME", service_name),
        }
        self._restart = (restart_initial, restart_max)
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._exited = ""

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self) -> None:
        self._proc = await self._spawn()
        self._task = asyncio.create_task(self._watch(), name=f"audit-ship-{self.chain}")

    async def _spawn(self) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *die_with_parent(self._argv), stdin=asyncio.subprocess.DEVNULL, env=self._env
        )

    async def _watch(self) -> None:
        delay, _ = self._restart
        while True:
            assert self._proc is not None
            code = await self._proc.wait()
            if self._stopping:
                return
            self._exited = f"the shipper (pid {self._proc.pid}) exited with code {code}"
            log.error("audit shipping of %s: %s; restarting in %.0f s", self.directory,
                      self._exited, delay)  # fmt: skip
            await asyncio.sleep(delay)
            delay = min(self._restart[1], delay * 2)
            self._proc = await self._spawn()
            self._exited = ""

    async def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM: the shipper finishes its batch, ships what is left, and exits."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    def status(self) -> ShipStatus:
        cursor = read_cursor(self.directory)
        state = read_state(self.directory)
        error = self._exited
        if not error and state.get("pid") == self.pid:
            error = str(state.get("last_error", ""))
        shipped = cursor.seq if cursor.sink == self.endpoint else 0
        return ShipStatus(
            sink=self.endpoint,
            chain=self.chain,
            committed_seq=self._committed(),
            shipped_seq=shipped,
            last_error=error,
            last_shipped_at=cursor.at or None,
        )
