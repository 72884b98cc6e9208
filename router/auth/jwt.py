"""JWT bearer tokens verified against a JWKS (PyJWT with ``cryptography``).

Checked: the signature (asymmetric algorithms only, from the configured list; the key is
picked by the token's ``kid``), ``exp`` and ``nbf`` with a small leeway, the issuer and
the audience. The principal comes from a configurable claim (default ``sub``) and roles
from another (default ``roles``). A JWKS file is read again when it changes; a JWKS URL
is fetched (and cached) off the event loop. Tokens and keys are never logged or put in
an error message.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from router.config.settings import JWTSettings
from router.errors import Unauthenticated

log = logging.getLogger(__name__)

# A JWKS URL is fetched with this bound; the answer is cached by PyJWKClient.
FETCH_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class Claims:
    principal: str
    roles: frozenset[str]
    claims: Mapping[str, Any]


class JwtVerifier:
    def __init__(self, settings: JWTSettings) -> None:
        self.settings = settings
        self._file_stamp: tuple[float, int] | None = None
        self._file_keys: jwt.PyJWKSet | None = None
        self._client = (
            jwt.PyJWKClient(settings.jwks_url, cache_keys=True, timeout=FETCH_TIMEOUT)
            if settings.jwks_url
            else None
        )

    def _keys_from_file(self, path: Path) -> jwt.PyJWKSet:
        try:
            st = path.stat()
            stamp = (st.st_mtime, st.st_size)
            if self._file_keys is None or stamp != self._file_stamp:
                self._file_keys = jwt.PyJWKSet.from_json(path.read_text())
                self._file_stamp = stamp
        except (OSError, ValueError, jwt.PyJWKSetError) as exc:
            if self._file_keys is None:
                raise Unauthenticated(
                    f"bearer token cannot be checked: the JWKS {path} is unreadable"
                ) from exc
            log.error("JWKS %s unreadable (%s); keeping the last good keys", path, exc)
        return self._file_keys

    async def _key(self, token: str) -> Any:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError as exc:
            raise Unauthenticated("bearer token is malformed") from exc
        if self.settings.jwks_file is not None:
            keys = self._keys_from_file(self.settings.jwks_file)
            matching = [k for k in keys.keys if kid is None or k.key_id == kid]
            if not matching:
                raise Unauthenticated("bearer token is signed by a key the JWKS does not hold")
            return matching[0].key
        assert self._client is not None
        client = self._client
        try:
            signing = await asyncio.wait_for(
                asyncio.to_thread(client.get_signing_key_from_jwt, token), FETCH_TIMEOUT + 1
            )
        except (jwt.PyJWKClientError, jwt.PyJWTError, TimeoutError) as exc:
            raise Unauthenticated(
                "bearer token cannot be checked: no matching key at the JWKS URL"
            ) from exc
        return signing.key

    async def verify(self, token: str) -> Claims:
        s = self.settings
        key = await self._key(token)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=list(s.algorithms),
                audience=s.audience,
                issuer=s.issuer,
                leeway=s.leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("bearer token has expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise Unauthenticated("bearer token is not valid yet (nbf)") from exc
        except jwt.InvalidIssuerError as exc:
            raise Unauthenticated("bearer token has the wrong issuer") from exc
        except jwt.InvalidAudienceError as exc:
            raise Unauthenticated("bearer token is for another audience") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated(f"bearer token lacks the {exc.claim} claim") from exc
        except jwt.InvalidAlgorithmError as exc:
            raise Unauthenticated("bearer token uses an algorithm that is not allowed") from exc
        except jwt.PyJWTError as exc:
            raise Unauthenticated("bearer token is invalid (signature or format)") from exc
        principal = claims.get(s.principal_claim)
        if not isinstance(principal, str) or not principal:
            raise Unauthenticated(f"bearer token has no {s.principal_claim} claim to name it")
        raw_roles = claims.get(s.roles_claim, [])
        if isinstance(raw_roles, str):
            raw_roles = raw_roles.split()
        roles = (
            frozenset(r for r in raw_roles if isinstance(r, str))
            if isinstance(raw_roles, list)
            else frozenset()
        )
        return Claims(principal, roles, claims)


def jwks_document(public_keys: Mapping[str, Any]) -> str:
    """A JWKS (JSON) of ``kid -> public key`` (``cryptography`` keys): for tests and for
    operators who generate their own development issuer."""
    keys = []
    for kid, key in public_keys.items():
        jwk = json.loads(jwt.algorithms.get_default_algorithms()[_alg(key)].to_jwk(key))
        jwk["kid"] = kid
        jwk["use"] = "sig"
        keys.append(jwk)
    return json.dumps({"keys": keys}, indent=2)


def _alg(key: Any) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if isinstance(key, rsa.RSAPublicKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "ES256"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "EdDSA"
    raise TypeError(f"unsupported key type {type(key).__name__}")
