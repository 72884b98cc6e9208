"""ISO 3166 code lists, from pycountry, loaded once (the subdivision list takes ~0.2 s)."""

from __future__ import annotations

from functools import cache

import pycountry


@cache
def countries() -> frozenset[str]:
    """Assigned ISO 3166-1 alpha-2 codes."""
    return frozenset(c.alpha_2 for c in pycountry.countries)


@cache
def subdivisions() -> frozenset[str]:
    """ISO 3166-2 subdivision codes, e.g. 'US-CA'."""
    return frozenset(s.code for s in pycountry.subdivisions)
