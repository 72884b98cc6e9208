"""Authentication: turn what a connection and a request carry into a ``Principal``.

- A bearer token (``authorization: Bearer …``), when present, names the principal: it is
  verified against the JWKS (``router.auth.jwt``); a bad token is UNAUTHENTICATED even if
  the connection has a good client certificate (whoever sent it meant the token).
- Else the client certificate of an mTLS connection names it (its identity, taken from
  the fields ``auth.identity`` lists: URI SAN, DNS SAN, CN).
- Else there is no principal: UNAUTHENTICATED.

Nothing the caller merely asserts (a header, a free-text actor) ever names a principal.
"""

from __future__ import annotations

from router.auth.jwt import JwtVerifier
from router.config.settings import AuthSettings, JWTSettings
from router.core.authz import AuthMethod, Principal, Role
from router.errors import Unauthenticated

BEARER = "bearer "


class Authenticator:
    def __init__(self) -> None:
        self._verifier: JwtVerifier | None = None

    def _jwt(self, settings: JWTSettings) -> JwtVerifier:
        # Rebuilt when the config's JWT settings change (a live reload).
        if self._verifier is None or self._verifier.settings != settings:
            self._verifier = JwtVerifier(settings)
        return self._verifier

    async def authenticate(
        self, auth: AuthSettings, *, peer_identity: str | None, authorization: str | None
    ) -> Principal:
        """``peer_identity``: the identity of a verified client certificate (None without
        one); ``authorization``: the request's authorization metadata, if any."""
        if authorization is not None:
            if not authorization.lower().startswith(BEARER):
                raise Unauthenticated("authorization metadata is not a bearer token")
            if auth.jwt is None:
                raise Unauthenticated("bearer tokens are not accepted here (no auth.jwt)")
            claims = await self._jwt(auth.jwt).verify(authorization[len(BEARER) :].strip())
            roles = frozenset(Role(r) for r in claims.roles if r in _ROLE_NAMES)
            return Principal(
                claims.principal, AuthMethod.JWT, roles, peer_identity=peer_identity or ""
            )
        if peer_identity:
            return Principal(peer_identity, AuthMethod.MTLS)
        raise Unauthenticated(
            "no credentials: present a client certificate (mTLS) or a bearer token"
        )


_ROLE_NAMES = frozenset(r.value for r in Role)
