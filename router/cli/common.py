"""Shared by the `meridian` subcommands: tables, argument types, signals, config arguments."""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

DEFAULT_ROUTER = "127.0.0.1:50051"
log = logging.getLogger("meridian")


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # temporalio's core logs every failed poll of a stopped cluster; keep warnings only.
    logging.getLogger("temporalio").setLevel(logging.WARNING)


def render_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def positive_seconds(text: str) -> float:
    """argparse type of a duration: a finite number of seconds above zero."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return seconds


def version() -> str:
    """The installed package's version; in a source tree that is not installed, the
    version pyproject.toml declares."""
    from importlib import metadata

    try:
        return metadata.version("meridian-router")
    except metadata.PackageNotFoundError:
        pass
    import tomllib
    from pathlib import Path

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    try:
        declared = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["version"]
    except (OSError, ValueError, KeyError):
        return "unknown"
    return str(declared)


def tracing(service_name: str) -> Callable[[], None]:
    """Tracing for this process when OTEL_EXPORTER_OTLP_ENDPOINT is set; returns the
    function that flushes and stops it at exit."""
    from router import telemetry

    provider = telemetry.setup(service_name)
    return provider.shutdown if provider is not None else (lambda: None)


async def until_signalled(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``main(stop)``; SIGINT/SIGTERM set ``stop`` (once) for a clean shutdown."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await main(stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def race(work: Awaitable[None], stop: asyncio.Event) -> bool:
    """Run ``work`` unless ``stop`` fires first (then cancel it); True if it finished."""
    task = asyncio.ensure_future(work)
    waiter = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task in done:
        task.result()
        return True
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return False


def config_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--config",
        help="routing config YAML (default: $MERIDIAN_CONFIG, else the embedded default)",
    )
    sp.add_argument(
        "--keys-dir",
        help="key rings and codec tokens (default: $MERIDIAN_KEYS_DIR, else "
        "$MERIDIAN_HOME/keys, else ./.meridian/keys)",
    )
