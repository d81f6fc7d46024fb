"""Operator checklist: Prometheus metrics on every node, proxy and local publisher, scraped from the
monitoring host; counters that move with traffic sent now; metrics ports closed to every other host; the
health timer.

The monitoring host is the first controller (inventory/lab/group_vars/all.yml opens the metrics ports to its
address only). The traffic comes from a client process on a compute that serves its own metrics for the
occasion, so the sent side is read from /metrics as well.
"""

from __future__ import annotations

import json
import os
import shlex
import textwrap

import pytest
from prometheus_client.parser import text_string_to_metric_families
from zmqrpc_lab import (
    CONFIG_FILE,
    HOSTS,
    LOCAL_PUBLISHER,
    LOCAL_PUBLISHER_METRICS_PORT,
    MONITOR,
    NODE_METRICS_PORT,
    NODES,
    PROXIES,
    PROXY_METRICS_PORT,
    SOURCES,
    USE_PUB_SUB,
    USE_ROUTER_PROXY,
    VENV,
    address_of,
    lab_host,
    tcp_connects,
    unit_property,
)

CALLS = 20
# The health timer may call a node's agent once during the exchange (once a minute); nothing else does.
STRAY_CALLS = 3
CLIENT_METRICS_PORT = 9479  # the probe client's own, on 127.0.0.1

# (host, port, what serves it) for every metrics endpoint the roles deploy here
ENDPOINTS = (
    [(node, NODE_METRICS_PORT, "agent") for node in NODES]
    + [(proxy, PROXY_METRICS_PORT, "proxy") for proxy in PROXIES]
    + ([(node, LOCAL_PUBLISHER_METRICS_PORT, "local publisher") for node in NODES] if LOCAL_PUBLISHER else [])
)
ENDPOINT_IDS = [f"{host}:{port}" for host, port, _ in ENDPOINTS]
# Hosts outside the monitoring networks (the other lab hosts, a probe host included)
OUTSIDERS = [name for name in HOSTS if name != MONITOR]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(target: str, port: int, source: str = MONITOR) -> Samples:
    """GET http://<target's address>:<port>/metrics from `source`: every sample by name and labels."""
    url = f"http://{address_of(target)}:{port}/metrics"
    probe = (
        "import sys, urllib.request\n"
        f"sys.stdout.write(urllib.request.urlopen({url!r}, timeout=5).read().decode())"
    )
    result = lab_host(source).run(shlex.join(["python3", "-c", probe]))
    assert result.rc == 0, f"{source} cannot scrape {url}: {result.stderr.strip()[-500:]}"
    return samples(result.stdout)


def samples(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(scraped: Samples, name: str, **labels: str) -> float:
    return scraped.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.mark.parametrize(("host", "port", "kind"), ENDPOINTS, ids=ENDPOINT_IDS)
def test_the_monitoring_host_scrapes_every_endpoint(host, port, kind):
    scraped = scrape(host, port)
    build = [labels for (name, labels), _ in scraped.items() if name == "zmqrpc_build_info"]
    assert build, f"the {kind} on {host}:{port} serves no zmqrpc_build_info"
    version = dict(build[0]).get("version", "")
    installed = lab_host(host).check_output(f"{VENV}/bin/zmqrpc --version").split()[-1]
    assert version == installed, f"the {kind} on {host} reports version {version!r}, installed {installed!r}"


@pytest.mark.parametrize(("host", "port", "kind"), ENDPOINTS, ids=ENDPOINT_IDS)
def test_metrics_ports_are_closed_to_hosts_outside_the_monitoring_networks(host, port, kind):
    target = address_of(host)
    assert tcp_connects(MONITOR, target, port), f"the monitoring host {MONITOR} cannot reach {host}:{port}"
    reached = [name for name in OUTSIDERS if name != host and tcp_connects(name, target, port)]
    assert not reached, f"the {kind} metrics on {host}:{port} are reachable from {reached}"


# One client process: it serves its own metrics on 127.0.0.1, makes the calls (and a fanout), then prints
# what it sent by type, read from its own /metrics.
_CLIENT = textwrap.dedent(
    """
    import json, sys, urllib.request
    from prometheus_client.parser import text_string_to_metric_families
    from zmqrpc.client import RpcClient
    from zmqrpc.config import load_settings

    config, server, fanout = sys.argv[1], sys.argv[2], sys.argv[4]
    calls, port = int(sys.argv[3]), int(sys.argv[5])
    settings = load_settings(config_files=[config])
    settings = settings.with_zmq(metrics_port=port, metrics_bind_address="127.0.0.1")
    with RpcClient(settings) as client:
        for _ in range(calls):
            client.call("zmqrpc-agent", "ping", timeout=10, server=server)
        if fanout == "1":
            client.fanout("zmqrpc-agent", "ping", strict=True)
        text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5).read().decode()
    sent = {
        sample.labels["type"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "zmqrpc_messages_sent_total"
    }
    print(json.dumps(sent))
    """
)


@pytest.fixture(scope="module")
def traffic():
    """CALLS calls from a compute to another node's agent (plus one fanout with PUB/SUB), every endpoint
    scraped before and after."""
    source = SOURCES[0]
    server = next((node for node in NODES if node != source), source)
    before = {(host, port): scrape(host, port) for host, port, _ in ENDPOINTS}
    script = f"/tmp/zmqrpc-metrics-probe-{os.getpid()}.py"
    host = lab_host(source)
    host.check_output(f"cat > {script} <<'EOF'\n{_CLIENT}\nEOF")
    try:
        args = [
            script,
            CONFIG_FILE,
            server,
            str(CALLS),
            "1" if USE_PUB_SUB else "0",
            str(CLIENT_METRICS_PORT),
        ]
        result = host.run(shlex.join([f"{VENV}/bin/python", *args]))
    finally:
        host.run(f"rm -f {script}")
    assert result.rc == 0, f"the client on {source} failed: {result.stderr.strip()[-2000:]}"
    after = {(host, port): scrape(host, port) for host, port, _ in ENDPOINTS}
    return {
        "server": server,
        "sent": json.loads(result.stdout.strip().splitlines()[-1]),
        "before": before,
        "after": after,
    }


def moved(traffic, host: str, port: int, name: str, **labels: str) -> float:
    return value(traffic["after"][(host, port)], name, **labels) - value(
        traffic["before"][(host, port)], name, **labels
    )


def test_the_client_counts_each_call_it_sent(traffic):
    assert traffic["sent"].get("call") == CALLS, f"client sent by type: {traffic['sent']}"


def test_the_server_counts_each_call_it_received(traffic):
    server = traffic["server"]
    received = moved(traffic, server, NODE_METRICS_PORT, "zmqrpc_messages_received_total", type="call")
    assert CALLS <= received <= CALLS + STRAY_CALLS, (
        f"the agent on {server} counted {received} calls of {CALLS}"
    )
    replies = moved(traffic, server, NODE_METRICS_PORT, "zmqrpc_messages_sent_total", type="reply")
    assert CALLS <= replies <= CALLS + STRAY_CALLS, (
        f"the agent on {server} counted {replies} replies of {CALLS}"
    )


def test_the_router_proxies_count_each_call_they_forwarded(traffic):
    if not USE_ROUTER_PROXY:
        pytest.skip("calls go straight to the servers in this topology")
    forwarded = sum(
        moved(traffic, proxy, PROXY_METRICS_PORT, "zmqrpc_proxy_forwarded_total", direction=direction)
        for proxy in PROXIES
        for direction in ("frontend_to_backend", "backend_to_frontend")
    )
    # each call one way, its reply the other (every proxy counts what passed through it)
    assert forwarded >= 2 * CALLS, f"the proxies forwarded {forwarded} messages for {CALLS} calls and replies"


def test_the_publishers_count_the_fanout(traffic):
    if not USE_PUB_SUB:
        pytest.skip("no PUB/SUB in this topology")
    assert traffic["sent"].get("fanout") == 1, f"client sent by type: {traffic['sent']}"
    published = sum(
        moved(traffic, proxy, PROXY_METRICS_PORT, "zmqrpc_proxy_forwarded_total", direction="published")
        for proxy in PROXIES
    )
    assert published >= 1, "no central publisher counted the fanout"
    if LOCAL_PUBLISHER:
        quiet = [
            node
            for node in NODES
            if moved(
                traffic,
                node,
                LOCAL_PUBLISHER_METRICS_PORT,
                "zmqrpc_proxy_forwarded_total",
                direction="republished",
            )
            < 1
        ]
        assert not quiet, f"local publishers that did not count the fanout: {quiet}"


@pytest.mark.parametrize("name", NODES)
def test_the_health_timer_runs_zmqrpc_health_and_logs_a_healthy_node(name):
    host = lab_host(name)
    assert host.service("zmqrpc-health.timer").is_enabled, f"zmqrpc-health.timer is not enabled on {name}"
    assert host.service("zmqrpc-health.timer").is_running, f"zmqrpc-health.timer is not active on {name}"
    run = host.run("systemctl start zmqrpc-health.service")  # a oneshot: returns when the probe is done
    journal = host.run("journalctl -u zmqrpc-health -o cat --no-pager -n 20").stdout
    assert run.rc == 0, f"zmqrpc health failed on {name}: {run.stderr.strip()}\n{journal}"
    assert unit_property(host, "zmqrpc-health.service", "Result") == "success", journal
    lines = [line for line in journal.splitlines() if line.startswith("{")]
    assert lines, f"zmqrpc health logged no JSON line on {name}: {journal}"
    assert json.loads(lines[-1])["status"] == "healthy", f"{name}: {lines[-1]}"
