"""A test RPC server process: ``python -m tests.rpc_node --url URL --topic T --server NAME``.

It prints ``READY <address>`` once it serves, and records what it receives so a test (in another process)
can ask for it over the bus with the ``seen`` call.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from typing import TextIO

import zmq

from zmqrpc import security
from zmqrpc.config import load_settings
from zmqrpc.server import EndpointDispatcher, Request, RpcServer

# The request being run on this thread (for ``caller``).
_CURRENT = threading.local()


class TestEndpoint:
    def __init__(self, name: str) -> None:
        self.name = name
        self.received: list[object] = []
        self.lock = threading.Lock()
        self.server: RpcServer | None = None
        self.running = 0
        self.ledger: TextIO | None = None
        self.peak_running = 0

    def _record(self, item: object) -> None:
        with self.lock:
            self.received.append(item)

    def whoami(self, ctxt: dict) -> str:
        return self.name

    def caller(self, ctxt: dict) -> str | None:
        """The key name the server saw on this request (zmq_security = curve)."""
        return _CURRENT.request.caller  # type: ignore[no-any-return]

    def echo(self, ctxt: dict, **kwargs: object) -> dict:
        return {"server": self.name, "args": kwargs, "context": ctxt}

    def fail(self, ctxt: dict, message: str) -> None:
        raise KeyError(message)

    def big(self, ctxt: dict) -> int:
        return 2**64  # a uuid.int: past what msgpack packs natively

    def deep(self, ctxt: dict) -> list:
        nested: list = []
        for _ in range(5000):  # deeper than any encoder recurses
            nested = [nested]
        return nested

    def sleep(self, ctxt: dict, seconds: float) -> str:
        with self.lock:
            self.running += 1
            self.peak_running = max(self.peak_running, self.running)
        time.sleep(seconds)
        with self.lock:
            self.running -= 1
        return self.name

    def peak(self, ctxt: dict) -> int:
        return self.peak_running

    def record(self, ctxt: dict, tag: object, seconds: float = 0.0) -> None:
        time.sleep(seconds)  # a handler that takes a while: casts wait in the server meanwhile
        self._record(tag)
        if self.ledger is not None:  # survives this process, for restart tests
            with self.lock:
                self.ledger.write(f"{tag}\n")
                self.ledger.flush()

    def seen(self, ctxt: dict) -> list:
        with self.lock:
            return list(self.received)

    def drops(self, ctxt: dict) -> dict:
        assert self.server is not None
        return self.server.drops.counts()

    def reply_cache(self, ctxt: dict) -> dict:
        assert self.server is not None
        cache = self.server._duplicates
        return {"reply_bytes": cache.reply_bytes, "evicted": cache.evicted, "ids": len(cache)}

    def rss(self, ctxt: dict) -> int:
        """This process's resident set size, in bytes."""
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def info(self, ctxt: dict, publisher_id: str, event_type: str, payload: object, metadata: dict) -> None:
        self._record({"priority": "info", "event_type": event_type, "payload": payload})


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--topic", action="append", required=True)
    parser.add_argument("--server", required=True)
    parser.add_argument("--set", action="append", default=[], help="option=json-value override")
    parser.add_argument("--ledger", help="append every recorded tag to this file")
    parser.add_argument("--pool", help="notification listener pool")
    args = parser.parse_args()
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value)
    settings = load_settings(url=args.url, overrides=overrides)
    endpoint = TestEndpoint(args.server)
    if args.ledger:
        endpoint.ledger = open(args.ledger, "a")  # noqa: SIM115 - open for the process's life
    dispatcher = EndpointDispatcher([endpoint])

    def dispatch(request: Request) -> object:
        _CURRENT.request = request
        return dispatcher(request)

    server = RpcServer(settings, args.topic, dispatch, server=args.server, pool=args.pool)
    endpoint.server = server
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # Test hook: SIGUSR2 kills the ZAP authenticator's thread, as a bug would (the process must then exit).
    signal.signal(signal.SIGUSR2, lambda *_: _kill_authenticator())
    print(f"READY {server.address}", flush=True)
    stop.wait()
    server.stop()
    return 0


def _kill_authenticator() -> None:
    auth = security.running_authenticator(zmq.Context.instance())
    if auth is not None:
        auth.kill_for_test()


if __name__ == "__main__":
    sys.exit(main())
