"""The region's own database: the contacts its syncs wrote and the effects of its
bookings. It lives in the region (residency holds for the data too: an EU tenant's
contacts exist only in eu-west's store) and is written only by that region's activities.

SQLite by default (``<data dir>/contacts.db`` and ``<data dir>/bookings.db``, created by
the worker, WAL mode, shared safely by the region's workers on one host); PostgreSQL
when the region's config names a ``postgresql://`` URL (needs the ``postgres`` extra,
psycopg 3). The same SQL runs on both.

Idempotency lives here, inside one transaction with the effect it guards:

- a contact chunk is keyed by ``(sync id, cursor)`` in ``sync_chunks``: a retried chunk
  (a worker killed after the commit, before Temporal heard of it) returns the counts it
  recorded the first time and writes nothing, so counts stay exact;
- a booking effect is keyed by ``(booking id, action)`` in ``booking_effects``: a retried
  charge finds its row and charges nothing; a compensation with nothing to undo leaves a
  tombstone so the step it undoes can no longer land late. Every call, done or not, is
  logged in ``booking_calls`` (so tests can tell "retried" from "applied twice").
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

from regions.contacts import Contact, apply_chunk
from router.errors import StoreError

_CONTACTS_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS contacts (
        tenant TEXT NOT NULL, key TEXT NOT NULL, email TEXT, phone TEXT,
        fields TEXT NOT NULL, updated_at TEXT NOT NULL, PRIMARY KEY (tenant, key))""",
    """CREATE TABLE IF NOT EXISTS sync_chunks (
        sync_id TEXT NOT NULL, cursor BIGINT NOT NULL, next_cursor BIGINT NOT NULL,
        result TEXT NOT NULL, attempt INTEGER NOT NULL, PRIMARY KEY (sync_id, cursor))""",
)
_BOOKINGS_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS booking_effects (
        booking_id TEXT NOT NULL, action TEXT NOT NULL, seq BIGINT NOT NULL,
        tenant TEXT NOT NULL, detail TEXT NOT NULL, PRIMARY KEY (booking_id, action))""",
    """CREATE TABLE IF NOT EXISTS booking_calls (
        seq BIGINT NOT NULL, booking_id TEXT NOT NULL, action TEXT NOT NULL,
        attempt INTEGER NOT NULL, outcome TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS booking_tombstones (
        booking_id TEXT NOT NULL, action TEXT NOT NULL, PRIMARY KEY (booking_id, action))""",
    """CREATE TABLE IF NOT EXISTS reservations (
        booking_id TEXT PRIMARY KEY, property_id TEXT NOT NULL, check_in TEXT NOT NULL,
        check_out TEXT NOT NULL, active INTEGER NOT NULL)""",
)


class _Connection(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ...) -> Any: ...
    def executemany(self, sql: str, params: Any) -> Any: ...
    def commit(self) -> None: ...
    def rollback(self) -> None: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class StoreLocation:
    """Where a region's store is: a directory of SQLite files, or a PostgreSQL URL."""

    directory: Path | None = None
    url: str | None = None

    def __post_init__(self) -> None:
        if (self.directory is None) == (self.url is None):
            raise ValueError("a store is a directory or a URL: give one")
        if self.url is not None and not self.url.startswith(("postgresql://", "postgres://")):
            raise ValueError("a store URL must start with postgresql://")

    def __str__(self) -> str:
        if self.url is None:
            return str(self.directory)
        # Never print a password: the user, host, port and database only (no query
        # string either: libpq's parameters may carry one, e.g. sslpassword).
        url = urlsplit(self.url)
        user = f"{url.username}@" if url.username else ""
        host = url.hostname or ""
        port = f":{url.port}" if url.port else ""
        return f"{url.scheme}://{user}{host}{port}{url.path}"


class _Db:
    """One database (a SQLite file or PostgreSQL): short transactions, one connection
    each, ``?`` placeholders on both."""

    def __init__(self, location: StoreLocation, name: str, schema: Sequence[str]) -> None:
        self.location = location
        self.postgres = location.url is not None
        self.path = None if location.directory is None else location.directory / f"{name}.db"
        try:
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.transaction() as db:
                for statement in schema:
                    db.execute(statement)
        except ImportError:
            raise StoreError(
                f"the region's store {location} is PostgreSQL, which needs psycopg 3: "
                'pip install "meridian-router[postgres]"'
            ) from None
        except Exception as exc:  # sqlite3.Error, OSError, psycopg.Error (libpq's words)
            raise StoreError(f"the region's store {location} cannot be opened: {exc}") from None

    def _connect(self) -> _Connection:
        if self.postgres:
            import psycopg  # type: ignore[import-not-found,unused-ignore]

            return cast(_Connection, psycopg.connect(self.location.url or ""))
        assert self.path is not None
        lite = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        lite.execute("PRAGMA journal_mode=WAL")
        lite.execute("PRAGMA synchronous=NORMAL")
        return lite

    @contextmanager
    def transaction(self, lock: str = "") -> Iterator[_Tx]:
        """A write transaction. SQLite: BEGIN IMMEDIATE (one writer at a time, so a
        read-merge-write is never interleaved). PostgreSQL: an advisory lock on
        ``lock`` for the same effect among writers of the same tenant or booking."""
        conn = self._connect()
        try:
            tx = _Tx(conn, self.postgres)
            if self.postgres:
                if lock:
                    tx.execute("SELECT pg_advisory_xact_lock(hashtext(?))", (lock,))
            else:
                conn.execute("BEGIN IMMEDIATE")
            yield tx
            conn.commit() if self.postgres else conn.execute("COMMIT")
        except BaseException:
            conn.rollback() if self.postgres else conn.execute("ROLLBACK")
            raise
        finally:
            conn.close()


class _Tx:
    def __init__(self, conn: _Connection, postgres: bool) -> None:
        self.conn = conn
        self.postgres = postgres

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.postgres else sql

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        cur = self.conn.execute(self._sql(sql), params)
        rows: list[tuple[Any, ...]] = cur.fetchall() if cur.description else []
        return rows

    def executemany(self, sql: str, params: list[tuple[Any, ...]]) -> None:
        if self.postgres:
            with self.conn.cursor() as cur:  # type: ignore[attr-defined]
                cur.executemany(self._sql(sql), params)
        else:
            self.conn.executemany(sql, params)


@dataclass(frozen=True)
class ChunkResult:
    counts: dict[str, int]
    invalid: list[dict[str, Any]]
    # True when this chunk had been applied before (a retry): nothing was written now.
    replayed: bool
    attempt: int


class ContactStore:
    def __init__(self, location: StoreLocation) -> None:
        self.db = _Db(location, "contacts", _CONTACTS_SCHEMA)

    def apply(
        self,
        *,
        sync_id: str,
        tenant: str,
        cursor: int,
        next_cursor: int,
        records: list[tuple[int, Any]],
        version: int,
        default_calling_code: str = "",
        attempt: int = 1,
    ) -> ChunkResult:
        """Apply one chunk of ``sync_id`` exactly once (see the module docstring)."""
        with self.db.transaction(lock=f"contacts/{tenant}") as tx:
            done = tx.execute(
                "SELECT result, attempt FROM sync_chunks WHERE sync_id = ? AND cursor = ?",
                (sync_id, cursor),
            )
            if done:
                first = json.loads(done[0][0])
                counts: dict[str, int] = first["counts"]
                return ChunkResult(counts, first["invalid"], True, int(done[0][1]))
            keys = _keys(records, version, default_calling_code)
            stored = self._load(tx, tenant, keys)
            changed, outcome, invalid = apply_chunk(
                stored, records, version=version, default_calling_code=default_calling_code
            )
            if changed:
                tx.executemany(
                    "INSERT INTO contacts (tenant, key, email, phone, fields, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (tenant, key) DO UPDATE SET "
                    "email = excluded.email, phone = excluded.phone, "
                    "fields = excluded.fields, updated_at = excluded.updated_at",
                    [_row(tenant, c) for c in changed.values()],
                )
            result: dict[str, Any] = {"counts": outcome.as_dict(), "invalid": invalid}
            tx.execute(
                "INSERT INTO sync_chunks (sync_id, cursor, next_cursor, result, attempt) "
                "VALUES (?, ?, ?, ?, ?)",
                (sync_id, cursor, next_cursor, json.dumps(result), attempt),
            )
        return ChunkResult(outcome.as_dict(), invalid, False, attempt)

    @staticmethod
    def _load(tx: _Tx, tenant: str, keys: list[str]) -> dict[str, Contact]:
        out: dict[str, Contact] = {}
        for start in range(0, len(keys), 500):  # SQLite's bound-parameter limit
            batch = keys[start : start + 500]
            marks = ", ".join("?" * len(batch))
            for key, fields, updated in tx.execute(
                f"SELECT key, fields, updated_at FROM contacts "
                f"WHERE tenant = ? AND key IN ({marks})",
                (tenant, *batch),
            ):
                items = tuple(sorted(json.loads(fields).items()))
                out[key] = Contact(key=key, fields=items, updated_at=updated)
        return out

    def contacts(self, tenant: str | None = None) -> list[dict[str, Any]]:
        """Every stored contact (of ``tenant``), ordered by tenant and key."""
        where, params = ("WHERE tenant = ?", (tenant,)) if tenant else ("", ())
        with self.db.transaction() as tx:
            rows = tx.execute(
                f"SELECT tenant, key, fields, updated_at FROM contacts {where} "
                "ORDER BY tenant, key",
                params,
            )
        return [
            {"tenant": t, "key": k, "fields": json.loads(f), "updated_at": u} for t, k, f, u in rows
        ]

    def chunks(self, sync_id: str) -> list[dict[str, Any]]:
        with self.db.transaction() as tx:
            rows = tx.execute(
                "SELECT cursor, next_cursor, result, attempt FROM sync_chunks "
                "WHERE sync_id = ? ORDER BY cursor",
                (sync_id,),
            )
        return [
            {"cursor": c, "next_cursor": n, **json.loads(r), "attempt": a} for c, n, r, a in rows
        ]


def _keys(records: list[tuple[int, Any]], version: int, default_calling_code: str) -> list[str]:
    """The natural keys a chunk touches (invalid records are counted by ``apply_chunk``)."""
    from regions.contacts import InvalidContact, parse

    keys = set()
    for _, record in records:
        if isinstance(record, Mapping):
            with suppress(InvalidContact):
                keys.add(parse(record, version, default_calling_code).key)
    return sorted(keys)


def _row(tenant: str, c: Contact) -> tuple[Any, ...]:
    fields = c.as_dict()
    return (
        tenant,
        c.key,
        fields.get("email"),
        fields.get("phone"),
        json.dumps(fields, sort_keys=True),
        c.updated_at,
    )


class BookingDeclined(Exception):
    """A booking step refused for good (card declined, property taken)."""

    def __init__(self, message: str, *, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class BookingStore:
    def __init__(self, location: StoreLocation) -> None:
        self.db = _Db(location, "bookings", _BOOKINGS_SCHEMA)

    def effect(
        self,
        *,
        booking_id: str,
        tenant: str,
        action: str,
        attempt: int,
        detail: Mapping[str, Any],
        reservation: Mapping[str, str] | None = None,
        undoes: str | None = None,
    ) -> bool:
        """Record ``action`` of ``booking_id`` once; True when it was applied now, False
        when it had been applied before (a retry) or, for a compensation, when there is
        nothing to undo. ``reservation`` also books the property for the dates
        (BookingDeclined if another active booking holds them).

        A compensation (``undoes`` names the step it undoes) of a step that never took
        effect leaves a tombstone instead: that step, arriving late (an attempt still in
        flight when the saga gave up), is then refused rather than applied after its
        compensation ran."""
        with self.db.transaction(lock=f"booking/{booking_id}") as tx:
            seq = _next_seq(tx, "booking_calls")

            def log(outcome: str) -> None:
                tx.execute(
                    "INSERT INTO booking_calls VALUES (?, ?, ?, ?, ?)",
                    (seq, booking_id, action, attempt, outcome),
                )

            if _has(tx, "booking_effects", booking_id, action):
                log("already-done")
                return False
            if undoes is not None and not _has(tx, "booking_effects", booking_id, undoes):
                tx.execute(
                    "INSERT INTO booking_tombstones VALUES (?, ?) "
                    "ON CONFLICT (booking_id, action) DO NOTHING",
                    (booking_id, undoes),
                )
                log("nothing-to-undo")
                return False
            if undoes is None and _has(tx, "booking_tombstones", booking_id, action):
                # Rolled back with the transaction: the caller logs the refusal.
                raise BookingDeclined(
                    f"{action} of {booking_id} arrived after its compensation",
                    kind="AlreadyCompensated",
                )
            if reservation is not None:
                self._reserve(tx, booking_id, reservation)
            if undoes == "reserve":
                tx.execute("UPDATE reservations SET active = 0 WHERE booking_id = ?", (booking_id,))
            tx.execute(
                "INSERT INTO booking_effects VALUES (?, ?, ?, ?, ?)",
                (
                    booking_id,
                    action,
                    _next_seq(tx, "booking_effects"),
                    tenant,
                    json.dumps(detail, sort_keys=True),
                ),
            )
            log("applied")
        return True

    @staticmethod
    def _reserve(tx: _Tx, booking_id: str, r: Mapping[str, str]) -> None:
        taken = tx.execute(
            "SELECT booking_id FROM reservations WHERE property_id = ? AND active = 1 "
            "AND booking_id != ? AND check_in < ? AND ? < check_out",
            (r["property_id"], booking_id, r["check_out"], r["check_in"]),
        )
        if taken:
            raise BookingDeclined(
                f"property {r['property_id']} is already booked for these dates",
                kind="PropertyUnavailable",
            )
        tx.execute(
            "INSERT INTO reservations VALUES (?, ?, ?, ?, 1) ON CONFLICT (booking_id) DO UPDATE "
            "SET active = 1",
            (booking_id, r["property_id"], r["check_in"], r["check_out"]),
        )

    def log_call(self, *, booking_id: str, action: str, attempt: int, outcome: str) -> None:
        """A call that applied nothing (an injected failure, a decline)."""
        with self.db.transaction(lock=f"booking/{booking_id}") as tx:
            tx.execute(
                "INSERT INTO booking_calls VALUES (?, ?, ?, ?, ?)",
                (_next_seq(tx, "booking_calls"), booking_id, action, attempt, outcome),
            )

    def effects(self, booking_id: str) -> list[str]:
        """The actions applied for ``booking_id``, in the order they happened."""
        with self.db.transaction() as tx:
            rows = tx.execute(
                "SELECT action FROM booking_effects WHERE booking_id = ? ORDER BY seq",
                (booking_id,),
            )
        return [r[0] for r in rows]

    def calls(self, booking_id: str) -> list[tuple[str, int, str]]:
        with self.db.transaction() as tx:
            rows = tx.execute(
                "SELECT action, attempt, outcome FROM booking_calls WHERE booking_id = ? "
                "ORDER BY seq",
                (booking_id,),
            )
        return [(a, int(n), o) for a, n, o in rows]

    def reservation_active(self, booking_id: str) -> bool | None:
        with self.db.transaction() as tx:
            rows = tx.execute("SELECT active FROM reservations WHERE booking_id = ?", (booking_id,))
        return None if not rows else bool(rows[0][0])


def _has(tx: _Tx, table: str, booking_id: str, action: str) -> bool:
    return bool(
        tx.execute(
            f"SELECT 1 FROM {table} WHERE booking_id = ? AND action = ?", (booking_id, action)
        )
    )


def _next_seq(tx: _Tx, table: str) -> int:
    rows = tx.execute(f"SELECT COALESCE(MAX(seq), 0) + 1 FROM {table}")
    return int(rows[0][0])
