"""An oslo.messaging service process for the tests: ``python -m tests.oslo.oslo_node --config-file F ...``.

It uses oslo.messaging's public API only, as an OpenStack service would: ``transport_url`` and the
``[oslo_messaging_zmq]`` options come from its config file. Roles:

* ``server``: ``get_rpc_server`` on ``--topic`` with ``--server``, endpoints below.
* ``listener``: ``get_notification_listener`` on ``--topic`` (info, warn and error), in ``--pool`` if given.

Both listen in ``--exchange`` when given (the transport's default exchange otherwise).

Whatever it receives (casts, fanouts, notifications) is appended as a JSON line to ``--ledger``, so a test
in another process can read it. It prints ``READY`` once serving; SIGTERM stops it the way oslo.service
does (stop, wait, transport cleanup), and SIGHUP reloads mutable options (``restart_method=mutate``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

import oslo_messaging
from oslo_config import cfg

from tests.oslo import hidden_errors, remote_errors


class Ledger:
    def __init__(self, path: str | None, name: str, pool: str | None) -> None:
        self.path = path
        self.name = name
        self.pool = pool
        self.lock = threading.Lock()

    def write(self, **record: Any) -> None:
        if not self.path:
            return
        record.update(node=self.name, pool=self.pool, pid=os.getpid())
        with self.lock, open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")


class RpcEndpoint:
    def __init__(self, name: str, ledger: Ledger, exchange: str | None = None) -> None:
        self.name = name
        self.ledger = ledger
        self.exchange = exchange

    def whoami(self, ctxt: dict) -> str:
        return self.name

    def where(self, ctxt: dict) -> list[str | None]:
        """[exchange, server name]: the exchange is None when the server listens in the default one."""
        return [self.exchange, self.name]

    def echo(self, ctxt: dict, **kwargs: Any) -> dict:
        return {"server": self.name, "args": kwargs, "context": ctxt}

    def record(self, ctxt: dict, tag: str) -> str:
        self.ledger.write(tag=tag)
        return self.name

    def sleep(self, ctxt: dict, seconds: float) -> str:
        time.sleep(seconds)
        return self.name

    def fail(self, ctxt: dict, kind: str, message: str) -> None:
        if kind == "allowed":
            raise remote_errors.AllowedError(message)
        if kind == "hidden":
            raise hidden_errors.HiddenError(message)
        raise ValueError(message)


class NotificationEndpoint:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def _record(self, priority: str, ctxt: dict, publisher_id: str, event_type: str, payload: Any) -> None:
        self.ledger.write(
            priority=priority, publisher_id=publisher_id, event_type=event_type, payload=payload, ctxt=ctxt
        )

    def info(self, ctxt: dict, publisher_id: str, event_type: str, payload: Any, metadata: dict) -> None:
        self._record("info", ctxt, publisher_id, event_type, payload)

    def warn(self, ctxt: dict, publisher_id: str, event_type: str, payload: Any, metadata: dict) -> None:
        self._record("warn", ctxt, publisher_id, event_type, payload)

    def error(self, ctxt: dict, publisher_id: str, event_type: str, payload: Any, metadata: dict) -> None:
        self._record("error", ctxt, publisher_id, event_type, payload)


def _reloader(reload: threading.Event) -> None:
    while True:
        reload.wait()
        reload.clear()
        cfg.CONF.mutate_config_files()
        print("RELOADED", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--role", choices=["server", "listener"], required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--server", required=True, help="RPC server name (target.server) / ledger name")
    parser.add_argument("--pool")
    parser.add_argument("--exchange", help="the target's exchange (default: the transport's)")
    parser.add_argument("--ledger")
    args = parser.parse_args()

    logging.basicConfig(
        level=logging.DEBUG if os.environ.get("OSLO_NODE_DEBUG") else logging.WARNING,
        format="%(asctime)s %(process)d %(threadName)s %(name)s %(levelname)s %(message)s",
    )
    # Parse the service's config file the oslo way (cfg.CONF: oslo.messaging registers options there).
    cfg.CONF(["--config-file", args.config_file], project="zmqrpc-oslo-test")
    ledger = Ledger(args.ledger, args.server, args.pool)
    server: Any
    if args.role == "server":
        transport = oslo_messaging.get_rpc_transport(cfg.CONF)
        target = oslo_messaging.Target(topic=args.topic, server=args.server, exchange=args.exchange)
        endpoint = RpcEndpoint(args.server, ledger, args.exchange)
        server = oslo_messaging.get_rpc_server(transport, target, [endpoint])
    else:
        transport = oslo_messaging.get_notification_transport(cfg.CONF)
        targets = [oslo_messaging.Target(topic=args.topic, exchange=args.exchange)]
        server = oslo_messaging.get_notification_listener(
            transport, targets, [NotificationEndpoint(ledger)], pool=args.pool
        )
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # As oslo.service does with restart_method=mutate: SIGHUP re-reads the files and applies mutable options.
    reload = threading.Event()
    signal.signal(signal.SIGHUP, lambda *_: reload.set())
    threading.Thread(target=_reloader, args=(reload,), daemon=True).start()
    print("READY", flush=True)
    stop.wait()
    server.stop()
    server.wait()
    transport.cleanup()
    print("STOPPED", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
