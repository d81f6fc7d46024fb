"""Helpers for the secure scenario's checks, on top of the lab helpers every scenario uses
(../../shared/checks/zmqrpc_lab.py): the lab's secrets from the scenario's group_vars, a script runner."""

from __future__ import annotations

import shlex
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared" / "checks"))

from zmqrpc_lab import CONFIG_FILE, GROUP_VARS, HOSTS, VENV, lab_host  # noqa: E402

ALL = GROUP_VARS["all"]
ACL_USER = ALL["zmqrpc_redis_username"]
ACL_PASSWORD = ALL["zmqrpc_redis_password"]
DEFAULT_PASSWORD = ALL["redis_server_password"]
SENTINEL_PASSWORD = ALL["redis_sentinel_password"]
REDIS_CA = "/etc/zmqrpc/redis-ca.pem"
CURVE_DIR = "/etc/zmqrpc/curve"


def pytest_configure(config):
    """Per-host checks reach the lab hosts through testinfra's native podman backend (not Ansible)."""
    config.option.hosts = ",".join(f"podman://{name}" for name in HOSTS)


def run_script(name: str, script: str, *args: str, python: str = f"{VENV}/bin/python", timeout: int = 120):
    """Copy `script` to `name` and run it with the venv's Python; the testinfra CommandResult."""
    host = lab_host(name)
    path = f"/tmp/sec-check-{uuid.uuid4().hex[:8]}.py"
    host.check_output(f"cat > {path} <<'EOF'\n{script}\nEOF")
    try:
        return host.run(f"timeout {timeout} {shlex.join([python, path, *args])}")
    finally:
        host.run(f"rm -f {path}")


def insecure_config(name: str, path: str, security: str, key_file: str = "") -> None:
    """A copy of the node's config at `path` with other CURVE settings: the same IP, ports, matchmaker and
    message format, without the node's key (security none, or a key the bus does not know)."""
    lines = [f"zmq_security = {security}"]
    if key_file:
        lines.append(f"zmq_curve_secret_key_file = {key_file}")
    edits = " ".join(
        f"-e {shlex.quote(expr)}"
        for expr in (
            "/^zmq_security *=/d",
            "/^zmq_curve_secret_key_file *=/d",
            "/^\\[oslo_messaging_zmq\\]/a " + "\\n".join(lines),
        )
    )
    lab_host(name).check_output(f"sed {edits} {CONFIG_FILE} > {path} && chmod 0640 {path}")


__all__ = [
    "ACL_PASSWORD",
    "ACL_USER",
    "CONFIG_FILE",
    "CURVE_DIR",
    "DEFAULT_PASSWORD",
    "REDIS_CA",
    "SENTINEL_PASSWORD",
    "VENV",
    "insecure_config",
    "lab_host",
    "run_script",
]
