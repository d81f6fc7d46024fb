"""Unit tests for library/zmqrpc_ping.py: the real zmqrpc CLI, real agents, a real redis-server."""

from __future__ import annotations

import pytest
import zmqrpc_ping as module
from module_harness import AnsibleFailJson, zmqrpc_executable

from zmqrpc.client import RpcClient
from zmqrpc.config import load_settings


@pytest.fixture
def two_agents(zmqrpc_bus):
    """Agents ctl1 and cmp1 on one matchmaker; the module runs as node cmp1 (its config file)."""
    agents = {host: zmqrpc_bus.agent(host) for host in ("ctl1", "cmp1")}
    return zmqrpc_bus, agents


def args_for(bus, **extra):
    args = {"executable": zmqrpc_executable(), "config_file": str(bus.config("cmp1")), "timeout": 3}
    args.update(extra)
    return args


def seen_by(bus, host: str) -> list:
    """What the agent of ``host`` recorded (casts, fanouts, notifications), asked over the bus."""
    with RpcClient(load_settings(config_files=[str(bus.config("probe"))])) as client:
        return client.call("zmqrpc-agent", "seen", timeout=5, server=host)


# --- argument checks: nothing is sent ------------------------------------------------------------


def test_fanout_needs_the_hosts_to_check(run_module):
    with pytest.raises(AnsibleFailJson) as failure:
        run_module(module, {"mode": "fanout"})
    assert "hosts" in failure.value.args[0]["msg"]


def test_notify_takes_no_server(run_module):
    with pytest.raises(AnsibleFailJson) as failure:
        run_module(module, {"mode": "notify", "server": "ctl1"})
    assert "server does not apply to notify" in failure.value.args[0]["msg"]


def test_missing_executable_says_what_to_do(run_module, tmp_path):
    with pytest.raises(AnsibleFailJson) as failure:
        run_module(module, {"server": "ctl1", "executable": str(tmp_path / "zmqrpc"), "source": "cmp1"})
    msg = failure.value.args[0]["msg"]
    assert msg.startswith("zmqrpc call from cmp1 to zmqrpc-agent.ctl1:")
    assert "is role zmqrpc applied" in msg


def test_source_defaults_to_rpc_zmq_host_of_the_config(tmp_path):
    conf = tmp_path / "z.conf"
    conf.write_text("[DEFAULT]\ntransport_url = zmq://\n[oslo_messaging_zmq]\nrpc_zmq_host = node-7\n")
    assert module.node_name(str(conf)) == "node-7"
    assert module.node_name(str(tmp_path / "missing.conf"))  # falls back to the host name


# --- against real agents -------------------------------------------------------------------------


def test_call_returns_the_responder_and_the_latency(run_module, two_agents):
    bus, _ = two_agents
    result = run_module(module, args_for(bus, server="ctl1"))
    assert result["ok"] is True
    assert result["changed"] is False
    assert result["responder"] == "ctl1"
    assert result["source"] == "cmp1"
    assert result["target"] == "zmqrpc-agent.ctl1"
    assert 0 < result["latency_ms"] < 3000
    assert result["reply"]["pong"] is True


def test_call_on_the_bare_topic_reaches_some_agent(run_module, two_agents):
    bus, _ = two_agents
    result = run_module(module, args_for(bus))
    assert result["responder"] in {"ctl1", "cmp1"}


def test_cast_arrives_exactly_once(run_module, two_agents):
    bus, _ = two_agents
    result = run_module(module, args_for(bus, mode="cast", server="ctl1"))
    assert result["ok"] is True
    assert result["received"] == {"ctl1": 1}


def test_fanout_reaches_every_agent_exactly_once(run_module, two_agents):
    bus, _ = two_agents
    result = run_module(module, args_for(bus, mode="fanout", hosts=["ctl1", "cmp1"]))
    assert result["received"] == {"ctl1": 1, "cmp1": 1}
    assert result["sent_to"] == 2


def test_notification_reaches_one_listener(run_module, two_agents):
    bus, _ = two_agents
    result = run_module(module, args_for(bus, mode="notify", hosts=["ctl1", "cmp1"]))
    assert sum(result["received"].values()) == 1


def test_check_mode_sends_nothing(run_module, two_agents):
    bus, _ = two_agents
    before = seen_by(bus, "ctl1")
    result = run_module(module, args_for(bus, mode="cast", server="ctl1"), check_mode=True)
    assert result["changed"] is False
    assert result["ok"] is None
    assert "would send a cast from cmp1 to zmqrpc-agent.ctl1" in result["msg"]
    assert result["command"][1:3] == ["ping", "--config-file"]
    assert seen_by(bus, "ctl1") == before


def test_an_unknown_host_fails_naming_the_pair(run_module, two_agents):
    bus, _ = two_agents
    with pytest.raises(AnsibleFailJson) as failure:
        run_module(module, args_for(bus, server="cmp9"))
    msg = failure.value.args[0]["msg"]
    assert msg.startswith("zmqrpc call from cmp1 to zmqrpc-agent.cmp9 failed:")
    assert "no server is registered for topic 'zmqrpc-agent.cmp9'" in msg


def test_a_dead_agent_fails_naming_the_pair(run_module, two_agents):
    bus, agents = two_agents
    agents["ctl1"].kill()  # still registered: the call goes out and nobody answers
    with pytest.raises(AnsibleFailJson) as failure:
        run_module(module, args_for(bus, server="ctl1", timeout=1))
    msg = failure.value.args[0]["msg"]
    assert msg.startswith("zmqrpc call from cmp1 to zmqrpc-agent.ctl1 failed:")


def test_a_fanout_that_misses_an_agent_fails_naming_it(run_module, two_agents):
    bus, agents = two_agents
    agents["ctl1"].kill()
    with pytest.raises(AnsibleFailJson) as failure:
        run_module(module, args_for(bus, mode="fanout", hosts=["ctl1", "cmp1"], timeout=1))
    msg = failure.value.args[0]["msg"]
    assert msg.startswith("zmqrpc fanout from cmp1 to zmqrpc-agent on ctl1, cmp1 failed")
    assert "agents that do not answer a call from cmp1: ctl1" in msg


def test_a_broken_config_fails_with_the_cli_message(run_module, two_agents, tmp_path):
    bus, _ = two_agents
    with pytest.raises(AnsibleFailJson) as failure:
        run_module(
            module, args_for(bus, server="ctl1", config_file=str(tmp_path / "nope.conf"), source="cmp1")
        )
    msg = failure.value.args[0]["msg"]
    assert msg.startswith("zmqrpc call from cmp1 to zmqrpc-agent.ctl1 failed:")
    assert "nope.conf" in msg


def test_what_went_wrong_names_missing_and_duplicated_agents():
    text = module.what_went_wrong(
        "fanout", {"received": {"a": 0, "b": 2, "c": 1}, "sent_to": 3}, ["a", "b", "c"]
    )
    assert text == "never reached a; duplicated on b (2 copies) (sent to 3 agent(s))"
    assert module.what_went_wrong("notify", {"received": {"a": 1, "b": 1}}, ["a", "b"]) == (
        "received 2 times, expected once: {'a': 1, 'b': 1}"
    )
