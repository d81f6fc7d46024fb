"""Operator checklist: the config file on every node and proxy holds this topology's values."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import yaml
from zmqrpc_lab import (
    BACKEND_PORT,
    CONFIG_FILE,
    FRONTEND_PORT,
    LOCAL_PUBLISHER,
    LOCAL_PUBLISHER_PORT,
    MATCHMAKER,
    NODES,
    PROXIES,
    PUBLISHER_PORT,
    REDIS,
    REDIS_TLS,
    SCENARIO,
    SENTINELS,
    USE_DYNAMIC,
    USE_PUB_SUB,
    USE_ROUTER_PROXY,
    VARS,
    address_of,
    lab_host,
    read_config,
    unit_property,
)

ZMQRPC_HOSTS = sorted(set(NODES) | set(PROXIES))
EXAMPLE_INVENTORY = Path(__file__).resolve().parents[3] / "inventory" / SCENARIO


def flag(value) -> str:
    return "true" if str(value).lower() in ("true", "1", "yes") else "false"


@functools.cache
def config(name: str):
    return read_config(name)


def test_scenario_selects_the_same_topology_as_the_example_inventory():
    """molecule/<scenario> proves the example an operator copies: inventory/<scenario>."""
    example = EXAMPLE_INVENTORY / "group_vars" / "all.yml"
    assert example.exists(), f"no example inventory for scenario {SCENARIO}: {example}"
    wanted = yaml.safe_load(example.read_text())
    selectors = (
        "matchmaker",
        "use_pub_sub",
        "use_router_proxy",
        "use_dynamic_connections",
        "local_publisher",
    )
    drift = {
        key: (VARS.get(f"zmqrpc_{key}"), wanted.get(f"zmqrpc_{key}"))
        for key in selectors
        if VARS.get(f"zmqrpc_{key}") != wanted.get(f"zmqrpc_{key}")
    }
    assert not drift, f"molecule/{SCENARIO} and {example} select different topologies: {drift}"


@pytest.mark.parametrize("name", ZMQRPC_HOSTS)
def test_config_file_is_private_to_the_service(name):
    conf = lab_host(name).file(CONFIG_FILE)
    assert (conf.user, conf.group, conf.mode) == ("root", "zmqrpc", 0o640), (
        f"{CONFIG_FILE} on {name}: {conf.user}:{conf.group} {oct(conf.mode)}"
    )


@pytest.mark.parametrize("name", ZMQRPC_HOSTS)
def test_config_selects_the_topology(name):
    zmq = config(name)["oslo_messaging_zmq"]
    found = {key: zmq.get(key) for key in ("use_pub_sub", "use_router_proxy", "use_dynamic_connections")}
    wanted = {
        "use_pub_sub": flag(USE_PUB_SUB),
        "use_router_proxy": flag(USE_ROUTER_PROXY),
        "use_dynamic_connections": flag(USE_DYNAMIC),
    }
    assert found == wanted, f"{CONFIG_FILE} on {name}"
    assert zmq.get("rpc_zmq_host") == name
    assert (zmq.get("rpc_zmq_min_port"), zmq.get("rpc_zmq_max_port")) == ("49153", "65536")
    assert zmq.get("rpc_zmq_bind_address") == address_of(name), (
        f"{name} advertises {zmq.get('rpc_zmq_bind_address')}, not its address on the lab network"
    )


@pytest.mark.parametrize("name", ZMQRPC_HOSTS)
def test_config_holds_every_option_the_scenario_sets(name):
    zmq = config(name)["oslo_messaging_zmq"]
    for key, value in VARS.items():
        option = key.removeprefix("zmqrpc_")
        if key.startswith("zmqrpc_") and option in zmq and "{{" not in str(value):
            wanted = flag(value) if isinstance(value, bool) else str(value)
            assert zmq[option] == wanted, f"{option} on {name}: {zmq[option]!r}, the scenario sets {wanted!r}"


@pytest.mark.parametrize("name", ZMQRPC_HOSTS)
def test_config_points_at_the_matchmaker(name):
    url = config(name)["DEFAULT"]["transport_url"]
    if MATCHMAKER == "dummy":
        assert url == "zmq://", f"transport_url on {name}: {url}"
        zmq = config(name)["oslo_messaging_zmq"]
        assert zmq["rpc_zmq_matchmaker"] == "dummy", f"rpc_zmq_matchmaker on {name}"
        directory = lab_host(name).file(zmq["rpc_zmq_ipc_dir"])
        assert directory.is_directory and directory.user == "zmqrpc", (
            f"{zmq['rpc_zmq_ipc_dir']} on {name}: the services cannot share registrations there"
        )
    elif MATCHMAKER == "sentinel":
        assert url.startswith("zmq+sentinels://" if REDIS_TLS else "zmq+sentinel://"), url
        for sentinel in SENTINELS:
            assert f"{sentinel}:26379" in url, f"{name}: Sentinel {sentinel} missing from {url}"
    else:
        assert url.startswith("zmq+rediss://" if REDIS_TLS else "zmq+redis://"), url
        assert f"{REDIS[0]}:6379" in url, f"{name}: Redis {REDIS[0]} missing from {url}"


@pytest.mark.parametrize("name", NODES)
def test_services_subscribe_on_their_local_publisher(name):
    subscribe_on = config(name)["oslo_messaging_zmq"].get("subscribe_on", "")
    wanted = f"localhost:{LOCAL_PUBLISHER_PORT}" if LOCAL_PUBLISHER else ""
    assert subscribe_on == wanted, f"subscribe_on on {name}"


@pytest.mark.parametrize("name", PROXIES)
def test_proxy_unit_runs_with_the_documented_flags(name):
    command = unit_property(lab_host(name), "zmqrpc-proxy", "ExecStart")
    for flag_text in (
        f"--config-file {CONFIG_FILE}",
        f"--host {name}",
        f"--frontend-port {FRONTEND_PORT}",
        f"--backend-port {BACKEND_PORT}",
    ):
        assert flag_text in command, f"zmqrpc-proxy on {name} lacks {flag_text!r}: {command}"
    publishes = f"--publisher-port {PUBLISHER_PORT}" in command
    assert publishes == USE_PUB_SUB, (
        f"zmqrpc-proxy on {name}: publisher {publishes}, use_pub_sub {USE_PUB_SUB}"
    )


@pytest.mark.parametrize("name", NODES if LOCAL_PUBLISHER else [])
def test_local_publisher_unit_runs_with_the_documented_flags(name):
    command = unit_property(lab_host(name), "zmqrpc-local-publisher", "ExecStart")
    for flag_text in (
        "--local-publisher",
        f"--config-file {CONFIG_FILE}",
        f"--publisher-port {LOCAL_PUBLISHER_PORT}",
    ):
        assert flag_text in command, f"zmqrpc-local-publisher on {name} lacks {flag_text!r}: {command}"
