"""A real RPC exchange across hosts, from each compute, with the node's own `zmqrpc ping`, and where it went.

From each compute (an all-in-one lab: its only node): a call to every other node's agent, a cast to each of
them, a fanout that must reach every agent exactly once, and a notification that exactly one agent receives.
The proxies' counters (SIGUSR1, read back from the journal) and the computes' TCP connections (`ss`) show
which way the messages went.
"""

from __future__ import annotations

import pytest
from zmqrpc_lab import (
    LOCAL_PUBLISHER,
    LOCAL_PUBLISHER_PORT,
    MATCHMAKER_PORTS,
    NODE_METRICS_PORT,
    NODES,
    PORT_RANGE,
    PROXIES,
    PROXY_PORTS,
    PUBLISHER_PORT,
    SOURCES,
    USE_DYNAMIC,
    USE_PUB_SUB,
    USE_ROUTER_PROXY,
    address_of,
    established,
    lab_host,
    listening,
    pid_marker,
    ping,
    proxy_stats,
    unit_property,
)


def others(name: str) -> list[str]:
    """Every other node's agent (on a one-node lab, its own)."""
    return [node for node in NODES if node != name] or [name]


def proxy_counters() -> dict[str, dict]:
    counters = {name: proxy_stats(name) for name in PROXIES}
    if LOCAL_PUBLISHER:
        counters.update(
            {
                f"{name}/local": proxy_stats(name, "zmqrpc-local-publisher", "local publisher")
                for name in NODES
            }
        )
    return counters


def total(counters: dict[str, dict], key: str, local: bool = False) -> int:
    return sum(stats.get(key, 0) for name, stats in counters.items() if name.endswith("/local") == local)


@pytest.fixture(scope="module")
def exchange():
    """Run the whole exchange once, with every proxy's counters read before and after it."""
    before = proxy_counters()
    results = {}
    for compute in SOURCES:
        results[compute] = {
            "calls": {other: ping(compute, "call", server=other) for other in others(compute)},
            "casts": {other: ping(compute, "cast", server=other) for other in others(compute)},
            "fanout": ping(compute, "fanout", hosts=NODES),
            "notify": ping(compute, "notify", hosts=NODES),
        }
    after = proxy_counters()
    return {"results": results, "before": before, "after": after}


def delta(exchange, key: str, local: bool = False) -> int:
    return total(exchange["after"], key, local) - total(exchange["before"], key, local)


@pytest.mark.parametrize("compute", SOURCES)
def test_a_call_from_each_compute_reaches_every_other_agent(exchange, compute):
    for other, answer in exchange["results"][compute]["calls"].items():
        assert answer["responder"] == other, (
            f"call from {compute} to {other} answered by {answer['responder']}"
        )


@pytest.mark.parametrize("compute", SOURCES)
def test_a_cast_from_each_compute_arrives_once(exchange, compute):
    for other, answer in exchange["results"][compute]["casts"].items():
        assert answer["received"] == {other: 1}, f"cast from {compute} to {other}: {answer['received']}"


@pytest.mark.parametrize("compute", SOURCES)
def test_a_fanout_from_each_compute_reaches_every_agent_exactly_once(exchange, compute):
    received = exchange["results"][compute]["fanout"]["received"]
    assert received == {node: 1 for node in NODES}, f"fanout from {compute}: copies per agent {received}"


@pytest.mark.parametrize("compute", SOURCES)
def test_a_notification_from_each_compute_reaches_one_agent(exchange, compute):
    received = exchange["results"][compute]["notify"]["received"]
    assert sum(received.values()) == 1, f"notification from {compute}: copies per agent {received}"


# --- where the messages went ------------------------------------------------------------------------


def test_direct_messages_went_through_the_proxies(exchange):
    """Router proxy: every call and cast passed a frontend and a backend; every reply came back."""
    if not USE_ROUTER_PROXY:
        pytest.skip("no router proxy in this topology")
    calls = sum(len(r["calls"]) for r in exchange["results"].values())
    casts = sum(len(r["casts"]) for r in exchange["results"].values())
    forwarded = delta(exchange, "forwarded_frontend_to_backend")
    replies = delta(exchange, "forwarded_backend_to_frontend")
    assert forwarded >= calls + casts, (
        f"proxies forwarded {forwarded} messages for {calls} calls + {casts} casts"
    )
    assert replies >= calls, f"proxies returned {replies} replies for {calls} calls"
    assert delta(exchange, "dropped_total") == 0, f"proxies dropped messages: {exchange['after']}"


def test_direct_messages_bypassed_the_proxies(exchange):
    """Without the router proxy, calls and casts go straight to the agents (dynamic or static direct)."""
    if USE_ROUTER_PROXY or not PROXIES:
        pytest.skip("the router proxy carries direct messages in this topology (or there is no proxy)")
    assert delta(exchange, "forwarded_frontend_to_backend") == 0, "a direct message went through a proxy"


def test_each_fanout_was_published_once_by_a_central_publisher(exchange):
    if not USE_PUB_SUB:
        pytest.skip("no PUB/SUB in this topology: clients fan out one copy per agent")
    fanouts = len(exchange["results"])
    published = delta(exchange, "published")
    # A fanout is one publish; casts, calls and the agents' records are never published.
    assert published >= fanouts, f"central publishers published {published} messages for {fanouts} fanouts"
    assert delta(exchange, "dropped_total") == 0, f"proxies dropped messages: {exchange['after']}"


@pytest.mark.parametrize("name", NODES if LOCAL_PUBLISHER else [])
def test_each_local_publisher_republished_every_fanout(exchange, name):
    stats = exchange["after"][f"{name}/local"]
    republished = stats["republished"] - exchange["before"][f"{name}/local"]["republished"]
    fanouts = len(exchange["results"])
    assert republished >= fanouts, f"local publisher on {name} republished {republished} of {fanouts} fanouts"
    upstreams = {address.rpartition(":")[0] for address in stats["upstreams"]}
    assert upstreams == set(PROXIES), f"local publisher on {name} subscribes to {stats['upstreams']}"


@pytest.mark.parametrize("name", NODES if LOCAL_PUBLISHER else [])
def test_agents_subscribe_only_to_their_local_publisher(exchange, name):
    agent = pid_marker(unit_property(lab_host(name), "zmqrpc-agent", "MainPID"))
    connections = [c for c in established(name) if agent in c["process"]]
    assert connections, f"no connection of the agent on {name} found (ss -p)"
    central = [c for c in connections if c["remote_port"] == PUBLISHER_PORT]
    assert not central, f"the agent on {name} subscribes to central publishers directly: {central}"
    local = [c for c in connections if (c["remote"], c["remote_port"]) == ("127.0.0.1", LOCAL_PUBLISHER_PORT)]
    assert local, f"the agent on {name} holds no connection to its local publisher: {connections}"


@pytest.mark.parametrize("compute", SOURCES)
def test_computes_hold_no_connection_to_another_nodes_agent(exchange, compute):
    """Every connection a compute keeps to another host ends at a proxy or the matchmaker.

    Router proxy: messages only ever go through the proxies. Dynamic connections: a direct connection
    lives for one message, so none is left after the exchange. Inbound connections to this host's own
    proxy or matchmaker (a Sentinel on a compute) are fine.
    """
    if not (USE_ROUTER_PROXY or USE_DYNAMIC):
        pytest.skip("static direct: agents keep direct connections by design")
    own = address_of(compute)
    allowed = set(PROXY_PORTS) | set(MATCHMAKER_PORTS)
    direct = [
        c
        for c in established(compute)
        if c["remote"] not in ("127.0.0.1", "::1", own)
        and c["local_port"] not in allowed
        and c["remote_port"] not in allowed
        and PORT_RANGE[0] <= c["remote_port"] <= PORT_RANGE[1]
    ]
    assert not direct, f"{compute} holds direct connections to other hosts' service ports: {direct}"


@pytest.mark.parametrize("name", NODES if USE_ROUTER_PROXY else [])
def test_agents_bind_no_port_behind_the_router_proxy(name):
    """Behind the router proxy, servers connect to the proxies' backends instead of binding a port (the agent
    listens only for Prometheus, on its metrics port)."""
    agent = pid_marker(unit_property(lab_host(name), "zmqrpc-agent", "MainPID"))
    sockets = listening(name)
    assert any("pid=" in s["process"] for s in sockets), f"ss -p shows no process on {name}: {sockets}"
    own = [s for s in sockets if agent in s["process"] and s["port"] != NODE_METRICS_PORT]
    assert not own, f"the agent on {name} listens: {own}"
