"""The reference workloads' parts without a server: contact normalisation and merging,
chunked sources, and the region's store (a real SQLite file per test)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from regions import sources
from regions.contacts import InvalidContact, apply_chunk, merge, normalise_phone, parse
from regions.store import BookingDeclined, BookingStore, ContactStore, StoreLocation
from router.cli import main as cli_main
from router.errors import StoreError
from tests.helpers import default_doc


@pytest.mark.parametrize(
    ("raw", "version", "code", "expected"),
    [
        ("+49 151 2345 6789", 1, "", "+4915123456789"),
        ("0049-151-2345-6789", 1, "", "+4915123456789"),
        ("(+1) 415.555.0100", 1, "", "+14155550100"),
        ("0151 2345 6789", 2, "49", "+4915123456789"),
        ("+44 20 7946 0958", 2, "49", "+442079460958"),
    ],
    ids=["spaces", "00-prefix", "punctuation", "v2-national", "v2-already-e164"],
)
def test_phone_normalisation(raw: str, version: int, code: str, expected: str) -> None:
    assert normalise_phone(raw, version, code) == expected


@pytest.mark.parametrize(
    ("raw", "version", "code"),
    [("0151 2345 6789", 1, "49"), ("0151 2345 6789", 2, ""), ("+12", 1, ""), ("abc", 2, "49")],
    ids=["v1-national", "v2-without-code", "too-short", "letters"],
)
def test_phone_rejected(raw: str, version: int, code: str) -> None:
    with pytest.raises(InvalidContact, match="phone"):
        normalise_phone(raw, version, code)


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({"name": "x"}, "no email and no phone"),
        ({"email": "not-an-email"}, "email: not an email address"),
        ({"email": "a@b.io", "updated_at": "yesterday"}, "updated_at"),
        ({"phone": "12"}, "phone: not an E.164 number"),
        ({"email": "a@example.com", "tags": ["x"]}, "tags: not a string"),
        ("just a string", "not an object"),
    ],
    ids=["no-key", "bad-email", "bad-time", "bad-phone-only", "nested", "not-object"],
)
def test_invalid_records_say_why_without_the_value(record: Any, reason: str) -> None:
    with pytest.raises(InvalidContact, match=reason) as info:
        parse(record)
    assert "not-an-email" not in str(info.value)


def test_key_is_normalised_email_else_phone_and_bad_phone_is_dropped() -> None:
    c = parse({"email": " Ana@Example.COM ", "phone": "bogus", "name": "Ana"})
    assert c.key == "email:ana@example.com" and "phone" not in c.as_dict()
    assert parse({"phone": "+49 151 2345 6789"}).key == "phone:+4915123456789"


def test_newest_updated_at_wins_and_fields_merge() -> None:
    old = parse({"email": "a@x.io", "name": "Old", "city": "Lyon", "updated_at": "2026-01-01"})
    new = parse({"email": "a@x.io", "name": "New", "company": "Acme", "updated_at": "2026-02-01"})
    for merged in (merge(old, new), merge(new, old)):
        assert merged.as_dict() == {
            "email": "a@x.io", "name": "New", "city": "Lyon", "company": "Acme"
        }  # fmt: skip
        assert merged.updated_at == "2026-02-01T00:00:00.000000Z"


RECORDS = [
    {"email": "a@x.io", "name": "A", "updated_at": "2026-01-01T00:00:00Z"},
    {"email": "A@X.io", "name": "A2", "updated_at": "2026-02-01T00:00:00Z"},  # newer: update
    {"email": "a@x.io", "name": "A0", "updated_at": "2025-01-01T00:00:00Z"},  # older: dup
    {"phone": "+33 6 12 34 56 78"},
    {"name": "no key"},
    {"email": "b@x.io"},
    {"email": "b@x.io"},  # exact duplicate
]


@pytest.mark.parametrize("size", [1, 2, 3, 7], ids=lambda n: f"chunk-{n}")
def test_counts_do_not_depend_on_the_chunk_size(size: int) -> None:
    stored: dict[str, Any] = {}
    totals = dict.fromkeys(["read", "inserted", "updated", "duplicate", "invalid"], 0)
    for start in range(0, len(RECORDS), size):
        chunk = list(enumerate(RECORDS))[start : start + size]
        changed, outcome, _ = apply_chunk(stored, chunk)
        stored.update(changed)
        for k, v in outcome.as_dict().items():
            totals[k] += v
    assert totals == {"read": 7, "inserted": 3, "updated": 1, "duplicate": 2, "invalid": 1}
    assert stored["email:a@x.io"].as_dict()["name"] == "A2"


def _jsonl(path: Path, records: list[Any]) -> Path:
    lines = [json.dumps(r) if not isinstance(r, str) else r for r in records]
    path.write_text("\n".join(lines) + "\n\n")
    return path


def _read_all(spec: dict[str, Any], roots: list[Path], size: int) -> list[tuple[int, Any]]:
    out, cursor = [], 0
    while True:
        chunk = sources.read(spec, roots, cursor, size)
        out += chunk.records
        cursor = chunk.next_cursor
        if chunk.done:
            return out


@pytest.mark.parametrize("size", [1, 2, 5, 100], ids=lambda n: f"chunk-{n}")
def test_jsonl_and_csv_read_the_same_records_at_any_chunk_size(tmp_path: Path, size: int) -> None:
    _jsonl(tmp_path / "c.jsonl", [{"email": "a@x.io", "name": "A"}, "{broken", {"email": "b"}])
    (tmp_path / "c.csv").write_text('email,name\na@x.io,A\n"q@x.io","Multi\nline"\n\nb,B\n')
    jsonl = _read_all({"path": "c.jsonl"}, [tmp_path], size)
    assert [r for _, r in jsonl][0::2] == [{"email": "a@x.io", "name": "A"}, {"email": "b"}]
    assert isinstance(jsonl[1][1], InvalidContact)
    assert sources.count({"path": "c.jsonl"}, [tmp_path]) == 3
    csv_rows = [r for _, r in _read_all({"path": "c.csv"}, [tmp_path], size)]
    assert csv_rows == [
        {"email": "a@x.io", "name": "A"},
        {"email": "q@x.io", "name": "Multi\nline"},
        {"email": "b", "name": "B"},
    ]
    assert sources.count({"path": "c.csv"}, [tmp_path]) == 3


def test_sources_outside_the_roots_are_refused(tmp_path: Path) -> None:
    (tmp_path / "inbox").mkdir()
    secret = _jsonl(tmp_path / "secret.jsonl", [{"email": "a@x.io"}])
    for path in ("../secret.jsonl", str(secret), "missing.jsonl"):
        with pytest.raises(sources.InvalidSource, match="not a file below the source roots"):
            sources.read({"path": path}, [tmp_path / "inbox"], 0, 10)
    with pytest.raises(sources.InvalidSource, match="no --source-root"):
        sources.read({"path": "secret.jsonl"}, [], 0, 10)


def _sync(store: ContactStore, sync_id: str, records: list[Any], size: int) -> dict[str, int]:
    totals: dict[str, int] = {}
    for start in range(0, len(records), size):
        chunk = list(enumerate(records))[start : start + size]
        result = store.apply(
            sync_id=sync_id, tenant="acme", cursor=start, next_cursor=start + len(chunk),
            records=chunk, version=1,
        )  # fmt: skip
        for k, v in result.counts.items():
            totals[k] = totals.get(k, 0) + v
    return totals


def test_store_applies_a_chunk_once_and_a_second_sync_changes_nothing(tmp_path: Path) -> None:
    store = ContactStore(StoreLocation(directory=tmp_path))
    first = _sync(store, "s1", RECORDS, 3)
    rows = store.contacts("acme")
    # A retried chunk (same sync, same cursor) returns its first counts, writes nothing.
    again = store.apply(
        sync_id="s1", tenant="acme", cursor=0, next_cursor=3,
        records=list(enumerate(RECORDS))[:3], version=1, attempt=2,
    )  # fmt: skip
    assert again.replayed and again.counts["inserted"] == 1 and again.attempt == 1
    assert _sync(store, "s1", RECORDS, 3) == first  # a replay of the whole sync
    second = _sync(store, "s2", RECORDS, 3)  # the same sync run again
    assert second == {"read": 7, "inserted": 0, "updated": 0, "duplicate": 6, "invalid": 1}
    assert store.contacts("acme") == rows and len(rows) == 3
    assert store.contacts("other") == []


def test_booking_effects_are_idempotent_and_reservations_exclusive(tmp_path: Path) -> None:
    store = BookingStore(StoreLocation(directory=tmp_path))
    stay = {"property_id": "p1", "check_in": "2026-12-01", "check_out": "2026-12-04"}
    common: dict[str, Any] = {"tenant": "acme", "detail": {"amount_cents": 1}}
    assert store.effect(booking_id="b1", action="charge", attempt=1, **common)
    assert not store.effect(booking_id="b1", action="charge", attempt=2, **common)
    assert store.effect(booking_id="b1", action="reserve", attempt=1, reservation=stay, **common)
    overlapping = {**stay, "check_in": "2026-12-03", "check_out": "2026-12-05"}
    with pytest.raises(BookingDeclined, match="already booked"):
        store.effect(booking_id="b2", action="reserve", attempt=1, reservation=overlapping,
                     **common)  # fmt: skip
    store.effect(booking_id="b1", action="cancel_reservation", attempt=1, undoes="reserve",
                 **common)  # fmt: skip
    assert store.reservation_active("b1") is False
    assert store.effect(booking_id="b2", action="reserve", attempt=2, reservation=overlapping,
                        **common)  # fmt: skip
    assert store.effects("b1") == ["charge", "reserve", "cancel_reservation"]
    assert [c[2] for c in store.calls("b1")] == ["applied", "already-done", "applied", "applied"]


def test_a_store_that_cannot_be_opened_says_where_and_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "taken").write_text("a file where the store's directory should be")
    with pytest.raises(StoreError, match=r"store .*taken cannot be opened: .*File exists"):
        ContactStore(StoreLocation(directory=tmp_path / "taken"))
    # The CLI reading a store says it as an error, not a traceback.
    data = tmp_path / "eu-west"
    (data / "contacts.db").mkdir(parents=True)  # a directory where the database should be
    config = tmp_path / "meridian.yaml"
    config.write_text(yaml.safe_dump(default_doc()))
    code = cli_main(["contacts", "--config", str(config), "--region", "eu-west",
                     "--data-dir", str(data)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "cannot be opened: unable to open database file" in err, err


def test_store_location_never_prints_a_password() -> None:
    loc = StoreLocation(url="postgresql://meridian:s3cret@db.eu:5432/region")
    assert "s3cret" not in str(loc) and "s3cret" not in repr(loc.directory)
    assert str(loc) == "postgresql://meridian@db.eu:5432/region"
    keyed = StoreLocation(url="postgresql://eu@db.eu/region?sslpassword=s3cret&sslmode=require")
    assert str(keyed) == "postgresql://eu@db.eu/region"
    with pytest.raises(ValueError, match="postgresql"):
        StoreLocation(url="mysql://x")


def test_a_compensation_with_nothing_to_undo_stops_a_late_step(tmp_path: Path) -> None:
    store = BookingStore(StoreLocation(directory=tmp_path))
    common: dict[str, Any] = {"booking_id": "b9", "tenant": "acme", "detail": {}}
    assert not store.effect(action="refund", attempt=1, undoes="charge", **common)
    with pytest.raises(BookingDeclined, match="after its compensation") as info:
        store.effect(action="charge", attempt=2, **common)
    assert info.value.kind == "AlreadyCompensated"
    assert store.effects("b9") == []
    assert [c[2] for c in store.calls("b9")] == ["nothing-to-undo"]
