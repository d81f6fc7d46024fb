"""Operator checklist: every host runs the services its groups call for, enabled, hardened and listening."""

from __future__ import annotations

import json

import pytest
from zmqrpc_lab import (
    BACKEND_PORT,
    CONFIG_FILE,
    FRONTEND_PORT,
    HOSTS,
    LOCAL_PUBLISHER,
    LOCAL_PUBLISHER_PORT,
    NODES,
    PORT_RANGE,
    PROXIES,
    PUBLISHER_PORT,
    REDIS,
    SENTINELS,
    USE_PUB_SUB,
    USE_ROUTER_PROXY,
    ZMQRPC,
    address_of,
    agent_address,
    lab_host,
    listening,
    listening_ports,
    unit_property,
)

HARDENING = {
    "User": "zmqrpc",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "PrivateTmp": "yes",
    "Restart": "on-failure",
}


def assert_running_and_enabled(name: str, unit: str) -> None:
    service = lab_host(name).service(unit)
    assert service.is_running, f"{unit} is not running on {name}"
    assert service.is_enabled, f"{unit} is not enabled on {name} (it would not come back after a reboot)"


def assert_hardened(name: str, unit: str) -> None:
    host = lab_host(name)
    found = {key: unit_property(host, unit, key) for key in HARDENING}
    assert found == HARDENING, f"{unit} on {name} is not hardened as documented"
    pid = unit_property(host, unit, "MainPID")
    assert host.check_output(f"ps -o user= -p {pid}").strip() == "zmqrpc", (
        f"{unit} on {name} is not run as zmqrpc"
    )


# --- the matchmaker -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", REDIS)
def test_redis_runs_and_listens(name):
    assert_running_and_enabled(name, "redis-server")
    assert 6379 in listening_ports(name), f"redis-server on {name} does not listen on 6379"


@pytest.mark.parametrize("name", SENTINELS)
def test_sentinel_runs_and_listens(name):
    assert_running_and_enabled(name, "redis-sentinel")
    assert 26379 in listening_ports(name), f"redis-sentinel on {name} does not listen on 26379"


# --- central proxies ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PROXIES)
def test_central_proxy_runs_hardened(name):
    assert_running_and_enabled(name, "zmqrpc-proxy")
    assert_hardened(name, "zmqrpc-proxy")


@pytest.mark.parametrize("name", PROXIES)
def test_central_proxy_listens_on_the_documented_ports(name):
    ports = listening_ports(name)
    wanted = {"frontend": FRONTEND_PORT, "backend": BACKEND_PORT}
    if USE_PUB_SUB:
        wanted["publisher"] = PUBLISHER_PORT
    missing = {role: port for role, port in wanted.items() if port not in ports}
    assert not missing, f"zmqrpc-proxy on {name} does not listen on {missing}; listening: {sorted(ports)}"
    if not USE_PUB_SUB:
        assert PUBLISHER_PORT not in ports, f"{name} publishes on {PUBLISHER_PORT} but use_pub_sub is false"


@pytest.mark.parametrize("name", sorted(set(HOSTS) - set(PROXIES)))
def test_no_central_proxy_elsewhere(name):
    assert not lab_host(name).service("zmqrpc-proxy").is_running, f"{name} is not in zmq_proxies"


def test_every_proxy_is_registered_in_the_matchmaker():
    """Clients and servers find the proxies here: each one, under its documented ports."""
    if not PROXIES:
        pytest.skip("no central proxy in this topology")
    listing = json.loads(
        lab_host(NODES[0]).check_output(f"{ZMQRPC} matchmaker list --config-file {CONFIG_FILE}")
    )
    wanted = {"zmqrpc-proxy.frontend": FRONTEND_PORT, "zmqrpc-proxy.backend": BACKEND_PORT}
    if USE_PUB_SUB:
        wanted["zmqrpc-proxy.publisher"] = PUBLISHER_PORT
    for topic, port in wanted.items():
        registered = set(listing.get(topic, {}))
        expected = {f"{name}:{port}" for name in PROXIES}
        assert registered == expected, (
            f"{topic}: registered {sorted(registered)}, expected {sorted(expected)}"
        )


# --- local publishers ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NODES)
def test_local_publisher_runs_where_the_topology_has_one(name):
    service = lab_host(name).service("zmqrpc-local-publisher")
    if not LOCAL_PUBLISHER:
        assert not service.is_running, f"{name} runs a local publisher but zmqrpc_local_publisher is false"
        return
    assert_running_and_enabled(name, "zmqrpc-local-publisher")
    assert_hardened(name, "zmqrpc-local-publisher")
    found = [(s["address"], s["port"]) for s in listening(name) if s["port"] == LOCAL_PUBLISHER_PORT]
    assert found == [("127.0.0.1", LOCAL_PUBLISHER_PORT)], (
        f"zmqrpc-local-publisher on {name} listens on {found}, expected only "
        f"127.0.0.1:{LOCAL_PUBLISHER_PORT} (the services' subscribe_on = localhost)"
    )


# --- agents -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NODES)
def test_agent_runs_hardened(name):
    assert_running_and_enabled(name, "zmqrpc-agent")
    assert_hardened(name, "zmqrpc-agent")


@pytest.mark.parametrize("name", [] if USE_ROUTER_PROXY else NODES)
def test_agent_listens_on_the_address_it_registered_in_the_range(name):
    """Without the router proxy, every agent binds a port of the service range and registers it."""
    address = agent_address(name)
    host, _, port = address.rpartition(":")
    assert host == address_of(name), f"the agent of {name} registered {address}, not its own address"
    assert PORT_RANGE[0] <= int(port) <= PORT_RANGE[1], (
        f"the agent of {name} bound {port}, outside {PORT_RANGE}"
    )
    bound = {(sock["address"], sock["port"]) for sock in listening(name)}
    assert bound & {(host, int(port)), ("::", int(port)), ("0.0.0.0", int(port))}, (
        f"nothing listens on {address} on {name}: {sorted(bound)}"
    )
