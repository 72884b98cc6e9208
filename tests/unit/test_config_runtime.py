"""The config controller: one path for every change (SIGHUP and Consul), an invalid
config rejected whole (audited, last good keeps serving), a transient failure retried
until applied, key rings and their refresh tasks following the regions, codec settings
applied to existing regions, subscribers told in order."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from router.codec import RegionCodec
from router.config.runtime import ConfigController, Outcome, RuntimeConfig
from router.config.sources import ConfigSources, text_layer
from router.errors import ConfigError
from tests.helpers import default_doc, eventually
from tests.unit.seams import Audit, controller, keys_for


async def started(
    tmp_path: Path, doc: dict[str, Any] | None = None, **kw: Any
) -> tuple[ConfigController, Audit, list[str]]:
    audit = Audit()
    ctl = controller(doc or default_doc(), tmp_path / "keys", audit, **kw)
    seen: list[str] = []

    async def subscriber(runtime: RuntimeConfig) -> None:
        seen.append(runtime.config.version)

    ctl.subscribe(subscriber)
    await ctl.start()
    return ctl, audit, seen


def with_doc(doc: dict[str, Any]) -> Any:
    return lambda s: s.with_consul(text_layer(yaml.safe_dump(doc), "consul:test@1"))


async def test_an_invalid_change_is_rejected_whole_and_audited(tmp_path: Path) -> None:
    ctl, audit, seen = await started(tmp_path)
    try:
        before = ctl.config.version
        outcome = await ctl.submit(with_doc({"default_region": "mars", "regions": {}}))
        assert outcome is Outcome.REJECTED
        assert ctl.config.version == before and seen == [before]
        rejected = audit.journal.records("config.change")[-1]
        assert rejected["outcome"] == "rejected" and rejected["previous_version"] == before
        assert any("default_region" in e for e in rejected["errors"])
        assert ctl.last_rejected is not None and "mars" in str(ctl.last_rejected[1])
    finally:
        await ctl.close()


async def test_a_transient_failure_is_retried_until_applied(tmp_path: Path) -> None:
    """The audit log is briefly unwritable when a valid change arrives: the change is not
    mistaken for a rejection, and goes in once the log recovers."""
    ctl, audit, seen = await started(tmp_path, retry_initial=0.01)
    try:
        doc = default_doc()
        doc["tenants"]["initech"] = {"residency_zone": "us"}
        audit.fail = 3
        outcome = await ctl.submit(with_doc({"tenants": doc["tenants"]}))
        assert outcome is Outcome.PENDING and ctl.pending
        assert "initech" not in ctl.config.table.tenants, "nothing half-applied"

        async def applied() -> bool:
            return "initech" in ctl.config.table.tenants

        await eventually(applied, "the change to be applied after the log recovered", 5)
        assert not ctl.pending and ctl.last_rejected is None
        outcomes = [r["outcome"] for r in audit.journal.records("config.change")]
        assert outcomes == ["loaded", "accepted"]
        assert seen[-1] == ctl.config.version
    finally:
        await ctl.close()


async def test_a_region_added_later_gets_keys_and_a_refresh_task(tmp_path: Path) -> None:
    ctl, _, _ = await started(tmp_path, key_refresh_interval=0.02)
    try:
        assert ctl.refreshing() == {"us-east", "eu-west", "ap-southeast"}
        doc = default_doc()
        doc["regions"]["eu-north"] = {
            "zone": "eu",
            "clusters": [{"name": "eu-north-a", "endpoint": "127.0.0.1:7299"}],
        }
        keys = keys_for(tmp_path / "keys", _compiled(doc))
        outcome = await ctl.submit(with_doc({"regions": doc["regions"]}))
        assert outcome is Outcome.APPLIED
        assert "eu-north" in ctl.refreshing(), "a rotation would never reach the new region"
        # A rotation of the new region's ring reaches the router.
        rotated = keys.load("eu-north").rotated()
        keys.save(rotated)

        async def follows() -> bool:
            return ctl.current.key_id("eu-north") == rotated.active

        await eventually(follows, "the rotation to reach the router", 5)
        # And a region removed again loses its task.
        assert await ctl.submit(lambda s: s.with_consul(None)) is Outcome.APPLIED
        assert "eu-north" not in ctl.refreshing()
    finally:
        await ctl.close()


async def test_a_region_whose_keys_are_not_here_yet_waits_for_them(tmp_path: Path) -> None:
    """A valid config naming a region whose key ring this replica does not have yet is
    not rejected (the keys may be rolling out): it waits, fail closed, and goes in once
    the ring appears, audited as accepted once."""
    ctl, audit, _ = await started(tmp_path, retry_initial=0.02, retry_max=0.05)
    try:
        doc = default_doc()
        doc["regions"]["eu-north"] = {
            "zone": "eu",
            "clusters": [{"name": "eu-north-a", "endpoint": "127.0.0.1:7299"}],
        }
        assert await ctl.submit(with_doc({"regions": doc["regions"]})) is Outcome.PENDING
        assert "eu-north" not in ctl.config.table.regions
        assert "eu-north" in ctl.pending_reason and ctl.last_rejected is None
        keys_for(tmp_path / "keys", _compiled(doc))

        async def applied() -> bool:
            return "eu-north" in ctl.config.table.regions

        await eventually(applied, "the change once its keys exist", 5)
        assert ctl.pending_reason == ""
        outcomes = [r["outcome"] for r in audit.journal.records("config.change")]
        assert outcomes == ["loaded", "accepted"]
    finally:
        await ctl.close()


async def test_a_rejected_change_does_not_drop_a_pending_one(tmp_path: Path) -> None:
    ctl, audit, _ = await started(tmp_path, retry_initial=0.02)
    try:
        doc = default_doc()
        doc["tenants"]["initech"] = {"residency_zone": "us"}
        audit.fail = 2
        assert await ctl.submit(with_doc({"tenants": doc["tenants"]})) is Outcome.PENDING
        bad = lambda s: s.with_consul(text_layer("default_region: mars", "consul:x@2"))  # noqa: E731
        assert await ctl.submit(bad) is Outcome.REJECTED

        async def applied() -> bool:
            return "initech" in ctl.config.table.tenants

        await eventually(applied, "the pending change, despite the rejection after it", 5)
    finally:
        await ctl.close()


def consul_doc(text: str, index: int) -> Any:
    return lambda s: s.with_consul(text_layer(text, f"consul:meridian/config@{index}"))


async def test_a_later_change_supersedes_the_last_rejection_in_status(tmp_path: Path) -> None:
    """Status showed a rejected Consul document long after a good one replaced it; the
    audit log is the history, status says what is true now."""
    ctl, audit, _ = await started(tmp_path)
    try:
        bad = consul_doc("default_region: nowhere", 26)
        assert await ctl.submit(bad, source="consul") is Outcome.REJECTED
        assert ctl.last_rejected is not None
        assert ctl.last_rejected[1].source.endswith("consul:meridian/config@26")
        # Nothing new from Consul: a SIGHUP with the files unchanged does not hide it.
        assert await ctl.submit(lambda s: s, source="file") is Outcome.UNCHANGED
        assert ctl.last_rejected is not None, "Consul still holds the rejected document"
        good = consul_doc("tenants: {initech: {residency_zone: us}}", 27)
        assert await ctl.submit(good, source="consul") is Outcome.APPLIED
        assert ctl.last_rejected is None, "a later change was applied"
        outcomes = [r["outcome"] for r in audit.journal.records("config.change")]
        assert outcomes == ["loaded", "rejected", "accepted"], "the history is kept"
    finally:
        await ctl.close()


async def test_a_reverted_invalid_edit_clears_the_rejection(tmp_path: Path) -> None:
    """The same origin brings back the live config (the bad edit undone): nothing is
    rejected any more, though nothing new was applied."""
    ctl, _, _ = await started(tmp_path)
    try:
        bad = consul_doc("default_region: nowhere", 26)
        assert await ctl.submit(bad, source="consul") is Outcome.REJECTED
        same = consul_doc("", 27)  # the live config again
        assert await ctl.submit(same, source="consul") is Outcome.UNCHANGED
        assert ctl.last_rejected is None
    finally:
        await ctl.close()


async def test_a_retried_older_change_does_not_hide_a_newer_rejection(tmp_path: Path) -> None:
    ctl, audit, _ = await started(tmp_path, retry_initial=0.02)
    try:
        doc = default_doc()
        doc["tenants"]["initech"] = {"residency_zone": "us"}
        audit.fail = 2
        assert await ctl.submit(with_doc({"tenants": doc["tenants"]})) is Outcome.PENDING
        bad = consul_doc("default_region: nowhere", 26)
        assert await ctl.submit(bad, source="consul") is Outcome.REJECTED

        async def applied() -> bool:
            return "initech" in ctl.config.table.tenants

        await eventually(applied, "the pending change", 5)
        assert ctl.last_rejected is not None, "submitted before the rejection"
    finally:
        await ctl.close()


async def test_subscribers_are_told_in_order_and_a_failing_one_is_retried(
    tmp_path: Path,
) -> None:
    audit = Audit()
    ctl = controller(default_doc(), tmp_path / "keys", audit, retry_initial=0.02)
    calls: list[str] = []
    failures = [1]

    async def first(runtime: RuntimeConfig) -> None:
        calls.append("first")

    async def second(runtime: RuntimeConfig) -> None:
        calls.append("second")
        if len(calls) > 2 and failures[0]:
            failures[0] -= 1
            raise RuntimeError("a subscriber's bug")

    ctl.subscribe(first)
    ctl.subscribe(second)
    await ctl.start()
    try:
        assert calls == ["first", "second"]
        outcome = await ctl.submit(with_doc({"health": {"interval_ms": 250}}))
        assert outcome is Outcome.PENDING and "RuntimeError" in ctl.pending_reason

        async def applied() -> bool:
            return ctl.config.health.interval == 0.25

        await eventually(applied, "the change after the subscriber recovered", 5)
        assert calls[2:] == ["first", "second", "first", "second"]
        outcomes = [r["outcome"] for r in audit.journal.records("config.change")]
        assert outcomes == ["loaded", "accepted"], "a retry is not a second acceptance"
    finally:
        await ctl.close()


async def test_codec_settings_reach_existing_regions(tmp_path: Path) -> None:
    ctl, _, _ = await started(tmp_path)
    try:
        before = ctl.current.regions["eu-west"]
        assert await ctl.submit(with_doc({"codec": {"compression": True}})) is Outcome.APPLIED
        after = ctl.current.regions["eu-west"]
        codec = after.converter.payload_codec
        assert isinstance(codec, RegionCodec) and codec.compression
        assert after.converter is not before.converter, "clients must be rebuilt on it"
        assert after.holder is before.holder, "the same ring, still refreshed"
    finally:
        await ctl.close()


async def test_reload_reads_the_files_again(tmp_path: Path) -> None:
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(default_doc()))
    sources = ConfigSources.read([path], use_env=False)
    first = sources.resolve()
    audit = Audit()
    ctl = ConfigController(sources, first, keys=keys_for(tmp_path / "keys", first), audit=audit)
    await ctl.start()
    try:
        doc = default_doc()
        doc["health"]["interval_ms"] = 250
        path.write_text(yaml.safe_dump(doc))
        assert await ctl.reload() is Outcome.APPLIED
        assert ctl.config.health.interval == 0.25
        assert await ctl.reload() is Outcome.UNCHANGED
        path.write_text("zones: [")
        assert await ctl.reload() is Outcome.REJECTED
        assert ctl.config.health.interval == 0.25
    finally:
        await ctl.close()


def test_invalid_files_are_fatal_at_start_and_a_bad_consul_document_is_left_out() -> None:
    bad = ConfigSources(paths=(), files=(text_layer("zones: {}", "file:x"),))
    with pytest.raises(ConfigError):
        bad.initial()
    good = ConfigSources(paths=(), files=(text_layer(yaml.safe_dump(default_doc()), "f"),))
    config, used, problems = good.with_consul(
        text_layer(yaml.safe_dump({"default_region": "mars"}), "consul:c@1")
    ).initial()
    assert used.consul is None and len(problems) == 1 and config.version


def _compiled(doc: dict[str, Any]) -> Any:
    from router.config import compile_config

    return compile_config(copy.deepcopy(doc))
