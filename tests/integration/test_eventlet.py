"""zmqrpc inside an eventlet-patched process, in each connection mode (the whole suite also runs patched:
``ZMQRPC_TEST_EVENTLET=1``, see tests/__init__.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.procs import ProxyProcess

pytestmark = pytest.mark.integration

MODES = {
    "static-direct": {},
    "dynamic-direct": {"use_dynamic_connections": True},
    "acks": {"rpc_use_acks": True, "rpc_ack_timeout_base": 1.0},
    "router-proxy": {"use_router_proxy": True},
    "pubsub": {"use_router_proxy": True, "use_pub_sub": True},
}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_one_patched_process_serves_and_calls(redis_server, tmp_path, mode: str) -> None:
    options = MODES[mode]
    proxy = None
    if options.get("use_router_proxy"):
        proxy = ProxyProcess(tmp_path, redis_server.url, use_pub_sub=bool(options.get("use_pub_sub"))).start()
    try:
        argv = [f"{key}={json.dumps(value)}" for key, value in options.items()]
        # SIGKILL, not SIGTERM: a process whose hub is blocked ignores signals Python would handle.
        done = subprocess.run(
            [
                "timeout",
                "-s",
                "KILL",
                "60",
                sys.executable,
                "-m",
                "tests.green_process",
                redis_server.url,
                *argv,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        if proxy is not None:
            proxy.stop()
    assert done.returncode == 0, f"exit {done.returncode} (-9: hung and killed)\n{done.stderr[-3000:]}"
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["first_call"] == 1
    assert seen["timeout"] != "no timeout" and 0.4 <= seen["timeout"] < 3, seen["timeout"]
    assert seen["parallel"] == list(range(50))
    assert seen["ten_slow_calls_s"] < 2.5, "green calls did not overlap"
    assert seen["async"] == "async"
    assert seen["fanout_servers"] == 1
    assert seen["received"] == sorted(
        json.dumps(item, sort_keys=True)
        for item in ("cast", "fanout", {"event_type": "thing.done", "payload": {"n": 1}})
    )
