"""``serve --workers``: where each worker keeps its state, the shared flips file —
check-and-set under a lock (two workers flipping at once cannot both win) and followed
by every worker — and the supervisor: a worker crash looping beside serving ones is
retried with backoff (only a fleet with nothing serving is stopped), and a restarted
worker makes every worker reload."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

import pytest

from router import workers
from router.core.failover import Flip, Policy, RegionState
from router.failover import SharedFileStore
from router.workers import FileFollower, Supervisor, Worker


def state(active: str = "eu-a", flip: Flip | None = None) -> RegionState:
    s = RegionState.initial("eu-west", "eu", ("eu-a", "eu-b"), Policy())
    return replace(s, active=active, last_flip=flip)


def flip_to(target: str, actor: str, at: float = 1.0) -> Flip:
    return Flip("eu-a" if target == "eu-b" else "eu-b", target, at, actor, "test", "manual",
                automatic=False, forced=False)  # fmt: skip


def test_one_worker_is_a_plain_router() -> None:
    one = Worker()
    base = Path("/var/lib/meridian/audit")
    assert (one.audit_dir(base), one.cache_dir(base)) == (base, base)
    assert (one.replica_id("host:50051"), one.http_port(9464)) == ("host:50051", 9464)
    assert one.authority


def test_each_worker_has_its_own_chain_cache_name_and_http_port() -> None:
    base = Path("/var/lib/meridian/audit")
    w = [Worker(i, 3) for i in range(3)]
    assert [x.audit_dir(base).name for x in w] == ["worker-0", "worker-1", "worker-2"]
    assert [x.replica_id("h:1") for x in w] == ["h:1/w0", "h:1/w1", "h:1/w2"]
    assert [x.http_port(9464) for x in w] == [9464, 9465, 9466]
    assert [x.http_port(0) for x in w] == [0, 0, 0], "0: each picks a free one"
    assert [x.http_port(None) for x in w] == [None, None, None]
    assert [x.authority for x in w] == [True, False, False], "one health authority"


async def test_two_workers_flipping_at_once_cannot_both_win(tmp_path: Path) -> None:
    path = tmp_path / "failover.json"
    a, b = SharedFileStore(path), SharedFileStore(path)
    a.load(), b.load()
    to_b = state("eu-b", flip_to("eu-b", "sre-1"))
    back = state("eu-a", flip_to("eu-a", "sre-2"))
    assert await a.publish("eu-west", to_b, {"eu-west": to_b})
    assert not await b.publish("eu-west", back, {"eu-west": back}), "b had not seen a's flip"
    assert SharedFileStore(path).load()["eu-west"] == ("eu-b", to_b.last_flip)
    b.load()  # now it has
    assert await b.publish("eu-west", back, {"eu-west": back})
    assert SharedFileStore(path).load()["eu-west"] == ("eu-a", back.last_flip)


async def test_many_at_once_exactly_one_wins(tmp_path: Path) -> None:
    path = tmp_path / "failover.json"
    stores = [SharedFileStore(path) for _ in range(8)]
    for s in stores:
        s.load()
    tries = [state("eu-b", flip_to("eu-b", f"sre-{i}")) for i in range(8)]
    won = await asyncio.gather(
        *(s.publish("eu-west", t, {"eu-west": t}) for s, t in zip(stores, tries, strict=True))
    )
    assert sum(won) == 1
    winner = tries[won.index(True)]
    assert SharedFileStore(path).load()["eu-west"] == ("eu-b", winner.last_flip)


class Region:
    """What a worker's ClusterState offers the follower."""

    def __init__(self) -> None:
        self.current = state()
        self.adopted: list[Flip] = []

    @property
    def states(self) -> Mapping[str, RegionState]:
        return {"eu-west": self.current}

    async def adopt(self, region: str, flip: Flip) -> None:
        self.adopted.append(flip)
        self.current = replace(self.current, active=flip.to_cluster, last_flip=flip)


async def test_every_worker_follows_a_flip_made_on_any(tmp_path: Path) -> None:
    path = tmp_path / "failover.json"
    writer, mine = SharedFileStore(path), SharedFileStore(path)
    writer.load(), mine.load()
    follower, region = FileFollower(mine), Region()
    await follower.poll(region)
    assert region.adopted == [], "no file yet: nothing to follow"
    to_b = state("eu-b", flip_to("eu-b", "sre-1"))
    assert await writer.publish("eu-west", to_b, {"eu-west": to_b})
    await follower.poll(region)
    assert region.adopted == [to_b.last_flip] and region.current.active == "eu-b"
    await follower.poll(region)
    assert len(region.adopted) == 1, "an unchanged file is not adopted twice"
    # Having followed it, this worker's own next flip is not refused as stale.
    back = state("eu-a", flip_to("eu-a", "sre-2", at=2.0))
    assert await mine.publish("eu-west", back, {"eu-west": back})


# -- the supervisor, over real short-lived processes -----------------------------------

# A worker: notes each start (pid) and each SIGHUP in files, exits with code 2 at start
# while ``broken`` exists (a config file it cannot load), else prints its ready line
# and serves until SIGTERM.
FAKE_WORKER = """
import os, signal, sys, time
from pathlib import Path
d = Path(sys.argv[1])
i = sys.argv[sys.argv.index("--worker-index") + 1]
with open(d / f"starts-{i}", "a") as f:
    f.write(f"{os.getpid()} {time.monotonic()}\\n")
if (d / "broken").exists():
    sys.exit(2)
def hup(*_):
    with open(d / f"hups-{i}", "a") as f:
        f.write("hup\\n")
signal.signal(signal.SIGHUP, hup)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print(f"worker {i} ready on test", flush=True)
while True:
    time.sleep(1)
"""


class Fleet:
    """A Supervisor of two fake workers: ``run`` in the main thread (it installs signal
    handlers), the scenario in a thread that stops it at the end."""

    def __init__(self, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
        self.dir = tmp_path
        self.capfd = capfd
        self.out = ""
        self.sup = Supervisor([sys.executable, "-c", FAKE_WORKER, str(tmp_path)], 2, grace=1)

    def starts(self, index: int) -> list[tuple[int, float]]:
        path = self.dir / f"starts-{index}"
        lines = path.read_text().splitlines() if path.exists() else []
        return [(int(p), float(t)) for p, t in (line.split() for line in lines)]

    def pid(self, index: int) -> int:
        return self.starts(index)[-1][0]

    def hups(self, index: int) -> int:
        path = self.dir / f"hups-{index}"
        return len(path.read_text().splitlines()) if path.exists() else 0

    def output(self) -> str:
        got = self.capfd.readouterr()
        self.out += got.out + got.err
        return self.out

    def wait(self, what: str, cond: Callable[[], bool], timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}\n{self.output()}")
            time.sleep(0.05)

    def run(self, scenario: Callable[[Fleet], None]) -> int:
        errors: list[BaseException] = []

        def drive() -> None:
            try:
                self.wait("both workers ready", lambda: "all 2 workers ready" in self.output())
                scenario(self)
            except BaseException as exc:
                errors.append(exc)
            finally:
                self.sup.stop()

        driver = threading.Thread(target=drive, name="scenario")
        driver.start()
        try:
            code = self.sup.run()
        finally:
            self.sup.stop()
            driver.join(30)
            for i in (0, 1):  # nothing outlives a failed test
                for pid, _ in self.starts(i):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        if errors:
            raise errors[0]
        return code


def alive(pid: int) -> bool:
    """Running, not a zombie (the supervisor reaps its children)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def fleet(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Fleet:
    monkeypatch.setattr(workers, "RESTART_BACKOFF_S", 0.02, raising=False)
    monkeypatch.setattr(workers, "RESTART_BACKOFF_MAX_S", 0.3, raising=False)
    return Fleet(tmp_path, capfd)


def test_a_worker_that_keeps_dying_does_not_take_the_serving_ones_down(fleet: Fleet) -> None:
    """An invalid config file (the live workers rejected it on SIGHUP and serve the last
    good one) and a kill -9 of worker 1: its restarts exit with code 2 one after the
    other. Worker 0 keeps serving, worker 1 is retried with a growing, capped wait, and
    once the file is fixed it comes back and every worker reloads."""

    def scenario(f: Fleet) -> None:
        first = f.pid(0)
        (f.dir / "broken").touch()
        os.kill(f.pid(1), signal.SIGKILL)
        f.wait("worker 1 to die 6 more times", lambda: len(f.starts(1)) >= 7)
        assert f.pid(0) == first and alive(first), "worker 0 serves on"
        out = f.output()
        assert "keeps dying (exited with code 2, 3 times in a row" in out
        assert "Worker 0 keeps serving; next try in" in out
        delays = [float(d) for d in re.findall(r"worker 1 .*? in (\d[\d.]*) s \(at", out)]
        # The kill came soon after worker 1 started: it counts as its first quick death.
        assert delays[:5] == [0.04, 0.08, 0.16, 0.3, 0.3], out
        starts = [t for _, t in f.starts(1)]
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        assert all(gap >= delay for gap, delay in zip(gaps, delays, strict=False)), gaps

        (f.dir / "broken").unlink()  # fixed
        f.wait("worker 1 back, and worker 0 reloaded", lambda: f.hups(0) >= 1)
        assert alive(f.pid(1)) and f.pid(0) == first
        f.wait("the restarted worker reloaded too", lambda: f.hups(1) >= 1)

    assert fleet.run(scenario) == 0, "stopped by the test, not by the crash loop"
    assert not [pid for i in (0, 1) for pid, _ in fleet.starts(i) if alive(pid)]


def test_a_restarted_worker_makes_every_worker_reload(fleet: Fleet) -> None:
    """It loaded the file as it is now: the others reload too, so the port does not
    serve two config versions."""

    def scenario(f: Fleet) -> None:
        first = f.pid(0)
        os.kill(f.pid(1), signal.SIGKILL)
        f.wait("worker 0 to reload after worker 1 restarted", lambda: f.hups(0) == 1)
        assert f.pid(0) == first and len(f.starts(1)) == 2
        assert "worker 1 restarted and ready; reloading workers" in f.output()

    assert fleet.run(scenario) == 0


def test_every_worker_dying_still_stops_everything(fleet: Fleet) -> None:
    """Nothing serves and the workers cannot start: restarting forever would only hide
    the cause, so the supervisor exits with their code."""

    def scenario(f: Fleet) -> None:
        (f.dir / "broken").touch()
        os.kill(f.pid(0), signal.SIGKILL)
        os.kill(f.pid(1), signal.SIGKILL)
        f.wait("the supervisor to give up", lambda: "stopping every worker" in f.output())
        assert "and no worker is serving" in f.output()

    assert fleet.run(scenario) == 2
    assert not [pid for i in (0, 1) for pid, _ in fleet.starts(i) if alive(pid)]
