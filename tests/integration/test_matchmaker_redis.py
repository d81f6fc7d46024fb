"""Redis and Sentinel matchmakers against real redis-server / redis-sentinel processes."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator

import pytest

from tests.servers import RedisServer, SentinelCluster, wait_until
from zmqrpc.config import load_settings
from zmqrpc.matchmaker import (
    MatchmakerError,
    RedisMatchMaker,
    Registrar,
    RoutingCache,
    SentinelMatchMaker,
    create_matchmaker,
)

pytestmark = pytest.mark.integration

RedisFactory = Callable[..., RedisServer]


@pytest.fixture
def mm(redis_server: RedisServer) -> Iterator[RedisMatchMaker]:
    matchmaker = RedisMatchMaker([redis_server.address], socket_timeout=2.0)
    yield matchmaker
    matchmaker.close()


def test_register_get_hosts_unregister(mm: RedisMatchMaker, redis_server: RedisServer) -> None:
    mm.register("compute", "10.0.0.2:5000", 60)
    mm.register("compute", "10.0.0.1:5000", 60)
    mm.register("compute", "10.0.0.1:5000", 60)  # refresh, not a duplicate
    mm.register("compute.host1.example.org", "10.0.0.1:5000", 60)
    assert mm.get_hosts("compute") == ["10.0.0.1:5000", "10.0.0.2:5000"]
    assert mm.get_hosts("compute.host1.example.org") == ["10.0.0.1:5000"]
    assert mm.get_hosts("compute.host2") == []

    # The documented layout: one sorted set per topic scored by absolute expiry, plus a topic index.
    client = redis_server.client()
    score = client.zscore("zmqrpc:topic:compute", "10.0.0.1:5000")
    assert score is not None and 55 < score - time.time() <= 60
    assert 55 < client.ttl("zmqrpc:topic:compute") <= 61
    assert client.smembers("zmqrpc:topics") == {"compute", "compute.host1.example.org"}

    topics = mm.topics()
    assert set(topics) == {"compute", "compute.host1.example.org"}
    assert all(55 < left <= 60 for left in topics["compute"].values())  # type: ignore[operator]

    mm.unregister("compute", "10.0.0.2:5000")
    mm.unregister("compute", "not-there:1")  # harmless
    assert mm.get_hosts("compute") == ["10.0.0.1:5000"]


def test_expiry_is_per_member(mm: RedisMatchMaker, redis_server: RedisServer) -> None:
    mm.register("compute", "short:1", 1)
    mm.register("compute", "long:1", 30)
    assert mm.get_hosts("compute") == ["long:1", "short:1"]
    time.sleep(1.1)
    # The set still holds the expired member, but it is not served (old bug 1417464).
    assert redis_server.client().zcard("zmqrpc:topic:compute") == 2
    assert mm.get_hosts("compute") == ["long:1"]
    assert set(mm.topics()["compute"]) == {"long:1"}
    assert mm.purge_expired() == 1
    assert redis_server.client().zrange("zmqrpc:topic:compute", 0, -1) == ["long:1"]
    # The key's own TTL follows its longest-lived member, not the last registration.
    mm.register("compute", "short:1", 1)
    assert redis_server.client().ttl("zmqrpc:topic:compute") > 20


def test_topic_key_expires_with_its_last_member(mm: RedisMatchMaker, redis_server: RedisServer) -> None:
    mm.register("gone", "h:1", 1)
    time.sleep(2.1)  # EXPIREAT has one-second resolution
    assert redis_server.client().exists("zmqrpc:topic:gone") == 0
    assert mm.topics() == {}
    mm.purge_expired()
    assert redis_server.client().smembers("zmqrpc:topics") == set()


def test_non_positive_expire_never_expires(mm: RedisMatchMaker, redis_server: RedisServer) -> None:
    mm.register("static", "forever:1", 0)
    mm.register("static", "forever:2", -1)
    mm.register("static", "short:1", 1)
    client = redis_server.client()
    assert client.zscore("zmqrpc:topic:static", "forever:1") == math.inf
    assert client.ttl("zmqrpc:topic:static") == -1  # a never-expiring member keeps the key
    time.sleep(1.1)
    assert mm.get_hosts("static") == ["forever:1", "forever:2"]
    assert mm.topics() == {"static": {"forever:1": None, "forever:2": None}}


def test_two_independent_hosts(redis_factory: RedisFactory) -> None:
    r1, r2 = redis_factory(), redis_factory()
    mm = RedisMatchMaker([r1.address, f"127.0.0.1:{r2.port}"], socket_timeout=2.0)
    try:
        mm.register("compute", "a:1", 60)
        assert r1.client().zrange("zmqrpc:topic:compute", 0, -1) == ["a:1"]
        assert r2.client().zrange("zmqrpc:topic:compute", 0, -1) == ["a:1"]
        # A member known to only one host is still found: reads are the union.
        r2.client().zadd("zmqrpc:topic:compute", {"b:1": time.time() + 60})
        assert mm.get_hosts("compute") == ["a:1", "b:1"]

        r1.stop()
        started = time.monotonic()
        assert mm.get_hosts("compute") == ["a:1", "b:1"]
        mm.register("compute", "c:1", 60)
        assert time.monotonic() - started < 1.0  # a dead host does not stall the others
        assert mm.get_hosts("compute") == ["a:1", "b:1", "c:1"]

        r2.stop()
        with pytest.raises(MatchmakerError) as err:
            mm.get_hosts("compute")
        assert f"127.0.0.1:{r1.port}" in str(err.value) and f"127.0.0.1:{r2.port}" in str(err.value)
        assert "compute" in str(err.value)
        with pytest.raises(MatchmakerError):
            mm.register("compute", "d:1", 60)
    finally:
        mm.close()


def test_auth_errors_are_matchmaker_errors(redis_factory: RedisFactory) -> None:
    server = redis_factory(password="s3cret")
    good = RedisMatchMaker([server.address], password="s3cret")
    good.register("compute", "a:1", 60)
    assert good.get_hosts("compute") == ["a:1"]
    good.close()
    for password in (None, "wrong"):
        bad = RedisMatchMaker([server.address], password=password)
        with pytest.raises(MatchmakerError, match=f"redis 127.0.0.1:{server.port}"):
            bad.get_hosts("compute")
        bad.close()


def test_create_matchmaker_redis(redis_server: RedisServer) -> None:
    mm = create_matchmaker(load_settings(url=f"zmq+redis://127.0.0.1:{redis_server.port}"))
    assert isinstance(mm, RedisMatchMaker) and not isinstance(mm, SentinelMatchMaker)
    mm.register("compute", "a:1", 60)
    assert redis_server.client().zrange("zmqrpc:topic:compute", 0, -1) == ["a:1"]
    mm.close()


def test_registrar_keeps_registrations_alive(mm: RedisMatchMaker, redis_server: RedisServer) -> None:
    registrar = Registrar(mm, expire=1, update_interval=0.3)
    try:
        registrar.add("compute", "h1:1")
        first = redis_server.client().zscore("zmqrpc:topic:compute", "h1:1")
        assert first is not None
        time.sleep(1.5)  # longer than expire: only the refreshes keep it
        assert mm.get_hosts("compute") == ["h1:1"]
        assert (redis_server.client().zscore("zmqrpc:topic:compute", "h1:1") or 0) > first + 0.5
    finally:
        registrar.close()
    assert mm.get_hosts("compute") == []  # close() unregisters


def test_redis_outage_cache_serves_and_registrations_resume(redis_server: RedisServer) -> None:
    client_mm = RedisMatchMaker([redis_server.address], socket_timeout=1.0)
    server_mm = RedisMatchMaker([redis_server.address], socket_timeout=1.0)
    registrar = Registrar(server_mm, expire=30, update_interval=0.5, retry_interval=0.1)
    cache = RoutingCache(client_mm, refresh_interval=0.2)
    try:
        registrar.add("compute", "a:1")
        assert cache.lookup("compute") == ["a:1"]

        redis_server.stop()
        time.sleep(0.5)  # let background refreshes fail
        started = time.monotonic()
        for _ in range(1000):
            assert cache.lookup("compute") == ["a:1"]  # known routes survive the outage
        cache.invalidate("compute")
        assert cache.lookup("compute") == ["a:1"]
        assert time.monotonic() - started < 1.0
        with pytest.raises(MatchmakerError, match=f"127.0.0.1:{redis_server.port}"):
            cache.lookup("never-seen")

        registrar.add("compute", "b:1")  # Redis is down: pending, not raised
        assert ("compute", "b:1") in registrar.pending

        redis_server.start()  # same port, empty dataset
        check = redis_server.client()
        wait_until(
            lambda: check.zrange("zmqrpc:topic:compute", 0, -1) == ["a:1", "b:1"],
            5,
            "registrations to land after Redis returned",
        )
        assert registrar.pending == set()
        wait_until(lambda: cache.lookup("compute") == ["a:1", "b:1"], 5, "routing cache to refresh")
    finally:
        cache.close()
        registrar.close()
        client_mm.close()
        server_mm.close()


# --- Sentinel -------------------------------------------------------------------------------------


@pytest.fixture
def sentinel_mm(sentinel_cluster: SentinelCluster) -> Iterator[SentinelMatchMaker]:
    matchmaker = SentinelMatchMaker(
        sentinel_cluster.sentinel_addresses, sentinel_cluster.group, socket_timeout=1.0
    )
    yield matchmaker
    matchmaker.close()


def _members(server: RedisServer, topic: str) -> list[str]:
    return sorted(str(m) for m in server.client().zrange(f"zmqrpc:topic:{topic}", 0, -1))


def test_sentinel_register_on_master_read_back(
    sentinel_cluster: SentinelCluster, sentinel_mm: SentinelMatchMaker
) -> None:
    sentinel_mm.register("compute", "a:1", 60)
    assert _members(sentinel_cluster.master, "compute") == ["a:1"]
    # Reads come from the replica, which may lag by the replication delay.
    replica = sentinel_cluster.replica
    assert replica is not None
    wait_until(lambda: _members(replica, "compute") == ["a:1"], 5, "replication")
    assert sentinel_mm.get_hosts("compute") == ["a:1"]
    assert set(sentinel_mm.topics()["compute"]) == {"a:1"}
    sentinel_mm.unregister("compute", "a:1")
    assert _members(sentinel_cluster.master, "compute") == []


def test_create_matchmaker_sentinel(sentinel_cluster: SentinelCluster) -> None:
    sentinels = ",".join(f"{h}:{p}" for h, p in sentinel_cluster.sentinel_addresses)
    mm = create_matchmaker(load_settings(url=f"zmq+sentinel://{sentinels}/{sentinel_cluster.group}"))
    assert isinstance(mm, SentinelMatchMaker)
    mm.register("scheduler", "s:1", 60)
    assert _members(sentinel_cluster.master, "scheduler") == ["s:1"]
    mm.close()


def test_sentinel_unknown_group_is_matchmaker_error(sentinel_cluster: SentinelCluster) -> None:
    mm = SentinelMatchMaker(sentinel_cluster.sentinel_addresses, "no-such-group", socket_timeout=1.0)
    with pytest.raises(MatchmakerError, match="no-such-group"):
        mm.register("compute", "a:1", 60)
    mm.close()


# Keep last in the module: it fails the shared cluster over (the cluster stays usable afterwards).
def test_sentinel_failover(sentinel_cluster: SentinelCluster, sentinel_mm: SentinelMatchMaker) -> None:
    sentinel_mm.register("failover", "before:1", 60)
    old_master = sentinel_cluster.master
    assert _members(old_master, "failover") == ["before:1"]
    replica = sentinel_cluster.replica
    assert replica is not None
    wait_until(lambda: _members(replica, "failover") == ["before:1"], 5, "replication")

    new_master = sentinel_cluster.kill_master_and_wait_failover(timeout=20)
    assert new_master.port != old_master.port

    # The pooled connection still points at the dead master: the one immediate retry reconnects, and
    # redis-py's Sentinel client discovers the new master, so the very first register succeeds.
    sentinel_mm.register("failover", "after:1", 60)
    assert _members(new_master, "failover") == ["after:1", "before:1"]
    assert new_master.role() == "master"
    wait_until(lambda: sentinel_mm.get_hosts("failover") == ["after:1", "before:1"], 5, "read after failover")
