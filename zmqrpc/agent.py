"""The zmqrpc agent: a small RPC server on every node, for smoke tests and for operators checking the bus.

It serves topic ``zmqrpc-agent`` (and ``zmqrpc-agent.<host>``) with ``ping``, ``info``, ``record``,
``seen`` and ``stats`` (its message counters, for ``zmqrpc top``), and listens for notifications on
``zmqrpc-agent.info`` so a notification can be checked end to end.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from zmqrpc import __version__, metrics
from zmqrpc.server import Request, RpcServer

if TYPE_CHECKING:
    from zmqrpc.config import OptionValues, Settings

LOG = logging.getLogger(__name__)

AGENT_TOPIC = "zmqrpc-agent"
AGENT_NOTIFICATIONS = "zmqrpc-agent"  # notifications go to zmqrpc-agent.<priority>
RECORD_LIMIT = 1000
# Largest tag (as json) the agent records. Smoke-test tags are ~40 bytes; without a bound, 1000 records of
# up to rpc_zmq_max_message_size each let any peer grow the agent by gigabytes (fuzzing found +290 MB from
# 300 one-megabyte records).
RECORD_MAX_BYTES = 4096


def topology_name(zmq_opts: OptionValues) -> str:
    """The deployment guide's name for the configured topology."""
    pub_sub, proxy, dynamic = (
        zmq_opts.use_pub_sub,
        zmq_opts.use_router_proxy,
        zmq_opts.use_dynamic_connections,
    )
    if proxy and pub_sub:
        return "local-publisher" if zmq_opts.subscribe_on else "pubsub"
    if proxy:
        return "router-proxy"
    if pub_sub:
        return "dynamic-pubsub" if dynamic else "static-pubsub"
    return "dynamic-direct" if dynamic else "static-direct"


class AgentEndpoint:
    """What the agent answers. ``record``/``seen`` let a checker prove a cast or fanout arrived once."""

    def __init__(self, settings: Settings, host: str) -> None:
        self.settings = settings
        self.host = host
        self.started = time.monotonic()
        self.address = ""
        self._records: deque[Any] = deque(maxlen=RECORD_LIMIT)
        self._lock = threading.Lock()
        self.servers: list[RpcServer] = []  # the agent's own servers, counted by stats() without metrics
        self._stats_calls = 0

    def ping(self, ctxt: dict, **kwargs: Any) -> dict[str, Any]:
        return {"host": self.host, "pong": True, **kwargs}

    def info(self, ctxt: dict) -> dict[str, Any]:
        return {
            "host": self.host,
            "fqdn": socket.getfqdn(),
            "topology": topology_name(self.settings.zmq),
            "matchmaker": self.settings.matchmaker,
            "address": self.address,
            "version": __version__,
            "uptime_s": round(time.monotonic() - self.started, 3),
        }

    def record(self, ctxt: dict, tag: Any) -> None:
        try:
            size = len(json.dumps(tag, default=repr))
        except (TypeError, ValueError, RecursionError) as exc:
            raise ValueError(f"record: the tag cannot be measured: {exc}") from None
        if size > RECORD_MAX_BYTES:
            raise ValueError(f"record: a {size}-byte tag is over the limit ({RECORD_MAX_BYTES} bytes)")
        with self._lock:
            self._records.append(tag)

    def seen(self, ctxt: dict) -> list[Any]:
        with self._lock:
            return list(self._records)

    def stats(self, ctxt: dict) -> dict[str, Any]:
        """This process's message counters, for ``zmqrpc top``: by type from its metrics when metrics_port
        is set, else what its servers processed. Stats calls are left out, so polling is not traffic."""
        with self._lock:
            self._stats_calls += 1
            polls = self._stats_calls
        bus = metrics.current()
        if bus is not metrics.OFF:
            source, received, sent = "metrics", _by_type(bus.received), _by_type(bus.sent)
            received["call"] = max(0.0, received.get("call", 0.0) - polls)  # this call is counted already
            sent["reply"] = max(0.0, sent.get("reply", 0.0) - (polls - 1))  # its reply is not sent yet
            if self.settings.zmq.rpc_use_acks:  # calls are acked on receipt
                sent["ack"] = max(0.0, sent.get("ack", 0.0) - polls)
        else:  # a server counts a message once it is handled: this call is not counted yet
            source, sent = "server", {}
            received = {"all": float(max(0, sum(s.processed for s in self.servers) - (polls - 1)))}
        return {
            "host": self.host,
            "source": source,
            "received": received,
            "sent": sent,
            "uptime_s": round(time.monotonic() - self.started, 3),
        }


def _by_type(counter: Any) -> dict[str, float]:
    """``{type: value}`` of a counter labelled by message type (prometheus_client's collect())."""
    return {
        sample.labels["type"]: sample.value
        for family in counter.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    }


class Agent:
    """The agent's RPC server and its notification listener."""

    def __init__(self, settings: Settings, host: str | None = None) -> None:
        self.host = host or settings.zmq.rpc_zmq_host
        self.endpoint = AgentEndpoint(settings, self.host)
        self.rpc = RpcServer(settings, AGENT_TOPIC, [self.endpoint], server=self.host)
        self.notifications = RpcServer(
            settings, f"{AGENT_NOTIFICATIONS}.info", self._on_notification, server=self.host
        )
        self.endpoint.servers = [self.rpc, self.notifications]

    def _on_notification(self, request: Request) -> None:
        message = request.message
        self.endpoint.record({}, {"event_type": message.get("event_type"), "payload": message.get("payload")})

    def start(self) -> Agent:
        self.rpc.start()
        self.endpoint.address = self.rpc.address
        self.notifications.start()
        LOG.info(
            "zmqrpc agent on %s: %s (%s)", self.host, self.rpc.address, topology_name(self.rpc.settings.zmq)
        )
        return self

    def stop(self) -> None:
        self.notifications.stop()
        self.rpc.stop()
