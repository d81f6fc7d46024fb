"""`zmqrpc plan`: its arithmetic, per topology, and the warnings that name a limit."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from zmqrpc import cli
from zmqrpc.plan import COSTS, DEFAULTS, MAX_SUBSCRIBERS, TOPOLOGIES, Costs, plan

C = COSTS


def limits(p) -> set[str]:
    return {w.limit for w in p.warnings}


def test_every_inventory_topology_is_known() -> None:
    assert set(TOPOLOGIES) == {
        "all-in-one",
        "static-direct",
        "dynamic-direct",
        "router-proxy",
        "pubsub",
        "local-publisher",
        "dynamic-pubsub",
        "sentinel-ha",
    }


def test_static_direct_is_a_full_mesh() -> None:
    p = plan(50, "static-direct")
    links = C.client_links_per_peer
    # every caller (all 50) keeps its links to every server: 50 * 50 * links connections on the bus
    assert p.bus_connections == 50 * 50 * links
    assert p.server.connections == 50 * links + 1  # inbound from every caller, plus Redis
    assert p.client.connections == 50 * links + 1
    assert p.node.connections == p.server.connections + p.client.connections
    assert p.proxy is None and p.proxies == 0
    assert p.server.fds == C.server_base_fds + C.server_worker_fds + 1 + p.server.connections
    assert p.service.fds == C.process_base_fds + p.server.fds + p.client.fds
    assert p.server.listening_ports == 1


def test_static_direct_connections_grow_as_n_squared() -> None:
    small, big = plan(100, "static-direct"), plan(1000, "static-direct")
    assert big.bus_connections == 100 * small.bus_connections


def test_one_caller_is_what_the_scale_test_runs() -> None:
    p = plan(100, "static-direct", callers=1, clients=1)
    assert p.client.connections == 100 * C.client_links_per_peer + 1
    assert p.server.connections == C.client_links_per_peer + 1
    assert p.client.fds == C.client_base_fds + 2 * 100 * C.client_links_per_peer + 1


@pytest.mark.parametrize("proxies", [1, 3, 5])
def test_pubsub_connections_per_server_and_proxy(proxies: int) -> None:
    p = plan(1000, "pubsub", proxies=proxies)
    # a server: its ROUTER to every backend, its SUB to every publisher, Redis
    assert p.server.connections == 2 * proxies + 1
    assert p.client.connections == proxies + 1
    # a proxy: every client on the frontend, every server on the backend and on the publisher, Redis
    assert p.proxy is not None
    assert p.proxy.connections == 1000 + 1000 + 1000 + 1
    assert p.proxy.count == proxies
    assert p.proxy.fds == C.proxy_base_fds + 3 + p.proxy.connections + 3
    assert p.bus_connections == 1000 * proxies * 3
    assert p.port_range == 100  # servers bind nothing behind a router proxy


def test_router_proxy_has_no_publisher() -> None:
    p = plan(200, "router-proxy", proxies=2)
    assert p.proxy is not None
    assert p.proxy.connections == 200 + 200 + 1
    assert p.server.connections == 2 + 1


def test_local_publisher_has_one_subscriber_per_node() -> None:
    p = plan(100, "local-publisher", services_per_node=4, proxies=3)
    assert p.local_publisher is not None
    assert p.proxy is not None
    # the central publishers see one local publisher per node, not every service
    assert p.proxy.connections == 400 + 400 + 100 + 1
    assert p.server.connections == 3 + 1 + 1  # backends, the local publisher, Redis
    assert p.node.connections == 4 * p.service.connections + p.local_publisher.connections


def test_dynamic_topologies_keep_no_caller_links() -> None:
    p = plan(100, "dynamic-direct")
    assert p.client.connections == 1  # Redis only: per-message connections come and go
    assert p.client.transient_connections == 100
    assert plan(1000, "dynamic-direct").client.transient_connections == 256  # the client's bound
    assert plan(100, "dynamic-pubsub", proxies=2).server.connections == 2 + 1


def test_services_per_node_scale_the_node_and_the_port_range() -> None:
    one, many = plan(10, "static-direct", 1), plan(10, "static-direct", 40)
    assert many.node.listening_ports == 40
    assert one.port_range == 100 and many.port_range == 160
    warned = plan(10, "static-direct", 40, port_range=120)
    assert "ports" in limits(warned)
    assert "ports" not in limits(plan(10, "static-direct", 40, port_range=16383))


def test_all_in_one_has_no_redis() -> None:
    p = plan(1, "all-in-one")
    assert p.redis_connections == 0 and p.redis_ops_per_s == 0
    assert p.warnings == ()
    assert "topology" in limits(plan(2, "all-in-one"))


def test_redis_operations_follow_the_refresh_intervals() -> None:
    p = plan(100, "pubsub", proxies=3, callers=1, clients=1)
    # registrations: 3 topics per server (bare, directed, subscribers) and 3 per proxy, every 180 s
    assert p.redis_registrations_per_s == pytest.approx((100 * 3 + 3 * 3) / 180, abs=1e-3)
    # refreshes every 10 s: each server its backends and publishers; the client the frontends, the
    # publishers, and the topics it called (100 directed, the bare one, its subscribers topic)
    assert p.redis_refreshes_per_s == pytest.approx((100 * 2 + 2 + 102) / 10, abs=1e-3)
    slower = plan(
        100, "pubsub", proxies=3, callers=1, clients=1, rpc_zmq_cache_refresh=20, zmq_target_update=360
    )
    assert slower.redis_ops_per_s == pytest.approx(p.redis_ops_per_s / 2, abs=1e-3)
    assert DEFAULTS["zmq_target_update"] == 180 and DEFAULTS["rpc_zmq_cache_refresh"] == 10


def test_limit_nofile_covers_the_service_with_headroom() -> None:
    p = plan(1000, "static-direct")
    assert p.limit_nofile >= 1.5 * p.service.fds
    assert p.limit_nofile % 1024 == 0
    assert plan(10, "pubsub").limit_nofile == 1024
    assert plan(5000, "pubsub").proxy_limit_nofile >= 1.5 * 15000


def test_static_direct_past_its_size_warns_naming_n_squared() -> None:
    assert plan(100, "static-direct").warnings == ()
    p = plan(500, "static-direct")
    assert p.warnings[0].limit == "connections"
    assert "N²" in p.warnings[0].message and "past 100 nodes" in p.warnings[0].message
    assert str(500 * 500 * C.client_links_per_peer) in p.warnings[0].message
    assert plan(500, "sentinel-ha").warnings[0].limit == "connections"


def test_pubsub_past_the_documented_subscribers_warns() -> None:
    assert "subscribers" not in limits(plan(5000, "pubsub"))
    p = plan(MAX_SUBSCRIBERS + 1, "pubsub")
    assert "subscribers" in limits(p)
    # local publishers take the subscribers off the central publishers
    assert "subscribers" in limits(plan(3000, "pubsub", services_per_node=4))
    assert "subscribers" not in limits(plan(3000, "local-publisher", services_per_node=4))


def test_slow_fanout_warns_time() -> None:
    assert "time" not in limits(plan(100, "router-proxy", callers=1, clients=1))
    p = plan(50_000, "router-proxy", callers=1, clients=1)
    assert "time" in limits(p)
    assert "use_pub_sub" in next(w.message for w in p.warnings if w.limit == "time")


def test_redis_load_warns() -> None:
    # every one of 1000 nodes calling every other keeps 1000 directed topics fresh: 100k ops/s
    p = plan(1000, "pubsub")
    assert "redis" in limits(p)
    assert "redis" not in limits(plan(1000, "pubsub", callers=10))


def test_fanout_time_grows_with_n_and_shares_cores() -> None:
    one_host = plan(1000, "pubsub", callers=1, clients=1)
    one_machine = plan(1000, "pubsub", callers=1, clients=1, cores=2)
    assert one_machine.fanout_s > one_host.fanout_s
    assert one_machine.fanout_s == pytest.approx(
        (C.client_copy_us + 1000 * C.publish_copy_us + 1000 * C.server_dispatch_us / 2) / 1e6
        + 2 * C.hop_ms / 1e3,
        abs=1e-4,
    )
    assert plan(1000, "router-proxy").fanout_s > plan(1000, "pubsub").fanout_s


def test_costs_are_adjustable() -> None:
    heavier = dataclasses.replace(COSTS, server_base_fds=COSTS.server_base_fds + 3)
    assert plan(10, "pubsub", costs=heavier).server.fds == plan(10, "pubsub").server.fds + 3
    assert isinstance(COSTS, Costs)


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="unknown topology 'mesh'"):
        plan(10, "mesh")
    with pytest.raises(ValueError, match="--nodes"):
        plan(0, "pubsub")
    with pytest.raises(ValueError, match="needs at least one proxy"):
        plan(10, "pubsub", proxies=0)


def test_cli_json_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plan", "--nodes", "100", "--topology", "pubsub", "--proxies", "3", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["proxy"]["connections"] == 100 * 3 + 1
    assert data["warnings"] == []
    assert cli.main(["plan", "--nodes", "500", "--topology", "static-direct"]) == 1
    out = capsys.readouterr().out
    assert "WARNING [connections]" in out and "LimitNOFILE" in out
    assert cli.main(["plan", "--nodes", "10", "--topology", "pubsub", "--proxies", "0"]) == 2


def test_zmqrpc_plan_command() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "zmqrpc.cli", "plan", "--nodes", "10", "--topology", "router-proxy", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["topology"] == "router-proxy"


def test_zmq_max_sockets_warns_before_the_file_limit() -> None:
    # one static-direct client calling 600 servers holds 2 sockets per server: past libzmq's 1023
    p = plan(600, "static-direct", callers=1, clients=1)
    assert any(w.limit == "fds" and "ZMQ_MAX_SOCKETS" in w.message for w in p.warnings)
    assert not any("ZMQ_MAX_SOCKETS" in w.message for w in plan(1000, "pubsub", callers=1).warnings)
