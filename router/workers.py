"""``meridian serve --workers N``: N router processes sharing one port.

Python runs one core per process; a router is CPU-bound at high load, so one process
per core is what uses the machine. The supervisor (the process that was started) runs N
workers — ``meridian serve`` itself with ``--worker-index i`` — that each bind the gRPC
port with SO_REUSEPORT (the kernel spreads connections among them), and each is a full
replica:

- its own audit chain, ``<audit-dir>/worker-<i>`` (chains are independent; ``audit
  verify`` checks each, and one writer per chain keeps the hot path lock-free: a chain
  fed by all would need a cross-process lock and a shared fsync per record);
- its own location cache, client connections and metrics (the HTTP port of worker i
  is ``--http-port`` + i, so each is scraped as its own target);
- one health authority among them: with ``--consul``, the Consul leader (each worker is
  a replica there, ``<replica-id>/w<i>``); without, worker 0 decides automatic flips
  and every worker shares the state file (``SharedFileStore``, check-and-set under a
  lock) and follows it (``FileFollower``), so a flip made on any worker reaches all.

The supervisor echoes the workers' output, forwards SIGHUP (reload) and SIGTERM/SIGINT
(drain and stop), restarts a worker that dies, and takes its workers with it if it is
killed (``die_with_supervisor``). A worker that dies before every worker was ready, or
that crash loops while no other worker serves, stops everything (restarting would only
hide the cause). One that crash loops while others serve — typically the config file was
edited into something invalid, which the live workers rejected on SIGHUP and a restarted
worker cannot start with — does not take them down: it is restarted with exponential
backoff, each death reported, and the others keep serving the last good config.

A restarted worker loads the config file as it is when it starts; the others may still
serve an older version (a valid edit not yet SIGHUP'd). So once a restarted worker is
ready the supervisor sends SIGHUP to every ready worker: all serve the file's current
config (or, if it is invalid, keep their last good one).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from router.core.failover import Flip, RegionState
from router.failover import SharedFileStore

log = logging.getLogger(__name__)

POLL_S = 0.25
# A worker that dies this soon after starting, this many times in a row, is crash
# looping: with no other worker serving, restarting it again would only hide the cause.
CRASH_WINDOW_S = 10.0
CRASH_LIMIT = 3
# The wait before restarting a dead worker: doubled with each quick death in a row, up
# to the cap (a worker crash looping beside serving ones is retried forever, not fast).
RESTART_BACKOFF_S = 0.5
RESTART_BACKOFF_MAX_S = 30.0


@dataclass(frozen=True, slots=True)
class Worker:
    """Which worker this process is: index ``index`` of ``count`` (count 1: no workers,
    a plain single-process router)."""

    index: int = 0
    count: int = 1

    def audit_dir(self, base: Path) -> Path:
        return base if self.count == 1 else base / f"worker-{self.index}"

    def cache_dir(self, base: Path) -> Path:
        """Per-worker local state (the Consul cache); the flips file stays shared."""
        return base if self.count == 1 else base / f"worker-{self.index}"

    def replica_id(self, base: str) -> str:
        return base if self.count == 1 else f"{base}/w{self.index}"

    def http_port(self, base: int | None) -> int | None:
        return base if base is None or base == 0 else base + self.index

    @property
    def authority(self) -> bool:
        """Without Consul: whether this worker decides automatic flips."""
        return self.index == 0


class Follower(Protocol):
    @property
    def states(self) -> Mapping[str, RegionState]: ...

    async def adopt(self, region: str, flip: Flip) -> None: ...


class FileFollower:
    """Adopts the flips other workers write to the shared state file (polled: a stat
    every 250 ms, a read only when it changed)."""

    def __init__(self, store: SharedFileStore) -> None:
        self._store = store
        self._task: asyncio.Task[None] | None = None
        self._stamp: tuple[int, int, int] | None = None

    def start(self, follower: Follower) -> None:
        self._task = asyncio.create_task(self._run(follower), name="flips-follower")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self, follower: Follower) -> None:
        while True:
            try:
                await self.poll(follower)
            except Exception:  # the next poll tries again; a flip is never lost
                log.exception("following the shared flips file %s", self._store.path)
            await asyncio.sleep(POLL_S)

    async def poll(self, follower: Follower) -> None:
        try:
            st = self._store.path.stat()
        except FileNotFoundError:
            return
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        states = follower.states
        for region, (active, flip) in self._store.load().items():
            state = states.get(region)
            if flip is None or state is None:
                continue
            if (active, flip) != (state.active, state.last_flip):
                await follower.adopt(region, flip)


# -- the supervisor -------------------------------------------------------------------


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


SUPERVISOR_ENV = "MERIDIAN_SUPERVISOR_PID"


def die_with_supervisor() -> None:
    """In a worker, first thing: SIGKILL when the supervisor dies (even by SIGKILL), so
    no worker outlives it and keeps serving unsupervised (Linux PR_SET_PDEATHSIG; set
    here rather than between fork and exec, where the supervisor's threads make it
    unsafe). If the supervisor is already gone, exit now."""
    supervisor = os.environ.get(SUPERVISOR_ENV)
    if supervisor is None:
        return
    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != int(supervisor):
        sys.exit("meridian: the supervisor of this worker is gone")


@dataclass
class _Child:
    index: int
    proc: subprocess.Popen[str]
    started: float
    ready: bool = False
    quick_deaths: int = 0
    # Started again after dying: once ready, every worker reloads (see the module doc).
    restarted: bool = False


def restart_delay(quick_deaths: int) -> float:
    """Seconds to wait before restarting a worker that died ``quick_deaths`` times in a
    row soon after starting (0: it had lived a while)."""
    return float(min(RESTART_BACKOFF_MAX_S, RESTART_BACKOFF_S * 2**quick_deaths))


class Supervisor:
    def __init__(self, argv: Sequence[str], count: int, *, grace: float) -> None:
        """``argv``: the command line of one worker, without ``--worker-index``."""
        self._argv = list(argv)
        self._count = count
        self._grace = grace
        self._children: dict[int, _Child] = {}
        # Dead workers waiting to be started again: index -> (when, quick deaths).
        self._restarts: dict[int, tuple[float, int]] = {}
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._ready_announced = False

    def stop(self) -> None:
        """Stop every worker and return from ``run`` (what SIGTERM and SIGINT do)."""
        self._stopping.set()

    def _spawn(self, index: int, quick_deaths: int = 0, *, restarted: bool = False) -> None:
        proc = subprocess.Popen(
            [*self._argv, "--worker-index", str(index)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, SUPERVISOR_ENV: str(os.getpid())},
        )
        child = _Child(
            index, proc, time.monotonic(), quick_deaths=quick_deaths, restarted=restarted
        )
        self._children[index] = child
        threading.Thread(
            target=self._echo, args=(child, proc.stdout), name=f"worker-{index}-out", daemon=True
        ).start()

    def _echo(self, child: _Child, out: IO[str] | None) -> None:
        """The worker's stdout, line by line, to ours; notes when it is ready."""
        assert out is not None
        for line in out:
            print(line, end="", flush=True)
            if " ready on " in line:
                with self._lock:
                    child.ready = True
                    if (
                        not self._ready_announced
                        and len(self._children) == self._count
                        and all(c.ready for c in self._children.values())
                    ):
                        self._ready_announced = True
                        print(f"all {self._count} workers ready", flush=True)
                    elif child.restarted and not self._stopping.is_set():
                        self._converge(child)

    def _converge(self, restarted: _Child) -> None:
        """A restarted worker loaded the file as it is now; the others may serve an
        older version. SIGHUP every ready worker (the restarted one too: the file may
        have changed since it read it), so all serve the file's current config, or keep
        their last good one if it is invalid. Only ready workers: one still starting has
        no SIGHUP handler yet (SIGHUP would kill it), and reads the file anyway."""
        ready = [c for c in self._children.values() if c.ready and c.proc.poll() is None]
        print(
            f"meridian: worker {restarted.index} restarted and ready; reloading workers "
            f"{', '.join(str(c.index) for c in ready)} so all serve the same config",
            file=sys.stderr, flush=True,
        )  # fmt: skip
        for c in ready:
            with contextlib.suppress(ProcessLookupError):
                c.proc.send_signal(signal.SIGHUP)

    def _signal(self, sig: int) -> None:
        for child in list(self._children.values()):
            if sig == signal.SIGHUP and not child.ready:
                continue  # no handler yet: SIGHUP would kill it, and it reads the file anyway
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(sig)

    def run(self) -> int:
        """Start the workers and supervise them until stopped (SIGTERM, SIGINT,
        ``stop``) or they cannot be kept up; the exit code."""

        def on_stop(signum: int, _frame: object) -> None:
            self._stopping.set()

        def on_hup(signum: int, _frame: object) -> None:
            self._signal(signal.SIGHUP)

        previous = {
            sig: signal.signal(sig, handler)
            for sig, handler in (
                (signal.SIGTERM, on_stop), (signal.SIGINT, on_stop), (signal.SIGHUP, on_hup)
            )
        }  # fmt: skip
        for i in range(self._count):
            self._spawn(i)
        code = 0
        try:
            while not self._stopping.wait(0.2):
                failed = self._reap()
                if failed is not None:
                    code = failed
                    break
                self._restart_due()
        finally:
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return code

    def _serving(self) -> list[_Child]:
        """Workers alive and ready (serving the port)."""
        return [c for c in self._children.values() if c.ready and c.proc.poll() is None]

    def _reap(self) -> int | None:
        """Schedule the restart of workers that died; the exit code to stop with, if
        one cannot be."""
        for index, child in list(self._children.items()):
            if index in self._restarts:
                continue  # dead, its restart already scheduled
            rc = child.proc.poll()
            if rc is None:
                continue
            if not self._ready_announced:
                print(
                    f"meridian: worker {index} exited with code {rc} while starting",
                    file=sys.stderr, flush=True,
                )  # fmt: skip
                return rc or 1
            lived = time.monotonic() - child.started
            quick = child.quick_deaths + 1 if lived < CRASH_WINDOW_S else 0
            serving = self._serving()
            if quick >= CRASH_LIMIT and not serving:
                print(
                    f"meridian: worker {index} keeps dying (code {rc}, {quick} times within "
                    f"{CRASH_WINDOW_S:.0f} s of starting) and no worker is serving: "
                    "stopping every worker",
                    file=sys.stderr, flush=True,
                )  # fmt: skip
                return rc or 1
            delay = restart_delay(quick)
            at = time.strftime("%H:%M:%S", time.localtime(time.time() + delay))
            if quick >= CRASH_LIMIT:
                others = ", ".join(str(c.index) for c in serving)
                others += " keeps" if len(serving) == 1 else " keep"
                print(
                    f"meridian: ERROR: worker {index} keeps dying (exited with code {rc}, "
                    f"{quick} times in a row within {CRASH_WINDOW_S:.0f} s of starting; "
                    f"an invalid config file?). Worker{'s' * (len(serving) > 1)} "
                    f"{others} serving; next try in {delay:g} s (at {at})",
                    file=sys.stderr, flush=True,
                )  # fmt: skip
            else:
                print(
                    f"meridian: worker {index} exited with code {rc}; restarting it in "
                    f"{delay:g} s (at {at})",
                    file=sys.stderr, flush=True,
                )  # fmt: skip
            self._restarts[index] = (time.monotonic() + delay, quick)
        return None

    def _restart_due(self) -> None:
        """Start again the dead workers whose wait is over (waiting here, not by
        sleeping in ``_reap``: the others are reaped, and signals handled, meanwhile)."""
        now = time.monotonic()
        for index, (when, quick) in list(self._restarts.items()):
            if when <= now:
                del self._restarts[index]
                with self._lock:
                    self._spawn(index, quick, restarted=True)

    def _stop_all(self) -> None:
        self._signal(signal.SIGTERM)
        deadline = time.monotonic() + self._grace + 10
        for child in self._children.values():
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()


def supervise(argv: Sequence[str], count: int, *, grace: float) -> int:
    return Supervisor(argv, count, grace=grace).run()
