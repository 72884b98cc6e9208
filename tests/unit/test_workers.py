"""``serve --workers``: where each worker keeps its state, and the shared flips file —
check-and-set under a lock (two workers flipping at once cannot both win) and followed
by every worker."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from router.core.failover import Flip, Policy, RegionState
from router.failover import SharedFileStore
from router.workers import FileFollower, Worker


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
