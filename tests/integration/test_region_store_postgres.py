"""A region whose store is PostgreSQL (``regions.<r>.store``): the same store code and a
real worker against a throwaway PostgreSQL server (Debian's ``postgresql`` package,
started here as the ``postgres`` user on a free loopback port, stopped by its data
directory). Skipped where PostgreSQL or root is missing; SQLite is the default and is
tested everywhere else."""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from benchmarks.fleet import Fleet, RegionWorker, free_port
from meridian import MeridianClient
from regions.store import BookingStore, ContactStore, StoreLocation

pytestmark = pytest.mark.integration

BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
SECRET = "pg-test-secret"


def _as_postgres(*argv: str) -> None:
    subprocess.run(["runuser", "-u", "postgres", "--", *argv], check=True, capture_output=True)


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    if not BIN or os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("needs Debian's postgresql package and root (scripts/test installs it)")
    pytest.importorskip("psycopg")
    data = Path(tempfile.mkdtemp(prefix="meridian-pg-"))
    shutil.chown(data, "postgres")
    port = free_port()
    initdb, pg_ctl = f"{BIN[-1]}/initdb", f"{BIN[-1]}/pg_ctl"
    # Password authentication, so a worker that connects proves the password reached it
    # (through PGPASSWORD: config refuses a password in the URL).
    (data / "pw").write_text(SECRET)
    shutil.chown(data / "pw", "postgres")
    _as_postgres(initdb, "-D", str(data / "db"), "-A", "scram-sha-256", "-U", "meridian",
                 f"--pwfile={data / 'pw'}", "--no-sync")  # fmt: skip
    options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off"
    _as_postgres(pg_ctl, "-D", str(data / "db"), "-o", options, "-l", str(data / "log"), "-w",
                 "start")  # fmt: skip
    try:
        yield f"postgresql://meridian:{SECRET}@127.0.0.1:{port}/postgres"
    finally:
        _as_postgres(pg_ctl, "-D", str(data / "db"), "-m", "immediate", "-w", "stop")
        shutil.rmtree(data, ignore_errors=True)


def test_store_code_runs_on_postgres(postgres: str) -> None:
    location = StoreLocation(url=postgres)
    assert SECRET not in str(location)
    contacts = ContactStore(location)
    records = list(enumerate([{"email": "a@x.io"}, {"email": "A@x.io", "name": "A"}, {}]))
    first = contacts.apply(sync_id="pg-1", tenant="pg", cursor=0, next_cursor=3,
                           records=records, version=1)  # fmt: skip
    assert first.counts == {"read": 3, "inserted": 1, "updated": 1, "duplicate": 0, "invalid": 1}
    again = contacts.apply(sync_id="pg-1", tenant="pg", cursor=0, next_cursor=3,
                           records=records, version=1, attempt=2)  # fmt: skip
    assert again.replayed and again.counts == first.counts
    assert [r["key"] for r in contacts.contacts("pg")] == ["email:a@x.io"]
    bookings = BookingStore(location)
    common = {"booking_id": "pg-b1", "tenant": "pg", "detail": {}}
    assert bookings.effect(action="charge", attempt=1, **common)  # type: ignore[arg-type]
    assert not bookings.effect(action="charge", attempt=2, **common)  # type: ignore[arg-type]
    assert bookings.effects("pg-b1") == ["charge"]


async def test_a_worker_writes_its_regions_postgres_store(
    postgres: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = Fleet.create(tmp_path / "fleet", {"eu-west": ("eu", 1)}, {"eu": ["DE"]})
    worker = RegionWorker("eu-west", "eu-west-a", fleet.config_path, fleet.keys_dir,
                          tmp_path / "unused-sqlite")  # fmt: skip
    try:
        await fleet.start_clusters()
        doc = yaml.safe_load(fleet.config_path.read_text())
        doc["regions"]["eu-west"]["store"] = postgres.replace(f":{SECRET}@", "@")
        fleet.config_path.write_text(yaml.safe_dump(doc))
        # Without the password the worker stops at once, saying where and why.
        monkeypatch.delenv("PGPASSWORD", raising=False)
        bare = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "router.cli", "worker", "--config", str(fleet.config_path),
             "--keys-dir", str(fleet.keys_dir), "--region", "eu-west", "--cluster", "eu-west-a"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert bare.returncode == 1, bare.stderr
        assert "store postgresql://meridian@127.0.0.1" in bare.stderr
        assert "no password supplied" in bare.stderr and "Traceback" not in bare.stderr
        monkeypatch.setenv("PGPASSWORD", SECRET)  # the worker's (libpq reads it)
        router = fleet.replica("router")
        router.start(fleet.config_path, fleet.keys_dir, [])
        await router.wait_serving()
        worker.start()
        cluster = fleet.cluster("eu-west-a")
        await worker.wait_polling(cluster.endpoint, "eu-west", "eu-west-ContactSyncWorkflow-queue")
        async with await MeridianClient.connect(router.address) as client:
            handle = await client.start_workflow(
                "ContactSyncWorkflow",
                {"tenant": "pg-e2e", "chunk_size": 3,
                 "source": {"records": [{"email": f"{i}@x.io"} for i in range(7)]}},
                tenant="pg-e2e", user_country="DE", data_class="pii",
            )  # fmt: skip
            result = await handle.result(timeout=60)
    finally:
        worker.stop()
        fleet.stop()
    assert result["inserted"] == 7
    assert len(ContactStore(StoreLocation(url=postgres)).contacts("pg-e2e")) == 7
    assert not (tmp_path / "unused-sqlite").exists(), "no SQLite store when PostgreSQL is set"
    assert SECRET not in worker.log_path.read_text()
