"""Operator checklist, sentinel-ha: besides what every scenario checks (../../shared/checks), the lab
rejects by default what no rule opens."""


def test_everything_else_is_rejected(host):
    last = host.iptables.rules("filter", "ZMQRPC")[-1]
    assert last.endswith("-j REJECT --reject-with icmp-port-unreachable"), f"the chain ends with {last!r}"
