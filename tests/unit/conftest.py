from __future__ import annotations

import pytest

from router.config import ResolvedConfig, load
from router.core.model import RoutingTable


@pytest.fixture(scope="session")
def default_config() -> ResolvedConfig:
    return load()


@pytest.fixture(scope="session")
def table(default_config: ResolvedConfig) -> RoutingTable:
    return default_config.table
