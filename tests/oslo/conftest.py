"""Fixtures for the oslo.messaging tests: service processes, their config files, a real RabbitMQ.

The test process is the client and uses oslo.messaging's public API only (``cfg.CONF``, as services do:
oslo.messaging registers some options there only). Servers and notification listeners are separate
``tests.oslo.oslo_node`` processes configured through nova.conf-style files.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.servers import RabbitMQ, rabbitmq_installed

pytest.importorskip("oslo_messaging", reason="the oslo tests need the zmqrpc[oslo] extra (oslo.messaging)")

ROOT = Path(__file__).resolve().parents[2]
ALLOWED_EXMODS = ["tests.oslo.remote_errors"]
# Fast matchmaker timers for tests: registrations refresh every second, caches too.
FAST = {
    "zmq_target_update": 1,
    "zmq_target_expire": 5,
    "rpc_zmq_cache_refresh": 1,
    "zmq_connect_timeout": 1.0,
}


def zmq_url(redis_port: int, **options: object) -> str:
    """A zmq+redis transport URL; ``options`` become [oslo_messaging_zmq] query parameters."""
    query = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in options.items()}
    return f"zmq+redis://127.0.0.1:{redis_port}/" + (f"?{urlencode(query)}" if query else "")


def write_config(path: Path, transport_url: str, zmq_options: dict[str, object] | None = None) -> Path:
    """A nova.conf-style file: [DEFAULT] transport_url and an [oslo_messaging_zmq] section."""
    lines = ["[DEFAULT]", f"transport_url = {transport_url}", "", "[oslo_messaging_zmq]"]
    for key, value in (zmq_options or {}).items():
        if isinstance(value, bool):
            value = str(value).lower()
        elif isinstance(value, (list, tuple)):
            value = ",".join(map(str, value))
        lines.append(f"{key} = {value}")
    path.write_text("\n".join(lines) + "\n")
    return path


def read_ledger(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class OsloNode:
    """A ``tests.oslo.oslo_node`` process (an oslo.messaging server or notification listener)."""

    def __init__(
        self,
        tmp: Path,
        role: str,
        topic: str,
        name: str,
        transport_url: str,
        zmq_options: dict[str, object] | None = None,
        pool: str | None = None,
        label: str | None = None,
        ledger: Path | None = None,
        exchange: str | None = None,
    ) -> None:
        self.role = role
        self.topic = topic
        self.name = name
        self.pool = pool
        self.exchange = exchange
        label = label or name  # files are named after it: a replacement of a node needs another label
        self.transport_url = transport_url
        self.config = write_config(tmp / f"{role}-{label}.conf", transport_url, zmq_options)
        self.ledger = ledger or tmp / f"{role}-{label}.ledger"
        self.log = tmp / f"{role}-{label}.log"
        self.proc: subprocess.Popen[str] | None = None

    def spawn(self) -> OsloNode:
        cmd = [sys.executable, "-m", "tests.oslo.oslo_node", "--config-file", str(self.config)]
        cmd += [
            "--role",
            self.role,
            "--topic",
            self.topic,
            "--server",
            self.name,
            "--ledger",
            str(self.ledger),
        ]
        if self.pool:
            cmd += ["--pool", self.pool]
        if self.exchange:
            cmd += ["--exchange", self.exchange]
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONWARNINGS="ignore")
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log, text=True
            )
        _LIVE.add(self.proc)
        return self

    def _read_line(self, timeout: float) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return self.proc.stdout.readline() if ready else f"(no answer within {timeout} s)"

    def wait_ready(self, timeout: float = 60.0) -> OsloNode:
        line = self._read_line(timeout)  # the node prints READY or dies
        if line.strip() != "READY":
            self.kill()
            tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"{self.role} {self.name} did not start ({line!r}); log:\n{tail}")
        return self

    def start(self) -> OsloNode:
        return self.spawn().wait_ready()

    def reload(self, zmq_options: dict[str, object]) -> None:
        """Rewrite the config file and send SIGHUP: the node applies mutable options, like oslo.service."""
        assert self.proc is not None
        write_config(self.config, self.transport_url, zmq_options)
        self.proc.send_signal(signal.SIGHUP)
        line = self._read_line(30.0)
        if line.strip() != "RELOADED":
            raise RuntimeError(f"{self.name} did not reload its config: {line!r}")

    def records(self) -> list[dict[str, Any]]:
        return read_ledger(self.ledger)

    def tags(self) -> list[str]:
        return [r["tag"] for r in self.records() if "tag" in r]

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.proc.returncode
        finally:
            _LIVE.discard(self.proc)

    def stop(self) -> int | None:
        self.terminate()
        return self.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc is not None:
            _LIVE.discard(self.proc)


_LIVE: set[subprocess.Popen[str]] = set()


@atexit.register
def _kill_leftover_nodes() -> None:
    for proc in list(_LIVE):
        if proc.poll() is None:
            proc.kill()


def start_all(nodes: Iterable[OsloNode]) -> list[OsloNode]:
    """Start nodes in parallel (each imports oslo.messaging: about a second of CPU)."""
    nodes = list(nodes)
    try:
        for node in nodes:
            node.spawn()
        for node in nodes:
            node.wait_ready()
    except BaseException:
        stop_all(nodes)
        raise
    return nodes


def stop_all(nodes: Iterable[OsloNode]) -> None:
    """Graceful stop (SIGTERM) of all nodes at once, then wait for each."""
    nodes = list(nodes)
    for node in nodes:
        node.terminate()
    for node in nodes:
        node.wait()


# --- RabbitMQ -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rabbitmq() -> Iterator[RabbitMQ]:
    if not rabbitmq_installed():
        pytest.skip("rabbitmq-server is not installed (apt-get install -y rabbitmq-server)")
    broker = RabbitMQ()
    atexit.register(broker.stop)
    try:
        yield broker.start()
    finally:
        broker.cleanup()
