"""Ring and dummy matchmakers, and the routing cache / registrar on top of the dummy one."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from zmqrpc.config import load_settings
from zmqrpc.matchmaker import (
    DummyMatchMaker,
    MatchMaker,
    MatchmakerError,
    Registrar,
    RingMatchMaker,
    RoutingCache,
    create_matchmaker,
    load_ring,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

FOLSOM_RING = {"scheduler": ["sched1", "sched2"], "consoleauth": ["cauth1", "cauth2"]}
DEFAULT_PORT = 49153

WriteRing = Callable[[Any], str]


# --- ring -----------------------------------------------------------------------------------------


def test_folsom_ring_bare_topics(tmp_ring: WriteRing) -> None:
    mm = RingMatchMaker(tmp_ring(FOLSOM_RING), DEFAULT_PORT)
    assert mm.get_hosts("scheduler") == ["sched1:49153", "sched2:49153"]
    assert mm.get_hosts("consoleauth") == ["cauth1:49153", "cauth2:49153"]
    assert mm.get_hosts("compute") == []


def test_ring_directed_topics(tmp_ring: WriteRing) -> None:
    mm = RingMatchMaker(tmp_ring(FOLSOM_RING), DEFAULT_PORT)
    assert mm.get_hosts("scheduler.sched1") == ["sched1:49153"]
    assert mm.get_hosts("consoleauth.cauth2") == ["cauth2:49153"]
    # A host that is not in that topic's list, and a directed topic of an unknown topic.
    assert mm.get_hosts("scheduler.cauth1") == []
    assert mm.get_hosts("compute.sched1") == []


def test_ring_host_port_entries_and_dotted_hosts(tmp_ring: WriteRing) -> None:
    ring = {"compute": ["node1.example.org:6000", "node1.example.org:6001", "node2", "[::1]:7000"]}
    mm = RingMatchMaker(tmp_ring(ring), 5000)
    assert mm.get_hosts("compute") == [
        "[::1]:7000",
        "node1.example.org:6000",
        "node1.example.org:6001",
        "node2:5000",
    ]
    # Host names contain dots: the directed topic splits at the first dot only.
    assert mm.get_hosts("compute.node1.example.org") == ["node1.example.org:6000", "node1.example.org:6001"]
    assert mm.get_hosts("compute.node2") == ["node2:5000"]
    assert mm.get_hosts("compute.node1") == []


def test_ring_topics_and_noop_registration(tmp_ring: WriteRing) -> None:
    mm = RingMatchMaker(tmp_ring(FOLSOM_RING), DEFAULT_PORT)
    mm.register("scheduler", "other:1", 10)
    mm.unregister("scheduler", "sched1:49153")
    assert mm.get_hosts("scheduler") == ["sched1:49153", "sched2:49153"]
    assert mm.topics() == {
        "scheduler": {"sched1:49153": None, "sched2:49153": None},
        "consoleauth": {"cauth1:49153": None, "cauth2:49153": None},
    }
    assert mm.purge_expired() == 0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"scheduler": ["sched1",]', "not valid JSON"),
        ('["sched1", "sched2"]', "must be a JSON object"),
        ({"scheduler": "sched1"}, "topic 'scheduler': must map to a list of hosts"),
        ({"scheduler": ["sched1", 7]}, "host entries must be non-empty strings, got 7"),
        ({"scheduler": [""]}, "host entries must be non-empty strings"),
        ({"scheduler": ["sched1:http"]}, "bad host entry 'sched1:http'"),
        ({"scheduler": ["sched1:70000"]}, "bad host entry 'sched1:70000'"),
        ({"scheduler": ["fe80::1"]}, "must be written [addr]"),
    ],
)
def test_ring_bad_files_name_file_and_problem(tmp_ring: WriteRing, content: Any, message: str) -> None:
    path = tmp_ring(content)
    with pytest.raises(MatchmakerError) as err:
        RingMatchMaker(path, DEFAULT_PORT)
    assert path in str(err.value)
    assert message in str(err.value)


def test_ring_missing_file(tmp_path: Any) -> None:
    path = str(tmp_path / "nope.json")
    with pytest.raises(MatchmakerError, match="cannot read") as err:
        RingMatchMaker(path, DEFAULT_PORT)
    assert path in str(err.value)


def test_load_ring_reads_folsom_ring() -> None:
    assert load_ring(str(FIXTURES / "ring.json"), DEFAULT_PORT) == {
        "scheduler": [("sched1", "sched1:49153"), ("sched2", "sched2:49153")],
        "consoleauth": [("cauth1", "cauth1:49153"), ("cauth2", "cauth2:49153")],
    }


def test_create_matchmaker_ring_and_dummy(tmp_ring: WriteRing) -> None:
    ring = tmp_ring(FOLSOM_RING)
    settings = load_settings(
        url="zmq://",
        overrides={
            "rpc_zmq_matchmaker": "ring",
            "rpc_zmq_matchmaker_ringfile": ring,
            "rpc_zmq_min_port": 50000,
        },
    )
    mm = create_matchmaker(settings)
    assert isinstance(mm, RingMatchMaker)
    assert mm.get_hosts("scheduler.sched2") == ["sched2:50000"]
    dummy = load_settings(url="zmq://", overrides={"rpc_zmq_matchmaker": "dummy"})
    assert isinstance(create_matchmaker(dummy), DummyMatchMaker)
    with pytest.raises(MatchmakerError, match="unknown matchmaker 'zookeeper'"):
        create_matchmaker(dataclasses.replace(dummy, matchmaker="zookeeper"))


# --- dummy ----------------------------------------------------------------------------------------


@pytest.fixture
def dummy() -> Iterator[DummyMatchMaker]:
    DummyMatchMaker.clear()
    yield DummyMatchMaker()
    DummyMatchMaker.clear()


def test_dummy_shared_between_instances(dummy: DummyMatchMaker) -> None:
    dummy.register("compute", "h2:2", 60)
    dummy.register("compute", "h1:1", 60)
    dummy.register("compute", "h1:1", 60)  # re-registering does not duplicate
    other = DummyMatchMaker()
    assert other.get_hosts("compute") == ["h1:1", "h2:2"]
    other.unregister("compute", "h2:2")
    assert dummy.get_hosts("compute") == ["h1:1"]


def test_dummy_per_member_expiry(dummy: DummyMatchMaker) -> None:
    dummy.register("compute", "short:1", 1)
    dummy.register("compute", "long:1", 60)
    dummy.register("compute", "forever:1", 0)
    dummy.register("compute", "forever:2", -1)
    topics = dummy.topics()["compute"]
    assert topics["forever:1"] is None and topics["forever:2"] is None
    assert 0 < topics["short:1"] <= 1 and 59 < topics["long:1"] <= 60  # type: ignore[operator]
    time.sleep(1.1)
    assert dummy.get_hosts("compute") == ["forever:1", "forever:2", "long:1"]
    assert "short:1" not in dummy.topics()["compute"]
    assert dummy.purge_expired() == 1
    assert dummy.purge_expired() == 0


# --- routing cache --------------------------------------------------------------------------------


class CountingMatchMaker(DummyMatchMaker):
    """The dummy matchmaker, counting get_hosts calls and able to simulate an outage."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.down = False

    def get_hosts(self, topic: str) -> list[str]:
        self.calls += 1
        if self.down:
            raise MatchmakerError("dummy matchmaker down")
        return super().get_hosts(topic)


@pytest.fixture
def counting(dummy: DummyMatchMaker) -> CountingMatchMaker:
    return CountingMatchMaker()


def test_routing_cache_caches(counting: CountingMatchMaker) -> None:
    counting.register("compute", "h1:1", 60)
    cache = RoutingCache(counting, refresh_interval=60)
    try:
        assert cache.lookup("compute") == ["h1:1"]
        counting.register("compute", "h2:2", 60)
        for _ in range(100):
            assert cache.lookup("compute") == ["h1:1"]  # served from the cache
        assert counting.calls == 1
        assert cache.lookup("nobody") == []
        assert counting.calls == 2
        cache.invalidate("compute")
        assert cache.lookup("compute") == ["h1:1", "h2:2"]
        assert counting.calls == 3
    finally:
        cache.close()


def test_routing_cache_holds_a_forgotten_address_down(counting: CountingMatchMaker) -> None:
    counting.register("compute", "h1:1", 60)
    counting.register("compute", "h2:2", 60)
    counting.register("compute.h2", "h2:2", 60)
    cache = RoutingCache(counting, refresh_interval=60, hold_down=0.5)
    try:
        assert cache.lookup("compute") == ["h1:1", "h2:2"]
        assert cache.lookup("compute.h2") == ["h2:2"]
        cache.forget_address("h2:2")
        held_until = time.monotonic() + 0.5
        assert cache.lookup("compute") == ["h1:1"]
        assert cache.lookup("compute.h2") == []
        assert cache.lookup_cached("compute") == ["h1:1"]
        assert cache.lookup_cached("never-looked-up") == []
        calls = counting.calls
        cache.refresh()
        assert counting.calls == calls + 2  # one get_hosts per known topic
        # The matchmaker still lists h2 (a dead server stays registered until its entry expires), but it
        # stays out while held down, except where it is the only address of the topic.
        assert cache.lookup("compute") == ["h1:1"]
        assert cache.lookup("compute.h2") == ["h2:2"]
        cache.invalidate("compute")
        assert cache.lookup("compute") == ["h1:1"]  # a synchronous re-fetch honours the hold too
        time.sleep(max(0.0, held_until - time.monotonic()) + 0.05)
        cache.refresh()
        assert cache.lookup("compute") == ["h1:1", "h2:2"]  # the hold is over
    finally:
        cache.close()


def test_routing_cache_keeps_topics_read_from_the_cache_only(counting: CountingMatchMaker) -> None:
    """A server behind proxies looks its proxies up once, then reads them with lookup_cached: they must stay
    refreshed (an idle topic is dropped, and the server would then disconnect from every proxy)."""
    counting.register("zmqrpc-proxy.backend", "p1:1", 60)
    counting.register("compute", "h1:1", 60)
    cache = RoutingCache(counting, refresh_interval=0.05, idle_timeout=0.2)
    try:
        assert cache.lookup("zmqrpc-proxy.backend") == ["p1:1"]
        assert cache.lookup("compute") == ["h1:1"]
        deadline = time.monotonic() + 0.6
        while time.monotonic() < deadline:
            assert cache.lookup_cached("zmqrpc-proxy.backend") == ["p1:1"]
            time.sleep(0.05)
        assert cache.lookup_cached("compute") == []  # not used at all: dropped as idle
    finally:
        cache.close()


def test_routing_cache_background_refresh_and_outage(counting: CountingMatchMaker) -> None:
    counting.register("compute", "h1:1", 60)
    cache = RoutingCache(counting, refresh_interval=0.1)
    try:
        assert cache.lookup("compute") == ["h1:1"]
        counting.register("compute", "h2:2", 60)
        _wait(lambda: cache.lookup("compute") == ["h1:1", "h2:2"], "background refresh")
        counting.down = True
        time.sleep(0.3)  # several failed refreshes: the known routes stay
        assert cache.lookup("compute") == ["h1:1", "h2:2"]
        cache.invalidate()
        assert cache.lookup("compute") == ["h1:1", "h2:2"]  # sync re-fetch fails: stale routes served
        with pytest.raises(MatchmakerError, match="down"):
            cache.lookup("unknown-topic")  # nothing known: the caller must see the error
        counting.down = False
        counting.unregister("compute", "h1:1")
        _wait(lambda: cache.lookup("compute") == ["h2:2"], "refresh after the outage")
    finally:
        cache.close()
    assert not any(t.name == "zmqrpc-routing-cache" and t.is_alive() for t in threading.enumerate())


def test_registrar_registers_refreshes_and_closes(dummy: DummyMatchMaker) -> None:
    registrar = Registrar(dummy, expire=1, update_interval=0.3)
    try:
        registrar.add("compute", "h1:1")
        registrar.add("compute.h1", "h1:1")
        assert dummy.get_hosts("compute") == ["h1:1"]
        time.sleep(1.5)  # longer than expire: only the refreshes keep it alive
        assert dummy.get_hosts("compute.h1") == ["h1:1"]
        registrar.remove("compute.h1", "h1:1")
        assert dummy.get_hosts("compute.h1") == []
    finally:
        started = time.monotonic()
        registrar.close()
        assert time.monotonic() - started < 1.5
    assert dummy.get_hosts("compute") == []


def test_registrar_never_raises_and_retries(dummy: DummyMatchMaker) -> None:
    class FlakyMatchMaker(DummyMatchMaker):
        down = True

        def register(self, topic: str, address: str, expire: int) -> None:
            if self.down:
                raise MatchmakerError("flaky matchmaker down")
            super().register(topic, address, expire)

    flaky = FlakyMatchMaker()
    registrar = Registrar(flaky, expire=60, update_interval=30, retry_interval=0.1)
    try:
        registrar.add("compute", "h1:1")  # must not raise
        assert registrar.pending == {("compute", "h1:1")}
        assert flaky.get_hosts("compute") == []
        flaky.down = False
        _wait(lambda: flaky.get_hosts("compute") == ["h1:1"], "pending registration to land")
        assert registrar.pending == set()
    finally:
        registrar.close()


def _wait(predicate: Callable[[], bool], what: str, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_empty_ring_is_valid(tmp_ring: WriteRing) -> None:
    mm = RingMatchMaker(tmp_ring({}), 1)
    assert isinstance(mm, MatchMaker)
    assert mm.get_hosts("scheduler") == [] and mm.topics() == {}


def test_dummy_matchmaker_shares_registrations_between_processes_through_its_state_dir(tmp_path) -> None:
    import subprocess
    import sys

    code = (
        "import sys; from zmqrpc.matchmaker import DummyMatchMaker as D; "
        "m = D(sys.argv[1]); m.register('agent', '127.0.0.1:5001', 60); m.register('agent', 'gone:1', 0); "
        "D(sys.argv[1]).unregister('agent', 'gone:1')"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True)
    shared = DummyMatchMaker(str(tmp_path))
    assert shared.get_hosts("agent") == ["127.0.0.1:5001"]
    assert 0 < shared.topics()["agent"]["127.0.0.1:5001"] <= 60
    assert DummyMatchMaker().get_hosts("agent") == [], "the in-process store is separate"
    shared.register("short", "h:1", 1)
    time.sleep(1.1)
    assert shared.get_hosts("short") == [] and shared.purge_expired() == 1
