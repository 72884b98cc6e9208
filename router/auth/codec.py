"""Namespace-scoped bearer tokens at a codec server (config ``codec.jwt``).

The Temporal Web UI can forward its user's access token to the codec endpoint. A codec
server accepts such a JWT when it verifies (``router.auth.jwt``: JWKS signature, expiry,
issuer, audience) and its namespaces claim lists the namespace asked for: either the
name itself or Temporal's ``<namespace>:<role>`` permission form. A codec server serves
only its own region's namespaces anyway, so a token scoped to another region's
namespace never decodes this region's payloads, and this region's never another's.
"""

from __future__ import annotations

from router.auth.jwt import JwtVerifier
from router.config.settings import JWTSettings
from router.errors import Unauthenticated


class NamespaceTokens:
    def __init__(self, settings: JWTSettings, namespaces_claim: str) -> None:
        self._verifier = JwtVerifier(settings)
        self._claim = namespaces_claim

    async def __call__(self, token: str, namespace: str) -> tuple[int, str] | None:
        """None when ``token`` verifies and grants ``namespace``; else (401 or 403, why)."""
        try:
            claims = await self._verifier.verify(token)
        except Unauthenticated as exc:
            return 401, exc.message
        granted = claims.claims.get(self._claim, [])
        if isinstance(granted, str):
            granted = granted.split()
        names = (
            {g.split(":", 1)[0] for g in granted if isinstance(g, str)}
            if isinstance(granted, list)
            else set()
        )
        if namespace in names:
            return None
        return 403, f"token of {claims.principal} does not grant namespace {namespace!r}"
