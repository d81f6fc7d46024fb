"""zmqrpc as oslo.messaging's ``zmq`` transport, through oslo.messaging's public API only.

For each documented topology (static direct, dynamic direct, router proxy, router proxy + PUB/SUB, and the
combined mode) on a real Redis: two RPC server processes, three notification listener processes (one
without a pool, two sharing the ``audit`` pool), real proxy processes where the topology has them, and
this process as the client (``RPCClient`` and ``Notifier``).
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
from oslo_context.context import RequestContext

from tests.integration.test_proxy_topologies import _start_proxies
from tests.oslo.conftest import ALLOWED_EXMODS, FAST, OsloNode, start_all, stop_all, zmq_url
from tests.oslo.remote_errors import AllowedError
from tests.procs import ProxyProcess
from tests.servers import RedisServer, wait_for

pytestmark = pytest.mark.integration

RPC_TOPIC = "oslo-rpc"
NOTIFY_TOPIC = "oslo-notes"
SERVERS = {"srv-a": "127.0.0.2", "srv-b": "127.0.0.3"}
LISTENERS = {
    "lsn-default": ("127.0.0.4", None),
    "lsn-audit-1": ("127.0.0.5", "audit"),
    "lsn-audit-2": ("127.0.0.6", "audit"),
}

TOPOLOGIES: dict[str, dict[str, object]] = {
    "static-direct": {},
    "dynamic-direct": {"use_dynamic_connections": True, "zmq_linger": 1},
    "router-proxy": {"use_router_proxy": True},
    "router-proxy-pubsub": {"use_router_proxy": True, "use_pub_sub": True},
    "combined": {"use_dynamic_connections": True, "zmq_linger": 1, "use_pub_sub": True},
}


@dataclass
class Deployment:
    name: str
    transport: oslo_messaging.Transport
    notifier: oslo_messaging.Notifier
    servers: dict[str, OsloNode]
    listeners: dict[str, OsloNode]
    transports: list[oslo_messaging.Transport] = field(default_factory=list)

    def client(self, **prepare: object) -> oslo_messaging.RPCClient:
        client = oslo_messaging.get_rpc_client(
            self.transport, oslo_messaging.Target(topic=RPC_TOPIC), timeout=10
        )
        return client.prepare(**prepare) if prepare else client


@pytest.fixture(scope="module", params=list(TOPOLOGIES))
def deployment(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    name = request.param
    options = {**FAST, **TOPOLOGIES[name]}
    tmp = tmp_path_factory.mktemp(name)
    redis = RedisServer()
    proxies: list[ProxyProcess] = []
    nodes: list[OsloNode] = []
    transports: list[oslo_messaging.Transport] = []
    try:
        if options.get("use_router_proxy") or options.get("use_pub_sub"):
            proxies = _start_proxies(tmp, redis, 2, bool(options.get("use_pub_sub")))
        url = zmq_url(redis.port)  # the services take their options from [oslo_messaging_zmq] in their files
        servers = {
            n: OsloNode(
                tmp, "server", RPC_TOPIC, n, url, {**options, "rpc_zmq_host": ip, "rpc_zmq_bind_address": ip}
            )
            for n, ip in SERVERS.items()
        }
        listeners = {
            n: OsloNode(
                tmp,
                "listener",
                NOTIFY_TOPIC,
                n,
                url,
                {**options, "rpc_zmq_host": ip, "rpc_zmq_bind_address": ip},
                pool,
            )
            for n, (ip, pool) in LISTENERS.items()
        }
        nodes = start_all([*servers.values(), *listeners.values()])
        if options.get("use_pub_sub"):
            time.sleep(1.5)  # subscribers connect to the publishers they find on their next sync
        # The client takes its options from the transport URL's query instead.
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
        yield Deployment(name, transport, notifier, servers, listeners, transports)
    finally:
        for transport in transports:
            transport.cleanup()
        stop_all(nodes)
        for proxy in proxies:
            proxy.stop()
        redis.cleanup()


def _tag(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:8]}"


def test_call_round_robin_directed_call_and_context(deployment: Deployment) -> None:
    client = deployment.client()
    answers = Counter(client.call({}, "whoami") for _ in range(10))
    assert set(answers) == set(SERVERS), answers
    for name in SERVERS:
        assert deployment.client(server=name).call({}, "whoami") == name
    reply = deployment.client(server="srv-b").call(
        {"user": "u-1", "request_id": "req-1"}, "echo", x=[1, "two"]
    )
    assert reply == {
        "server": "srv-b",
        "args": {"x": [1, "two"]},
        "context": {"user": "u-1", "request_id": "req-1"},
    }


def test_cast_directed_cast_and_fanout(deployment: Deployment) -> None:
    direct, bare, fan = _tag("direct"), _tag("bare"), _tag("fan")
    deployment.client(server="srv-a").cast({}, "record", tag=direct)
    deployment.client().cast({}, "record", tag=bare)
    deployment.client(fanout=True).cast({}, "record", tag=fan)

    def seen() -> dict[str, list[str]]:
        return {name: node.tags() for name, node in deployment.servers.items()}

    wait_for(lambda: all(fan in tags for tags in seen().values()) and any(bare in t for t in seen().values()))
    time.sleep(0.3)  # anything duplicated would show up by now
    tags = seen()
    assert tags["srv-a"].count(direct) == 1 and direct not in tags["srv-b"]
    assert sum(t.count(bare) for t in tags.values()) == 1, tags
    assert [t.count(fan) for t in tags.values()] == [1, 1], tags


def test_notifications_one_copy_per_pool_shared_by_its_listeners(deployment: Deployment) -> None:
    event = _tag("volume.create")
    total = 10
    # oslo.messaging sends a context object's redacted copy (and drops plain dicts); it is not JSON, so
    # the driver turns it into primitives as the rabbit driver does.
    context = RequestContext(user_id="u-2", request_id="req-2")
    for n in range(total):
        deployment.notifier.info(context, event, {"n": n})

    def received() -> dict[str, list[int]]:
        return {
            name: sorted(r["payload"]["n"] for r in node.records() if r.get("event_type") == event)
            for name, node in deployment.listeners.items()
        }

    def per_pool() -> dict[str | None, list[int]]:
        pools: dict[str | None, list[int]] = {}
        for name, numbers in received().items():
            pools.setdefault(LISTENERS[name][1], []).extend(numbers)
        return {pool: sorted(numbers) for pool, numbers in pools.items()}

    wait_for(lambda: all(len(v) >= total for v in per_pool().values()))
    time.sleep(0.3)
    assert per_pool() == {None: list(range(total)), "audit": list(range(total))}
    got = received()
    assert got["lsn-audit-1"] and got["lsn-audit-2"], f"the audit pool's listeners should share: {got}"
    record = next(r for r in deployment.listeners["lsn-default"].records() if r.get("event_type") == event)
    assert record["publisher_id"] == "oslo-test" and record["priority"] == "info"
    assert (record["ctxt"]["user_id"], record["ctxt"]["request_id"]) == ("u-2", "req-2")


def test_remote_exceptions_follow_allowed_remote_exmods(deployment: Deployment) -> None:
    client = deployment.client()
    with pytest.raises(AllowedError, match="quota exceeded"):
        client.call({}, "fail", kind="allowed", message="quota exceeded")
    with pytest.raises(oslo_messaging.RemoteError) as hidden:
        client.call({}, "fail", kind="hidden", message="secret")
    assert hidden.value.exc_type == "HiddenError" and "secret" in str(hidden.value.value)
    with pytest.raises(ValueError, match="bad value"):  # builtins are always allowed
        client.call({}, "fail", kind="builtin", message="bad value")


def test_timeouts_raise_messaging_timeout(deployment: Deployment) -> None:
    started = time.monotonic()
    with pytest.raises(oslo_messaging.MessagingTimeout):
        deployment.client(server="srv-b", timeout=1).call({}, "sleep", seconds=2.5)
    assert time.monotonic() - started < 2.0
    nobody = oslo_messaging.get_rpc_client(
        deployment.transport, oslo_messaging.Target(topic="nobody"), timeout=2
    )
    with pytest.raises(oslo_messaging.MessagingTimeout):
        nobody.call({}, "whoami")


def test_call_monitoring_keeps_a_long_call_alive(deployment: Deployment) -> None:
    # call_monitor_timeout=2 without heartbeats would give up after 2 s; the server heartbeats every 1 s.
    client = deployment.client(server="srv-a", timeout=20, call_monitor_timeout=2)
    started = time.monotonic()
    assert client.call({}, "sleep", seconds=3.5) == "srv-a"
    assert time.monotonic() - started >= 3.5
