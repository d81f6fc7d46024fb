"""Shared pytest fixtures. Real servers come from tests/servers.py (no mocks)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers import RedisServer, SentinelCluster

# --- Redis / Sentinel -----------------------------------------------------------------------------


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh real redis-server on 127.0.0.1 (random port), killed after the test."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_factory() -> Iterator[Callable[..., RedisServer]]:
    """Start extra redis-servers: ``redis_factory(password=None, replicaof=None)``; all killed after."""
    servers: list[RedisServer] = []

    def make(**kwargs: Any) -> RedisServer:
        server = RedisServer(**kwargs)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.cleanup()


@pytest.fixture(scope="module")
def sentinel_cluster() -> Iterator[SentinelCluster]:
    """Master + replica + 3 sentinels (group ``cluster.group``), shared by one test module.

    Tests that fail over should use ``cluster.kill_master_and_wait_failover()``, which restarts the old
    master as a replica so ``cluster.master``/``cluster.replica`` stay valid for later tests.
    """
    with SentinelCluster() as cluster:
        yield cluster


# --- Ring files -----------------------------------------------------------------------------------


@pytest.fixture
def tmp_ring(tmp_path: Path) -> Callable[[Any], str]:
    """Write a ring file and return its path: ``tmp_ring({"topic": ["host", "host:port"]})``.

    A ``str`` argument is written verbatim (for malformed files).
    """
    counter = iter(range(1_000_000))

    def write(content: Any) -> str:
        path = tmp_path / f"ring-{next(counter)}.json"
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        return str(path)

    return write


# --- Fuzzing (tests/integration/test_fuzz.py) -----------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fuzz-seconds",
        type=float,
        default=0.0,
        help="fuzz each socket for about this many seconds, with new seeds (default 0: a fixed seed and a "
        "short budget, as CI runs it)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    seconds = config.getoption("--fuzz-seconds")
    if seconds:  # a long fuzz run must not hit the suite's per-test timeout
        for item in items:
            if item.path.name == "test_fuzz.py":
                item.add_marker(pytest.mark.timeout(seconds + 180))
