"""Shared by the `meridian` subcommands: tables, argument types, signals, config arguments,
and the credentials a client command reaches the router with."""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import re
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from router.errors import MeridianError

DEFAULT_ROUTER = "127.0.0.1:50051"
log = logging.getLogger("meridian")


def setup_logging(verbose: bool, fmt: str = "text") -> None:
    from router import logs

    logs.setup(verbose=verbose, fmt=fmt)


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


# --- credentials of client commands ------------------------------------------------------

# RFC 6750's b64token: what may follow "Bearer " in an authorization header.
_BEARER = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


@dataclass(frozen=True)
class Credentials:
    """How a client command reaches the router: plaintext, or TLS trusting ``ca`` (None:
    the system's CAs) and presenting ``cert``/``key`` (None: no client certificate);
    ``token`` is sent as ``authorization: Bearer ...``. ``source`` says how they were
    chosen (never the token)."""

    plaintext: bool
    source: str
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    token: str | None = field(default=None, repr=False)


def credential_args(sp: argparse.ArgumentParser, default_identity: str) -> None:
    g = sp.add_argument_group(
        "credentials",
        "Without --tls-*, --identity or --insecure: the dev stack's CA and the dev identity "
        f"'{default_identity}' when $MERIDIAN_HOME/tls/ca.pem exists, else plaintext.",
    )
    g.add_argument(
        "--tls-ca",
        metavar="FILE",
        help="CA certificates that vouch for the router "
        "(default: the dev CA with --identity, else the system's CAs)",
    )
    g.add_argument("--tls-cert", metavar="FILE", help="client certificate (needs --tls-key)")
    g.add_argument("--tls-key", metavar="FILE", help="its private key (file mode 0600)")
    g.add_argument(
        "--identity",
        metavar="NAME",
        help=f"a dev identity under $MERIDIAN_HOME/tls (default here: {default_identity})",
    )
    g.add_argument(
        "--token",
        metavar="JWT",
        help="a bearer token, sent as 'authorization: Bearer ...' (over TLS only); "
        "@FILE reads it from a file of mode 0600",
    )
    g.add_argument(
        "--insecure", action="store_true", help="plaintext, no TLS (a router run with --insecure)"
    )
    sp.set_defaults(default_identity=default_identity)


def client_credentials(args: argparse.Namespace, home: Path | None = None) -> Credentials:
    """The one rule every client command follows: ``--insecure`` is plaintext; else
    ``--tls-cert``/``--tls-key`` or ``--identity`` name the client certificate and
    ``--tls-ca`` the trusted CA; with none of those, the dev stack's files under
    ``<home>/tls`` (``$MERIDIAN_HOME``) with the command's default identity if its CA
    exists, else plaintext (TLS with the system's CAs when a ``--token`` is given)."""
    from router.paths import meridian_home

    tls_dir = (home or meridian_home()) / "tls"
    token = _bearer(args.token)
    flags = {
        "--tls-ca": args.tls_ca,
        "--tls-cert": args.tls_cert,
        "--tls-key": args.tls_key,
        "--identity": args.identity,
        "--token": token,
    }
    if args.insecure:
        clash = [flag for flag, value in flags.items() if value]
        if clash:
            raise MeridianError(f"--insecure is plaintext: it cannot go with {', '.join(clash)}")
        return Credentials(plaintext=True, source="plaintext (--insecure)")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise MeridianError(
            "--tls-cert needs --tls-key" if args.tls_cert else "--tls-key needs --tls-cert"
        )
    if args.identity and args.tls_cert:
        raise MeridianError(
            "--identity and --tls-cert/--tls-key both name the client certificate: give one"
        )
    with_token = " with a bearer token" if token else ""
    ca = Path(args.tls_ca) if args.tls_ca else None
    if args.tls_cert:
        source = f"TLS as {args.tls_cert}{with_token}"
        cert, key = Path(args.tls_cert), Path(args.tls_key)
        return Credentials(plaintext=False, source=source, ca=ca, cert=cert, key=key, token=token)
    dev_ca = tls_dir / "ca.pem"
    name = args.identity or (None if ca or not dev_ca.is_file() else args.default_identity)
    if name is not None:
        cert, key = _dev_identity(tls_dir, name)
        source = f"TLS as dev identity {name!r} from {_shown(tls_dir)}{with_token}"
        return Credentials(
            plaintext=False, source=source, ca=ca or dev_ca, cert=cert, key=key, token=token
        )
    if ca is not None or token:
        trust = f"CA {ca}" if ca else "the system's CAs"
        source = f"TLS trusting {trust}, no client certificate{with_token}"
        return Credentials(plaintext=False, source=source, ca=ca, token=token)
    return Credentials(
        plaintext=True,
        source=f"plaintext (no dev CA at {_shown(dev_ca)}: run where `meridian dev` runs, "
        "or set MERIDIAN_HOME to its home)",
    )


def _dev_identity(tls_dir: Path, name: str) -> tuple[Path, Path]:
    have = sorted(
        key.name.removesuffix("-key.pem")
        for key in (tls_dir.glob("*-key.pem") if tls_dir.is_dir() else ())
        if key.name not in ("ca-key.pem", "server-key.pem")
        and key.with_name(key.name.removesuffix("-key.pem") + ".pem").is_file()
    )
    if name not in have:
        hint = ", ".join(have) or "none; `meridian keys init` or `meridian dev` creates them"
        raise MeridianError(f"no dev identity {name!r} under {_shown(tls_dir)} (have: {hint})")
    return tls_dir / f"{name}.pem", tls_dir / f"{name}-key.pem"


def _bearer(value: str | None) -> str | None:
    """The token of ``--token`` (``@FILE``: the file's content); never echoed in errors."""
    if value is None:
        return None
    if value.startswith("@"):
        from router.codec.keys import check_private

        path = Path(value[1:])
        check_private(path, what="token file")
        try:
            value = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise MeridianError(f"--token: cannot read {path} ({type(exc).__name__})") from None
    if not _BEARER.fullmatch(value):
        raise MeridianError(
            "--token: not a bearer token (RFC 6750: letters, digits, '-._~+/', then optional '=')"
        )
    return value


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def witness_dir(config: Any, explicit: str | None, default: Path) -> Path:
    """Where a chain's checkpoints are published: the flag, else the config's
    audit.witness_dir, else ``default``."""
    configured = config.document.audit.witness_dir
    return Path(explicit or configured or default).resolve()
