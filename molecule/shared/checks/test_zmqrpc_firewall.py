"""Operator checklist: the firewall opens the service range and the proxy ports, persists them, means it."""

from __future__ import annotations

import pytest
from zmqrpc_lab import (
    FIREWALLED,
    FRONTEND_PORT,
    HOSTS,
    LOCAL_PUBLISHER_PORT,
    PORT_RANGE,
    PROXIES,
    REDIS,
    SENTINELS,
    lab_host,
    tcp_connects,
    tcp_listener,
    unused_port,
)

CHAIN = "ZMQRPC"
ALLOWED_NETWORKS = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]  # zmqrpc_firewall_allowed_networks
# Probe ports outside the service range: below it, above the Sentinel port 26379, declared nowhere.
OUTSIDE_PORTS = (30000, PORT_RANGE[0] - 1)
RULES = {
    "service port range": (
        f"-p tcp -m tcp --dport {PORT_RANGE[0]}:{PORT_RANGE[1]} -m comment --comment zmqrpc-service-range"
    ),
    "proxy ports": "-p tcp -m multiport --dports 50001,50002,50003 -m comment --comment zmqrpc-proxy",
    "local publisher port": (
        f"-p tcp -m tcp --dport {LOCAL_PUBLISHER_PORT} -m comment --comment zmqrpc-local-publisher"
    ),
}


def declared_rules(name: str) -> dict[str, str]:
    """The rules the firewall role declares for `name`: every host, plus Redis/Sentinel where they run."""
    rules = dict(RULES)
    if name in REDIS:
        rules["Redis port"] = "-p tcp -m tcp --dport 6379 -m comment --comment redis"
    if name in SENTINELS:
        rules["Sentinel port"] = "-p tcp -m tcp --dport 26379 -m comment --comment redis-sentinel"
    return rules


@pytest.mark.parametrize("name", FIREWALLED)
def test_ports_are_open_to_the_allowed_networks_only_and_persisted(name):
    host = lab_host(name)
    live = host.iptables.rules("filter", CHAIN)
    saved = host.file("/etc/iptables/rules.v4").content_string.splitlines()
    for what, match in declared_rules(name).items():
        for network in ALLOWED_NETWORKS:
            rule = f"-A {CHAIN} -s {network} {match} -j ACCEPT"
            assert rule in live, f"{name}: the {what} is not open to {network}: no rule {rule!r}"
            assert rule in saved, f"{name}: the {what} rule for {network} is live but not saved"
        reject = f"-A {CHAIN} {match} -j REJECT --reject-with tcp-reset"
        assert reject in live, f"{name}: the {what} is open to any source: no rule {reject!r}"
    assert host.service("netfilter-persistent").is_enabled, f"{name}: netfilter-persistent is not enabled"


@pytest.mark.parametrize("name", FIREWALLED)
def test_the_saved_chain_is_the_live_chain_and_comes_first(name):
    """What comes back at boot is exactly what runs now (no stale rule persisted, none missing)."""
    host = lab_host(name)
    live = [rule for rule in host.iptables.rules("filter", CHAIN) if rule.startswith("-A")]
    saved = host.file("/etc/iptables/rules.v4").content_string.splitlines()
    assert live == [line for line in saved if line.startswith(f"-A {CHAIN} ")], (
        f"{name}: chain {CHAIN} live {live} differs from /etc/iptables/rules.v4"
    )
    assert f"-A INPUT -j {CHAIN}" in saved, f"{name}: INPUT does not jump to {CHAIN} after a reboot"
    first = next(rule for rule in host.iptables.rules("filter", "INPUT") if rule.startswith("-A"))
    assert first == f"-A INPUT -j {CHAIN}", f"{name}: INPUT does not jump to {CHAIN} first ({first})"


def test_the_range_is_reachable_from_another_host_and_a_port_outside_is_not():
    """Plain TCP listeners on the first host, one port inside the service range and one outside it.

    Both ports are picked unused at run time: a fixed port can be held by a service or by an outgoing
    connection's source port, and then the probe listener cannot bind it.
    """
    server, client = HOSTS[0], HOSTS[1]
    in_range = unused_port(server, PORT_RANGE[0], PORT_RANGE[1])
    outside = unused_port(server, *OUTSIDE_PORTS)
    with tcp_listener(server, in_range), tcp_listener(server, outside):
        assert tcp_connects(server, "127.0.0.1", outside), "the probe listener itself is not up"
        assert tcp_connects(client, server, in_range), (
            f"{server}:{in_range} (in range) is blocked from {client}"
        )
        assert not tcp_connects(client, server, outside), (
            f"{server}:{outside} (outside the range) is reachable from {client}"
        )


@pytest.mark.parametrize("name", PROXIES)
def test_each_proxy_frontend_is_reachable_from_another_host(name):
    client = next(other for other in HOSTS if other != name)
    assert tcp_connects(client, name, FRONTEND_PORT), (
        f"{name}:{FRONTEND_PORT} (proxy frontend) is blocked from {client}"
    )
