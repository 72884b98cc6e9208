"""Codec throughput against raw AES-GCM on the same data (issue: payload encryption).

For 1 KiB and 1 MiB payloads: RegionCodec.encode_one / decode_one (serialize, seal with
associated data, metadata) versus AESGCM.encrypt / decrypt of the same serialized bytes
with a fresh nonce, alternated in rounds; reports medians and the ratio codec/raw.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload

from benchmarks.common import ab_rounds, emit, machine, render
from router.codec import RegionCodec, new_ring

SIZES = {"1KiB": 1024, "1MiB": 1024 * 1024}


def measure(
    codec: RegionCodec, raw: AESGCM, aad: bytes, size: int, *, rounds: int, budget: float
) -> dict[str, tuple[float, float]]:
    payload = Payload(metadata={"encoding": b"binary/plain"}, data=os.urandom(size))
    plain = payload.SerializeToString()
    sealed = codec.encode_one(payload)
    nonce = os.urandom(12)
    raw_sealed = raw.encrypt(nonce, plain, aad)
    # Calls per timing: about budget/rounds seconds each, from a rough cost estimate.
    n = max(5, int(budget / rounds / 2 / (size * 1.5e-9 + 3e-6)))
    return {
        "encode": ab_rounds(
            lambda: codec.encode_one(payload),
            lambda: raw.encrypt(os.urandom(12), plain, aad),
            n,
            rounds,
        ),
        "decode": ab_rounds(
            lambda: codec.decode_one(sealed), lambda: raw.decrypt(nonce, raw_sealed, aad), n, rounds
        ),
    }


def run(rounds: int, budget: float) -> dict[str, Any]:
    ring = new_ring("eu-west")
    codec = RegionCodec(ring)
    raw = AESGCM(ring.active_key.material)
    aad = b"meridian/v1\x00eu-west\x00" + ring.active.encode() + b"\x00"
    results = []
    for label, size in SIZES.items():
        for op, (c, r) in measure(codec, raw, aad, size, rounds=rounds, budget=budget).items():
            results.append({
                "size": label, "op": op, "codec_ops_s": c, "raw_ops_s": r,
                "codec_mib_s": c * size / 2**20, "raw_mib_s": r * size / 2**20, "ratio": c / r,
            })  # fmt: skip
    return {"benchmark": "codec", "machine": machine(), "rounds": rounds, "results": results}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks codec", description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=4.0, help="rough time per size and op")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.rounds, args.seconds)
    rows = [
        (r["size"], r["op"], f"{r['codec_ops_s']:,.0f}", f"{r['raw_ops_s']:,.0f}",
         f"{r['codec_mib_s']:,.0f}", f"{r['raw_mib_s']:,.0f}", f"{r['ratio']:.2f}")
        for r in result["results"]
    ]  # fmt: skip
    table = render(
        ["size", "op", "codec ops/s", "raw ops/s", "codec MiB/s", "raw MiB/s", "codec/raw"], rows
    )
    m = result["machine"]
    emit(
        result,
        args.json,
        f"{table}\n({m['cores']} cores, Python {m['python']}, {m['date']}; "
        f"median of {args.rounds} alternated rounds)",
    )
