"""Static and dynamic direct topologies across real processes, with ring, Redis and Sentinel matchmakers.

The test process is the client; every server is a separate ``tests.rpc_node`` process.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

import pytest

from tests.procs import ServerProcess
from tests.servers import RedisServer, SentinelCluster, free_port, wait_for
from zmqrpc.client import RpcClient
from zmqrpc.config import load_settings
from zmqrpc.errors import CallTimeout, NoRouteError, RemoteError

pytestmark = pytest.mark.integration

NAMES = ("127.0.0.2", "127.0.0.3")  # two "hosts" on loopback, so directed topics tell them apart
TOPICS = ("echo", "fan", "notes.info")
FAST = {
    "zmq_target_update": 1,
    "zmq_target_expire": 5,
    "rpc_zmq_cache_refresh": 1,
    "zmq_connect_timeout": 1.0,
}


class Bus:
    """One matchmaker backend and connection mode: starts servers and makes clients."""

    def __init__(self, url: str, mode: str, ports: dict[str, int] | None = None) -> None:
        self.url = url
        self.mode = mode
        self.ports = ports or {}
        self.servers: list[ServerProcess] = []
        self.clients: list[RpcClient] = []

    def options(self) -> dict[str, object]:
        return {**FAST, "use_dynamic_connections": self.mode == "dynamic"}

    def server(
        self, name: str, topics: tuple[str, ...] | list[str] = TOPICS, **extra: object
    ) -> ServerProcess:
        overrides = {**self.options(), "rpc_zmq_host": name, "rpc_zmq_bind_address": name, **extra}
        if name in self.ports:  # ring matchmaker: bind exactly the port the ring file names
            overrides.update(rpc_zmq_min_port=self.ports[name], rpc_zmq_max_port=self.ports[name] + 1)
        proc = ServerProcess(self.url, list(topics), name, **overrides).start()
        self.servers.append(proc)
        return proc

    def client(self, **extra: object) -> RpcClient:
        client = RpcClient(load_settings(url=self.url, overrides={**self.options(), **extra}))
        self.clients.append(client)
        return client

    def close(self) -> None:
        for client in self.clients:
            client.close()
        for proc in self.servers:
            proc.stop()  # SIGTERM: a clean stop unregisters, so later tests see only live servers


@pytest.fixture(scope="module")
def redis_backend():
    with RedisServer() as redis:
        yield redis


@pytest.fixture(scope="module")
def sentinel_backend():
    cluster = SentinelCluster()
    try:
        yield cluster
    finally:
        cluster.stop()


def _ring_bus(tmp_path_factory: pytest.TempPathFactory, mode: str) -> Bus:
    ports = {name: free_port() for name in NAMES}
    ring = {topic: [f"{name}:{ports[name]}" for name in NAMES] for topic in TOPICS}
    path = tmp_path_factory.mktemp("ring") / "ring.json"
    path.write_text(json.dumps(ring))
    return Bus(f"zmq://?rpc_zmq_matchmaker=ring&rpc_zmq_matchmaker_ringfile={path}", mode, ports)


@pytest.fixture(scope="module", params=["ring", "redis", "sentinel"])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    if request.param == "ring":
        return ("ring", None)
    if request.param == "redis":
        return ("redis", request.getfixturevalue("redis_backend").url)
    return ("sentinel", request.getfixturevalue("sentinel_backend").url)


@pytest.fixture(scope="module", params=["static", "dynamic"])
def bus(request: pytest.FixtureRequest, backend, tmp_path_factory: pytest.TempPathFactory):
    kind, url = backend
    bus = _ring_bus(tmp_path_factory, request.param) if kind == "ring" else Bus(url, request.param)
    try:
        for name in NAMES:
            bus.server(name)
        yield bus
    finally:
        bus.close()


def test_call_is_round_robin_over_the_topic_and_directed_calls_reach_one_host(bus: Bus) -> None:
    client = bus.client()
    answers = Counter(client.call("echo", "whoami", timeout=5) for _ in range(20))
    assert set(answers) == set(NAMES), answers
    assert min(answers.values()) >= 5, f"bare topic not balanced: {answers}"
    for name in NAMES:
        assert {client.call("echo", "whoami", timeout=5, server=name) for _ in range(6)} == {name}
    reply = client.call("echo", "echo", {"x": [1, "two"]}, timeout=5, context={"user": "u1"})
    assert reply["args"] == {"x": [1, "two"]} and reply["context"] == {"user": "u1"}


def test_remote_exception_comes_back_with_type_and_message(bus: Bus) -> None:
    client = bus.client()
    with pytest.raises(RemoteError) as info:
        client.call("echo", "fail", {"message": "no such flavor"}, timeout=5)
    assert info.value.exc_type == "KeyError"
    assert "no such flavor" in info.value.message
    with pytest.raises(RemoteError) as info:
        client.call("echo", "no_such_method", timeout=5)
    assert "no_such_method" in info.value.message


def test_call_timeout_raises_timeout_error(bus: Bus) -> None:
    client = bus.client()
    started = time.monotonic()
    with pytest.raises(CallTimeout):
        client.call("echo", "sleep", {"seconds": 3}, timeout=0.5)
    assert time.monotonic() - started < 1.5


def test_cast_and_notify_are_delivered(bus: Bus) -> None:
    client = bus.client()
    tag = f"cast-{time.monotonic_ns()}"
    for name in NAMES:
        client.cast("echo", "record", {"tag": f"{tag}-{name}"}, server=name)
    for name in NAMES:
        seen = wait_for(lambda n=name: f"{tag}-{n}" in client.call("echo", "seen", timeout=5, server=n))
        assert seen, f"directed cast to {name} not delivered"
    event = f"compute.instance.create-{time.monotonic_ns()}"
    client.notify("notes", "info", event, {"id": 7})

    def notified() -> list:
        got = []
        for name in NAMES:
            got += [m for m in client.call("echo", "seen", timeout=5, server=name) if isinstance(m, dict)]
        return [m for m in got if m["event_type"] == event]

    received = wait_for(notified)
    assert received == [{"priority": "info", "event_type": event, "payload": {"id": 7}}]


def test_fanout_reaches_every_server_exactly_once(bus: Bus) -> None:
    client = bus.client()
    tag = f"fan-{time.monotonic_ns()}"
    assert client.fanout("fan", "record", {"tag": tag}) == len(NAMES)

    def counts() -> dict[str, int]:
        return {n: client.call("echo", "seen", timeout=5, server=n).count(tag) for n in NAMES}

    wait_for(lambda: all(counts().values()))
    time.sleep(0.3)  # a duplicate would arrive right behind the first copy
    assert counts() == dict.fromkeys(NAMES, 1)


def test_many_threads_share_one_client(bus: Bus) -> None:
    client = bus.client()
    errors: list[BaseException] = []
    results: list[tuple[int, int]] = []

    def worker(n: int) -> None:
        try:
            for i in range(25):
                reply = client.call("echo", "echo", {"n": n, "i": i}, timeout=10)
                results.append((reply["args"]["n"], reply["args"]["i"]))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert sorted(results) == [(n, i) for n in range(16) for i in range(25)]


def test_unknown_topic_is_reported(bus: Bus) -> None:
    client = bus.client()
    with pytest.raises(NoRouteError, match="nobody-serves-this"):
        client.call("nobody-serves-this", "whoami", timeout=1)
    before = client.undelivered
    client.cast("nobody-serves-this", "record", {"tag": 1})
    assert client.undelivered == before + 1
    with pytest.raises(NoRouteError):
        client.cast("nobody-serves-this", "record", {"tag": 1}, strict=True)
