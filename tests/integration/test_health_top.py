"""`zmqrpc health` and `zmqrpc top` as an operator runs them: subprocesses against a real redis-server and
a real `zmqrpc agent` process, which the tests kill, starve of its matchmaker, and send calls to.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration import test_agent_cli as agent_cli
from tests.procs import ROOT, ProxyProcess
from tests.servers import free_port, wait_for
from zmqrpc import RpcClient, load_settings
from zmqrpc.matchmaker import RedisMatchMaker

pytestmark = pytest.mark.integration
HOST = "127.0.0.2"  # the agent's host (rpc_zmq_host); health runs as this host too
CALLS = 20


# The agent CLI tests' helpers; these registrations live longer (30 s) and the commands may run longer.
_conf = functools.partial(agent_cli._conf, expire=30)
_zmqrpc = functools.partial(agent_cli._zmqrpc, timeout=60)


def _health(conf: Path, *args: str) -> tuple[int, dict]:
    done = _zmqrpc("health", "--config-file", str(conf), "--timeout", "2", *args)
    lines = done.stdout.splitlines()
    assert len(lines) == 1, f"one JSON line expected: {done.stdout!r} {done.stderr[-2000:]}"
    return done.returncode, json.loads(lines[0])


def _statuses(result: dict) -> dict[str, str]:
    return {check["name"]: check["status"] for check in result["checks"]}


def _top(conf: Path, *args: str) -> dict:
    done = _zmqrpc("top", "--config-file", str(conf), "--once", "--json", "--interval", "0.5", *args)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def _host(frame: dict, name: str) -> dict:
    rows = [row for row in frame["hosts"] if row["host"] == name]
    assert rows, f"{name} not in {frame['hosts']}"
    return rows[0]


@pytest.fixture(params=[True], ids=["metrics"])
def agent(request, redis_server, tmp_path: Path):
    """A real agent process on HOST, with metrics on unless the param says otherwise; yields (its config,
    the client's config, the process)."""
    metrics = f"metrics_port = {free_port()}\nmetrics_bind_address = {HOST}\n" if request.param else ""
    conf = _conf(tmp_path, redis_server.url, HOST, metrics)
    proc = _start_agent(conf, redis_server)
    try:
        yield conf, _conf(tmp_path, redis_server.url, "127.0.0.1"), proc
    finally:
        _stop(proc)


def _start_agent(conf: Path, redis_server) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "zmqrpc.cli", "agent", "--config-file", str(conf)],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    with RedisMatchMaker([redis_server.address]) as matchmaker:
        if not wait_for(lambda: matchmaker.get_hosts(f"zmqrpc-agent.{HOST}"), timeout=20):
            _stop(proc)
            raise AssertionError("the agent did not register")
    return proc


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_health_is_0_with_every_check_ok(agent) -> None:
    conf, _, _ = agent
    code, result = _health(conf)
    assert code == 0, result
    assert result["status"] == "healthy" and result["host"] == HOST
    assert _statuses(result) == {"matchmaker": "ok", "registrations": "ok", "proxies": "ok", "agent": "ok"}
    assert all(check["detail"] for check in result["checks"])


def test_one_shot_commands_share_the_agents_config_without_taking_its_metrics_port(agent) -> None:
    """A node's ping and matchmaker commands read the agent's config file, metrics_port included: they must
    run beside the agent that serves that port instead of failing to bind it."""
    conf, _, _ = agent
    ping = agent_cli._ping(conf, "--server", HOST)
    assert ping["ok"] and ping["responder"] == HOST, ping
    listed = _zmqrpc("matchmaker", "list", "--config-file", str(conf))
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert f"zmqrpc-agent.{HOST}" in json.loads(listed.stdout)


def test_health_is_1_when_a_registration_is_about_to_expire(agent, redis_server) -> None:
    conf, _, _ = agent
    with RedisMatchMaker([redis_server.address]) as matchmaker:  # a second agent address, not refreshed
        for topic in ("zmqrpc-agent", f"zmqrpc-agent.{HOST}"):
            matchmaker.register(topic, f"{HOST}:9", 12)  # margin: (30 - 1) / 2 = 14.5 s
    code, result = _health(conf)
    assert code == 1, result
    assert result["status"] == "degraded" and _statuses(result)["registrations"] == "degraded"
    assert f"{HOST}:9" in next(c for c in result["checks"] if c["name"] == "registrations")["detail"]


def test_health_is_2_naming_the_agent_once_it_is_killed(agent) -> None:
    conf, _, proc = agent
    proc.kill()
    proc.wait(10)
    code, result = _health(conf)
    assert code == 2, result
    assert result["status"] == "unhealthy"
    assert _statuses(result)["agent"] == "failed" and _statuses(result)["matchmaker"] == "ok"


def test_health_is_2_naming_the_matchmaker_when_it_is_down(agent, redis_server) -> None:
    conf, _, _ = agent
    redis_server.stop()
    code, result = _health(conf)
    assert code == 2, result
    statuses = _statuses(result)
    assert statuses["matchmaker"] == "failed" and statuses["registrations"] == "skipped"


def test_health_is_2_with_a_config_file_that_is_not_there(tmp_path: Path) -> None:
    code, result = _health(tmp_path / "missing.conf")
    assert code == 2 and _statuses(result) == {"config": "failed"}


def test_top_lists_the_agent_and_its_rate_moves_with_the_calls_sent(agent, redis_server) -> None:
    conf, client_conf, _ = agent
    text = _zmqrpc("top", "--config-file", str(conf), "--once", "--interval", "0.5")
    assert text.returncode == 0, text.stderr[-2000:]
    for shown in (HOST, "zmqrpc-agent, zmqrpc-agent.info", "hosts", "proxies"):
        assert shown in text.stdout, text.stdout

    quiet = _host(_top(conf), HOST)
    assert quiet["agent"] == "ok" and quiet["topics"] == ["zmqrpc-agent", "zmqrpc-agent.info"]
    assert quiet["received_per_s"] == 0 and quiet["expiring"] is False  # top's own stats calls left out

    # Two frames 3 s apart: the calls are sent right after the first is printed, so they land in the second.
    argv = ["top", "--config-file", str(conf), "--iterations", "2", "--json", "--interval", "3"]
    top = subprocess.Popen(
        [sys.executable, "-m", "zmqrpc.cli", *argv],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert top.stdout is not None
        first = _host(json.loads(top.stdout.readline()), HOST)
        with RpcClient(load_settings(config_files=[str(client_conf)])) as client:
            for n in range(CALLS):
                assert client.call("zmqrpc-agent", "ping", {"n": n}, timeout=5, server=HOST)["pong"]
        second_frame = json.loads(top.stdout.readline())
        assert top.wait(30) == 0
    finally:
        if top.poll() is None:
            top.kill()
            top.wait(10)
    second = _host(second_frame, HOST)
    assert first["received_per_s"] == 0, first
    assert second["received_total"] - first["received_total"] == CALLS, (first, second)
    assert second["sent_total"] - first["sent_total"] == CALLS  # the replies
    calls_per_s = second["received_per_s_by_type"]["call"]
    assert calls_per_s == second["received_per_s"] > 0
    assert round(calls_per_s * second_frame["interval_s"]) == CALLS


def test_top_highlights_a_registration_about_to_expire(agent, redis_server) -> None:
    conf, _, _ = agent

    def ghost_registers() -> None:  # for 12 s, under the margin of (30 - 1) / 2 = 14.5 s
        with RedisMatchMaker([redis_server.address]) as matchmaker:
            for topic in ("zmqrpc-agent", "zmqrpc-agent.ghost", "compute", "compute.ghost"):
                matchmaker.register(topic, "127.0.0.9:9", 12)

    ghost_registers()
    frame = _top(conf, "--timeout", "0.5")
    ghost = _host(frame, "ghost")
    assert ghost["expiring"] is True and ghost["topics"] == ["compute", "zmqrpc-agent"]
    assert ghost["agent"] == "no answer" and ghost["received_per_s"] is None
    assert _host(frame, HOST)["expiring"] is False
    ghost_registers()
    text = _zmqrpc("top", "--config-file", str(conf), "--once", "--interval", "0.2", "--timeout", "0.5")
    assert "EXPIRING" in next(line for line in text.stdout.splitlines() if "ghost" in line)


@pytest.mark.parametrize("agent", [False], ids=["no-metrics"], indirect=True)
def test_top_counts_what_an_agent_without_metrics_processed(agent) -> None:
    """Without metrics_port the agent's stats are what its servers processed, all types together."""
    conf, client_conf, _ = agent
    before = _host(_top(conf), HOST)
    with RpcClient(load_settings(config_files=[str(client_conf)])) as client:
        for _ in range(CALLS):
            client.call("zmqrpc-agent", "ping", timeout=5, server=HOST)
    after = _host(_top(conf), HOST)
    assert after["received_total"] - before["received_total"] == CALLS, (before, after)
    assert after["received_per_s"] == 0 and after["sent_total"] is None  # quiet again; sends are not counted


def test_router_proxy_topology_health_and_top_see_the_proxy(redis_server, tmp_path: Path) -> None:
    """A proxy topology: health wants the proxies registered; top reads the proxy's forwarded counters."""
    proxy_port = free_port()
    proxy = ProxyProcess(tmp_path, redis_server.url, extra=f"[zmq_proxy_opts]\nmetrics_port = {proxy_port}\n")
    proxy.start()
    agent = None
    try:
        with RedisMatchMaker([redis_server.address]) as matchmaker:
            assert wait_for(lambda: matchmaker.get_hosts("zmqrpc-proxy.backend"), timeout=20)
        routed = f"use_router_proxy = true\n[zmq_proxy_opts]\nmetrics_port = {proxy_port}\n"
        conf = _conf(tmp_path, redis_server.url, HOST, routed, expire=5)  # as the proxy's
        agent = _start_agent(conf, redis_server)
        code, result = wait_for(lambda: (r := _health(conf))[0] == 0 and r, timeout=20) or _health(conf)
        assert code == 0, result
        detail = next(c for c in result["checks"] if c["name"] == "proxies")["detail"]
        assert "1 under zmqrpc-proxy.frontend" in detail and "1 under zmqrpc-proxy.backend" in detail

        before = _top(conf)["proxies"]
        assert [p["host"] for p in before] == ["127.0.0.1"] and before[0]["metrics"] == "ok"
        client_conf = _conf(tmp_path, redis_server.url, "127.0.0.1", "use_router_proxy = true\n")
        with RpcClient(load_settings(config_files=[str(client_conf)])) as client:
            for _ in range(CALLS):
                client.call("zmqrpc-agent", "ping", timeout=5, server=HOST)
        after = _top(conf)["proxies"][0]
        moved = (
            after["forwarded_total"]["frontend_to_backend"]
            - before[0]["forwarded_total"]["frontend_to_backend"]
        )
        assert moved >= CALLS, (before, after)  # and top's own stats calls
        assert _host(_top(conf), HOST)["agent"] == "ok"  # top reaches the agent through the proxy

        proxy.kill()  # the agent cannot answer now, and the proxy's registrations expire (5 s)
        code, result = wait_for(
            lambda: (r := _health(conf))[1]["checks"][2]["detail"].startswith("no proxy") and r, timeout=30
        ) or _health(conf)
        assert code == 2 and _statuses(result)["proxies"] == "degraded", result
        assert _statuses(result)["agent"] == "failed"
        assert "no proxy registered under zmqrpc-proxy.frontend" in result["checks"][2]["detail"]
    finally:
        if agent is not None:
            _stop(agent)
        proxy.stop()
