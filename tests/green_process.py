"""One eventlet-patched process that is both RPC server and client, as an OpenStack service is.

``python -m tests.green_process URL [option=json ...]`` patches first, then calls, casts, fans out,
notifies, lets a call time out and runs 50 green threads' calls at once, and prints one JSON line of what
it saw. Before the green core, the first call here hung with no CallTimeout.
"""

from __future__ import annotations

import eventlet

eventlet.monkey_patch()

import json  # noqa: E402 - after monkey patching, as a patched service does
import sys  # noqa: E402
import time  # noqa: E402

from zmqrpc.client import RpcClient  # noqa: E402
from zmqrpc.config import load_settings  # noqa: E402
from zmqrpc.errors import CallTimeout  # noqa: E402
from zmqrpc.server import RpcServer  # noqa: E402


class Endpoint:
    def __init__(self) -> None:
        self.got: list[object] = []

    def echo(self, ctxt: dict, x: object) -> object:
        return x

    def slow(self, ctxt: dict, seconds: float) -> float:
        eventlet.sleep(seconds)  # a green sleep: other green threads run meanwhile
        return seconds

    def record(self, ctxt: dict, x: object) -> None:
        self.got.append(x)

    def info(self, ctxt: dict, publisher_id: str, event_type: str, payload: object, metadata: dict) -> None:
        self.got.append({"event_type": event_type, "payload": payload})


def main() -> int:
    overrides = {"rpc_zmq_host": "127.0.0.1", "rpc_zmq_cache_refresh": 1}
    for item in sys.argv[2:]:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value)
    settings = load_settings(url=sys.argv[1], overrides=overrides)
    endpoint = Endpoint()
    servers = [
        RpcServer(settings, "green", [endpoint]).start(),
        RpcServer(settings, "green-notes.info", [endpoint]).start(),
    ]
    client = RpcClient(settings)
    seen: dict[str, object] = {}
    started = time.monotonic()
    seen["first_call"] = client.call("green", "echo", {"x": 1}, timeout=10)
    seen["first_call_s"] = round(time.monotonic() - started, 3)
    client.cast("green", "record", {"x": "cast"})
    seen["fanout_servers"] = client.fanout("green", "record", {"x": "fanout"})
    client.notify("green-notes", "info", "thing.done", {"n": 1})
    started = time.monotonic()
    try:
        client.call("green", "slow", {"seconds": 3}, timeout=0.5)
        seen["timeout"] = "no timeout"
    except CallTimeout:
        seen["timeout"] = round(time.monotonic() - started, 2)
    pool = eventlet.GreenPool()
    seen["parallel"] = list(
        pool.imap(lambda n: client.call("green", "echo", {"x": n}, timeout=10), range(50))
    )
    # Green sleeps overlap: 10 calls of 0.3 s each finish in about 0.3 s, not 3 s.
    started = time.monotonic()
    list(pool.imap(lambda _: client.call("green", "slow", {"seconds": 0.3}, timeout=10), range(10)))
    seen["ten_slow_calls_s"] = round(time.monotonic() - started, 2)
    future = client.call_async("green", "echo", {"x": "async"}, timeout=10)
    seen["async"] = client.wait(future, 10)
    deadline = time.monotonic() + 5
    while len(endpoint.got) < 3 and time.monotonic() < deadline:
        eventlet.sleep(0.05)
    seen["received"] = sorted(json.dumps(item, sort_keys=True) for item in endpoint.got)
    client.close()
    for server in servers:
        server.stop()
    print(json.dumps(seen), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
