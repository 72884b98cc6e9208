"""The `meridian` command: run the stack, the router, a regional worker, a codec server;
flip clusters; audit. Tables for people by default, `--json` for tools. Errors are one
clear message on stderr and a non-zero exit, never a traceback for a mistake the user
can fix.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from router.cli import admin, client, regional, run
from router.cli.common import render_table, setup_logging, version
from router.errors import ConfigError, MeridianError, StackError
from router.logs import FORMATS

__all__ = ["build_parser", "main", "render_table"]


class _Version(argparse.Action):
    """argparse's "version" action, but the version is looked up only when asked for:
    reading package metadata costs every other invocation time for nothing."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, nargs=0, help=help)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        print(f"meridian {version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="meridian", description="Residency-aware multi-region routing for Temporal."
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument(
        "--log-format",
        choices=FORMATS,
        default=os.environ.get("MERIDIAN_LOG_FORMAT", "text"),
        help="log lines for people (text) or one JSON object per line "
        "(default: $MERIDIAN_LOG_FORMAT, else text)",
    )
    p.add_argument("--version", action=_Version, help="print the version and exit")
    sub = p.add_subparsers(
        dest="command",
        required=True,
        metavar="COMMAND",
        help="what to do (COMMAND -h: its options)",
    )
    run.add_parsers(sub)
    client.add_parsers(sub)
    admin.add_parsers(sub)
    regional.add_parsers(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]  # for serve's workers
    setup_logging(args.verbose, args.log_format)
    # A file-size limit (ulimit -f) must surface as a write error (EFBIG) that the audit
    # log reports and recovers from, not as a signal that kills the router.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        code: int = args.func(args)
    except BrokenPipeError:
        # The reader went away (`meridian status | head`): not an error of ours. Point
        # stdout at /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports it
    except ConfigError as exc:
        print(f"meridian: invalid config: {exc}", file=sys.stderr)
        return 2
    except StackError as exc:
        print(f"meridian: {exc}", file=sys.stderr)
        return 1
    except MeridianError as exc:
        print(f"meridian: {exc}", file=sys.stderr)
        return 1
    return code
