"""Contact records as the contact sync sees them: validation, the natural key,
normalisation and the merge rule. Pure functions of their inputs (no I/O, no clock), so
the activities, the store and the tests share one definition of "the same contact".

- **Natural key**: the normalised email (``email:jane@example.com``), else the E.164
  phone (``phone:+4915123456789``). A record with neither is invalid.
- **Normalisation**: emails are trimmed and lower-cased and must look like
  ``local@domain.tld``; phones lose spaces, dashes, dots and brackets, ``00`` becomes
  ``+`` and the result must be E.164 (``+`` then 8-15 digits). Version 2 (the
  ``contact-sync-v2-phone`` patch of ``ContactSyncWorkflow``) also accepts national
  numbers (a leading trunk ``0``) when the sync names a ``default_calling_code``.
- **Merge**: the record with the newer source ``updated_at`` wins field by field; the
  older one only fills fields the newer one lacks. Equal timestamps: the later record in
  source order wins. ``updated_at`` of the result is the newer of the two.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

# Fields with a meaning of their own; every other string field is kept as an attribute.
EMAIL, PHONE, UPDATED_AT = "email", "phone", "updated_at"
_EMAIL_RE = re.compile(r"[a-z0-9!#$%&'*+/=?^_`{|}~.-]+@[a-z0-9-]+(\.[a-z0-9-]+)*\.[a-z]{2,}")
_PHONE_JUNK = re.compile(r"[\s().\-/]")
_E164 = re.compile(r"\+[1-9][0-9]{7,14}")
_NATIONAL = re.compile(r"0[1-9][0-9]{5,13}")
_CALLING_CODE = re.compile(r"[1-9][0-9]{0,2}")
_MAX_FIELD = 1000


class InvalidContact(ValueError):
    """A record that can never be stored as it is; retrying does not help. The message
    names the field and the problem, never the value (it is personal data)."""


@dataclass(frozen=True, slots=True)
class Contact:
    key: str
    # Every field of the contact, normalised, sorted by name (email and phone included).
    fields: tuple[tuple[str, str], ...]
    # ISO 8601 UTC ("...Z"), or "" when the source did not say.
    updated_at: str

    def as_dict(self) -> dict[str, str]:
        return dict(self.fields)


def normalise_email(raw: str) -> str:
    email = raw.strip().lower()
    if len(email) > 254 or not _EMAIL_RE.fullmatch(email):
        raise InvalidContact("email: not an email address")
    return email


def normalise_phone(raw: str, version: int = 1, default_calling_code: str = "") -> str:
    phone = _PHONE_JUNK.sub("", raw.strip())
    if phone.startswith("00"):
        phone = "+" + phone[2:]
    if (
        version >= 2
        and default_calling_code
        and _CALLING_CODE.fullmatch(default_calling_code)
        and _NATIONAL.fullmatch(phone)
    ):
        phone = f"+{default_calling_code}{phone[1:]}"
    if not _E164.fullmatch(phone):
        raise InvalidContact("phone: not an E.164 number")
    return phone


def normalise_time(raw: Any) -> str:
    """``updated_at`` as ISO 8601 UTC with a ``Z``; "" when absent."""
    if raw in (None, ""):
        return ""
    if not isinstance(raw, str):
        raise InvalidContact("updated_at: not an ISO 8601 time")
    try:
        when = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidContact("updated_at: not an ISO 8601 time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse(record: Mapping[str, Any], version: int = 1, default_calling_code: str = "") -> Contact:
    """A source record as a ``Contact``, or ``InvalidContact`` saying why not.

    An unusable phone next to a valid email is dropped, not fatal: the email is the key.
    """
    if not isinstance(record, Mapping):
        raise InvalidContact("record: not an object")
    fields: dict[str, str] = {}
    for name, value in record.items():
        if name in (UPDATED_AT, EMAIL, PHONE) or value is None or value == "":
            continue
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise InvalidContact(f"{name}: not a string")
        text = str(value).strip()
        if len(text) > _MAX_FIELD:
            raise InvalidContact(f"{name}: longer than {_MAX_FIELD} characters")
        if text:
            fields[str(name)] = text
    raw_email, raw_phone = record.get(EMAIL), record.get(PHONE)
    if raw_email not in (None, ""):
        if not isinstance(raw_email, str):
            raise InvalidContact("email: not a string")
        fields[EMAIL] = normalise_email(raw_email)
    if raw_phone not in (None, ""):
        try:
            fields[PHONE] = normalise_phone(str(raw_phone), version, default_calling_code)
        except InvalidContact:
            if EMAIL not in fields:
                raise
    if EMAIL in fields:
        key = f"email:{fields[EMAIL]}"
    elif PHONE in fields:
        key = f"phone:{fields[PHONE]}"
    else:
        raise InvalidContact("record: no email and no phone (no natural key)")
    updated = normalise_time(record.get(UPDATED_AT))
    return Contact(key=key, fields=tuple(sorted(fields.items())), updated_at=updated)


def merge(existing: Contact | None, incoming: Contact) -> Contact:
    """What the store holds after ``incoming`` arrives on top of ``existing``."""
    if existing is None:
        return incoming
    newer, older = (
        (incoming, existing) if incoming.updated_at >= existing.updated_at else (existing, incoming)
    )
    merged = {**older.as_dict(), **newer.as_dict()}
    return Contact(
        key=existing.key,
        fields=tuple(sorted(merged.items())),
        updated_at=max(existing.updated_at, incoming.updated_at),
    )


@dataclass
class ChunkOutcome:
    """Counts of one chunk: every record read is exactly one of inserted, updated,
    duplicate (changed nothing) or invalid."""

    read: int = 0
    inserted: int = 0
    updated: int = 0
    duplicate: int = 0
    invalid: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "read": self.read,
            "inserted": self.inserted,
            "updated": self.updated,
            "duplicate": self.duplicate,
            "invalid": self.invalid,
        }


def apply_chunk(
    stored: Mapping[str, Contact],
    records: list[tuple[int, Any]],
    *,
    version: int = 1,
    default_calling_code: str = "",
) -> tuple[dict[str, Contact], ChunkOutcome, list[dict[str, Any]]]:
    """Apply ``records`` (``(position in the source, record)``) in order on top of
    ``stored`` (the store's rows for their keys). Returns the rows to write (only those
    that changed), the counts, and the invalid records (position and reason).

    Records are applied one after another, so a key repeated inside the chunk is
    deduplicated exactly as across chunks, and the counts do not depend on the chunk
    size: the first record of a new key is ``inserted``, a later one that changes the
    merged contact ``updated``, one that changes nothing ``duplicate``.
    """
    outcome = ChunkOutcome()
    current: dict[str, Contact] = dict(stored)
    changed: dict[str, Contact] = {}
    invalid: list[dict[str, Any]] = []
    for position, record in records:
        outcome.read += 1
        if isinstance(record, InvalidContact):
            outcome.invalid += 1
            invalid.append({"position": position, "reason": str(record)})
            continue
        try:
            contact = parse(record, version, default_calling_code)
        except InvalidContact as exc:
            outcome.invalid += 1
            invalid.append({"position": position, "reason": str(exc)})
            continue
        before = current.get(contact.key)
        after = merge(before, contact)
        if before is None:
            outcome.inserted += 1
        elif after == before:
            outcome.duplicate += 1
            continue
        else:
            outcome.updated += 1
        current[contact.key] = after
        changed[contact.key] = after
    return changed, outcome, invalid
