"""What happens when parts fail: Redis stopped, a server killed, garbage on a server's socket."""

from __future__ import annotations

import os
import time

import pytest
import zmq

from tests.integration.test_direct import Bus
from tests.procs import ServerProcess
from tests.servers import RedisServer, wait_for
from zmqrpc import client as client_module
from zmqrpc import protocol
from zmqrpc.errors import CallTimeout, RemoteError
from zmqrpc.protocol import MessageType

pytestmark = pytest.mark.integration

MODES = ["static", "dynamic"]


@pytest.mark.parametrize("mode", MODES)
def test_rpc_survives_redis_outage_and_late_servers_register_when_it_returns(mode: str) -> None:
    with RedisServer() as redis:
        bus = Bus(redis.url, mode)
        try:
            bus.server("127.0.0.2", topics=["echo"])
            client = bus.client()
            assert client.call("echo", "whoami", timeout=5) == "127.0.0.2"
            redis.stop()
            # Hosts already known keep talking while the matchmaker is gone (old bug 1610958).
            for _ in range(20):
                assert client.call("echo", "whoami", timeout=5) == "127.0.0.2"
            time.sleep(1.5)  # past a cache refresh and a registration update, both failing now
            assert client.call("echo", "whoami", timeout=5) == "127.0.0.2"
            late = bus.server("127.0.0.3", topics=["late"])
            redis.start()
            # Its pending registration lands once Redis is back, and the client's cache picks it up.
            answer = wait_for(lambda: _try_call(client, "late"), timeout=15)
            assert answer == late.server
        finally:
            bus.close()


def _try_call(client, topic: str):
    try:
        return client.call(topic, "whoami", timeout=2)
    except Exception:
        return None


@pytest.mark.parametrize("mode", MODES)
def test_call_to_a_killed_server_times_out_within_timeout_plus_one_second(redis_server, mode: str) -> None:
    bus = Bus(redis_server.url, mode)
    try:
        victim = bus.server("127.0.0.2", topics=["solo"])
        client = bus.client()
        assert client.call("solo", "whoami", timeout=5) == "127.0.0.2"
        victim.kill()
        for timeout in (1.0, 2.0):
            started = time.monotonic()
            with pytest.raises(CallTimeout):
                client.call("solo", "whoami", timeout=timeout)
            assert time.monotonic() - started <= timeout + 1.0
    finally:
        bus.close()


def test_dynamic_calls_after_a_worker_dies_reach_the_live_worker(redis_server) -> None:
    bus = Bus(redis_server.url, "dynamic")
    try:
        victim = bus.server("127.0.0.2", topics=["work"])
        bus.server("127.0.0.3", topics=["work"])
        client = bus.client()
        assert {client.call("work", "whoami", timeout=5) for _ in range(10)} == {"127.0.0.2", "127.0.0.3"}
        victim.kill()
        # The dead worker is still registered (its entry has not expired), yet every call succeeds.
        answers = [client.call("work", "whoami", timeout=5) for _ in range(20)]
        assert answers == ["127.0.0.3"] * 20
    finally:
        bus.close()


def test_a_dead_worker_stays_out_of_the_routes_while_still_registered(redis_server) -> None:
    # Static connections: the client gives up on the dead worker after zmq_connect_timeout and holds its
    # address down. (Dynamic sends never wait that long: after 50 ms they also connect to the other
    # workers, and the first to accept takes the message; test_dynamic_calls_after_a_worker_dies...)
    bus = Bus(redis_server.url, "static")
    try:
        # A long expiry: the dead worker stays in Redis for the whole test, as it does in production.
        victim = bus.server("127.0.0.2", topics=["held"], zmq_target_expire=60)
        bus.server("127.0.0.3", topics=["held"], zmq_target_expire=60)
        client = bus.client()
        assert {client.call("held", "whoami", timeout=5) for _ in range(10)} == {"127.0.0.2", "127.0.0.3"}
        victim.kill()
        assert [client.call("held", "whoami", timeout=5) for _ in range(10)] == ["127.0.0.3"] * 10
        assert victim.address not in client.routes.lookup_cached("held")
        time.sleep(2.5)  # more than two cache refreshes (rpc_zmq_cache_refresh = 1)
        assert victim.address in client.matchmaker.get_hosts("held")
        # Without a hold-down every refresh brought it back, and the next call routed to it waited
        # zmq_connect_timeout before going elsewhere.
        assert victim.address not in client.routes.lookup_cached("held")
        assert [client.call("held", "whoami", timeout=5) for _ in range(10)] == ["127.0.0.3"] * 10
    finally:
        bus.close()


def test_garbage_is_dropped_counted_and_the_server_keeps_serving(redis_server) -> None:
    bus = Bus(redis_server.url, "static")
    try:
        target = bus.server("127.0.0.2", topics=["echo"], rpc_zmq_max_message_size=65536)
        client = bus.client()
        serializer = protocol.get_serializer("json")
        good = protocol.encode(MessageType.CAST, "echo", {"message": {}, "context": {}}, serializer)
        wrong_version = bytearray(good[0])
        wrong_version[2] = 99
        garbage = {
            "bad frame count": [[os.urandom(64)], [good[0], good[1], good[2]]],
            "bad header": [[os.urandom(7), b"", b"echo", b"{}"]],
            "unsupported version": [[bytes(wrong_version), *good[1:]]],
            "bad body": [[good[0], b"", b"echo", b"\xff{not json"], [good[0], b"", b"echo", b"[1, 2]"]],
            "oversized": [[good[0], b"", b"echo", b'{"x": "' + b"a" * 70000 + b'"}']],
            "wrong topic": [[good[0], b"", b"somebody-else", good[3]]],
        }
        ctx = zmq.Context.instance()
        raw = ctx.socket(zmq.DEALER)
        raw.connect(f"tcp://{target.address}")
        for messages in garbage.values():
            for frames in messages:
                raw.send_multipart(frames)
        raw.close(linger=2000)
        expected = {reason: len(messages) for reason, messages in garbage.items()}
        counts = wait_for(
            lambda: (c := client.call("echo", "drops", timeout=5, server="127.0.0.2")) == expected and c,
            timeout=10,
        )
        assert counts == expected, client.call("echo", "drops", timeout=5, server="127.0.0.2")
        assert client.call("echo", "whoami", timeout=5) == "127.0.0.2"
    finally:
        bus.close()


def test_bounded_pool_limits_concurrent_dispatch(redis_server) -> None:
    bus = Bus(redis_server.url, "static")
    try:
        bus.server("127.0.0.2", topics=["slow"], rpc_thread_pool_size=2)
        client = bus.client()
        futures = [client.call_async("slow", "sleep", {"seconds": 0.3}, timeout=10) for _ in range(6)]
        assert [client.wait(f, 10) for f in futures] == ["127.0.0.2"] * 6
        assert client.call("slow", "peak", timeout=5) == 2
    finally:
        bus.close()


def test_a_long_call_holds_up_no_other_request(redis_server) -> None:
    """Workers take requests round robin; one that waits at a worker busy with a long call is dealt again."""
    bus = Bus(redis_server.url, "static")
    try:
        bus.server("127.0.0.2", topics=["slow"], rpc_thread_pool_size=8)
        client = bus.client()
        client.call("slow", "whoami", timeout=5)
        long_calls = [client.call_async("slow", "sleep", {"seconds": 3}, timeout=10) for _ in range(2)]
        time.sleep(0.2)
        started = time.monotonic()
        quick = [client.call_async("slow", "whoami", timeout=10) for _ in range(20)]
        assert [client.wait(f, 10) for f in quick] == ["127.0.0.2"] * 20
        assert time.monotonic() - started < 1.5, "quick calls waited behind the long ones"
        assert [client.wait(f, 10) for f in long_calls] == ["127.0.0.2"] * 2
    finally:
        bus.close()


def test_replies_that_cannot_be_framed_fail_the_call_and_the_server_keeps_serving(redis_server) -> None:
    """Before, each RecursionError while framing a reply leaked a worker slot: after rpc_thread_pool_size of
    them the server answered nothing."""
    bus = Bus(redis_server.url, "static")
    try:
        bus.server("127.0.0.2", topics=["framing"], rpc_thread_pool_size=4, rpc_zmq_serialization="msgpack")
        client = bus.client(rpc_zmq_serialization="msgpack")
        for _ in range(30):
            with pytest.raises(RemoteError, match=r"(?i)recursion"):
                client.call("framing", "deep", timeout=5)
        assert client.call("framing", "whoami", timeout=5) == "127.0.0.2"
    finally:
        bus.close()


def test_casts_from_one_client_arrive_in_the_order_sent(redis_server) -> None:
    """Including the first ones, sent while the connection to the server is still being made. (Dynamic
    mode makes a connection per message, so it cannot keep order.)

    One worker: the order the handler sees is then the order of arrival. With more, a handler slowed past
    RESCUE_AFTER by a loaded machine makes the server start a second worker and deal again what waited,
    and two workers run casts side by side, in no promised order."""
    bus = Bus(redis_server.url, "static")
    try:
        bus.server("127.0.0.2", topics=["ordered"], rpc_thread_pool_size=1)
        client = bus.client()
        for n in range(300):
            client.cast("ordered", "record", {"tag": n})
        seen = wait_for(
            lambda: (got := client.call("ordered", "seen", timeout=10)) and len(got) == 300 and got
        )
        assert seen == list(range(300))
    finally:
        bus.close()


def test_each_notification_pool_gets_one_copy_shared_by_its_listeners(redis_server) -> None:
    bus = Bus(redis_server.url, "static")
    listeners = {"127.0.0.2": None, "127.0.0.3": "audit", "127.0.0.4": "audit", "127.0.0.5": "billing"}
    try:
        for name, pool in listeners.items():
            overrides = {**bus.options(), "rpc_zmq_host": name, "rpc_zmq_bind_address": name}
            bus.servers.append(ServerProcess(bus.url, ["events.info"], name, pool=pool, **overrides).start())
        client = bus.client()
        for n in range(12):
            client.notify("events", "info", "volume.create", {"n": n})

        def received() -> dict[str, list[int]]:
            got = {}
            for name, pool in listeners.items():
                topic = f"events.info@{pool}" if pool else "events.info"
                seen = client.call(topic, "seen", timeout=5, server=name)
                got[name] = sorted(m["payload"]["n"] for m in seen)
            return got

        def per_pool() -> dict[str | None, list[int]]:
            pools: dict[str | None, list[int]] = {}
            for name, numbers in received().items():
                pools.setdefault(listeners[name], []).extend(numbers)
            return {pool: sorted(numbers) for pool, numbers in pools.items()}

        wait_for(lambda: all(len(v) == 12 for v in per_pool().values()))
        time.sleep(0.3)
        assert per_pool() == {pool: list(range(12)) for pool in (None, "audit", "billing")}
        audit = received()
        assert audit["127.0.0.3"] and audit["127.0.0.4"], "the audit pool's listeners should share the load"
    finally:
        bus.close()


def test_dynamic_mode_bounds_its_sockets_and_delivers_everything(redis_server, monkeypatch) -> None:
    monkeypatch.setattr(client_module, "MAX_DYNAMIC_LINKS", 8)
    bus = Bus(redis_server.url, "dynamic")
    try:
        bus.server("127.0.0.2", topics=["burst"])
        client = bus.client()
        peak = 0
        for n in range(600):
            client.cast("burst", "record", {"tag": n})
            peak = max(peak, client._dynamic_links)
        seen = wait_for(lambda: len(client.call("burst", "seen", timeout=10)) == 600 and True, timeout=30)
        assert seen, f"{len(client.call('burst', 'seen', timeout=10))} of 600 casts delivered"
        assert sorted(client.call("burst", "seen", timeout=10)) == list(range(600))
        assert peak <= 8 and client.undelivered == 0
    finally:
        bus.close()
