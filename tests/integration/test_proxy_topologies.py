"""The proxy topologies end to end: 3 real proxy processes, separate server processes, a real Redis.

Router proxy; router proxy with PUB/SUB; PUB/SUB with local publishers; the combined mode (dynamic direct
calls, fanout through publishers). Then reliability with acks: a proxy killed with SIGKILL under a stream
of calls, and a server restarted under casts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import zmq

from tests.integration.test_direct import NAMES, Bus
from tests.procs import ProxyProcess, ServerProcess
from tests.servers import RedisServer, free_port, wait_for
from zmqrpc import protocol
from zmqrpc.errors import Unreachable
from zmqrpc.matchmaker import RedisMatchMaker

pytestmark = pytest.mark.integration

TOPOLOGIES = {
    "router-proxy": {"use_router_proxy": True, "use_pub_sub": False},
    "pubsub": {"use_router_proxy": True, "use_pub_sub": True},
    "local-publisher": {"use_router_proxy": True, "use_pub_sub": True},
    "combined": {"use_router_proxy": False, "use_pub_sub": True, "use_dynamic_connections": True},
}
TOPICS = ("echo", "fan", "notes.info")


class ProxyBus(Bus):
    """A Bus whose servers and clients use a proxy topology."""

    def __init__(self, url: str, options: dict[str, object]) -> None:
        super().__init__(url, "static")
        self.topology_options = options

    def options(self) -> dict[str, object]:
        return {**super().options(), **self.topology_options}


def _start_proxies(tmp: Path, redis: RedisServer, count: int, pub_sub: bool) -> list[ProxyProcess]:
    proxies = [ProxyProcess(tmp, redis.url, use_pub_sub=pub_sub).start() for _ in range(count)]
    matchmaker = RedisMatchMaker([(redis.host, redis.port)])
    try:
        wanted = {protocol.PROXY_FRONTENDS: count}
        if pub_sub:
            wanted[protocol.PROXY_PUBLISHERS] = count
        registered = wait_for(
            lambda: all(len(matchmaker.get_hosts(t)) == n for t, n in wanted.items()), timeout=20
        )
        assert registered, {t: matchmaker.get_hosts(t) for t in wanted}
    finally:
        matchmaker.close()
    return proxies


@pytest.fixture(scope="module", params=list(TOPOLOGIES))
def topology(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    name = request.param
    tmp = tmp_path_factory.mktemp(name)
    options = dict(TOPOLOGIES[name])
    redis = RedisServer().start()
    proxies: list[ProxyProcess] = []
    bus = ProxyBus(redis.url, options)
    try:
        proxies = _start_proxies(tmp, redis, 3, bool(options["use_pub_sub"]))
        if name == "local-publisher":
            # One local publisher per "node", subscribed to the central publishers it finds in Redis.
            port = free_port()
            proxies.append(
                ProxyProcess(
                    tmp, redis.url, use_pub_sub=True, local_publisher=True, publisher_port=port
                ).start()
            )
            options["subscribe_on"] = [f"127.0.0.1:{port}"]
        for server in NAMES:
            bus.server(server, topics=TOPICS)
        # A server of a topic that shares a prefix with "fan": it must never get fan's fanout.
        bus.server("127.0.0.4", topics=("fanx",))
        yield name, bus, proxies
    finally:
        bus.close()
        for proxy in proxies:
            proxy.stop()
        redis.stop()


def test_call_cast_and_notify_go_through(topology) -> None:
    name, bus, _ = topology
    client = bus.client()
    answers = Counter(client.call("echo", "whoami", timeout=5) for _ in range(12))
    assert set(answers) == set(NAMES), answers
    for server in NAMES:
        assert client.call("echo", "whoami", timeout=5, server=server) == server
    tag = f"cast-{name}-{time.monotonic_ns()}"
    client.cast("echo", "record", {"tag": tag}, server=NAMES[0])
    assert wait_for(lambda: tag in client.call("echo", "seen", timeout=5, server=NAMES[0]))
    event = f"event-{time.monotonic_ns()}"
    client.notify("notes", "info", event, {"n": 1})

    def notified() -> int:
        return sum(
            1
            for server in NAMES
            for m in client.call("echo", "seen", timeout=5, server=server)
            if isinstance(m, dict) and m["event_type"] == event
        )

    assert wait_for(notified) == 1


def test_fanout_reaches_every_server_once_and_no_prefix_sharer(topology) -> None:
    name, bus, _ = topology
    client = bus.client()
    time.sleep(1.5)  # subscribers connect to publishers they learn about on their next sync
    tag = f"fan-{name}-{time.monotonic_ns()}"
    assert client.fanout("fan", "record", {"tag": tag}) == len(NAMES)

    def counts() -> dict[str, int]:
        return {s: client.call("echo", "seen", timeout=5, server=s).count(tag) for s in NAMES}

    wait_for(lambda: all(counts().values()))
    time.sleep(0.5)
    assert counts() == dict.fromkeys(NAMES, 1)
    assert tag not in client.call("fanx", "seen", timeout=5)


@pytest.fixture
def acked_router(tmp_path: Path):
    redis = RedisServer().start()
    proxies: list[ProxyProcess] = []
    bus = ProxyBus(
        redis.url,
        {
            "use_router_proxy": True,
            "rpc_use_acks": True,
            "rpc_ack_timeout_base": 0.5,
            "rpc_ack_timeout_multiplier": 1.5,
            "rpc_retry_attempts": 8,
        },
    )
    try:
        proxies = _start_proxies(tmp_path, redis, 3, False)
        yield bus, proxies
    finally:
        bus.close()
        for proxy in proxies:
            proxy.stop()
        redis.stop()


def test_killing_a_proxy_under_a_call_stream_loses_and_duplicates_nothing(
    acked_router, tmp_path: Path
) -> None:
    bus, proxies = acked_router
    ledger = tmp_path / "ledger"
    bus.servers.append(ServerProcess(bus.url, ["ledger"], NAMES[0], str(ledger), **bus.options()).start())
    client = bus.client()
    total, replies, errors = 300, [], []

    def stream() -> None:
        for i in range(total):
            try:
                client.call("ledger", "record", {"tag": i}, timeout=15)
                replies.append(i)
            except Exception as exc:
                errors.append((i, exc))

    worker = threading.Thread(target=stream)
    worker.start()
    wait_for(lambda: len(replies) > 50, timeout=20)
    proxies[0].kill()  # SIGKILL, mid-stream
    worker.join(120)
    assert not errors, errors[:3]
    assert replies == list(range(total))
    executed = Counter(int(line) for line in ledger.read_text().split())
    assert sorted(executed) == list(range(total)), "a call was lost"
    assert max(executed.values()) == 1, "a call ran twice"


def test_killing_proxies_in_turn_keeps_the_servers_load_even(acked_router, tmp_path: Path) -> None:
    """With one of 3 proxies killed and replaced every 3 s, one server used to get 3,958 calls and the
    other 13,627: a proxy that had just started did not know a server yet, its UNROUTABLE answer held that
    server down for a minute, and its calls went to the other. Now the other proxies are tried first."""
    bus, proxies = acked_router
    for name in NAMES:
        bus.server(name, topics=("split",))
    client = bus.client()
    served: Counter = Counter()
    errors: list[Exception] = []
    stop = threading.Event()

    def stream() -> None:
        while not stop.is_set():
            try:
                served[client.call("split", "whoami", timeout=15)] += 1
            except Exception as exc:
                errors.append(exc)

    worker = threading.Thread(target=stream)
    worker.start()
    try:
        for turn in range(4):
            time.sleep(3)
            victim = turn % len(proxies)
            proxies[victim].kill()
            proxies[victim] = ProxyProcess(tmp_path, bus.url, use_pub_sub=False).start()
        time.sleep(3)
    finally:
        stop.set()
        worker.join(60)
    assert not errors, errors[:3]
    assert set(served) == set(NAMES), served
    low, high = sorted(served.values())
    print(f"calls per server through 3 proxies, one replaced every 3 s: {dict(served)}")
    assert low >= 0.6 * high, f"uneven split through the proxies: {dict(served)}"


def test_restarting_a_server_under_casts_loses_and_duplicates_nothing(redis_server, tmp_path: Path) -> None:
    bus = Bus(redis_server.url, "static")
    acks = {
        **bus.options(),
        "rpc_use_acks": True,
        "rpc_ack_timeout_base": 0.5,
        "rpc_ack_timeout_multiplier": 1.5,
        "rpc_retry_attempts": 10,
        "rpc_zmq_cache_refresh": 0.5,
    }
    ledger = tmp_path / "ledger"
    try:
        first = ServerProcess(redis_server.url, ["ledger"], NAMES[0], str(ledger), **acks).start()
        client = bus.client(**acks)
        total = 400
        for i in range(total):
            client.cast("ledger", "record", {"tag": i})
            if i == 150:
                first.stop()  # SIGTERM: unregisters, unread casts stay unacked
                bus.servers.append(
                    ServerProcess(redis_server.url, ["ledger"], NAMES[0], str(ledger), **acks).start()
                )
            time.sleep(0.002)

        def delivered() -> Counter:
            return Counter(int(line) for line in ledger.read_text().split())

        wait_for(lambda: len(delivered()) == total, timeout=40)
        executed = delivered()
        assert sorted(executed) == list(range(total)), (
            f"lost: {sorted(set(range(total)) - set(executed))[:10]}"
        )
        assert max(executed.values()) == 1, "a cast ran twice"
        assert client.undelivered == 0
    finally:
        bus.close()


@pytest.fixture
def router_proxies(tmp_path: Path):
    """A Redis and 3 router proxies without PUB/SUB; yields (redis, proxies)."""
    redis = RedisServer().start()
    proxies: list[ProxyProcess] = []
    try:
        proxies = _start_proxies(tmp_path, redis, 3, False)
        yield redis, proxies
    finally:
        for proxy in proxies:
            proxy.stop()
        redis.stop()


def test_a_call_to_a_vanished_server_fails_fast_through_the_proxy(router_proxies) -> None:
    redis, _ = router_proxies
    bus = ProxyBus(redis.url, TOPOLOGIES["router-proxy"])
    try:
        victim = bus.server(NAMES[0], topics=("solo",))
        client = bus.client()
        assert client.call("solo", "whoami", timeout=5) == NAMES[0]
        victim.kill()  # its registration stays until it expires, but no proxy can reach it
        time.sleep(0.5)
        started = time.monotonic()
        with pytest.raises(Unreachable, match="not connected"):
            client.call("solo", "whoami", timeout=10, server=NAMES[0])
        assert time.monotonic() - started < 2, "the proxy's UNROUTABLE notice should end the call early"
    finally:
        bus.close()


def test_replies_leave_through_the_proxy_the_call_came_from(router_proxies) -> None:
    """A caller connected to one proxy only (as a fresh client is, until its other connections are up)
    gets every reply: a server connected to 3 proxies answers through the one each request came from."""
    redis, _ = router_proxies
    bus = ProxyBus(redis.url, TOPOLOGIES["router-proxy"])
    matchmaker = RedisMatchMaker([(redis.host, redis.port)])
    caller = zmq.Context.instance().socket(zmq.DEALER)
    try:
        server = bus.server(NAMES[0], topics=("solo",))
        assert bus.client().call("solo", "whoami", timeout=5, server=NAMES[0]) == NAMES[0]
        caller.setsockopt(zmq.ROUTING_ID, b"one-proxy-caller")
        caller.setsockopt(zmq.LINGER, 0)
        caller.connect(f"tcp://{sorted(matchmaker.get_hosts(protocol.PROXY_FRONTENDS))[0]}")
        json_ = protocol.get_serializer("json")
        sent = set()
        for _ in range(30):
            body = {"message": {"method": "whoami", "args": {}}, "context": {}}
            frames = protocol.encode(protocol.MessageType.CALL, f"solo.{NAMES[0]}", body, json_)
            frames[1] = server.address.encode()  # the route: the server's routing id
            caller.send_multipart(frames)
            sent.add(protocol.decode(frames, 1 << 20).msg_id)
        replied = set()
        while caller.poll(3000):
            reply = protocol.decode(caller.recv_multipart(), 1 << 20)
            assert reply.type is protocol.MessageType.REPLY, reply
            replied.add(reply.msg_id)
        assert replied == sent, f"{len(sent - replied)} of {len(sent)} replies lost"
    finally:
        caller.close(0)
        matchmaker.close()
        bus.close()


def test_use_pub_sub_mismatch_is_reported_and_loses_nothing(router_proxies, caplog) -> None:
    redis, _ = router_proxies
    # Services believe in PUB/SUB, the proxies do not publish: fanout must still arrive, with a warning.
    bus = ProxyBus(redis.url, TOPOLOGIES["pubsub"])
    try:
        for server in NAMES:
            bus.server(server, topics=("fan",))
        client = bus.client()
        tag = f"mismatch-{time.monotonic_ns()}"
        with caplog.at_level(logging.WARNING, logger="zmqrpc.client"):
            assert client.fanout("fan", "record", {"tag": tag}) == len(NAMES)
        assert any("use_pub_sub" in r.getMessage() for r in caplog.records), caplog.text

        def counts() -> dict[str, int]:
            return {s: client.call("fan", "seen", timeout=5, server=s).count(tag) for s in NAMES}

        wait_for(lambda: all(counts().values()))
        assert counts() == dict.fromkeys(NAMES, 1)
    finally:
        bus.close()


def test_a_server_without_pub_sub_still_gets_published_fanout(tmp_path: Path, caplog) -> None:
    redis = RedisServer().start()
    proxies: list[ProxyProcess] = []
    bus = ProxyBus(redis.url, TOPOLOGIES["pubsub"])
    try:
        proxies = _start_proxies(tmp_path, redis, 3, True)
        bus.server(NAMES[0], topics=("fan",))
        bus.server(NAMES[1], topics=("fan",), use_pub_sub=False)  # misconfigured service
        client = bus.client()
        time.sleep(1.5)  # the subscriber connects to the publishers on its next sync
        tag = f"mixed-{time.monotonic_ns()}"
        with caplog.at_level(logging.WARNING, logger="zmqrpc.client"):
            client.fanout("fan", "record", {"tag": tag})
        assert any(NAMES[1] in r.getMessage() for r in caplog.records), caplog.text

        def counts() -> dict[str, int]:
            return {s: client.call("fan", "seen", timeout=5, server=s).count(tag) for s in NAMES}

        wait_for(lambda: all(counts().values()))
        time.sleep(0.3)
        assert counts() == dict.fromkeys(NAMES, 1)
    finally:
        bus.close()
        for proxy in proxies:
            proxy.stop()
        redis.stop()
