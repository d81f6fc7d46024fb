"""Harness for the custom module tests: ansible-core's way of running a module, and real Redis processes.

Modules run as in ansible-core's own unit tests: arguments through ``patch_module_args``,
``exit_json``/``fail_json`` patched to raise. Redis processes are started by the test on a
127.0.0.1 port picked at run time, and stopped when the test ends.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import redis

from tests.servers import free_port, stop_process

LIBRARY = Path(__file__).resolve().parents[2] / "library"
if str(LIBRARY) not in sys.path:
    sys.path.insert(0, str(LIBRARY))


class AnsibleExitJson(Exception):
    """Raised instead of exit_json: carries the module's result."""


class AnsibleFailJson(Exception):
    """Raised instead of fail_json: carries the module's result."""


def exit_json(self, **kwargs):
    kwargs.setdefault("changed", False)
    raise AnsibleExitJson(kwargs)


def fail_json(self, msg, **kwargs):
    kwargs["failed"] = True
    kwargs["msg"] = msg
    raise AnsibleFailJson(kwargs)


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class RedisProcess:
    """A redis-server or redis-sentinel started for one test."""

    def __init__(self, binary: str, workdir: Path, config: str, password: str | None = None):
        self.port = free_port()
        self.password = password
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_file = workdir / "redis.conf"
        self.config_file.write_text(f"bind 127.0.0.1\nport {self.port}\ndir {workdir}\n{config}")
        self.log = workdir / "log"
        self.proc = subprocess.Popen(
            [binary, str(self.config_file)], stdout=self.log.open("w"), stderr=subprocess.STDOUT
        )
        self.client = redis.Redis(
            host="127.0.0.1", port=self.port, password=password, decode_responses=True, socket_timeout=5
        )
        wait_until(self._pings, 10, f"{binary} on port {self.port} (log: {self.log})")

    def _pings(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"process exited: {self.log.read_text()}")
        try:
            return self.client.ping()
        except redis.ConnectionError:
            return False

    def stop(self):
        stop_process(self.proc)


# --- zmqrpc: the real CLI and real agents --------------------------------------------------------


def zmqrpc_executable() -> str:
    """The ``zmqrpc`` command of the environment running the tests (the project venv)."""
    beside = Path(sys.executable).parent / "zmqrpc"
    if beside.exists():
        return str(beside)
    found = shutil.which("zmqrpc")
    if found is None:
        raise AssertionError("no zmqrpc command: install the package (pip install -e .) into the test venv")
    return found


def write_zmqrpc_config(path: Path, transport_url: str, host: str, **options) -> Path:
    """A zmqrpc config file like role zmqrpc writes: [DEFAULT] transport_url, [oslo_messaging_zmq]."""
    lines = ["[DEFAULT]", f"transport_url = {transport_url}", "", "[oslo_messaging_zmq]"]
    lines += [f"rpc_zmq_host = {host}", "rpc_zmq_bind_address = 127.0.0.1"]
    lines += [f"{key} = {value}" for key, value in options.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class ZmqrpcAgent:
    """A real ``zmqrpc agent`` process for one host name; ready once it answers a directed ping."""

    def __init__(self, config_file: Path, host: str):
        self.config_file = config_file
        self.host = host
        self.log = config_file.with_suffix(".log")
        self.proc = subprocess.Popen(
            [zmqrpc_executable(), "agent", "--config-file", str(config_file)],
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
        )
        wait_until(self._answers, 20, f"zmqrpc agent {host} to answer (log: {self.log})", interval=0.2)

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"zmqrpc agent {self.host} exited: {self.log.read_text()}")
        ping = subprocess.run(
            [zmqrpc_executable(), "ping", "--config-file", str(self.config_file), "--server", self.host,
             "--timeout", "1"],
            capture_output=True,
            text=True,
            check=False,
        )  # fmt: skip
        return ping.returncode == 0

    def kill(self):
        """SIGKILL, as a crashed host: its registrations stay in the matchmaker until they expire."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self):
        stop_process(self.proc)
