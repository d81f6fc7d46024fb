"""Fixtures for the custom module tests (see module_harness.py)."""

from __future__ import annotations

import os
import shutil
import warnings
from types import SimpleNamespace
from unittest import mock

import pytest

try:
    from ansible.module_utils import basic, testing
    from module_harness import (
        AnsibleExitJson,
        RedisProcess,
        ZmqrpcAgent,
        exit_json,
        fail_json,
        write_zmqrpc_config,
    )
except ImportError:  # no ansible or redis-py here: `make test-modules` installs both
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture
def run_module():
    """Run a module's main() with args; return its result dict, or raise AnsibleFailJson."""

    def run(module, args: dict, check_mode: bool = False) -> dict:
        args = dict(args)
        if check_mode:
            args["_ansible_check_mode"] = True
        with (
            mock.patch.multiple(basic.AnsibleModule, exit_json=exit_json, fail_json=fail_json),
            testing.patch_module_args(args),
            warnings.catch_warnings(),
        ):
            # run_command forks (a preexec_fn) and the child execs the zmqrpc CLI at once. eventlet, which
            # other tests of the same pytest session import, warns about every fork of the process.
            warnings.filterwarnings("ignore", r"Using fork\(\) is a bad idea", DeprecationWarning)
            try:
                module.main()
            except AnsibleExitJson as exc:
                return exc.args[0]
        raise AssertionError("the module returned without calling exit_json or fail_json")

    return run


@pytest.fixture
def redis_factory(tmp_path):
    """Start real Redis processes; all are stopped at the end of the test."""
    binaries = {"server": shutil.which("redis-server"), "sentinel": shutil.which("redis-sentinel")}
    missing = [name for name, path in binaries.items() if path is None]
    if missing and os.environ.get("ZMQRPC_REQUIRE_REDIS"):
        pytest.fail(f"redis-{' and redis-'.join(missing)} not found, and ZMQRPC_REQUIRE_REDIS is set")
    if missing:
        pytest.skip(
            f"needs redis-{' and redis-'.join(missing)} (apt-get install redis-server redis-sentinel)"
        )
    started: list[RedisProcess] = []

    def start(kind: str, config: str = "", password: str | None = None) -> RedisProcess:
        workdir = tmp_path / f"{kind}-{len(started)}"
        base = 'save ""\nappendonly no\n' if kind == "server" else ""
        process = RedisProcess(binaries[kind], workdir, base + config, password)
        started.append(process)
        return process

    yield start
    for process in reversed(started):
        process.stop()


@pytest.fixture
def zmqrpc_bus(tmp_path, redis_factory):
    """A real bus: one redis-server as matchmaker, and real ``zmqrpc agent`` processes on it.

    ``bus.url`` is the transport URL, ``bus.config(host)`` writes a config file for that host name,
    ``bus.agent(host)`` starts an agent and waits until it answers; agents are stopped after the test.
    """
    server = redis_factory("server")
    url = f"zmq+redis://127.0.0.1:{server.port}"
    agents: list[ZmqrpcAgent] = []

    def config(host: str, **options):
        return write_zmqrpc_config(tmp_path / f"{host}.conf", url, host, **options)

    def agent(host: str) -> ZmqrpcAgent:
        started = ZmqrpcAgent(config(host), host)
        agents.append(started)
        return started

    yield SimpleNamespace(url=url, redis=server, config=config, agent=agent)
    for started in agents:
        started.stop()
