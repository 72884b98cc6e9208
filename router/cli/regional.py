"""Reading a region's own store, on that region's side: `meridian contacts` (what the
contact syncs wrote) and `meridian bookings` (the effects of a booking saga).

They read the database the region's workers write (``regions.<r>.store``, else SQLite
under ``--data-dir``, default ``$MERIDIAN_HOME/regions/<region>``), so they show where
the data really is: an EU tenant's contacts are in eu-west's store and in no other.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from router.cli.common import config_args, render_table
from router.errors import MeridianError


def region_store(config: Any, region: str, data_dir: str | None, home: Path) -> Any:
    """The region's database: ``regions.<r>.store`` (PostgreSQL) if configured, else
    SQLite files in ``--data-dir`` (default ``$MERIDIAN_HOME/regions/<region>``)."""
    from regions.store import StoreLocation

    url = config.document.regions[region].store
    if url:
        return StoreLocation(url=url)
    return StoreLocation(
        directory=Path(data_dir).resolve() if data_dir else home / "regions" / region
    )


def _location(args: argparse.Namespace) -> Any:
    from router.config.load import load
    from router.paths import meridian_home

    config = load(args.config)
    if args.region not in config.table.regions:
        known = ", ".join(config.table.regions)
        raise MeridianError(f"--region: unknown region {args.region!r} (known: {known})")
    location = region_store(config, args.region, args.data_dir, meridian_home())
    if location.directory is not None and not location.directory.is_dir():
        raise MeridianError(f"region {args.region} has no store at {location.directory} yet")
    return location


def cmd_contacts(args: argparse.Namespace) -> int:
    from regions.store import ContactStore

    rows = ContactStore(_location(args)).contacts(args.tenant)
    if args.json:
        print(json.dumps({"region": args.region, "count": len(rows), "contacts": rows}, indent=2))
        return 0
    print(
        f"{len(rows)} contacts in {args.region}'s store"
        + (f" for {args.tenant}" if args.tenant else "")
    )
    table = [
        (r["tenant"], r["key"], r["fields"].get("name", ""), r["fields"].get("phone", ""),
         r["updated_at"])
        for r in rows[: args.limit]
    ]  # fmt: skip
    if table:
        print(render_table(["tenant", "key", "name", "phone", "updated_at"], table))
    if len(rows) > args.limit:
        print(f"... {len(rows) - args.limit} more (--limit, --json)")
    return 0


def cmd_bookings(args: argparse.Namespace) -> int:
    from regions.store import BookingStore

    store = BookingStore(_location(args))
    effects, calls = store.effects(args.booking_id), store.calls(args.booking_id)
    if args.json:
        out = {
            "region": args.region,
            "booking_id": args.booking_id,
            "effects": effects,
            "calls": [{"action": a, "attempt": n, "outcome": o} for a, n, o in calls],
        }
        print(json.dumps(out, indent=2))
        return 0
    print(f"effects of {args.booking_id} in {args.region}'s store, in order: "
          f"{', '.join(effects) or 'none'}")  # fmt: skip
    print(render_table(["action", "attempt", "outcome"], calls))
    return 0


def add_parsers(sub: Any) -> None:
    def region_args(sp: argparse.ArgumentParser) -> None:
        config_args(sp)
        sp.add_argument("--region", required=True, help="the region whose store to read")
        sp.add_argument(
            "--data-dir", help="its SQLite store (default: $MERIDIAN_HOME/regions/<region>)"
        )
        sp.add_argument("--json", action="store_true", help="print JSON for tools")

    contacts = sub.add_parser("contacts", help="the contacts in a region's own store")
    region_args(contacts)
    contacts.add_argument("--tenant", help="only this tenant's contacts")
    contacts.add_argument("--limit", type=int, default=20, help="rows in the table (default 20)")
    contacts.set_defaults(func=cmd_contacts)

    bookings = sub.add_parser("bookings", help="a booking's effects in a region's own store")
    region_args(bookings)
    bookings.add_argument("--booking-id", required=True, help="the booking id")
    bookings.set_defaults(func=cmd_bookings)
