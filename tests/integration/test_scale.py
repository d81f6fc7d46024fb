"""`zmqrpc scale-test --nodes 100` in router proxy + PUB/SUB: a real bus of 100 simulated nodes (RpcServers on
their own loopback addresses), a real redis-server, 3 real proxies and a real client, on 127.0.0.0/8 only.

The connections and file descriptors counted with ``ss`` and /proc must be within 10% of what
``zmqrpc plan`` predicts for the same bus, and a fanout must reach every node exactly once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

REPO = Path(__file__).resolve().parents[2]
NODES = 100
TOLERANCE = 0.10


@pytest.fixture(scope="module")
def record() -> dict:
    cmd = [sys.executable, "-m", "zmqrpc.cli", "scale-test", "--nodes", str(NODES), "--topology", "pubsub"]
    cmd += ["--proxies", "3", "--nodes-per-process", "50", "--calls", "100", "--json"]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=140, cwd=REPO, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"exit {proc.returncode}\n{proc.stderr[-4000:]}"
    data = json.loads(lines[-1])
    assert "limit" not in data, data
    assert proc.returncode == 0, proc.stderr[-4000:]
    return data


def test_the_fanout_reached_every_node_once(record: dict) -> None:
    assert record["nodes"] == NODES and record["topology"] == "pubsub"
    assert record["fanout_reached"] == NODES
    assert record["fanout_extra_copies"] == 0
    assert record["notify_received"] == NODES


@pytest.mark.parametrize("what", ["client_connections", "client_fds", "node_connections", "node_fds"])
def test_counts_are_within_ten_percent_of_the_plan(record: dict, what: str) -> None:
    measured, planned = record[what], record[f"plan_{what}"]
    assert planned > 0
    assert abs(measured - planned) <= TOLERANCE * planned, f"{what}: ss/proc {measured}, plan {planned}"


@pytest.mark.parametrize("what", ["proxy_connections", "proxy_fds"])
def test_each_proxy_is_within_ten_percent_of_the_plan(record: dict, what: str) -> None:
    planned = record[f"plan_{what}"]
    assert len(record[what]) == 3
    for measured in record[what]:
        assert abs(measured - planned) <= TOLERANCE * planned, f"{what}: ss/proc {measured}, plan {planned}"


def test_reachable_and_redis_load_as_planned(record: dict) -> None:
    assert 0 < record["register_s"] <= record["reachable_s"]
    assert record["call_p50_us"] > 0
    # Every routing cache refreshes once per rpc_zmq_cache_refresh: the window sees each refresh once.
    planned = record["plan_redis_refreshes_per_s"]
    assert abs(record["redis_ops_per_s"] - planned) <= 0.25 * planned, record
