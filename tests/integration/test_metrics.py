"""Prometheus metrics read from the real /metrics endpoints of real processes: a server, a client, a proxy,
and two server processes sharing one port in prometheus_client's multiprocess mode.

Every figure asserted is one the test itself caused: N calls move the client's sent counter, the server's
received counter and the proxy's forwarded counters by exactly N.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_direct import NAMES, Bus
from tests.integration.test_reliability import RawPeer
from tests.procs import ROOT, ProxyProcess
from tests.servers import free_port, wait_for
from zmqrpc import protocol
from zmqrpc.matchmaker import RedisMatchMaker
from zmqrpc.protocol import MessageType

pytestmark = pytest.mark.integration

CALLS, CASTS = 25, 7

# A client in a process of its own (metrics are per process): it calls, casts, then prints its /metrics.
CLIENT = """
import json, sys, time, urllib.request
from zmqrpc import RpcClient, load_settings
url, extra = sys.argv[1], sys.argv[5]
port, calls, casts = (int(arg) for arg in sys.argv[2:5])
overrides = {"metrics_port": port, "zmq_target_update": 1, "zmq_target_expire": 5, **json.loads(extra)}
client = RpcClient(load_settings(url=url, overrides=overrides))
for _ in range(calls):
    client.call("measured", "whoami", timeout=10)
for n in range(casts):
    client.cast("measured", "record", {"tag": n})
client.call("measured", "whoami", timeout=10, server=None)  # casts before it on the same link are sent
print(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode())
client.close()
"""


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` from a /metrics endpoint."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return parse(text)


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def run_client(url: str, port: int, calls: int, casts: int, **extra: object) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-c", CLIENT, url, str(port), str(calls), str(casts), json.dumps(extra)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return parse(done.stdout)


def test_calls_and_casts_move_the_client_and_server_counters_by_what_was_sent(redis_server) -> None:
    bus = Bus(redis_server.url, "static")
    try:
        server_port = free_port()
        bus.server(NAMES[0], topics=["measured"], metrics_port=server_port)
        before = scrape(server_port)
        client = run_client(redis_server.url, free_port(), CALLS, CASTS)
        calls = CALLS + 1  # and the last call, which follows the casts
        assert value(client, "zmqrpc_messages_sent_total", type="call") == calls
        assert value(client, "zmqrpc_messages_sent_total", type="cast") == CASTS
        assert value(client, "zmqrpc_messages_received_total", type="reply") == calls
        assert value(client, "zmqrpc_call_duration_seconds_count") == calls
        assert value(client, "zmqrpc_calls_in_flight") == 0
        assert value(client, "zmqrpc_call_timeouts_total") == 0
        assert any(name == "zmqrpc_build_info" for name, _ in client)

        def server_counts() -> tuple[float, float, float]:
            after = scrape(server_port)
            return tuple(
                value(after, name, type=kind) - value(before, name, type=kind)
                for name, kind in (
                    ("zmqrpc_messages_received_total", "call"),
                    ("zmqrpc_messages_received_total", "cast"),
                    ("zmqrpc_messages_sent_total", "reply"),
                )
            )

        assert wait_for(lambda: server_counts() == (calls, CASTS, calls), timeout=10), server_counts()
        after = scrape(server_port)
        assert value(after, "zmqrpc_workers") >= 1
        assert value(after, "zmqrpc_workers_busy") == 0
        assert value(after, "zmqrpc_routing_cache_refreshed_timestamp_seconds") == 0  # a server looks up none
        assert value(after, "zmqrpc_registrations_refreshed_timestamp_seconds") > 0
        assert value(after, "zmqrpc_registration_expire_seconds") == 5  # FAST's zmq_target_expire
    finally:
        bus.close()


def test_malformed_frames_are_counted_by_reason(redis_server) -> None:
    bus = Bus(redis_server.url, "static")
    try:
        port = free_port()
        server = bus.server(NAMES[0], topics=["measured"], metrics_port=port)
        good = protocol.encode(
            MessageType.CAST, "measured", {"message": {}, "context": {}}, protocol.SERIALIZERS["json"]
        )
        with RawPeer(server.address) as raw:
            for _ in range(3):
                raw.send([b"short", *good[1:]])
            for _ in range(2):
                raw.send([good[0], b"", b"somebody-else", good[3]])
            expected = {"bad header": 3, "wrong topic": 2}

            def dropped() -> dict[str, float]:
                samples = scrape(port)
                return {
                    reason: value(samples, "zmqrpc_messages_dropped_total", reason=reason)
                    for reason in expected
                }

            assert wait_for(lambda: dropped() == expected, timeout=10), dropped()
    finally:
        bus.close()


def test_a_router_proxy_counts_what_it_forwards_and_its_connections(redis_server, tmp_path: Path) -> None:
    proxy_port = free_port()
    proxy = ProxyProcess(tmp_path, redis_server.url, extra=f"[zmq_proxy_opts]\nmetrics_port = {proxy_port}\n")
    proxy.start()
    options = {"use_router_proxy": True}
    bus = Bus(redis_server.url, "static")
    try:
        matchmaker = RedisMatchMaker([(redis_server.host, redis_server.port)])
        try:
            assert wait_for(lambda: matchmaker.get_hosts(protocol.PROXY_BACKENDS), timeout=20)
        finally:
            matchmaker.close()
        bus.server(NAMES[0], topics=["measured"], **options)
        before = scrape(proxy_port)
        run_client(redis_server.url, free_port(), CALLS, 0, **options)
        after = scrape(proxy_port)
        for direction in ("frontend_to_backend", "backend_to_frontend"):
            moved = value(after, "zmqrpc_proxy_forwarded_total", direction=direction) - value(
                before, "zmqrpc_proxy_forwarded_total", direction=direction
            )
            assert moved == CALLS + 1, direction
        assert value(before, "zmqrpc_connections_open") >= 1  # the server's connection to the backend
    finally:
        bus.close()
        proxy.stop()


def test_worker_processes_of_one_service_are_summed_in_multiprocess_mode(
    redis_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two server processes with the same metrics_port and PROMETHEUS_MULTIPROC_DIR: one serves, and what
    it serves is the sum of both."""
    shared = tmp_path / "prometheus"
    shared.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(shared))
    bus = Bus(redis_server.url, "static")
    try:
        port = free_port()
        for name in NAMES:
            bus.server(name, topics=["measured"], metrics_port=port)
        monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
        run_client(redis_server.url, free_port(), CALLS, 0)
        per_server = [
            value(
                parse(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()),
                "zmqrpc_messages_received_total",
                type="call",
            )
        ]
        assert per_server == [CALLS + 1]  # round robin over both processes, summed by the one that serves
        assert len(list(shared.glob("*.db"))) >= 2
    finally:
        bus.close()
