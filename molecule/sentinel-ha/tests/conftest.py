"""Helpers for the sentinel-ha checks: its Redis and Sentinel, on top of the lab helpers every scenario
uses (../../shared/checks/zmqrpc_lab.py)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared" / "checks"))

from zmqrpc_lab import CONFIG_FILE, GROUP_VARS, HOSTS, VENV, address_of, lab_host, wait_until

__all__ = ["CONFIG_FILE", "GROUP_VARS", "HOSTS", "VENV", "address_of", "lab_host", "wait_until"]

PASSWORD = GROUP_VARS["redis"]["redis_server_password"]
MASTER_NAME = GROUP_VARS["redis_sentinel"].get("redis_sentinel_master_name", "zmqrpc")


def pytest_configure(config):
    """Run the per-host checks on every lab host through testinfra's native podman backend.

    Molecule passes the Ansible inventory, whose ansible_connection=podman testinfra does not map
    to a backend: it would fall back to running an Ansible module per command, many times slower.
    """
    config.option.hosts = ",".join(f"podman://{name}" for name in HOSTS)


def redis_cli(host, *args: str, port: int = 6379, target: str = "127.0.0.1") -> str:
    """Run redis-cli on `host` against `target`; return its output (stripped)."""
    auth = f"-a {PASSWORD} --no-auth-warning" if port == 6379 else ""
    return host.check_output(f"redis-cli -h {target} -p {port} {auth} {' '.join(args)}").strip()


def replication(name: str) -> dict:
    text = redis_cli(lab_host(name), "INFO", "replication")
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def replicates_from(name: str, master_ip: str) -> bool:
    """Whether ``name`` is a replica of ``master_ip`` with its link up."""
    info = replication(name)
    return info.get("master_host") == master_ip and info.get("master_link_status") == "up"


def sentinel_master_addr(name: str) -> tuple[str, str]:
    answer = redis_cli(lab_host(name), "SENTINEL", "get-master-addr-by-name", MASTER_NAME, port=26379)
    ip, port = answer.split()
    return ip, port
