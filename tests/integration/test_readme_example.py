"""README's "Using the bus" example, run as written: its server and client blocks as two processes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.procs import ROOT
from tests.servers import RedisServer

pytestmark = pytest.mark.integration


def readme_blocks() -> dict[str, str]:
    """The python blocks of README's "Using the bus" section, by the file name on their first line."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Using the bus\n", 1)[1].split("\n## ", 1)[0]
    blocks = {}
    for code in re.findall(r"```python\n(.*?)```", section, re.S):
        name = re.match(r"# (\w+\.py)", code)
        assert name, f"a block of 'Using the bus' does not start with '# <file>.py': {code[:60]!r}"
        blocks[name.group(1)] = code
    return blocks


class _Lines:
    """Collects a process's stdout lines in a thread, so a test can wait for one."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def wait_for(self, wanted: set[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not wanted <= set(self.lines):
                left = deadline - time.monotonic()
                assert left > 0, f"missing {sorted(wanted - set(self.lines))}; got {self.lines}"
                self._changed.wait(left)

    def join(self) -> None:
        self._thread.join(10)


def test_readme_example_runs_as_written(redis_server: RedisServer, tmp_path: Path) -> None:
    blocks = readme_blocks()
    assert set(blocks) == {"server.py", "client.py"}
    for name, code in blocks.items():
        (tmp_path / name).write_text(code)
    # The example's own variable; a loopback bind address keeps the test off other interfaces.
    url = f"{redis_server.url}?rpc_zmq_bind_address=127.0.0.1"
    env = dict(os.environ, ZMQRPC_TRANSPORT_URL=url, PYTHONPATH=str(ROOT))
    env.pop("ZMQRPC_TEST_EVENTLET", None)  # the example is a plain program

    def python(*args: str, **kwargs: Any) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, *args], cwd=tmp_path, env=env, text=True, **kwargs)

    probe = python(
        "-c",
        "from zmqrpc import load_settings; print(load_settings().zmq.rpc_zmq_host)",
        stdout=subprocess.PIPE,
    )
    host = probe.communicate(timeout=30)[0].strip()
    server = python("server.py", stdout=subprocess.PIPE)
    out = _Lines(server)
    try:
        out.wait_for({f"serving on {host}"}, timeout=30)
        client = python("client.py", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        stdout, stderr = client.communicate(timeout=60)
        assert client.returncode == 0, stderr
        assert stdout.splitlines() == [
            "{'instance': 'i-1', 'flavor': 'm1'}",
            "fanout sent to 1 server(s)",
            "undelivered: 1",
            "strict: no server is registered for topic 'billing'",
        ]
        # The cast nobody serves is logged, not raised.
        assert "no server registered for topic 'billing'" in stderr
        out.wait_for(
            {
                "resize i-1 to m1",
                "resize i-2 to m1",
                "resize i-3 to m1",
                "notification compute.instance.resize {'id': 'i-1'}",
            },
            timeout=15,
        )
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0
        out.join()
        assert out.lines[-1] == "stopped"
        assert sum(line.startswith("resize ") for line in out.lines) == 3  # each message ran once
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
