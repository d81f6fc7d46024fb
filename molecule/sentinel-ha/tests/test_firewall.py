"""Operator checklist: the ZMQRPC chain, its persistence, and what other hosts can reach."""

import pytest
from conftest import HOSTS, lab_host

CHAIN = "ZMQRPC"
NETWORKS = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
IN_RANGE_PORT = 55555  # inside 49153:65535
OUTSIDE_PORT = 40000  # declared nowhere


def test_input_jumps_to_the_chain_first(host):
    rules = [rule for rule in host.iptables.rules("filter", "INPUT") if rule.startswith("-A")]
    assert rules[0] == f"-A INPUT -j {CHAIN}"


@pytest.mark.parametrize(
    "match",
    [
        "-p tcp -m tcp --dport 49153:65535 -m comment --comment zmqrpc-service-range",
        "-p tcp -m multiport --dports 50001,50002,50003 -m comment --comment zmqrpc-proxy",
        "-p tcp -m tcp --dport 60001 -m comment --comment zmqrpc-local-publisher",
        "-p tcp -m tcp --dport 6379 -m comment --comment redis",
        "-p tcp -m tcp --dport 26379 -m comment --comment redis-sentinel",
    ],
)
def test_ports_are_open_to_the_allowed_networks_only(host, match):
    rules = host.iptables.rules("filter", CHAIN)
    for network in NETWORKS:
        assert f"-A {CHAIN} -s {network} {match} -j ACCEPT" in rules
    assert f"-A {CHAIN} {match} -j REJECT --reject-with tcp-reset" in rules


def test_everything_else_is_rejected(host):
    assert host.iptables.rules("filter", CHAIN)[-1].endswith("-j REJECT --reject-with icmp-port-unreachable")


def test_rules_are_persisted(host):
    saved = host.file("/etc/iptables/rules.v4")
    assert saved.exists
    live = [rule for rule in host.iptables.rules("filter", CHAIN) if rule.startswith("-A")]
    saved_lines = saved.content_string.splitlines()
    assert live == [line for line in saved_lines if line.startswith(f"-A {CHAIN} ")]
    assert f"-A INPUT -j {CHAIN}" in saved_lines
    assert host.service("netfilter-persistent").is_enabled


@pytest.fixture
def listeners():
    """Plain TCP listeners on the first host: one port inside the service range, one outside."""
    server = lab_host(HOSTS[0])
    for port in (IN_RANGE_PORT, OUTSIDE_PORT):
        server.check_output(f"systemd-run --unit=probe-{port} python3 -m http.server --bind 0.0.0.0 {port}")
    for port in (IN_RANGE_PORT, OUTSIDE_PORT):
        server.run_test(f"timeout 10 sh -c 'until ss -ltn | grep -q :{port}; do sleep 0.2; done'")
    yield server
    for port in (IN_RANGE_PORT, OUTSIDE_PORT):
        server.run(f"systemctl stop probe-{port}")


def connects(client, target: str, port: int) -> bool:
    probe = (
        "import socket, sys\n"
        f"try: socket.create_connection(('{target}', {port}), timeout=3)\n"
        "except OSError as exc: sys.exit(str(exc))\n"
    )
    return client.run(f'python3 -c "{probe}"').rc == 0


def test_service_range_is_reachable_from_another_host_and_other_ports_are_not(listeners):
    client = lab_host(HOSTS[1])
    assert connects(listeners, "127.0.0.1", OUTSIDE_PORT), "the probe listener itself is not up"
    assert connects(client, HOSTS[0], IN_RANGE_PORT), f"port {IN_RANGE_PORT} (in range) is blocked"
    assert not connects(client, HOSTS[0], OUTSIDE_PORT), f"port {OUTSIDE_PORT} (outside) is reachable"
