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


class ServerProcess:
    """A tests.rpc_node process; ``address`` is what it registered, ``server`` its name."""

    def __init__(self, url: str, topics: str | list[str], server: str, **overrides: object) -> None:
        self.url = url
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
