"""The oslo.messaging driver serves the same Prometheus metrics: an oslo.messaging server process with
``[oslo_messaging_zmq] metrics_port`` in its config file counts the calls and casts an RPCClient sent it."""

from __future__ import annotations

from pathlib import Path

import oslo_messaging
from oslo_config import cfg

from tests.integration.test_metrics import scrape, value
from tests.oslo.conftest import FAST, OsloNode, zmq_url
from tests.servers import RedisServer, free_port, wait_for

CALLS, CASTS = 12, 5


def test_an_oslo_service_counts_the_calls_and_casts_it_served(tmp_path: Path) -> None:
    port = free_port()
    with RedisServer() as redis:
        options = {
            **FAST,
            "rpc_zmq_host": "127.0.0.2",
            "rpc_zmq_bind_address": "127.0.0.2",
            "metrics_port": port,
        }
        node = OsloNode(tmp_path, "server", "measured", "127.0.0.2", zmq_url(redis.port), options).start()
        transport = oslo_messaging.get_rpc_transport(cfg.CONF, url=zmq_url(redis.port, **FAST))
        try:
            client = oslo_messaging.get_rpc_client(
                transport, oslo_messaging.Target(topic="measured"), timeout=10
            )
            before = scrape(port)
            assert [client.call({}, "whoami") for _ in range(CALLS)] == ["127.0.0.2"] * CALLS
            for n in range(CASTS):
                client.cast({}, "record", tag=f"m{n}")

            def served() -> tuple[float, float]:
                after = scrape(port)
                return tuple(
                    value(after, "zmqrpc_messages_received_total", type=kind)
                    - value(before, "zmqrpc_messages_received_total", type=kind)
                    for kind in ("call", "cast")
                )

            assert wait_for(lambda: served() == (CALLS, CASTS), timeout=10), served()
            assert value(scrape(port), "zmqrpc_workers") >= 1
        finally:
            transport.cleanup()
            node.stop()
