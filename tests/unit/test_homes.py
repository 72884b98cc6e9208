"""Home references (router.homes): a reference opens only for the workflow id and
tenant it was sealed for, under a key the replicas share; keys are never shown."""

from __future__ import annotations

import base64
import os
import threading
from pathlib import Path

import pytest

from router import homes
from router.errors import KeyRingError
from router.homes import Home, HomeRefs

K1, K2 = b"1" * 32, b"2" * 32
HOME = Home("eu-west", "eu-west-a", "eu-west")


def test_a_reference_opens_for_its_workflow_and_tenant_only() -> None:
    refs = HomeRefs((K1,))
    token = refs.seal("wf-1", "acme", HOME)
    assert refs.open(token, "wf-1", "acme") == HOME
    assert refs.open(token, "wf-2", "acme") is None, "another workflow's"
    assert refs.open(token, "wf-1", "globex") is None, "another tenant's"
    assert HomeRefs((K2,)).open(token, "wf-1", "acme") is None, "another deployment's key"


def test_an_altered_or_forged_reference_opens_to_nothing() -> None:
    refs = HomeRefs((K1,))
    token = refs.seal("wf-1", "acme", HOME)
    version, payload, mac = token.split(".")
    moved = base64.urlsafe_b64encode(b"us-east\x1fus-east-a\x1fus-east").rstrip(b"=").decode()
    flipped = mac[:-1] + ("A" if mac[-1] != "A" else "B")
    for bad in (
        f"{version}.{moved}.{mac}",  # points the same seal elsewhere
        f"{version}.{payload}.{flipped}",
        f"h2.{payload}.{mac}",
        f"{version}.{payload}",
        "",
        "h1..",
        "h1.!!!.???",
        "not a reference",
        token + ".x",
    ):
        assert refs.open(bad, "wf-1", "acme") is None, bad


def test_rotation_the_first_key_seals_every_key_opens() -> None:
    old = HomeRefs((K1,)).seal("wf", "acme", HOME)
    rotated = HomeRefs((K2, K1))
    assert rotated.open(old, "wf", "acme") == HOME
    new = rotated.seal("wf", "acme", HOME)
    assert new != old and HomeRefs((K2,)).open(new, "wf", "acme") == HOME


def test_keys_are_never_shown_and_must_be_long_enough() -> None:
    assert "1111" not in repr(HomeRefs((K1,)))
    with pytest.raises(KeyRingError, match="at least 32"):
        HomeRefs((b"short",))
    with pytest.raises(KeyRingError):
        HomeRefs(())


def test_load_creates_the_key_once_0600_and_every_load_shares_it(tmp_path: Path) -> None:
    first = homes.load(tmp_path, environ={})
    path = tmp_path / "home.key"
    assert path.stat().st_mode & 0o777 == 0o600
    token = first.seal("wf", "acme", HOME)
    assert homes.load(tmp_path, environ={}).open(token, "wf", "acme") == HOME


def test_replicas_starting_together_end_with_one_key(tmp_path: Path) -> None:
    loaded: list[HomeRefs] = []
    barrier = threading.Barrier(8)

    def start() -> None:
        barrier.wait()
        loaded.append(homes.load(tmp_path, environ={}))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({r.keys for r in loaded}) == 1
    assert not [p for p in tmp_path.iterdir() if p.name != "home.key"], "no temp files left"


def test_load_from_the_environment_and_clear_errors(tmp_path: Path) -> None:
    k1, k2 = base64.b64encode(K1).decode(), base64.b64encode(K2).decode()
    refs = homes.load(tmp_path, environ={"MERIDIAN_HOME_KEY": f"{k2},{k1}"})
    assert refs.keys == (K2, K1) and not (tmp_path / "home.key").exists()
    with pytest.raises(KeyRingError, match=r"\$MERIDIAN_HOME_KEY: key 1 is not valid base64"):
        homes.load(tmp_path, environ={"MERIDIAN_HOME_KEY": "not base64!"})
    path = tmp_path / "home.key"
    path.write_text(f"# rotated 2026-11\n{k2}\n{k1}\n")
    os.chmod(path, 0o644)
    with pytest.raises(KeyRingError, match="chmod 600"):
        homes.load(tmp_path, environ={})
    os.chmod(path, 0o600)
    assert homes.load(tmp_path, environ={}).keys == (K2, K1)
    path.write_text("# nothing\n")
    with pytest.raises(KeyRingError, match="no home-reference key"):
        homes.load(tmp_path, environ={})
