"""Helpers for the sentinel-ha checks: the lab's hosts, its inventory values, bounded polling."""

from __future__ import annotations

import functools
import os
import time

import pytest
import testinfra
import yaml

with open(os.environ["MOLECULE_FILE"], encoding="utf-8") as _stream:
    MOLECULE = yaml.safe_load(_stream)

HOSTS = [platform["name"] for platform in MOLECULE["platforms"]]
GROUP_VARS = MOLECULE["provisioner"]["inventory"]["group_vars"]
PASSWORD = GROUP_VARS["redis"]["redis_server_password"]
MASTER_NAME = GROUP_VARS["redis"].get("redis_sentinel_master_name", "zmqrpc")


def pytest_configure(config):
    """Run the per-host checks on every lab host through testinfra's native podman backend.

    Molecule passes the Ansible inventory, whose ansible_connection=podman testinfra does not map
    to a backend: it would fall back to running an Ansible module per command, many times slower.
    """
    config.option.hosts = ",".join(f"podman://{name}" for name in HOSTS)


@functools.cache
def lab_host(name: str):
    """A testinfra host for one lab machine (a podman container, as in the inventory)."""
    return testinfra.get_host(f"podman://{name}")


def redis_cli(host, *args: str, port: int = 6379, target: str = "127.0.0.1") -> str:
    """Run redis-cli on `host` against `target`; return its output (stripped)."""
    auth = f"-a {PASSWORD} --no-auth-warning" if port == 6379 else ""
    return host.check_output(f"redis-cli -h {target} -p {port} {auth} {' '.join(args)}").strip()


def address_of(name: str) -> str:
    return lab_host(name).check_output("hostname -I").split()[0]


def wait_until(predicate, timeout: float, what: str, interval: float = 1.0):
    """Poll predicate until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"{what}: not true after {timeout} s (last value: {last!r})")


def replication(name: str) -> dict:
    text = redis_cli(lab_host(name), "INFO", "replication")
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def sentinel_master_addr(name: str) -> tuple[str, str]:
    answer = redis_cli(lab_host(name), "SENTINEL", "get-master-addr-by-name", MASTER_NAME, port=26379)
    ip, port = answer.split()
    return ip, port
