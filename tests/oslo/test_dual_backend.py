"""Dual backend (zmq + a real RabbitMQ), as a fleet migrating off the broker runs it.

Servers are separate processes: a zmq-only one, a RabbitMQ-only one (oslo.messaging's own rabbit driver,
zmqrpc not involved) and dual ones (``zmq_fallback_transport_url``). The client is this process, dual.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import oslo_messaging
import pytest
from oslo_config import cfg
from oslo_context.context import RequestContext

from tests.oslo.conftest import (
    ALLOWED_EXMODS,
    FAST,
    OsloNode,
    RabbitMQ,
    start_all,
    stop_all,
    zmq_url,
)
from tests.servers import RedisServer, wait_for

pytestmark = pytest.mark.integration

TOPIC = "compute"


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def dual_options(rabbitmq: RabbitMQ, ip: str) -> dict[str, object]:
    return {
        **FAST,
        "rpc_zmq_host": ip,
        "rpc_zmq_bind_address": ip,
        "zmq_fallback_transport_url": rabbitmq.url,
    }


def dual_client_transport(redis: RedisServer, rabbitmq: RabbitMQ) -> oslo_messaging.Transport:
    url = zmq_url(redis.port, rpc_zmq_host="127.0.0.1", zmq_fallback_transport_url=rabbitmq.url, **FAST)
    return oslo_messaging.get_rpc_transport(cfg.CONF, url=url, allowed_remote_exmods=ALLOWED_EXMODS)


def test_dual_client_reaches_zmq_servers_over_zmq_and_rabbit_only_servers_over_rabbitmq(
    redis: RedisServer, rabbitmq: RabbitMQ, tmp_path: Path
) -> None:
    zmq_only = OsloNode(
        tmp_path, "server", TOPIC, "zmq-node", zmq_url(redis.port), {**FAST, "rpc_zmq_host": "127.0.0.2"}
    )
    rabbit_only = OsloNode(tmp_path, "server", TOPIC, "rabbit-node", rabbitmq.url)
    dual = OsloNode(
        tmp_path, "server", TOPIC, "dual-node", zmq_url(redis.port), dual_options(rabbitmq, "127.0.0.3")
    )
    listener = OsloNode(
        tmp_path,
        "listener",
        "events",
        "dual-listener",
        zmq_url(redis.port),
        dual_options(rabbitmq, "127.0.0.4"),
    )
    nodes = start_all([zmq_only, rabbit_only, dual, listener])
    transport = dual_client_transport(redis, rabbitmq)
    legacy = oslo_messaging.get_rpc_transport(cfg.CONF, url=rabbitmq.url)
    zmq_fanout = oslo_messaging.get_rpc_transport(
        cfg.CONF,
        url=zmq_url(
            redis.port,
            rpc_zmq_host="127.0.0.1",
            zmq_fallback_transport_url=rabbitmq.url,
            zmq_fallback_fanout=False,
        ),
    )
    notifier_transport = oslo_messaging.get_notification_transport(
        cfg.CONF, url=zmq_url(redis.port, rpc_zmq_host="127.0.0.1", zmq_fallback_transport_url=rabbitmq.url)
    )
    try:
        client = oslo_messaging.get_rpc_client(transport, oslo_messaging.Target(topic=TOPIC), timeout=15)
        # zmq-node has no RabbitMQ at all and rabbit-node no zmq: each answer proves the path taken.
        for name in ("zmq-node", "rabbit-node", "dual-node"):
            assert client.prepare(server=name).call({}, "whoami") == name
        # A bare topic is registered in the matchmaker (zmq-node, dual-node): it goes over zmq.
        answers = Counter(client.call({}, "whoami") for _ in range(10))
        assert set(answers) == {"zmq-node", "dual-node"}, answers
        # The dual server still serves clients that only know RabbitMQ.
        legacy_client = oslo_messaging.get_rpc_client(
            legacy, oslo_messaging.Target(topic=TOPIC, server="dual-node")
        )
        assert legacy_client.call({}, "whoami") == "dual-node"

        casts = {
            name: f"cast-{name}-{uuid.uuid4().hex[:6]}" for name in ("zmq-node", "rabbit-node", "dual-node")
        }
        for name, tag in casts.items():
            client.prepare(server=name).cast({}, "record", tag=tag)
        # Fanout goes over the fallback while some servers listen there only (zmq_fallback_fanout).
        fan = f"fan-{uuid.uuid4().hex[:6]}"
        client.prepare(fanout=True).cast({}, "record", tag=fan)
        by_node = {n.name: n for n in (zmq_only, rabbit_only, dual)}
        wait_for(lambda: all(casts[n] in by_node[n].tags() for n in casts), timeout=15)
        wait_for(lambda: fan in rabbit_only.tags() and fan in dual.tags(), timeout=15)
        time.sleep(0.5)
        for name, tag in casts.items():
            assert by_node[name].tags().count(tag) == 1, name
        assert rabbit_only.tags().count(fan) == 1
        assert dual.tags().count(fan) == 1, "a dual server must get a fanout once, not once per backend"
        assert fan not in zmq_only.tags()  # why step 4 of the migration comes before step 5

        # Migration step 4 (every node runs the zmq receiver): zmq_fallback_fanout = false sends fanout
        # over zmq, to every registered receiver.
        fan_zmq = f"fan-zmq-{uuid.uuid4().hex[:6]}"
        oslo_messaging.get_rpc_client(zmq_fanout, oslo_messaging.Target(topic=TOPIC, fanout=True)).cast(
            {}, "record", tag=fan_zmq
        )
        wait_for(lambda: fan_zmq in zmq_only.tags() and fan_zmq in dual.tags(), timeout=15)
        time.sleep(0.3)
        assert (zmq_only.tags().count(fan_zmq), dual.tags().count(fan_zmq)) == (1, 1)
        assert fan_zmq not in rabbit_only.tags()

        notifier = oslo_messaging.Notifier(
            notifier_transport, publisher_id="dual-test", driver="messaging", topics=["events"]
        )
        event = f"event-{uuid.uuid4().hex[:6]}"
        for n in range(5):
            notifier.info(RequestContext(user_id="u"), event, {"n": n})

        def notified() -> list[int]:
            return sorted(r["payload"]["n"] for r in listener.records() if r.get("event_type") == event)

        wait_for(lambda: len(notified()) >= 5, timeout=15)
        time.sleep(0.3)
        assert notified() == list(range(5))
    finally:
        for each in (transport, legacy, zmq_fanout, notifier_transport):
            each.cleanup()
        stop_all(nodes)


def registrations(redis: RedisServer, topic: str) -> int:
    """How many receivers the Redis matchmaker lists for ``topic`` (read with redis-py)."""
    with redis.client() as client:
        return sum(int(client.zcard(key)) for key in client.scan_iter(match=f"*:{topic}", _type="zset"))


def test_stopping_the_zmq_receiver_moves_traffic_to_rabbitmq_without_losing_calls(
    redis: RedisServer, rabbitmq: RabbitMQ, tmp_path: Path
) -> None:
    options = dual_options(rabbitmq, "127.0.0.5")
    node = OsloNode(tmp_path, "server", "migrate", "mig-node", zmq_url(redis.port), options).start()
    transport = dual_client_transport(redis, rabbitmq)
    client = oslo_messaging.get_rpc_client(
        transport, oslo_messaging.Target(topic="migrate", server="mig-node"), timeout=30
    )
    replies: list[str] = []
    errors: list[BaseException] = []
    done = threading.Event()
    lock = threading.Lock()

    def stream(worker: int) -> None:
        n = 0
        while not done.is_set():
            tag = f"{worker}-{n}"
            try:
                client.call({}, "record", tag=tag)
            except BaseException as exc:
                with lock:
                    errors.append(exc)
                return
            with lock:
                replies.append(tag)
            n += 1

    def calls_keep_flowing(count: int = 100) -> None:
        start = len(replies)
        flowing = wait_for(lambda: len(replies) >= start + count or errors, timeout=30)
        assert flowing and not errors, errors[:3]

    workers = [threading.Thread(target=stream, args=(i,)) for i in range(4)]
    try:
        assert wait_for(lambda: registrations(redis, "migrate.mig-node") == 1)
        for worker in workers:
            worker.start()
        calls_keep_flowing()
        # Roll the node back: zmq_receiver_enabled = false and a config reload. Its zmq receiver
        # unregisters, drains and stops; the process keeps serving over RabbitMQ.
        node.reload({**options, "zmq_receiver_enabled": False})
        assert wait_for(lambda: registrations(redis, "migrate.mig-node") == 0, timeout=5)
        time.sleep(2.5)  # the drain is over: nothing reaches it over zmq any more
        assert registrations(redis, "migrate.mig-node") == 0
        calls_keep_flowing()
        # And forward again: the receiver starts, registers, and traffic goes back to zmq.
        node.reload({**options, "zmq_receiver_enabled": True})
        assert wait_for(lambda: registrations(redis, "migrate.mig-node") == 1, timeout=5)
        calls_keep_flowing()
    finally:
        done.set()
        for worker in workers:
            worker.join(60)
        transport.cleanup()
        node.stop()
    assert not errors, errors[:3]
    executed = Counter(r["tag"] for r in node.records() if "tag" in r)
    assert set(replies) <= set(executed), f"lost: {sorted(set(replies) - set(executed))[:10]}"
    duplicated = {tag: n for tag, n in executed.items() if n > 1}
    assert not duplicated, f"ran twice: {duplicated}"


def test_call_monitoring_gives_up_soon_after_the_server_dies(redis: RedisServer, tmp_path: Path) -> None:
    node = OsloNode(
        tmp_path,
        "server",
        "monitored",
        "mon-node",
        zmq_url(redis.port),
        {**FAST, "rpc_zmq_host": "127.0.0.6"},
    ).start()
    transport = oslo_messaging.get_rpc_transport(cfg.CONF, url=zmq_url(redis.port, rpc_zmq_host="127.0.0.1"))
    try:
        client = oslo_messaging.get_rpc_client(
            transport, oslo_messaging.Target(topic="monitored"), timeout=60, call_monitor_timeout=2
        )
        threading.Timer(1.0, node.kill).start()
        started = time.monotonic()
        with pytest.raises(oslo_messaging.MessagingTimeout, match="call_monitor_timeout"):
            client.call({}, "sleep", seconds=30)
        elapsed = time.monotonic() - started
        assert 2.0 <= elapsed < 5.0, f"gave up after {elapsed:.1f} s; the overall timeout is 60 s"
    finally:
        transport.cleanup()
        node.kill()
