"""Real separate server processes for integration tests (see tests/rpc_node.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_python(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """``python *args`` run to its end from the repository, with this checkout's package; output captured."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class ServerProcess:
    """A tests.rpc_node process; ``address`` is what it registered, ``server`` its name."""

    def __init__(
        self,
        url: str,
        topics: str | list[str],
        server: str,
        ledger: str | None = None,
        pool: str | None = None,
        **overrides: object,
    ) -> None:
        self.url = url
        self.ledger = ledger
        self.pool = pool
        self.topics = [topics] if isinstance(topics, str) else topics
        self.server = server
        self.overrides = overrides
        self.proc: subprocess.Popen | None = None
        self.address = ""

    def start(self, timeout: float = 15.0) -> ServerProcess:
        cmd = [sys.executable, "-m", "tests.rpc_node", "--url", self.url, "--server", self.server]
        for topic in self.topics:
            cmd += ["--topic", topic]
        for key, value in self.overrides.items():
            cmd += ["--set", f"{key}={json.dumps(value)}"]
        if self.ledger:
            cmd += ["--ledger", self.ledger]
        if self.pool:
            cmd += ["--pool", self.pool]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("READY ") or time.monotonic() > deadline:
            self.kill()
            raise RuntimeError(f"server {self.server} did not start: {line!r}")
        self.address = line.split()[1]
        return self

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ProxyProcess:
    """A real ``zmqrpc proxy`` process configured through a config file, as operators run it."""

    def __init__(
        self,
        tmp_dir: Path,
        url: str,
        use_pub_sub: bool = False,
        local_publisher: bool = False,
        publisher_port: int | None = None,
        subscribe_on: str = "",
        extra: str = "",
    ) -> None:
        self.tmp_dir = tmp_dir
        self.url = url
        self.use_pub_sub = use_pub_sub
        self.local_publisher = local_publisher
        self.publisher_port = publisher_port
        self.subscribe_on = subscribe_on
        self.extra = extra
        self.proc: subprocess.Popen | None = None
        self.config = tmp_dir / f"proxy-{id(self)}.conf"
        self.log = tmp_dir / f"proxy-{id(self)}.log"

    def start(self) -> ProxyProcess:
        lines = [
            "[DEFAULT]",
            f"transport_url = {self.url}",
            "[oslo_messaging_zmq]",
            f"use_pub_sub = {str(self.use_pub_sub).lower()}",
            "zmq_target_update = 1",
            "zmq_target_expire = 5",
            "rpc_zmq_cache_refresh = 1",
        ]
        if self.subscribe_on:
            lines.append(f"subscribe_on = {self.subscribe_on}")
        self.config.write_text("\n".join(lines) + "\n" + self.extra)
        cmd = [
            sys.executable,
            "-m",
            "zmqrpc.cli",
            "proxy",
            "--config-file",
            str(self.config),
            "--log-file",
            str(self.log),
            "--host",
            "127.0.0.1",
        ]
        if self.local_publisher:
            cmd += ["--local-publisher", "--publisher-port", str(self.publisher_port or 0)]
        else:
            cmd += ["--frontend-port", "0", "--backend-port", "0"]
            if self.publisher_port is not None:
                cmd += ["--publisher-port", str(self.publisher_port)]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> int | None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode if self.proc else None
