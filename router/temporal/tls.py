"""A cluster's TLS material and API key, read from the files (or the environment
variable) its ``tls`` section names, at connect time.

The config holds paths only (``router.config.settings.ClusterTLS``); this module turns
them into ``Credentials``: the bytes temporalio's ``TLSConfig`` wants and the API key.
Private keys and API key files must be mode 0600 (``check_private``, as key rings).
Errors are ``KeyRingError`` naming the config key and the file, never their contents;
``Credentials`` prints no key material and no API key.

``stamp`` is a cheap signature of the files (inode, size, mtime, mode) so a caller can
tell, without reading them, that one was replaced, rewritten or chmod-ed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from temporalio.service import TLSConfig

from router.codec.keys import check_private
from router.config.settings import ClusterTLS
from router.errors import KeyRingError

_CERT = b"-----BEGIN CERTIFICATE-----"
_KEY = b"PRIVATE KEY-----"

Stamp = tuple[tuple[str | int, ...], ...]


@dataclass(frozen=True, slots=True)
class Credentials:
    """What one cluster's connection needs. Equal credentials mean an equal connection:
    a change of any file's contents (or of the API key) makes them unequal."""

    server_root_ca_cert: bytes | None = field(default=None, repr=False)
    client_cert: bytes | None = field(default=None, repr=False)
    client_private_key: bytes | None = field(default=None, repr=False)
    server_name: str | None = None
    api_key: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        ca = "system roots" if self.server_root_ca_cert is None else "ca_file"
        client = "client certificate" if self.client_cert is not None else "no client certificate"
        key = ", API key <hidden>" if self.api_key is not None else ""
        name = f", server_name={self.server_name!r}" if self.server_name else ""
        return f"Credentials({ca}, {client}{name}{key})"

    def tls_config(self) -> TLSConfig:
        """temporalio's TLS settings (its repr shows the private key: never print it)."""
        return TLSConfig(
            server_root_ca_cert=self.server_root_ca_cert,
            domain=self.server_name,
            client_cert=self.client_cert,
            client_private_key=self.client_private_key,
        )


def load(tls: ClusterTLS, environ: Mapping[str, str] | None = None) -> Credentials:
    """Read everything ``tls`` names; ``KeyRingError`` naming the key and the file (or
    variable) if anything is missing, unsafe or malformed."""
    env = os.environ if environ is None else environ
    key = None
    if tls.key_file is not None:
        _check_private(tls, "key_file", tls.key_file)
        key = _read(tls, "key_file", tls.key_file, _KEY, "a PEM private key")
    return Credentials(
        server_root_ca_cert=_read(tls, "ca_file", tls.ca_file, _CERT, "PEM certificates"),
        client_cert=_read(tls, "cert_file", tls.cert_file, _CERT, "a PEM certificate"),
        client_private_key=key,
        server_name=tls.server_name,
        api_key=_api_key(tls, env),
    )


def stamp(tls: ClusterTLS) -> Stamp:
    out: list[tuple[str | int, ...]] = []
    for path in (tls.ca_file, tls.cert_file, tls.key_file, tls.api_key_file):
        if path is None:
            continue
        try:
            st = path.stat()
        except OSError as exc:
            out.append((str(path), type(exc).__name__))
        else:
            out.append((str(path), st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode))
    return tuple(out)


def _check_private(tls: ClusterTLS, key: str, path: Path) -> None:
    try:
        check_private(path, what=f"{tls.where}.{key}")
    except OSError as exc:  # not a directory, no permission to stat it, ...
        raise KeyRingError(f"{tls.where}.{key} {path}: cannot read it ({exc.strerror})") from None


def _read(tls: ClusterTLS, key: str, path: Path | None, marker: bytes, kind: str) -> bytes | None:
    if path is None:
        return None
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise KeyRingError(f"{tls.where}.{key} {path} does not exist") from None
    except OSError as exc:
        raise KeyRingError(f"{tls.where}.{key} {path}: cannot read it ({exc.strerror})") from None
    if marker not in data:
        raise KeyRingError(f"{tls.where}.{key} {path} does not hold {kind}")
    return data


def _api_key(tls: ClusterTLS, env: Mapping[str, str]) -> str | None:
    if tls.api_key_file is not None:
        _check_private(tls, "api_key_file", tls.api_key_file)
        try:
            raw = tls.api_key_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            raise KeyRingError(
                f"{tls.where}.api_key_file {tls.api_key_file}: cannot read it as UTF-8 text"
            ) from None
        source = f"{tls.where}.api_key_file {tls.api_key_file}"
    elif tls.api_key_env is not None:
        value = env.get(tls.api_key_env)
        if value is None:
            raise KeyRingError(f"{tls.where}.api_key_env: ${tls.api_key_env} is not set")
        raw, source = value, f"{tls.where}.api_key_env ${tls.api_key_env}"
    else:
        return None
    api_key = raw.strip()
    # A header value: one line of visible ASCII (the key itself is never echoed).
    if not api_key or not all(33 <= ord(c) <= 126 for c in api_key):
        raise KeyRingError(
            f"{source}: must hold one API key (visible ASCII, no spaces or line breaks)"
        )
    return api_key
