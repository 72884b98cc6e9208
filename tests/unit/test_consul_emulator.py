"""Contract tests for the Consul emulator (tests/consul_emulator.py), written from Consul's
HTTP API documentation (KV store, blocking queries, sessions, lock-delay) and, where the
docs are silent, from Consul's source. They drive the emulator through py-consul, the
client Meridian uses, so a test here failing means Meridian would be tested against a
Consul that does not exist.

TTLs (Consul's minimum is 10 s) and lock-delays run on an injected clock; blocking queries
wait in real time, with generous bounds.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import consul
import consul.aio
import pytest
from consul.callback import CB
from consul.exceptions import BadRequest

from tests.consul_emulator import ConsulEmulator, EmulatorProcess, parse_go_duration

# py-consul's timeout is a total: it must exceed the longest wait plus Consul's wait/16.
CLIENT_TIMEOUT = 10

pytestmark = pytest.mark.filterwarnings(
    # py-consul 1.8 builds its connector with an argument aiohttp 3.14 deprecates.
    "ignore:ssl_context is deprecated:DeprecationWarning"
)


class FakeClock:
    """Seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def emulator(clock: FakeClock) -> AsyncIterator[ConsulEmulator]:
    emu = ConsulEmulator(clock=clock)
    await emu.start()
    try:
        yield emu
    finally:
        await emu.stop()


@pytest.fixture
async def client(emulator: ConsulEmulator) -> AsyncIterator[Any]:
    c = consul.aio.Consul(host="127.0.0.1", port=emulator.port, connections_timeout=CLIENT_TIMEOUT)
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture
async def http(emulator: ConsulEmulator) -> AsyncIterator[aiohttp.ClientSession]:
    """Raw HTTP, for what py-consul hides (headers, status codes, bodies)."""
    async with aiohttp.ClientSession(f"http://{emulator.address}") as session:
        yield session


async def new_session(client: Any, **kw: Any) -> str:
    sid: str = await client.session.create(**kw)
    return sid


# -- KV: reads and writes ---------------------------------------------------------------


async def test_put_get_round_trip(client: Any) -> None:
    assert await client.kv.put("app/config", b"\x00hello\xff") is True
    index, entry = await client.kv.get("app/config")
    assert isinstance(index, str)
    assert entry["Key"] == "app/config"
    assert entry["Value"] == b"\x00hello\xff"
    assert entry["Flags"] == 0
    assert entry["LockIndex"] == 0
    assert entry["CreateIndex"] == entry["ModifyIndex"] == int(index)
    assert "Session" not in entry


async def test_missing_key_is_404_with_an_index(client: Any, http: aiohttp.ClientSession) -> None:
    index, entry = await client.kv.get("no/such/key")
    assert entry is None
    assert int(index) >= 1
    async with http.get("/v1/kv/no/such/key") as resp:
        assert resp.status == 404
        assert await resp.read() == b""
        assert int(resp.headers["X-Consul-Index"]) >= 1


async def test_empty_value_reads_as_null(client: Any, http: aiohttp.ClientSession) -> None:
    assert await client.kv.put("dir/", None) is True
    _, entry = await client.kv.get("dir/")
    assert entry["Value"] is None
    async with http.get("/v1/kv/dir/") as resp:
        assert (await resp.json())[0]["Value"] is None


async def test_flags_are_kept_and_reset_by_a_put_without_them(client: Any) -> None:
    await client.kv.put("f", "v", flags=42)
    assert (await client.kv.get("f"))[1]["Flags"] == 42
    await client.kv.put("f", "v2")
    assert (await client.kv.get("f"))[1]["Flags"] == 0


async def test_raw_returns_the_bytes(client: Any, http: aiohttp.ClientSession) -> None:
    await client.kv.put("blob", b"\x01\x02raw")
    async with http.get("/v1/kv/blob", params={"raw": ""}) as resp:
        assert resp.status == 200
        assert await resp.read() == b"\x01\x02raw"


async def test_recurse_lists_the_prefix_sorted(client: Any) -> None:
    for key in ("cfg/b", "cfg/a/2", "cfg/a/1", "other"):
        await client.kv.put(key, key)
    _, entries = await client.kv.get("cfg/", recurse=True)
    assert [e["Key"] for e in entries] == ["cfg/a/1", "cfg/a/2", "cfg/b"]
    assert [e["Value"] for e in entries] == [b"cfg/a/1", b"cfg/a/2", b"cfg/b"]


async def test_recurse_on_an_empty_prefix_is_none(client: Any) -> None:
    await client.kv.put("cfg/a", "1")
    index, entries = await client.kv.get("nothing/", recurse=True)
    assert entries is None
    assert int(index) >= 1


async def test_keys_listing_with_and_without_separator(client: Any) -> None:
    for key in ("cfg/x/1", "cfg/x/2", "cfg/y", "zzz"):
        await client.kv.put(key, "v")
    assert (await client.kv.get("cfg/", keys=True))[1] == ["cfg/x/1", "cfg/x/2", "cfg/y"]
    assert (await client.kv.get("cfg/", keys=True, separator="/"))[1] == ["cfg/x/", "cfg/y"]
    assert (await client.kv.get("none/", keys=True))[1] is None
    assert (await client.kv.get("", keys=True, separator="/"))[1] == ["cfg/", "zzz"]


async def test_keys_of_an_empty_store_is_an_empty_list(client: Any) -> None:
    assert (await client.kv.get("", keys=True))[1] == []


# -- KV: check-and-set and delete ----------------------------------------------------------


async def test_cas_zero_only_creates(client: Any) -> None:
    assert await client.kv.put("once", "first", cas=0) is True
    assert await client.kv.put("once", "second", cas=0) is False
    assert (await client.kv.get("once"))[1]["Value"] == b"first"


async def test_cas_needs_the_current_modify_index(client: Any) -> None:
    await client.kv.put("k", "v1")
    modify = (await client.kv.get("k"))[1]["ModifyIndex"]
    assert await client.kv.put("k", "stale", cas=modify + 100) is False
    assert await client.kv.put("k", "v2", cas=modify) is True
    assert await client.kv.put("k", "v3", cas=modify) is False
    _, entry = await client.kv.get("k")
    assert entry["Value"] == b"v2"
    assert entry["ModifyIndex"] > modify
    assert await client.kv.put("missing", "v", cas=modify) is False


async def test_delete(client: Any) -> None:
    await client.kv.put("d", "v")
    assert await client.kv.delete("d") is True
    assert (await client.kv.get("d"))[1] is None
    assert await client.kv.delete("d") is True


async def test_delete_with_cas(client: Any) -> None:
    await client.kv.put("d", "v")
    modify = (await client.kv.get("d"))[1]["ModifyIndex"]
    assert await client.kv.delete("d", cas=modify + 1) is False
    assert await client.kv.delete("d", cas=0) is False
    assert (await client.kv.get("d"))[1] is not None
    assert await client.kv.delete("d", cas=modify) is True
    assert (await client.kv.get("d"))[1] is None


async def test_delete_recurse(client: Any) -> None:
    for key in ("t/a", "t/b/c", "tx", "u"):
        await client.kv.put(key, "v")
    assert await client.kv.delete("t/", recurse=True) is True
    assert (await client.kv.get("", keys=True))[1] == ["tx", "u"]


async def test_conflicting_parameters_are_400(client: Any, http: aiohttp.ClientSession) -> None:
    with pytest.raises(BadRequest):
        await client.kv.put("k", "v", acquire="a", release="b")
    async with http.put("/v1/kv/k", params={"cas": "0", "acquire": "x"}) as resp:
        assert resp.status == 400
        assert "Conflicting flags" in await resp.text()
    async with http.delete("/v1/kv/k", params={"cas": "1", "recurse": ""}) as resp:
        assert resp.status == 400
    async with http.get("/v1/kv/k", params={"index": "x"}) as resp:
        assert resp.status == 400
        assert await resp.text() == "Invalid index"
    async with http.get("/v1/kv/k", params={"index": "1", "wait": "5 seconds"}) as resp:
        assert resp.status == 400
        assert await resp.text() == "Invalid wait time"


async def test_a_malformed_cas_is_a_server_error(client: Any, http: aiohttp.ClientSession) -> None:
    # Consul's handler returns strconv's error unwrapped, which its HTTP layer answers as a
    # 500 (agent/kvs_endpoint.go); only conflicting flags, index and wait get a 400.
    async with http.put("/v1/kv/k", params={"cas": "abc"}, data=b"v") as resp:
        assert resp.status == 500
        assert "invalid syntax" in await resp.text()
    with pytest.raises(consul.ConsulException):
        await client.kv.put("k", "v", cas="abc")


# -- indexes ------------------------------------------------------------------------------


async def test_index_header_is_never_zero_and_only_grows(
    emulator: ConsulEmulator, client: Any, http: aiohttp.ClientSession
) -> None:
    seen: list[int] = []
    for path in ("/v1/kv/k", "/v1/kv/?keys", "/v1/session/list", "/v1/status/leader"):
        async with http.get(path) as resp:
            assert int(resp.headers["X-Consul-Index"]) >= 1
            assert resp.headers["X-Consul-KnownLeader"] == "true"
            assert resp.headers["X-Consul-LastContact"] == "0"
    for value in ("a", "b", "c"):
        await client.kv.put("k", value)
        seen.append(int((await client.kv.get("k"))[0]))
    await client.kv.delete("k")
    seen.append(int((await client.kv.get("k"))[0]))
    assert seen == sorted(set(seen))
    assert emulator.index >= seen[-1]


async def test_an_idempotent_put_keeps_the_modify_index(client: Any) -> None:
    await client.kv.put("k", "same")
    before = (await client.kv.get("k"))[1]["ModifyIndex"]
    assert await client.kv.put("k", "same") is True
    assert (await client.kv.get("k"))[1]["ModifyIndex"] == before


# -- blocking queries -----------------------------------------------------------------------


async def test_blocking_get_returns_when_the_key_changes(client: Any) -> None:
    await client.kv.put("watched", "v1")
    index, _ = await client.kv.get("watched")
    watch = asyncio.create_task(client.kv.get("watched", index=index, wait="5s"))
    await asyncio.sleep(0.2)
    assert not watch.done()
    started = time.monotonic()
    await client.kv.put("watched", "v2")
    new_index, entry = await asyncio.wait_for(watch, 3)
    assert time.monotonic() - started < 2
    assert int(new_index) > int(index)
    assert entry["Value"] == b"v2"


async def test_blocking_get_times_out_with_the_same_index(client: Any) -> None:
    await client.kv.put("quiet", "v")
    index, _ = await client.kv.get("quiet")
    started = time.monotonic()
    new_index, entry = await client.kv.get("quiet", index=index, wait="300ms")
    elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 3
    assert new_index == index
    assert entry["Value"] == b"v"


async def test_deleting_the_key_wakes_the_watcher(client: Any) -> None:
    await client.kv.put("doomed", "v")
    index, _ = await client.kv.get("doomed")
    watch = asyncio.create_task(client.kv.get("doomed", index=index, wait="5s"))
    await asyncio.sleep(0.2)
    await client.kv.delete("doomed")
    new_index, entry = await asyncio.wait_for(watch, 3)
    assert entry is None
    assert int(new_index) > int(index)


async def test_a_watch_on_a_missing_key_wakes_when_it_is_created(client: Any) -> None:
    index, entry = await client.kv.get("later")
    assert entry is None
    watch = asyncio.create_task(client.kv.get("later", index=index, wait="5s"))
    await asyncio.sleep(0.2)
    await client.kv.put("later", "here")
    new_index, entry = await asyncio.wait_for(watch, 3)
    assert entry["Value"] == b"here"
    assert int(new_index) > int(index)


async def test_prefix_watch_wakes_for_a_key_under_the_prefix(client: Any) -> None:
    await client.kv.put("meridian/config", "a")
    index, _ = await client.kv.get("meridian/", recurse=True)
    watch = asyncio.create_task(client.kv.get("meridian/", index=index, wait="5s", recurse=True))
    await asyncio.sleep(0.2)
    await client.kv.put("meridian/active/eu", "b")
    new_index, entries = await asyncio.wait_for(watch, 3)
    assert int(new_index) > int(index)
    assert [e["Key"] for e in entries] == ["meridian/active/eu", "meridian/config"]


async def test_prefix_watch_sleeps_through_an_unrelated_key(client: Any) -> None:
    await client.kv.put("meridian/config", "a")
    index, _ = await client.kv.get("meridian/", recurse=True)
    watch = asyncio.create_task(client.kv.get("meridian/", index=index, wait="1s", recurse=True))
    await asyncio.sleep(0.1)
    await client.kv.put("elsewhere/key", "x")
    await asyncio.sleep(0.3)
    assert not watch.done()
    new_index, entries = await asyncio.wait_for(watch, 5)
    assert new_index == index
    assert [e["Key"] for e in entries] == ["meridian/config"]


async def test_no_index_never_blocks(client: Any, http: aiohttp.ClientSession) -> None:
    await client.kv.put("k", "v")
    started = time.monotonic()
    # py-consul drops `wait` without an index; raw index=0 must not block either.
    await client.kv.get("k", wait="5s")
    async with http.get("/v1/kv/k", params={"index": "0", "wait": "5s"}) as resp:
        assert resp.status == 200
    async with http.get("/v1/kv/k", params={"wait": "5s"}) as resp:
        assert resp.status == 200
    assert time.monotonic() - started < 2


async def test_an_index_from_the_future_waits_out_the_timeout(client: Any) -> None:
    # As Consul does: the client is meant to notice the index went backwards and reset.
    await client.kv.put("k", "v")
    index, _ = await client.kv.get("k")
    started = time.monotonic()
    new_index, _ = await client.kv.get("k", index=str(int(index) + 1000), wait="200ms")
    assert time.monotonic() - started >= 0.15
    assert new_index == index


# -- locks and sessions ---------------------------------------------------------------------


async def test_acquire_and_release(client: Any) -> None:
    first = await new_session(client, name="first")
    second = await new_session(client, name="second")
    assert await client.kv.put("leader", "one", acquire=first) is True
    _, entry = await client.kv.get("leader")
    assert entry["Session"] == first
    assert entry["LockIndex"] == 1
    assert entry["Value"] == b"one"

    # The holder may update under the lock without a new LockIndex; others may not take it.
    assert await client.kv.put("leader", "one again", acquire=first) is True
    assert (await client.kv.get("leader"))[1]["LockIndex"] == 1
    assert await client.kv.put("leader", "two", acquire=second) is False
    assert await client.kv.put("leader", "two", release=second) is False
    assert (await client.kv.get("leader"))[1]["Value"] == b"one again"

    assert await client.kv.put("leader", "free", release=first) is True
    _, entry = await client.kv.get("leader")
    assert "Session" not in entry
    assert entry["LockIndex"] == 1
    assert entry["Value"] == b"free"

    assert await client.kv.put("leader", "two", acquire=second) is True
    _, entry = await client.kv.get("leader")
    assert entry["Session"] == second
    assert entry["LockIndex"] == 2


async def test_a_plain_put_on_a_locked_key_keeps_the_holder(client: Any) -> None:
    sid = await new_session(client)
    await client.kv.put("leader", "held", acquire=sid)
    assert await client.kv.put("leader", "overwritten") is True
    _, entry = await client.kv.get("leader")
    assert entry["Session"] == sid
    assert entry["Value"] == b"overwritten"


async def test_acquire_with_an_unknown_session_is_an_error(client: Any) -> None:
    # Consul fails the write ('invalid session'), a 500, rather than answering false.
    with pytest.raises(consul.ConsulException):
        await client.kv.put("leader", "x", acquire="00000000-0000-0000-0000-000000000000")


async def test_ttl_expiry_releases_the_lock_and_starts_lock_delay(
    emulator: ConsulEmulator, client: Any, clock: FakeClock
) -> None:
    holder = await new_session(client, ttl=10, lock_delay=5)
    assert await client.kv.put("leader", "me", acquire=holder) is True
    modify = (await client.kv.get("leader"))[1]["ModifyIndex"]

    clock.advance(9.9)
    assert emulator.expire_sessions() == []
    assert (await client.kv.get("leader"))[1]["Session"] == holder

    clock.advance(0.2)
    assert emulator.expire_sessions() == [holder]
    _, entry = await client.kv.get("leader")
    assert "Session" not in entry
    assert entry["ModifyIndex"] > modify
    assert entry["Value"] == b"me"
    assert (await client.session.info(holder))[1] is None

    successor = await new_session(client)
    assert await client.kv.put("leader", "next", acquire=successor) is False
    clock.advance(4.8)
    assert await client.kv.put("leader", "next", acquire=successor) is False
    clock.advance(0.3)
    assert await client.kv.put("leader", "next", acquire=successor) is True


async def test_expiry_wakes_a_blocking_query(
    emulator: ConsulEmulator, client: Any, clock: FakeClock
) -> None:
    holder = await new_session(client, ttl=10)
    await client.kv.put("leader", "me", acquire=holder)
    index, _ = await client.kv.get("leader")
    watch = asyncio.create_task(client.kv.get("leader", index=index, wait="5s"))
    await asyncio.sleep(0.2)
    assert not watch.done()
    clock.advance(10)
    emulator.expire_sessions()
    new_index, entry = await asyncio.wait_for(watch, 3)
    assert int(new_index) > int(index)
    assert "Session" not in entry


async def test_requests_see_expiry_without_an_explicit_check(client: Any, clock: FakeClock) -> None:
    holder = await new_session(client, ttl=10)
    await client.kv.put("leader", "me", acquire=holder)
    clock.advance(10)
    assert "Session" not in (await client.kv.get("leader"))[1]


async def test_renew_extends_the_ttl(
    emulator: ConsulEmulator, client: Any, clock: FakeClock
) -> None:
    sid = await new_session(client, ttl=10)
    clock.advance(8)
    renewed = await client.session.renew(sid)
    assert renewed["ID"] == sid
    assert renewed["TTL"] == "10s"
    clock.advance(8)
    assert emulator.expire_sessions() == []
    clock.advance(2)
    assert emulator.expire_sessions() == [sid]
    with pytest.raises(consul.NotFound):
        await client.session.renew(sid)


async def test_renew_of_an_unknown_session_is_not_found(client: Any) -> None:
    with pytest.raises(consul.NotFound):
        await client.session.renew("00000000-0000-0000-0000-000000000000")


async def test_behavior_delete_deletes_the_key_on_invalidation(
    emulator: ConsulEmulator, client: Any, clock: FakeClock
) -> None:
    sid = await new_session(client, ttl=10, behavior="delete", lock_delay=0)
    await client.kv.put("ephemeral", "here", acquire=sid)
    await client.kv.put("kept", "here")
    clock.advance(11)
    emulator.expire_sessions()
    assert (await client.kv.get("ephemeral"))[1] is None
    assert (await client.kv.get("kept"))[1]["Value"] == b"here"


async def test_destroy_releases_locks_with_the_default_lock_delay(
    client: Any, clock: FakeClock
) -> None:
    holder = await new_session(client)
    other = await new_session(client)
    await client.kv.put("leader", "me", acquire=holder)
    assert await client.session.destroy(holder) is True
    assert "Session" not in (await client.kv.get("leader"))[1]
    assert await client.kv.put("leader", "x", acquire=other) is False
    clock.advance(15.1)
    assert await client.kv.put("leader", "x", acquire=other) is True
    assert await client.session.destroy(holder) is True


async def test_a_zero_lock_delay_frees_the_key_at_once(client: Any) -> None:
    holder = await new_session(client, lock_delay=0)
    other = await new_session(client)
    await client.kv.put("leader", "me", acquire=holder)
    await client.session.destroy(holder)
    assert await client.kv.put("leader", "x", acquire=other) is True


async def test_an_explicit_release_starts_no_lock_delay(client: Any) -> None:
    holder = await new_session(client)
    other = await new_session(client)
    await client.kv.put("leader", "me", acquire=holder)
    await client.kv.put("leader", "me", release=holder)
    assert await client.kv.put("leader", "x", acquire=other) is True


@pytest.mark.parametrize("ttl", ["5s", "9.999s", "86401s", "25h"])
async def test_a_ttl_outside_10s_to_86400s_is_refused(
    client: Any, http: aiohttp.ClientSession, ttl: str
) -> None:
    # py-consul asserts the range itself, so the request goes out through its HTTP layer.
    with pytest.raises(consul.ConsulException, match="Invalid Session TTL"):
        await client.http.put(
            CB.json(is_id=True), "/v1/session/create", data=json.dumps({"TTL": ttl})
        )
    # Session.Apply's range check is a plain error, so Consul answers 500, not 400.
    async with http.put("/v1/session/create", data=json.dumps({"ttl": ttl})) as resp:
        assert resp.status == 500
    assert (await client.session.list())[1] == []


@pytest.mark.parametrize("ttl", ["10s", "86400s", "24h", "0s"])
async def test_a_ttl_inside_the_range_or_zero_is_accepted(client: Any, ttl: str) -> None:
    sid = await client.http.put(
        CB.json(is_id=True), "/v1/session/create", data=json.dumps({"TTL": ttl})
    )
    assert (await client.session.info(sid))[1]["TTL"] == ttl


async def test_session_fields_in_either_case(client: Any, http: aiohttp.ClientSession) -> None:
    body = {"Name": "upper", "TTL": "15s", "LockDelay": "1s", "Behavior": "delete"}
    async with http.put("/v1/session/create", data=json.dumps(body)) as resp:
        upper = (await resp.json())["ID"]
    lower = await new_session(client, name="lower", ttl=20, lock_delay=3, behavior="delete")
    default = await new_session(client)

    _, info = await client.session.info(upper)
    assert (info["Name"], info["TTL"], info["Behavior"]) == ("upper", "15s", "delete")
    assert info["LockDelay"] == 1_000_000_000
    _, info = await client.session.info(lower)
    assert (info["Name"], info["TTL"], info["Behavior"]) == ("lower", "20s", "delete")
    assert info["LockDelay"] == 3_000_000_000
    _, info = await client.session.info(default)
    assert (info["Behavior"], info["TTL"]) == ("release", "")
    assert info["LockDelay"] == 15_000_000_000
    assert info["Checks"] == ["serfHealth"]
    assert info["CreateIndex"] == info["ModifyIndex"] >= 1

    _, listed = await client.session.list()
    assert {s["ID"] for s in listed} == {upper, lower, default}


async def test_an_invalid_behavior_is_refused(client: Any) -> None:
    with pytest.raises(consul.ConsulException, match="Invalid Behavior"):
        await client.http.put(
            CB.json(is_id=True), "/v1/session/create", data=json.dumps({"Behavior": "keep"})
        )


async def test_strict_keys_follow_the_newest_consul() -> None:
    async with ConsulEmulator(strict_keys=True) as strict:
        c = consul.aio.Consul(host="127.0.0.1", port=strict.port, connections_timeout=5)
        try:
            assert await c.kv.put("meridian/config", "ok") is True
            for key in ("meridian/config.json", "meridian/a b", "meridian/x:y"):
                with pytest.raises(BadRequest):
                    await c.kv.put(key, "no")
        finally:
            await c.close()


async def test_status_leader(client: Any) -> None:
    assert await client.status.leader() == "127.0.0.1:8300"


async def test_unknown_paths_and_wrong_methods(http: aiohttp.ClientSession) -> None:
    async with http.get("/v1/agent/nothing") as resp:
        assert resp.status == 404
    async with http.post("/v1/kv/k") as resp:
        assert resp.status == 405
        assert "PUT" in resp.headers["Allow"]
    async with http.get("/v1/session/create") as resp:
        assert resp.status == 405
    async with http.put("/v1/status/leader") as resp:
        assert resp.status == 405


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("0", 0),
        ("100ms", 100_000_000),
        ("5s", 5 * 10**9),
        ("1m30s", 90 * 10**9),
        ("1.5h", 5400 * 10**9),
    ],
)
def test_go_durations(text: str, ns: int) -> None:
    assert parse_go_duration(text) == ns


@pytest.mark.parametrize("text", ["", "5", "s", "1d", "5 s"])
def test_malformed_go_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_go_duration(text)


# -- as a separate process -------------------------------------------------------------------


async def test_emulator_process_serves_and_is_gone_after_exit() -> None:
    with EmulatorProcess() as proc:
        assert 20000 <= proc.port < 32000
        assert proc.address == f"127.0.0.1:{proc.port}"
        pid = proc.pid
        c = consul.aio.Consul(host="127.0.0.1", port=proc.port, connections_timeout=CLIENT_TIMEOUT)
        try:
            assert await c.kv.put("through/process", "yes") is True
            assert (await c.kv.get("through/process"))[1]["Value"] == b"yes"
        finally:
            await c.close()
    assert proc.returncode is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
