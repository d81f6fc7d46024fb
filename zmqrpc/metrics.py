"""Prometheus metrics: the one place where zmqrpc's metrics are defined and served.

Metrics are on when ``[oslo_messaging_zmq] metrics_port`` (``[zmq_proxy_opts] metrics_port`` for a proxy)
is set: :func:`enable` then serves them over HTTP on ``metrics_bind_address`` with prometheus_client, and
:func:`current` gives every client, server and proxy of the process the same :class:`BusMetrics`. When off,
:func:`current` gives :data:`OFF`, whose metrics do nothing, so the hot path pays nothing.

A service that forks worker processes sets ``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's multiprocess
mode): every process writes its values there, and whichever process binds the port first serves the sum
of all of them; the others find the port taken and only write.

Names follow Prometheus conventions: the ``zmqrpc_`` prefix, base units, ``_total`` on counters, and labels
from small fixed sets only (message types, drop reasons, directions), never ids or hosts.
"""

from __future__ import annotations

import atexit
import errno
import logging
import os
import platform
import threading
from typing import Any

from zmqrpc import __version__

LOG = logging.getLogger(__name__)

MESSAGE_TYPES = ("call", "cast", "fanout", "notify", "reply", "ack", "heartbeat")
DIRECTIONS = ("frontend_to_backend", "backend_to_frontend", "published", "republished")
# Call latency buckets, in seconds: from a local call (~100 µs) to a call timeout.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
)


class _Off:
    """A metric that does nothing: what every metric is while metrics are off."""

    def labels(self, *args: Any, **kwargs: Any) -> _Off:
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def dec(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def observe(self, value: float) -> None:
        pass


# Every metric: attribute, kind, name, help, labels, and for gauges how multiprocess mode combines the
# processes' values (livesum: the live processes' sum; max: the latest timestamp).
_DEFINITIONS: tuple[tuple[str, str, str, str, tuple[str, ...], str], ...] = (
    ("sent", "counter", "zmqrpc_messages_sent", "Messages sent, by type.", ("type",), ""),
    (
        "received",
        "counter",
        "zmqrpc_messages_received",
        "Messages received and taken, by type.",
        ("type",),
        "",
    ),
    (
        "call_duration",
        "histogram",
        "zmqrpc_call_duration_seconds",
        "Time from sending a call to its reply (or its failure), as the caller sees it.",
        (),
        "",
    ),
    (
        "calls_in_flight",
        "gauge",
        "zmqrpc_calls_in_flight",
        "Calls sent whose reply has not come yet.",
        (),
        "livesum",
    ),
    (
        "call_timeouts",
        "counter",
        "zmqrpc_call_timeouts",
        "Calls that got no reply within their timeout.",
        (),
        "",
    ),
    (
        "resends",
        "counter",
        "zmqrpc_resends",
        "Messages sent again because no ack came (rpc_use_acks).",
        (),
        "",
    ),
    (
        "duplicates",
        "counter",
        "zmqrpc_duplicates_dropped",
        "Resent messages a server did not run again.",
        (),
        "",
    ),
    (
        "dropped",
        "counter",
        "zmqrpc_messages_dropped",
        "Received messages dropped, by reason.",
        ("reason",),
        "",
    ),
    (
        "unroutable",
        "counter",
        "zmqrpc_unroutable",
        "Messages that found no server (UNROUTABLE answers, undelivered sends).",
        (),
        "",
    ),
    (
        "routes_held_down",
        "counter",
        "zmqrpc_routes_held_down",
        "Server addresses a client found dead and held out of its routes.",
        (),
        "",
    ),
    (
        "cache_refreshed",
        "gauge",
        "zmqrpc_routing_cache_refreshed_timestamp_seconds",
        "When the routing cache last read the matchmaker successfully (its age is time() minus this).",
        (),
        "max",
    ),
    (
        "cache_refresh_errors",
        "counter",
        "zmqrpc_routing_cache_refresh_errors",
        "Routing cache refreshes that failed (matchmaker down).",
        (),
        "",
    ),
    ("matchmaker_errors", "counter", "zmqrpc_matchmaker_errors", "Matchmaker requests that failed.", (), ""),
    (
        "registrations_refreshed",
        "gauge",
        "zmqrpc_registrations_refreshed_timestamp_seconds",
        "When this process last wrote all its matchmaker registrations.",
        (),
        "max",
    ),
    (
        "registration_expire",
        "gauge",
        "zmqrpc_registration_expire_seconds",
        "Lifetime of a registration in the matchmaker (zmq_target_expire; 0: never expires).",
        (),
        "max",
    ),
    (
        "auth_failures",
        "counter",
        "zmqrpc_auth_failures",
        "Peers refused by authentication (zmq_security).",
        (),
        "",
    ),
    ("workers", "gauge", "zmqrpc_workers", "Server worker threads started.", (), "livesum"),
    ("workers_busy", "gauge", "zmqrpc_workers_busy", "Server workers running a request now.", (), "livesum"),
    ("forwarded", "counter", "zmqrpc_proxy_forwarded", "Messages a proxy forwarded.", ("direction",), ""),
    (
        "connections",
        "gauge",
        "zmqrpc_connections_open",
        "Open connections (client links, proxy peers).",
        (),
        "livesum",
    ),
    (
        "build_info",
        "gauge",
        "zmqrpc_build_info",
        "Always 1; the labels say which zmqrpc runs.",
        ("version", "python"),
        "max",
    ),
)


class BusMetrics:
    """Every zmqrpc metric, as attributes named in _DEFINITIONS. Built once per process by :func:`enable`;
    :data:`OFF` holds no-op stand-ins."""

    # The attributes _DEFINITIONS sets (prometheus_client metrics, or _Off).
    sent: Any
    received: Any
    call_duration: Any
    calls_in_flight: Any
    call_timeouts: Any
    resends: Any
    duplicates: Any
    dropped: Any
    unroutable: Any
    routes_held_down: Any
    cache_refreshed: Any
    cache_refresh_errors: Any
    matchmaker_errors: Any
    registrations_refreshed: Any
    registration_expire: Any
    auth_failures: Any
    workers: Any
    workers_busy: Any
    forwarded: Any
    connections: Any
    build_info: Any

    def __init__(self, registry: Any = None, off: bool = False) -> None:
        if off:
            for attribute, *_ in _DEFINITIONS:
                setattr(self, attribute, _Off())
        else:
            from prometheus_client import Counter, Gauge, Histogram

            for attribute, kind, name, doc, labels, mode in _DEFINITIONS:
                if kind == "counter":
                    metric: Any = Counter(name, doc, labels, registry=registry)
                elif kind == "gauge":
                    metric = Gauge(name, doc, labels, registry=registry, multiprocess_mode=mode)  # type: ignore[arg-type]
                else:
                    metric = Histogram(name, doc, labels, registry=registry, buckets=LATENCY_BUCKETS)
                setattr(self, attribute, metric)
            self.build_info.labels(__version__, platform.python_version()).set(1)
        # Children bound once: labels() is a dict lookup and a lock on every call.
        self.sent_by_type = {t: self.sent.labels(t) for t in MESSAGE_TYPES}
        self.received_by_type = {t: self.received.labels(t) for t in MESSAGE_TYPES}


OFF = BusMetrics(off=True)
_current = OFF
_real: BusMetrics | None = None
_lock = threading.Lock()
_served: tuple[str, int] | None = None


def current() -> BusMetrics:
    """The process's metrics: real once :func:`enable` ran with a port, else :data:`OFF`."""
    return _current


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR")


def enable(port: int, bind_address: str = "127.0.0.1") -> BusMetrics:
    """Turn metrics on for this process and serve them on ``bind_address:port`` (no-op when ``port`` is 0,
    or when already on). Call it before creating clients and servers: they take :func:`current` when built.
    Raises OSError naming the option when the port cannot be served."""
    global _current, _real, _served
    if not port:
        return _current
    with _lock:
        if _served is not None:
            if _served != (bind_address, port):
                LOG.warning("metrics are already served on %s:%d; ignoring metrics_port %d", *_served, port)
            return _current
        from prometheus_client import REGISTRY, CollectorRegistry, start_http_server

        shared = multiprocess_dir()
        if _real is None:
            _real = BusMetrics(REGISTRY)  # registered once per process, whatever happens below
        exposed = REGISTRY
        if shared:
            from prometheus_client import multiprocess

            exposed = CollectorRegistry()
            multiprocess.MultiProcessCollector(exposed, path=shared)
        try:
            start_http_server(port, addr=bind_address, registry=exposed)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or not shared:
                raise OSError(
                    exc.errno, f"cannot serve metrics on {bind_address}:{port} (metrics_port): {exc.strerror}"
                ) from None
            # Another process of this service serves the values all of them write.
            LOG.info("metrics port %s:%d is served by another process of this service", bind_address, port)
        if shared:
            atexit.register(mark_process_dead)
        _current, _served = _real, (bind_address, port)
        LOG.info("metrics on http://%s:%d/metrics%s", bind_address, port, " (multiprocess)" if shared else "")
        return _current


def mark_process_dead() -> None:
    """In multiprocess mode, drop this process's live gauges (call at exit)."""
    shared = multiprocess_dir()
    if shared and _real is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid(), shared)
