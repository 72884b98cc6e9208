"""An EMULATOR of Consul's HTTP API, for tests only. It is not Consul.

Consul's server cannot be installed where Meridian's tests run, so this module answers the
subset of Consul's documented HTTP API (v1) that Meridian uses: the KV store with blocking
queries, CAS and locks, sessions with TTL, behaviours and lock-delay, and the leader
status. It keeps everything in memory in one process with one fake "raft" index. Where
Consul's documentation leaves a detail open, the emulator follows what Consul's own source
does (cited inline), so code tested here meets the same answers in production.

Simplifications (deliberate; a test needing one of these needs a real Consul):

* One server, always the leader: no replication, no ``stale``/``consistent`` difference, no
  other datacenters (``?dc`` is accepted and ignored), ACLs disabled (tokens ignored).
* Sessions are bound to the one node this emulator pretends to be, and only its
  ``serfHealth`` check exists; the check never fails, so sessions die only by TTL or
  destroy. A TTL session is invalidated at TTL x ``ttl_multiplier`` (default 1.0, the
  strictest reading of the docs; real Consul waits up to 2 x TTL).
* Tombstones are never reaped, so indexes derived from them never fall back.
* Only the endpoints below exist: ``/v1/kv/``, ``/v1/session/{create,destroy,renew,info,
  node,list}``, ``/v1/status/{leader,peers}``. Every answer carries ``X-Consul-Index``
  (writes: the current raft index), where Consul sets it on reads only.

Consul behaviours kept on purpose, though they may surprise (each from Consul's source):

* An acquire with an unknown session, a malformed ``cas``/``flags``, and a session TTL
  outside 10s..24h are HTTP 500 (Consul's plain errors), not 400; conflicting flags and a
  malformed ``index`` or ``wait`` are 400.
* A blocking query whose ``index`` is ahead of the store waits out its timeout: Consul
  does not special-case it, clients are expected to reset an index that went backwards.
* A CAS delete of a missing key answers true; a plain or CAS PUT on a locked key keeps the
  holder but resets LockIndex to 0; a PUT that changes nothing keeps the ModifyIndex (and
  wakes no watcher); a lock-delay above 60 s is cut to 60 s when it applies.

Run alone for other processes: ``python -m tests.consul_emulator --host H --port P``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from types import TracebackType
from typing import IO, Any, Final, Self, TypeVar
from urllib.parse import urlencode

from aiohttp import web

from benchmarks.fleet import ROOT as _ROOT
from benchmarks.fleet import free_port  # one port picker, below the ephemeral range
from router.devstack import die_with_parent

__all__ = [
    "ConsulEmulator",
    "EmulatorProcess",
    "free_port",
    "parse_go_duration",
]

# Consul's query limits (agent config defaults; docs "Blocking Queries").
DEFAULT_QUERY_TIME: Final = 300.0
MAX_QUERY_TIME: Final = 600.0
JITTER_FRACTION: Final = 16
# Session limits (structs.SessionTTLMax, the server's default session_ttl_min,
# structs.MaxLockDelay) and the agent's defaults for a new session.
SESSION_TTL_MIN_NS: Final = 10 * 10**9
SESSION_TTL_MAX_NS: Final = 86400 * 10**9
MAX_LOCK_DELAY_NS: Final = 60 * 10**9
DEFAULT_LOCK_DELAY_NS: Final = 15 * 10**9
# A numeric or string lock-delay below this many nanoseconds is taken as seconds
# (agent/session_endpoint.go, lockDelayMinThreshold): clients send 15 meaning 15 s.
LOCK_DELAY_MIN_THRESHOLD: Final = 1000
SERF_CHECK: Final = "serfHealth"
KV_MAX_VALUE_SIZE: Final = 512 * 1024
LEADER: Final = "127.0.0.1:8300"
READY_PREFIX: Final = "consul emulator listening on "

_T = TypeVar("_T")

_UNITS_NS: Final = {
    "ns": 1,
    "us": 10**3,
    "\u00b5s": 10**3,
    "\u03bcs": 10**3,
    "ms": 10**6,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
}
_DURATION_PART: Final = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_UINT: Final = re.compile(r"[0-9]+")
_SAFE_KEY_CHAR: Final = re.compile(r"[A-Za-z0-9,\-_./]")
# The newest Consul refuses keys ending in these (agent/kvs_endpoint.go, validateKVKey).
_SUSPICIOUS_EXTENSIONS: Final = (
    ".js", ".css", ".html", ".htm", ".xml", ".json", ".txt", ".log", ".php", ".asp", ".jsp",
    ".cgi", ".pl", ".py", ".rb", ".sh", ".exe", ".dll", ".bat", ".cmd", ".com", ".scr", ".vbs",
    ".pdf", ".doc", ".docx", ".xls", ".xlsx", ".ppt", ".pptx", ".zip", ".rar", ".tar", ".gz",
    ".7z", ".bz2", ".jpg", ".jpeg", ".png", ".gif", ".svg", ".ico", ".bmp", ".mp3", ".mp4",
    ".avi", ".mov", ".wmv", ".flv", ".swf", ".woff", ".woff2", ".ttf", ".eot", ".otf",
)  # fmt: skip


def parse_go_duration(text: str) -> int:
    """Nanoseconds of a Go ``time.ParseDuration`` string, because Consul parses ``wait``,
    ``TTL`` and ``LockDelay`` with it: a unit is mandatory except for a bare "0"."""
    body = text
    sign = 1
    if body and body[0] in "+-":
        sign = -1 if body[0] == "-" else 1
        body = body[1:]
    if body == "0":
        return 0
    if not body:
        raise ValueError(f"time: invalid duration {text!r}")
    total = Fraction(0)
    pos = 0
    while pos < len(body):
        match = _DURATION_PART.match(body, pos)
        if match is None:
            raise ValueError(f"time: invalid duration {text!r}")
        total += Fraction(match.group(1)) * _UNITS_NS[match.group(2)]
        pos = match.end()
    return sign * int(total)


def _parse_uint(text: str) -> int:
    """Go's ``strconv.ParseUint(s, 10, 64)``, with its error text, because Consul answers
    a malformed ``cas``/``flags`` with that error as a 500."""
    if not _UINT.fullmatch(text):
        raise _ConsulError(500, f'strconv.ParseUint: parsing "{text}": invalid syntax')
    value = int(text)
    if value >= 2**64:
        raise _ConsulError(500, f'strconv.ParseUint: parsing "{text}": value out of range')
    return value


def _format_go_duration(ns: int) -> str:
    """Enough of Go's Duration.String() for Consul's TTL range error message."""
    seconds, rem = divmod(ns, 10**9)
    if rem:
        return f"{ns / 10**9}s"
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    if hours:
        return f"{hours}h{minutes}m{seconds}s"
    if minutes:
        return f"{minutes}m{seconds}s"
    return f"{seconds}s"


class _ConsulError(Exception):
    """An HTTP error answer with Consul's status and text body."""

    def __init__(self, status: int, text: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.headers = headers or {}


@dataclass(frozen=True, slots=True)
class _Entry:
    """One KV entry; frozen so a blocking query's result cannot change under it."""

    key: str
    value: bytes
    flags: int
    create_index: int
    modify_index: int
    lock_index: int
    session: str

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "LockIndex": self.lock_index,
            "Key": self.key,
            "Flags": self.flags,
            # Consul stores an empty body as nil, which Go's JSON writes as null.
            "Value": base64.b64encode(self.value).decode("ascii") if self.value else None,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }
        if self.session:
            out["Session"] = self.session
        return out


@dataclass(slots=True)
class _Session:
    id: str
    name: str
    node: str
    lock_delay_ns: int
    behavior: str
    ttl: str
    ttl_ns: int
    checks: list[str]
    create_index: int
    modify_index: int
    expires_at: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "ID": self.id,
            "Name": self.name,
            "Node": self.node,
            "LockDelay": self.lock_delay_ns,
            "Behavior": self.behavior,
            "TTL": self.ttl,
            "Checks": list(self.checks),
            "NodeChecks": list(self.checks),
            "ServiceChecks": None,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }


@dataclass(eq=False, slots=True)
class _Waiter:
    """A parked blocking query and what it watches, so that only a relevant write wakes it
    (as Consul's memdb watch sets do) and an unrelated key leaves it asleep."""

    kv_key: str | None = None
    kv_prefix: str | None = None
    sessions: bool = False
    event: asyncio.Event = field(default_factory=asyncio.Event)

    def wants(self, kv_keys: Iterable[str], sessions: bool) -> bool:
        if sessions and self.sessions:
            return True
        for key in kv_keys:
            if key == self.kv_key:
                return True
            if self.kv_prefix is not None and key.startswith(self.kv_prefix):
                return True
        return False


class ConsulEmulator:
    """In-process emulator of Consul's HTTP API (KV, sessions, status) on aiohttp.

    ``clock`` drives session TTLs and lock-delays only (blocking queries wait in real
    time), so tests can expire a 10 s TTL without sleeping: advance the clock, then call
    :meth:`expire_sessions` (every request also expires due sessions first, and a
    background task checks every ``reap_interval`` seconds of real time).
    ``strict_keys`` enforces the newest Consul's key rules (only ``A-Za-z0-9,-_./``, no
    file-like extensions such as ``.json``), which older Consul versions do not.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        ttl_multiplier: float = 1.0,
        reap_interval: float = 0.1,
        node_name: str = "consul-emulator",
        strict_keys: bool = False,
    ) -> None:
        self._clock = clock
        self._ttl_multiplier = ttl_multiplier
        self._reap_interval = reap_interval
        self._node = node_name
        self._strict_keys = strict_keys
        # Raft index 1 is Consul's own first write, so no user query ever sees 0.
        self._index = 1
        self._kv: dict[str, _Entry] = {}
        self._kv_table_index = 0
        self._tombstones: dict[str, int] = {}
        self._sessions: dict[str, _Session] = {}
        self._sessions_table_index = 0
        self._lock_delays: dict[str, float] = {}
        self._waiters: set[_Waiter] = set()
        self._closing = False
        self._runner: web.AppRunner | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._host = "127.0.0.1"
        self._port = 0

    # -- lifecycle -------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        if self._runner is not None:
            raise RuntimeError("the consul emulator is already running")
        app = web.Application(client_max_size=KV_MAX_VALUE_SIZE * 2)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._host = host
        self._port = int(runner.addresses[0][1])
        self._closing = False
        self._reaper = asyncio.create_task(self._reap_forever())

    async def stop(self) -> None:
        """Answer every parked blocking query at once, then close the server; without the
        first step, shutdown would wait for each one's ``wait`` to run out."""
        self._closing = True
        for waiter in list(self._waiters):
            waiter.event.set()
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def address(self) -> str:
        return f"{self._host}:{self._port}"

    @property
    def index(self) -> int:
        """The current raft index (every accepted write advances it)."""
        return self._index

    # -- sessions' clock ---------------------------------------------------------------

    def expire_sessions(self) -> list[str]:
        """Invalidate every TTL session whose deadline has passed on ``clock``; returns
        their IDs. Public so tests with an injected clock decide when expiry happens."""
        now = self._clock()
        expired = [
            sid
            for sid, session in self._sessions.items()
            if session.expires_at is not None and now >= session.expires_at
        ]
        for sid in expired:
            self._invalidate_session(self._next_index(), sid)
        return expired

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self._reap_interval)
            self.expire_sessions()

    # -- state -----------------------------------------------------------------------

    def _next_index(self) -> int:
        self._index += 1
        return self._index

    def _notify(self, kv_keys: Iterable[str] = (), *, sessions: bool = False) -> None:
        keys = list(kv_keys)
        for waiter in list(self._waiters):
            if waiter.wants(keys, sessions):
                waiter.event.set()

    def _kv_set(
        self, idx: int, key: str, value: bytes, flags: int, *, session: str | None, lock_index: int
    ) -> None:
        """Consul's kvsSetTxn: ``session=None`` keeps the holder, and a write that changes
        nothing keeps the ModifyIndex, so an idempotent PUT wakes no watcher."""
        existing = self._kv.get(key)
        if session is None:
            session = existing.session if existing else ""
        if existing is not None and (
            existing.value,
            existing.flags,
            existing.session,
            existing.lock_index,
        ) == (value, flags, session, lock_index):
            return
        self._kv[key] = _Entry(
            key=key,
            value=value,
            flags=flags,
            create_index=existing.create_index if existing else idx,
            modify_index=idx,
            lock_index=lock_index,
            session=session,
        )
        self._kv_table_index = idx
        self._notify([key])

    def _kv_delete(self, idx: int, key: str) -> bool:
        """Leaves a tombstone so the index of a query over this key moves forward."""
        if key not in self._kv:
            return False
        del self._kv[key]
        self._tombstones[key] = idx
        self._kv_table_index = idx
        self._notify([key])
        return True

    def _kv_list_index(self, prefix: str) -> int:
        """Consul's kvsListTxn: the newest entry or tombstone under the prefix, else the
        whole table's index."""
        if prefix:
            lindex = max(
                [e.modify_index for k, e in self._kv.items() if k.startswith(prefix)]
                + [i for k, i in self._tombstones.items() if k.startswith(prefix)],
                default=0,
            )
        else:
            lindex = self._kv_table_index
        return lindex or self._kv_table_index

    def _invalidate_session(self, idx: int, sid: str) -> None:
        """Consul's deleteSessionTxn: release (or delete) every held lock and start a
        lock-delay on each key, so a new holder cannot act on stale leadership."""
        session = self._sessions.pop(sid, None)
        if session is None:
            return
        self._sessions_table_index = idx
        delay_s = min(session.lock_delay_ns, MAX_LOCK_DELAY_NS) / 10**9
        now = self._clock()
        for key in sorted(k for k, e in self._kv.items() if e.session == sid):
            entry = self._kv[key]
            if session.behavior == "delete":
                self._kv_delete(idx, key)
            else:
                self._kv_set(
                    idx, key, entry.value, entry.flags, session="", lock_index=entry.lock_index
                )
            if delay_s > 0:
                self._lock_delays[key] = now + delay_s
        self._notify(sessions=True)

    # -- HTTP plumbing -----------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.expire_sessions()
        try:
            response = await self._dispatch(request)
        except _ConsulError as exc:
            response = web.Response(
                status=exc.status, text=exc.text, content_type="text/plain", headers=exc.headers
            )
        if "X-Consul-Index" not in response.headers:
            response.headers["X-Consul-Index"] = str(max(self._index, 1))
        response.headers["X-Consul-KnownLeader"] = "true"
        response.headers["X-Consul-LastContact"] = "0"
        return response

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path.startswith("/v1/kv/"):
            self._methods(request, "GET", "PUT", "DELETE")
            key = path[len("/v1/kv/") :]
            if key:
                self._validate_key(key)
            if request.method == "GET":
                if "keys" in request.query:
                    return await self._kv_keys(request, key)
                return await self._kv_get(request, key)
            if request.method == "PUT":
                return await self._kv_put(request, key)
            return self._kv_delete_endpoint(request, key)
        if path == "/v1/session/create":
            self._methods(request, "PUT")
            return await self._session_create(request)
        for prefix, method, handler in (
            ("/v1/session/destroy/", "PUT", self._session_destroy),
            ("/v1/session/renew/", "PUT", self._session_renew),
            ("/v1/session/info/", "GET", self._session_info),
            ("/v1/session/node/", "GET", self._session_node),
        ):
            if path.startswith(prefix):
                self._methods(request, method)
                return await handler(request, path[len(prefix) :])
        if path == "/v1/session/list":
            self._methods(request, "GET")
            return await self._session_list(request)
        if path == "/v1/status/leader":
            self._methods(request, "GET")
            return _json(LEADER)
        if path == "/v1/status/peers":
            self._methods(request, "GET")
            return _json([LEADER])
        return web.Response(status=404)

    @staticmethod
    def _methods(request: web.Request, *allowed: str) -> None:
        if request.method == "OPTIONS":
            raise _ConsulError(200, "", {"Allow": ",".join(("OPTIONS", *allowed))})
        if request.method not in allowed:
            raise _ConsulError(
                405,
                f"method {request.method} not allowed",
                {"Allow": ",".join(("OPTIONS", *allowed))},
            )

    def _validate_key(self, key: str) -> None:
        if key.startswith("/"):
            raise _ConsulError(400, "key must not begin with a '/'")
        if not self._strict_keys:
            return
        for i, char in enumerate(key):
            if not _SAFE_KEY_CHAR.fullmatch(char):
                raise _ConsulError(
                    400,
                    f"key contains invalid character '{char}' at position {i}. "
                    "Only alphanumeric characters and ,-_./ are allowed",
                )
        if "../" in key:
            raise _ConsulError(400, "key contains path traversal sequence")
        lowered = key.lower()
        for ext in _SUSPICIOUS_EXTENSIONS:
            if lowered.endswith(ext):
                raise _ConsulError(
                    400,
                    f"key contains suspicious file extension '{ext}' that may be cached by proxies",
                )

    def _query_options(self, request: web.Request) -> tuple[int, float]:
        """``index`` and the effective timeout (Consul's rpcQueryTimeout plus jitter);
        ``wait`` is parsed, hence validated, even when no ``index`` makes it moot."""
        query = request.query
        if "stale" in query and "consistent" in query:
            raise _ConsulError(
                400, "Cannot specify ?stale with ?consistent, conflicting semantics."
            )
        timeout = 0.0
        if wait := query.get("wait", ""):
            try:
                timeout = parse_go_duration(wait) / 10**9
            except ValueError:
                raise _ConsulError(400, "Invalid wait time") from None
        index = 0
        if raw_index := query.get("index", ""):
            if not _UINT.fullmatch(raw_index) or int(raw_index) >= 2**64:
                raise _ConsulError(400, "Invalid index")
            index = int(raw_index)
        if timeout > MAX_QUERY_TIME:
            timeout = MAX_QUERY_TIME
        elif timeout <= 0:
            timeout = DEFAULT_QUERY_TIME
        timeout += random.uniform(0, timeout / JITTER_FRACTION)
        return index, timeout

    async def _blocking(
        self,
        request: web.Request,
        waiter: _Waiter,
        query: Callable[[], tuple[int, _T, bool]],
    ) -> tuple[int, _T]:
        """Consul's blockingQuery: answer at once unless ``index`` > 0 and the result's
        index is not above it; else park until a relevant write or the timeout. A query
        that still finds nothing after a wake keeps waiting, as Consul's ErrNotFound
        does; an index from the future (e.g. after a restart) waits out the timeout."""
        min_index, timeout = self._query_options(request)
        idx, result, not_found = query()
        if min_index == 0:
            return idx, result
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        seen_not_found = False
        self._waiters.add(waiter)
        try:
            while True:
                if not_found:
                    if seen_not_found:
                        min_index = idx
                    seen_not_found = True
                if idx > min_index or self._closing:
                    return idx, result
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return idx, result
                waiter.event.clear()
                try:
                    await asyncio.wait_for(waiter.event.wait(), remaining)
                except TimeoutError:
                    return idx, result
                idx, result, not_found = query()
        finally:
            self._waiters.discard(waiter)

    # -- KV --------------------------------------------------------------------------

    async def _kv_get(self, request: web.Request, key: str) -> web.StreamResponse:
        recurse = "recurse" in request.query
        if not recurse and not key:
            raise _ConsulError(400, "Missing key name")

        def one() -> tuple[int, list[_Entry], bool]:
            entry = self._kv.get(key)
            if entry is None:
                return self._kv_table_index, [], True
            return entry.modify_index, [entry], False

        def many() -> tuple[int, list[_Entry], bool]:
            entries = [self._kv[k] for k in sorted(self._kv) if k.startswith(key)]
            return self._kv_list_index(key), entries, False

        if recurse:
            idx, entries = await self._blocking(request, _Waiter(kv_prefix=key), many)
        else:
            idx, entries = await self._blocking(request, _Waiter(kv_key=key), one)
        headers = {"X-Consul-Index": str(max(idx, 1))}
        if not entries:
            return web.Response(status=404, headers=headers)
        if "raw" in request.query and not recurse:
            headers.update(
                {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox"}
            )
            return web.Response(body=entries[0].value, content_type="text/plain", headers=headers)
        return _json([e.to_json() for e in entries], headers)

    async def _kv_keys(self, request: web.Request, prefix: str) -> web.StreamResponse:
        query = request.query
        separator = ""
        # Consul still honours its historic misspelling, and the right one wins.
        if "seperator" in query:
            separator = query.get("seperator", "")
        if "separator" in query:
            separator = query.get("separator", "")

        def keys() -> tuple[int, list[str], bool]:
            out: list[str] = []
            for key in sorted(self._kv):
                if not key.startswith(prefix):
                    continue
                cut = key.find(separator, len(prefix)) if separator else -1
                listed = key[: cut + len(separator)] if cut >= 0 else key
                if not out or out[-1] != listed:
                    out.append(listed)
            return self._kv_list_index(prefix), out, False

        idx, listed = await self._blocking(request, _Waiter(kv_prefix=prefix), keys)
        headers = {"X-Consul-Index": str(max(idx, 1))}
        # No 404 for the root: an empty store lists as [].
        if not listed and prefix:
            return web.Response(status=404, headers=headers)
        return _json(listed, headers)

    async def _kv_put(self, request: web.Request, key: str) -> web.StreamResponse:
        query = request.query
        if not key:
            raise _ConsulError(400, "Missing key name")
        _conflicting_flags(request, "cas", "acquire", "release")
        flags = _parse_uint(query.get("flags", "")) if "flags" in query else 0
        cas = _parse_uint(query.get("cas", "")) if "cas" in query else None
        acquire = query.get("acquire") if "acquire" in query else None
        release = query.get("release") if "release" in query else None
        length = request.content_length or 0
        if length > KV_MAX_VALUE_SIZE:
            raise _ConsulError(
                413,
                f"Request body({length} bytes) too large, max size: {KV_MAX_VALUE_SIZE} bytes. "
                "See https://developer.hashicorp.com/docs/agent/config/config-files"
                "#kv_max_value_size.",
            )
        value = await request.read()

        if acquire is not None:
            # Enforced before the raft write, so a rejected lock leaves the index alone.
            until = self._lock_delays.get(key)
            if until is not None and self._clock() < until:
                return _json(False)
            return _json(self._kv_lock(self._next_index(), key, value, flags, acquire))
        idx = self._next_index()
        if release is not None:
            return _json(self._kv_unlock(idx, key, value, flags, release))
        existing = self._kv.get(key)
        if cas is not None:
            if cas == 0 and existing is not None:
                return _json(False)
            if cas != 0 and (existing is None or existing.modify_index != cas):
                return _json(False)
        # A plain or CAS set keeps the lock holder but, as in Consul, not the LockIndex.
        self._kv_set(idx, key, value, flags, session=None, lock_index=0)
        return _json(True)

    def _kv_lock(self, idx: int, key: str, value: bytes, flags: int, sid: str) -> bool:
        if not sid:
            raise _ConsulError(500, "missing session")
        if sid not in self._sessions:
            # Consul fails the raft apply; the HTTP answer is a 500, not a false.
            raise _ConsulError(500, f'invalid session "{sid}"')
        existing = self._kv.get(key)
        if existing is None:
            lock_index = 1
        elif existing.session == sid:
            lock_index = existing.lock_index
        elif existing.session:
            return False
        else:
            lock_index = existing.lock_index + 1
        self._kv_set(idx, key, value, flags, session=sid, lock_index=lock_index)
        return True

    def _kv_unlock(self, idx: int, key: str, value: bytes, flags: int, sid: str) -> bool:
        if not sid:
            raise _ConsulError(500, "missing session")
        existing = self._kv.get(key)
        if existing is None or existing.session != sid:
            return False
        self._kv_set(idx, key, value, flags, session="", lock_index=existing.lock_index)
        return True

    def _kv_delete_endpoint(self, request: web.Request, key: str) -> web.StreamResponse:
        query = request.query
        _conflicting_flags(request, "recurse", "cas")
        recurse = "recurse" in query
        if not recurse and not key:
            raise _ConsulError(400, "Missing key name")
        cas = _parse_uint(query.get("cas", "")) if "cas" in query else None
        idx = self._next_index()
        if recurse:
            for k in sorted(k for k in self._kv if k.startswith(key)):
                self._kv_delete(idx, k)
            return _json(True)
        if cas is not None:
            existing = self._kv.get(key)
            # Consul's kvsDeleteCASTxn: a missing key counts as deleted (true).
            if existing is None:
                return _json(True)
            if existing.modify_index != cas:
                return _json(False)
        self._kv_delete(idx, key)
        return _json(True)

    # -- sessions --------------------------------------------------------------------

    async def _session_create(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        fields: dict[str, Any] = {}
        if raw:
            try:
                doc = json.loads(raw)
            except ValueError as exc:
                raise _ConsulError(400, f"Request decode failed: {exc}") from None
            if not isinstance(doc, dict):
                raise _ConsulError(400, "Request decode failed: body is not a JSON object")
            # Consul decodes the body case-insensitively: "ttl" and "TTL" are one field.
            fields = {str(k).lower(): v for k, v in doc.items()}

        name = _str_field(fields, "name", "")
        node = _str_field(fields, "node", self._node)
        behavior = _str_field(fields, "behavior", "") or "release"
        ttl = _str_field(fields, "ttl", "")
        lock_delay_ns = _lock_delay_field(fields)
        checks = [SERF_CHECK]
        if any(k in fields for k in ("checks", "nodechecks", "servicechecks")):
            checks = _checks_field(fields, "checks") + _checks_field(fields, "nodechecks")
            service_checks = _checks_field(fields, "servicechecks")
            if service_checks:
                raise _ConsulError(500, f"Missing check '{service_checks[0]}' registration")

        # Consul's Session.Apply validation; its errors are plain ones, hence 500s.
        if not node:
            raise _ConsulError(500, "Must provide Node")
        if behavior not in ("release", "delete"):
            raise _ConsulError(500, f"Invalid Behavior setting '{behavior}'")
        ttl_ns = 0
        if ttl:
            try:
                ttl_ns = parse_go_duration(ttl)
            except ValueError as exc:
                raise _ConsulError(500, f"Session TTL '{ttl}' invalid: {exc}") from None
            if ttl_ns != 0 and not SESSION_TTL_MIN_NS <= ttl_ns <= SESSION_TTL_MAX_NS:
                raise _ConsulError(
                    500,
                    f"Invalid Session TTL '{ttl_ns}', must be between "
                    f"[{_format_go_duration(SESSION_TTL_MIN_NS)}="
                    f"{_format_go_duration(SESSION_TTL_MAX_NS)}]",
                )
        idx = self._next_index()
        if node != self._node:
            raise _ConsulError(500, "Missing node registration")
        for check in checks:
            if check != SERF_CHECK:
                raise _ConsulError(500, f"Missing check '{check}' registration")

        sid = str(uuid.uuid4())
        expires_at = None
        if ttl_ns:
            expires_at = self._clock() + ttl_ns / 10**9 * self._ttl_multiplier
        self._sessions[sid] = _Session(
            id=sid,
            name=name,
            node=node,
            lock_delay_ns=lock_delay_ns,
            behavior=behavior,
            ttl=ttl,
            ttl_ns=ttl_ns,
            checks=checks,
            create_index=idx,
            modify_index=idx,
            expires_at=expires_at,
        )
        self._sessions_table_index = idx
        self._notify(sessions=True)
        return _json({"ID": sid})

    async def _session_destroy(self, request: web.Request, sid: str) -> web.StreamResponse:
        if not sid:
            raise _ConsulError(400, "Missing session")
        self._invalidate_session(self._next_index(), sid)
        return _json(True)

    async def _session_renew(self, request: web.Request, sid: str) -> web.StreamResponse:
        if not sid:
            raise _ConsulError(400, "Missing session")
        session = self._sessions.get(sid)
        if session is None:
            raise _ConsulError(404, f"Session id '{sid}' not found")
        if session.ttl_ns:
            session.expires_at = self._clock() + session.ttl_ns / 10**9 * self._ttl_multiplier
        return _json([session.to_json()])

    async def _session_info(self, request: web.Request, sid: str) -> web.StreamResponse:
        if not sid:
            raise _ConsulError(400, "Missing session")
        return await self._session_query(
            request, lambda: [s for s in (self._sessions.get(sid),) if s is not None]
        )

    async def _session_node(self, request: web.Request, node: str) -> web.StreamResponse:
        if not node:
            raise _ConsulError(400, "Missing node name")
        return await self._session_query(
            request, lambda: [s for s in self._sessions.values() if s.node == node]
        )

    async def _session_list(self, request: web.Request) -> web.StreamResponse:
        return await self._session_query(request, lambda: list(self._sessions.values()))

    async def _session_query(
        self, request: web.Request, select: Callable[[], list[_Session]]
    ) -> web.StreamResponse:
        def query() -> tuple[int, list[dict[str, Any]], bool]:
            return self._sessions_table_index, [s.to_json() for s in select()], False

        idx, found = await self._blocking(request, _Waiter(sessions=True), query)
        return _json(found, {"X-Consul-Index": str(max(idx, 1))})


def _json(obj: object, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        text=json.dumps(obj, separators=(",", ":")),
        content_type="application/json",
        headers=headers,
    )


def _conflicting_flags(request: web.Request, *flags: str) -> None:
    if sum(1 for flag in flags if flag in request.query) > 1:
        raise _ConsulError(400, f"Conflicting flags: {urlencode(list(request.query.items()))}\n")


def _str_field(fields: dict[str, Any], name: str, default: str) -> str:
    value = fields.get(name, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise _ConsulError(400, f"Request decode failed: {name} must be a string")
    return value


def _checks_field(fields: dict[str, Any], name: str) -> list[str]:
    value = fields.get(name)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _ConsulError(400, f"Request decode failed: {name} must be a list of strings")
    return list(value)


def _lock_delay_field(fields: dict[str, Any]) -> int:
    """Consul's FixupLockDelay: a duration string or a number of nanoseconds, and either
    below 1000 ns is read as seconds (15 and "15ns" both mean 15 s)."""
    value = fields.get("lockdelay")
    if value is None:
        return DEFAULT_LOCK_DELAY_NS
    if isinstance(value, bool):
        raise _ConsulError(400, "Request decode failed: lockdelay must be a duration")
    if isinstance(value, str):
        try:
            ns = parse_go_duration(value)
        except ValueError as exc:
            raise _ConsulError(400, f"Request decode failed: {exc}") from None
    elif isinstance(value, int | float):
        ns = int(value)
    else:
        raise _ConsulError(400, "Request decode failed: lockdelay must be a duration")
    return ns * 10**9 if ns < LOCK_DELAY_MIN_THRESHOLD else ns


# -- a separate process, for code under test that runs in its own process ----------------


class EmulatorProcess:
    """``python -m tests.consul_emulator`` as a child process, for code under test that
    talks to Consul from another process. A context manager: the child is ours by PID and
    is stopped on exit (SIGTERM, SIGKILL after ``stop_timeout``), test failed or not.

    Start it from the main thread: the child is also told to die with the thread that
    started it (PR_SET_PDEATHSIG), so a short-lived worker thread would take it along.
    With ``port=None`` a free port is picked (and another tried if it is lost to a race).
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        startup_timeout: float = 15.0,
        stop_timeout: float = 5.0,
        ttl_multiplier: float = 1.0,
    ) -> None:
        if port == 0:
            # Port 0 lands in the ephemeral range, and the caller could not learn the port.
            raise ValueError("give a port, or None for a free one in 20000-32000")
        self.host = host
        self._requested_port = port
        self._port = port or 0
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.ttl_multiplier = ttl_multiplier
        self._proc: subprocess.Popen[bytes] | None = None
        self._spawned_port = 0
        self._files = contextlib.ExitStack()
        self._stdout: IO[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self.returncode: int | None = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def address(self) -> str:
        return f"{self.host}:{self._port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("the consul emulator process was never started")
        return self._proc.pid

    def start(self) -> None:
        if self._proc is not None:
            raise RuntimeError("the consul emulator process is already started")
        fixed = self._requested_port is not None
        last_error = ""
        for _ in range(1 if fixed else 5):
            port = self._requested_port if self._requested_port is not None else free_port()
            self._spawn(port)
            if self._await_ready():
                self._port = port
                return
            last_error = self.stderr_text()
            self.stop()
            self._proc = None
            if "Errno 98" not in last_error and "address already in use" not in last_error:
                break
        raise RuntimeError(f"the consul emulator did not start: {last_error.strip()}")

    def stop(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc is not None:
            self.returncode = proc.returncode
        self._files.close()
        self._stdout = self._stderr = None

    def stderr_text(self) -> str:
        """The child's stderr so far, for a failure message."""
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def _spawn(self, port: int) -> None:
        self._spawned_port = port
        argv = [
            sys.executable,
            "-m",
            "tests.consul_emulator",
            "--host",
            self.host,
            "--port",
            str(port),
            "--ttl-multiplier",
            str(self.ttl_multiplier),
        ]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_ROOT), env.get("PYTHONPATH", "")) if p)
        # The logs are files, not pipes: nobody reads the child while it runs, and a full
        # pipe would block it. They stay open (in self._files) until stop().
        with contextlib.ExitStack() as files:
            self._stdout = files.enter_context(tempfile.TemporaryFile())
            self._stderr = files.enter_context(tempfile.TemporaryFile())
            self._proc = subprocess.Popen(
                die_with_parent(argv),
                stdin=subprocess.DEVNULL,
                stdout=self._stdout,
                stderr=self._stderr,
                cwd=_ROOT,
                env=env,
            )
            self._files = files.pop_all()

    def _await_ready(self) -> bool:
        """True once the child printed its ready line and answers Consul's leader query;
        False if it exited first. Raises (after stopping it) if it never got there."""
        assert self._proc is not None and self._stdout is not None
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            self._stdout.seek(0)
            if READY_PREFIX.encode() in self._stdout.read():
                url = f"http://{self.host}:{self._spawned_port}/v1/status/leader"
                with (
                    contextlib.suppress(OSError, urllib.error.URLError),
                    opener.open(url, timeout=2) as answer,
                ):
                    if answer.status == 200:
                        return True
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"the consul emulator was not ready within {self.startup_timeout}s: "
            f"{self.stderr_text().strip()}"
        )


async def _serve(host: str, port: int, ttl_multiplier: float) -> None:
    emulator = ConsulEmulator(ttl_multiplier=ttl_multiplier)
    await emulator.start(host, port)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    print(f"{READY_PREFIX}{emulator.address}", flush=True)
    try:
        await stopping.wait()
    finally:
        await emulator.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.consul_emulator",
        description="An emulator of Consul's HTTP API for tests (not Consul).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8500)
    parser.add_argument(
        "--ttl-multiplier",
        type=float,
        default=1.0,
        help="invalidate TTL sessions at TTL x this (real Consul: up to 2)",
    )
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.host, args.port, args.ttl_multiplier))
    return 0


if __name__ == "__main__":
    sys.exit(main())
