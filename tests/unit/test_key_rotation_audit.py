"""Key rotations are audit records: the router's ring refresh writes ``key.rotation``
(region, previous and new active key id) before it encrypts with the new key, and keeps
the old ring while the record cannot be written; `meridian keys rotate` records each
rotation in its own chain (`$MERIDIAN_HOME/audit-keys`) before it writes the ring. Key
ids only, never key material."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from router.audit import Receipt, key_rotation_record, verify
from router.audit.query import records
from router.cli import main
from router.codec import FileKeyProvider, KeyProvider, KeyRing, KeyRingHolder, RingChange, new_ring
from tests.helpers import default_doc, eventually
from tests.unit.seams import Audit, controller


def material(provider: FileKeyProvider, region: str) -> list[str]:
    return [base64.b64encode(k.material).decode() for k in provider.load(region).keys.values()]


class WatchingAudit(Audit):
    """Notes which key the router encrypts with at the moment a rotation is audited."""

    holder: KeyRingHolder | None = None
    in_use_when_audited: list[str]

    async def append(self, record: Mapping[str, Any]) -> Receipt | None:
        if record["kind"] == "key.rotation" and self.holder is not None:
            self.in_use_when_audited.append(self.holder.ring.active)
        return await super().append(record)


async def test_the_router_audits_a_rotation_before_it_uses_the_new_key(tmp_path: Path) -> None:
    audit = WatchingAudit()
    audit.in_use_when_audited = []
    ctl = controller(default_doc(), tmp_path / "keys", audit, key_refresh_interval=0.02)
    await ctl.start()
    try:
        provider = FileKeyProvider(tmp_path / "keys")
        old = provider.load("eu-west")
        new = old.rotated()
        holder = audit.holder = ctl.current.regions["eu-west"].holder
        audit.fail = 3  # the log refuses the next three appends
        provider.save(new)

        async def rotated() -> list[dict[str, Any]]:
            return audit.journal.records("key.rotation") if holder.ring.active == new.active else []

        (rec,) = await eventually(rotated, "the rotation, audited, then in use")
        # Four attempts (three refused): each saw the old key still in use.
        assert audit.in_use_when_audited == [old.active] * 4
        assert rec == {
            "kind": "key.rotation", "component": "router", "region": "eu-west",
            "previous_key_id": old.active, "key_id": new.active,
            "key_ids_added": [new.active], "key_ids_removed": [],
        }  # fmt: skip
        text = json.dumps(audit.journal.records())
        assert not any(m in text for m in material(provider, "eu-west"))
    finally:
        await ctl.close()


class Provider(KeyProvider):
    def __init__(self, ring: KeyRing) -> None:
        self.ring = ring

    def load(self, region: str) -> KeyRing:
        return self.ring


def test_a_ring_that_only_loses_a_key_is_a_key_ring_record() -> None:
    ring = new_ring("us-east").rotated()
    old_id = next(k for k in ring.keys if k != ring.active)
    provider = Provider(ring)
    holder = KeyRingHolder(provider, "us-east")
    provider.ring = KeyRing(ring.region, ring.active, {ring.active: ring.keys[ring.active]})
    found = holder.changed()
    assert found is not None
    change = found[1]
    assert change == RingChange("us-east", ring.active, ring.active, (), (old_id,))
    rec = key_rotation_record(change, component="codec-server")
    assert (rec["kind"], rec["key_ids_removed"]) == ("key.ring", [old_id])


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MERIDIAN_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MERIDIAN_AUDIT_KEY", raising=False)
    monkeypatch.delenv("MERIDIAN_KEYS_DIR", raising=False)
    return tmp_path / "home"


def test_keys_rotate_records_each_rotation_in_its_own_chain(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "keys"
    assert main(["keys", "init", "--keys-dir", str(keys)]) == 0
    provider = FileKeyProvider(keys)
    before = {r: provider.load(r).active for r in ("us-east", "eu-west", "ap-southeast")}
    capsys.readouterr()
    assert main(["keys", "rotate", "--region", "eu-west", "--keys-dir", str(keys)]) == 0
    assert "audit seq 1" in capsys.readouterr().out
    assert main(["keys", "rotate", "--all", "--keys-dir", str(keys), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    # Each run ends with its checkpoint's record (seq 2 after the first run's rotation).
    assert [r["audit_seq"] for r in rows] == [3, 4, 5]

    chain = home / "audit-keys"
    # `keys init` made the dev audit key: the tool's chain is HMAC-sealed with it.
    key = base64.b64decode((keys / "audit.key").read_text())
    result = verify([chain], key=key)
    assert result.ok and result.records == 6, result.problem
    recs = [r for r in records([chain]) if r["kind"] == "key.rotation"]
    assert [(r["region"], r["component"]) for r in recs] == [
        ("eu-west", "keys-rotate"), ("us-east", "keys-rotate"), ("eu-west", "keys-rotate"),
        ("ap-southeast", "keys-rotate"),
    ]  # fmt: skip
    first = recs[0]
    assert first["previous_key_id"] == before["eu-west"]
    assert first["key_id"] == recs[2]["previous_key_id"] == first["key_ids_added"][0]
    assert recs[2]["key_id"] == provider.load("eu-west").active
    assert first["os_user"] and first["host"] and first["alg"] == "hmac-sha256"
    text = "".join(f.read_text() for f in chain.glob("audit-*.jsonl"))
    for region in before:
        assert not any(m in text for m in material(provider, region)), "no key material"


def test_keys_rotate_takes_another_audit_dir_and_key(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    FileKeyProvider(keys).save(new_ring("us-east"))
    audit_key = tmp_path / "other.key"
    audit_key.write_text(base64.b64encode(b"o" * 32).decode())
    audit_key.chmod(0o600)
    chain = tmp_path / "elsewhere"
    argv = ["keys", "rotate", "--region", "us-east", "--keys-dir", str(keys),
            "--audit-dir", str(chain), "--audit-key-file", str(audit_key)]  # fmt: skip
    assert main(argv) == 0
    assert verify([chain], key=b"o" * 32).ok
    assert not (home / "audit-keys").exists()
    # No signing key in this keys dir: nothing is signed, and the output says so.
    out = capsys.readouterr().out
    assert f"audit chain {chain}: NOT witnessed: no audit signing key at" in out
    assert "a witnessed `meridian audit verify` of this chain fails as unwitnessed" in out
    assert not (tmp_path / "witness").exists()


def _verify_witnessed(home: Path, keys: Path, chain: Path, witness: Path, *more: str) -> int:
    """The README's auditor command for a tool's chain (with the dev public key)."""
    from router.audit.signing import load_signing_key

    public = home.parent / "audit-signing.pub"
    public.write_text(load_signing_key(keys / "audit-signing.key").public_pem())
    return main(["audit", "verify", str(chain), "--key-file", str(keys / "audit.key"),
                 "--witness", str(witness), "--public-key", str(public), *more])  # fmt: skip


def test_the_keys_rotate_chain_passes_a_witnessed_verify(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """README: every chain is verified with the witness, `audit-keys` too. Each `keys
    rotate` gives its chain an id, signs a checkpoint of what it wrote with
    <keys-dir>/audit-signing.key and publishes it to $MERIDIAN_HOME/witness (meridian
    dev's), then records it; the chain verifies against the witness, without notes."""
    keys = tmp_path / "keys"
    assert main(["keys", "init", "--keys-dir", str(keys)]) == 0
    capsys.readouterr()
    chain, witness = home / "audit-keys", home / "witness"
    for argv in (["--region", "eu-west"], ["--all", "--json"]):
        assert main(["keys", "rotate", *argv, "--keys-dir", str(keys)]) == 0
    printed = capsys.readouterr()
    chain_id = json.loads((chain / "CHAIN").read_text())["chain_id"]
    assert f"audit chain {chain_id} ({chain}): checkpoint seq 1 (key " in printed.out
    assert f"signed and published to dir:{witness}" in printed.out
    assert "checkpoint seq 5 (key " in printed.err, "--json: stdout stays JSON"
    rows = json.loads(printed.out[printed.out.index("[") :])
    assert {r["audit_checkpoint"]["seq"] for r in rows} == {5}
    assert rows[0]["audit_checkpoint"]["witnesses"] == {f"dir:{witness}": "published"}

    assert _verify_witnessed(home, keys, chain, witness) == 0
    text = capsys.readouterr().out
    assert f"chain {chain_id} witnessed up to seq 5 by checkpoint" in text, text
    assert "FAILED" not in text and "not yet witnessed" not in text
    # A record cut from the tool's chain (HEAD too) is caught by its witness.
    files = sorted(chain.glob("audit-*.jsonl"))
    files[-1].unlink()
    (chain / "HEAD").unlink()
    assert _verify_witnessed(home, keys, chain, witness) == 1
    assert "truncated" in capsys.readouterr().out


def test_keys_rotate_says_when_the_witness_fails(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "keys"
    assert main(["keys", "init", "--keys-dir", str(keys)]) == 0
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the witness directory should be")
    capsys.readouterr()
    argv = ["keys", "rotate", "--region", "us-east", "--keys-dir", str(keys),
            "--witness-dir", str(blocked)]  # fmt: skip
    assert main(argv) == 0, "the rotation is done and recorded; the witness is reported"
    out = capsys.readouterr().out
    assert "checkpoint seq 1 (key " in out and "NOT witnessed: publishing failed:" in out
    assert f"dir:{blocked}" in out
    (record,) = [r for r in records([home / "audit-keys"]) if r["kind"] == "audit.checkpoint"]
    assert record["witnesses"][f"dir:{blocked.resolve()}"].startswith("failed: ")
