"""Payload encryption bound to jurisdictions, shared by the router and the regions.

Only this package of ``router`` is imported by ``regions/``: a region's worker and codec
server use the same keys and wire format as the router, and nothing else of it.
"""

from router.codec.aead import RegionCodec
from router.codec.converter import data_converter
from router.codec.keys import (
    ChainKeyProvider,
    EnvKeyProvider,
    FileKeyProvider,
    Key,
    KeyProvider,
    KeyRing,
    KeyRingHolder,
    RingChange,
    default_provider,
    new_ring,
)

__all__ = [
    "ChainKeyProvider",
    "EnvKeyProvider",
    "FileKeyProvider",
    "Key",
    "KeyProvider",
    "KeyRing",
    "KeyRingHolder",
    "RegionCodec",
    "RingChange",
    "data_converter",
    "default_provider",
    "new_ring",
]
