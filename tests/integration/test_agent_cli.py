"""The node agent and `zmqrpc ping` / `zmqrpc matchmaker` as an operator runs them: real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.procs import ROOT, run_python
from tests.servers import wait_for

pytestmark = pytest.mark.integration
HOSTS = ("127.0.0.2", "127.0.0.3")


def _conf(tmp: Path, url: str, host: str, extra: str = "", expire: int = 5) -> Path:
    """A node's config file: ``host`` as its name and address, fast registrations, then ``extra`` lines."""
    path = tmp / f"{host}.conf"
    path.write_text(
        f"[DEFAULT]\ntransport_url = {url}\n[oslo_messaging_zmq]\nrpc_zmq_host = {host}\n"
        f"rpc_zmq_bind_address = {host}\nzmq_target_update = 1\nzmq_target_expire = {expire}\n{extra}"
    )
    return path


def _zmqrpc(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return run_python("-m", "zmqrpc.cli", *args, timeout=timeout)


@pytest.fixture
def agents(redis_server, tmp_path: Path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "zmqrpc.cli",
                "agent",
                "--config-file",
                str(_conf(tmp_path, redis_server.url, h)),
            ],
            cwd=ROOT,
            env=env,
        )
        for h in HOSTS
    ]
    client_conf = _conf(tmp_path, redis_server.url, "127.0.0.1")
    try:
        listed = wait_for(
            lambda: (
                len(
                    json.loads(
                        _zmqrpc("matchmaker", "list", "--config-file", str(client_conf)).stdout or "{}"
                    ).get("zmqrpc-agent", {})
                )
                == 2
            ),
            timeout=20,
        )
        assert listed, "agents did not register"
        yield client_conf, procs
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            assert proc.wait(10) == 0, "the agent should exit cleanly on SIGTERM"


def _ping(conf: Path, *args: str) -> dict:
    done = _zmqrpc("ping", "--config-file", str(conf), *args)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def test_ping_call_info_cast_fanout_and_notify(agents) -> None:
    conf, _ = agents
    for host in HOSTS:
        result = _ping(conf, "--server", host)
        assert result["responder"] == host and result["ok"] and result["latency_ms"] > 0
    hosts = ",".join(HOSTS)
    assert _ping(conf, "--mode", "fanout", "--hosts", hosts)["received"] == dict.fromkeys(HOSTS, 1)
    cast = _ping(conf, "--mode", "cast", "--server", HOSTS[1], "--hosts", hosts)
    assert cast["received"] == {HOSTS[0]: 0, HOSTS[1]: 1}
    notify = _ping(conf, "--mode", "notify", "--hosts", hosts)
    assert sum(notify["received"].values()) == 1


def test_ping_reports_failure_with_a_nonzero_exit(agents) -> None:
    conf, _ = agents
    done = _zmqrpc("ping", "--config-file", str(conf), "--server", "no-such-host", "--timeout", "1")
    assert done.returncode == 2 and "no-such-host" in done.stderr


def test_matchmaker_register_list_unregister(agents) -> None:
    conf, _ = agents
    base = ("--config-file", str(conf), "--topic", "ops-test", "--address", "10.9.9.9:5000")
    assert _zmqrpc("matchmaker", "register", *base, "--expire", "60").returncode == 0
    listed = json.loads(
        _zmqrpc("matchmaker", "list", "--config-file", str(conf), "--topic", "ops-test").stdout
    )
    assert list(listed["ops-test"]) == ["10.9.9.9:5000"] and 0 < listed["ops-test"]["10.9.9.9:5000"] <= 60
    assert _zmqrpc("matchmaker", "unregister", *base).returncode == 0
    assert (
        json.loads(_zmqrpc("matchmaker", "list", "--config-file", str(conf), "--topic", "ops-test").stdout)
        == {}
    )
