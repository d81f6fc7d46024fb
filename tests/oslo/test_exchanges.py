"""oslo.messaging exchanges are separate namespaces on zmqrpc.

Servers of one topic in three exchanges (the default one, ``a`` and ``b``) with the same server names, and
notification listeners of one topic in the default exchange and in ``a``, each a separate process, on a
real Redis; in the router proxy + PUB/SUB topology also with real proxy processes (published fanout). This
process is the client. Calls, directed calls, casts, fanout and notifications of one exchange must reach
that exchange's servers only, and a target naming the default exchange (``openstack``) is the same as one
without exchange (the plain topic, as before exchanges were honoured).
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import oslo_messaging
import pytest
from oslo_config import cfg

from tests.integration.test_proxy_topologies import _start_proxies
from tests.oslo.conftest import ALLOWED_EXMODS, FAST, OsloNode, start_all, stop_all, zmq_url
from tests.procs import ProxyProcess
from tests.servers import RedisServer, wait_for

pytestmark = pytest.mark.integration

TOPIC = "oslo-exch"
NOTIFY_TOPIC = "oslo-exch-notes"
NAMES = ("srv-1", "srv-2")
# exchange (None: the default one) -> the server names it runs; every exchange reuses the same names.
GROUPS: dict[str | None, tuple[str, ...]] = {None: NAMES, "a": NAMES, "b": NAMES[:1]}
TOPOLOGIES: dict[str, dict[str, object]] = {
    "static-direct": {},
    "router-proxy-pubsub": {"use_router_proxy": True, "use_pub_sub": True},
}


@dataclass
class Deployment:
    transport: oslo_messaging.Transport
    notifier: oslo_messaging.Notifier
    servers: dict[tuple[str | None, str], OsloNode]
    listeners: dict[str | None, OsloNode]
    transports: list[oslo_messaging.Transport] = field(default_factory=list)

    def client(self, exchange: str | None = None, **prepare: object) -> oslo_messaging.RPCClient:
        target = oslo_messaging.Target(topic=TOPIC, exchange=exchange)
        client = oslo_messaging.get_rpc_client(self.transport, target, timeout=10)
        return client.prepare(**prepare) if prepare else client

    def tags(self) -> dict[tuple[str | None, str], list[str]]:
        return {key: node.tags() for key, node in self.servers.items()}


@pytest.fixture(scope="module", params=list(TOPOLOGIES))
def deployment(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    options = {**FAST, **TOPOLOGIES[request.param]}
    tmp = tmp_path_factory.mktemp(f"exchanges-{request.param}")
    redis = RedisServer()
    proxies: list[ProxyProcess] = []
    nodes: list[OsloNode] = []
    transports: list[oslo_messaging.Transport] = []
    try:
        if options.get("use_router_proxy"):
            proxies = _start_proxies(tmp, redis, 2, bool(options.get("use_pub_sub")))
        url = zmq_url(redis.port)
        local = {**options, "rpc_zmq_host": "127.0.0.1", "rpc_zmq_bind_address": "127.0.0.1"}
        servers = {
            (exchange, name): OsloNode(
                tmp,
                "server",
                TOPIC,
                name,
                url,
                local,
                label=f"{exchange or 'default'}-{name}",
                exchange=exchange,
            )
            for exchange, names in GROUPS.items()
            for name in names
        }
        listeners = {
            exchange: OsloNode(
                tmp, "listener", NOTIFY_TOPIC, "lsn", url, local, label=f"{exchange or 'default'}-lsn",
                exchange=exchange,
            )
            for exchange in (None, "a")
        }  # fmt: skip
        nodes = start_all([*servers.values(), *listeners.values()])
        if options.get("use_pub_sub"):
            time.sleep(1.5)  # subscribers connect to the publishers they find on their next sync
        client_url = zmq_url(redis.port, rpc_zmq_host="127.0.0.1", **options)
        transport = oslo_messaging.get_rpc_transport(
            cfg.CONF, url=client_url, allowed_remote_exmods=ALLOWED_EXMODS
        )
        transports.append(transport)
        notify_transport = oslo_messaging.get_notification_transport(cfg.CONF, url=client_url)
        transports.append(notify_transport)
        notifier = oslo_messaging.Notifier(
            notify_transport, publisher_id="oslo-test", driver="messaging", topics=[NOTIFY_TOPIC]
        )
        yield Deployment(transport, notifier, servers, listeners, transports)
    finally:
        for transport in transports:
            transport.cleanup()
        stop_all(nodes)
        for proxy in proxies:
            proxy.stop()
        redis.cleanup()


def _tag(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize("exchange", [None, "a", "b"])
def test_calls_reach_only_their_exchange(deployment: Deployment, exchange: str | None) -> None:
    answers = Counter(tuple(deployment.client(exchange).call({}, "where")) for _ in range(8))
    assert set(answers) == {(exchange, name) for name in GROUPS[exchange]}, answers
    for name in GROUPS[exchange]:  # the same server name exists in other exchanges
        assert deployment.client(exchange, server=name).call({}, "where") == [exchange, name]


def test_the_default_exchange_named_is_the_plain_topic(deployment: Deployment) -> None:
    answers = {tuple(deployment.client("openstack").call({}, "where")) for _ in range(6)}
    assert answers == {(None, name) for name in NAMES}, answers


def test_an_exchange_nobody_serves_times_out(deployment: Deployment) -> None:
    client = deployment.client("c", timeout=2)
    with pytest.raises(oslo_messaging.MessagingTimeout):
        client.call({}, "where")


def test_casts_and_fanout_stay_in_their_exchange(deployment: Deployment) -> None:
    bare_a, direct_b, fan_a, fan_default = _tag("bare-a"), _tag("direct-b"), _tag("fan-a"), _tag("fan-d")
    deployment.client("a").cast({}, "record", tag=bare_a)
    deployment.client("b", server="srv-1").cast({}, "record", tag=direct_b)
    deployment.client("a", fanout=True).cast({}, "record", tag=fan_a)
    deployment.client(fanout=True).cast({}, "record", tag=fan_default)

    def holders(tag: str) -> Counter[tuple[str | None, str]]:
        return Counter({key: tags.count(tag) for key, tags in deployment.tags().items() if tag in tags})

    wanted = {
        bare_a: 1,
        direct_b: 1,
        fan_a: len(GROUPS["a"]),
        fan_default: len(GROUPS[None]),
    }
    wait_for(lambda: all(sum(holders(tag).values()) >= n for tag, n in wanted.items()))
    time.sleep(0.5)  # anything delivered to another exchange's servers would show up by now
    assert set(holders(bare_a)) <= {("a", name) for name in GROUPS["a"]}, holders(bare_a)
    assert sum(holders(bare_a).values()) == 1, holders(bare_a)
    assert holders(direct_b) == Counter({("b", "srv-1"): 1}), holders(direct_b)
    assert holders(fan_a) == Counter({("a", name): 1 for name in GROUPS["a"]}), holders(fan_a)
    assert holders(fan_default) == Counter({(None, name): 1 for name in GROUPS[None]}), holders(fan_default)


def test_notifications_reach_only_listeners_of_their_exchange(deployment: Deployment) -> None:
    # The notifier sends in its transport's default exchange: the listener of exchange "a" (same topic,
    # no pool, so without exchanges it would share the notifications) must get none of them.
    event = _tag("volume.create")
    total = 8
    for n in range(total):
        deployment.notifier.info({}, event, {"n": n})

    def received(exchange: str | None) -> list[int]:
        node = deployment.listeners[exchange]
        return sorted(r["payload"]["n"] for r in node.records() if r.get("event_type") == event)

    wait_for(lambda: len(received(None)) + len(received("a")) >= total)
    time.sleep(0.5)
    assert received(None) == list(range(total))
    assert received("a") == []
