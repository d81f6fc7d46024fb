"""oslo.messaging figures for ``zmqrpc bench``: oslo.messaging over zmqrpc beside it over RabbitMQ.

:func:`run_oslo` measures one figure through oslo.messaging's public API: an ``RPCClient`` in this process
against an RPC server (``get_rpc_server``, threading executor) in a separate process, both on the given
transport URL. The same code measures ``zmq+redis://...`` (zmqrpc's driver) and ``rabbit://...`` (oslo's
own driver), so the two are comparable. Both are driven like the zmqrpc figures (:mod:`benchmarks.measure`):

* **call**: ``concurrency`` threads doing sequential calls on one client; the rate and the round-trip
  latency are measured at the caller.
* **cast**: ``concurrency`` sender threads; the rate is counted at the receiver (a counter the server
  process shares), and senders pause while more than ``cast_window`` casts are outstanding, so the
  figure is the steady delivered rate, not how fast a queue fills. Latency is the time of one
  ``cast()``.

Only the measured window (after a warm-up) counts. The CLI hook (:func:`add_arguments`,
:func:`run_from_args`) lets ``zmqrpc bench`` add these figures to a run; without URLs it starts a private
redis-server and a private RabbitMQ (``scripts/rabbitmq.sh``, through ``tests/servers.py``) and stops them
afterwards. ``python -m benchmarks.bench_oslo`` runs them on their own.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import multiprocessing
import os
import sys
import threading
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from benchmarks import report
from benchmarks.measure import BenchError, Sample, Window, drive_threads, one_way
from benchmarks.procs import ServerProcess, server_group, wait_ready

PATTERNS = ("call", "cast")
SYSTEMS = ("zmqrpc", "rabbitmq")
CALL_TIMEOUT = 30.0
START_TIMEOUT = 60.0  # importing oslo.messaging and connecting to a broker takes a while on 2 CPUs
TABLE = [
    ("system", "system", "{}"),
    ("pattern", "pattern", "{}"),
    ("N", "concurrency", "{}"),
    *report.FIGURE,
    ("errors", "errors", "{}"),
]


# --- the server process


class _Endpoint:
    def __init__(self, count: Any) -> None:
        self._count = count
        self._lock = threading.Lock()

    def _bump(self) -> None:
        with self._lock:
            self._count.value += 1

    def echo(self, ctxt: dict[str, Any], payload: str) -> str:
        self._bump()
        return payload

    def sink(self, ctxt: dict[str, Any], payload: str) -> None:
        self._bump()


def _server_main(conn: Any, count: Any, url: str, topic: str) -> None:
    """An oslo.messaging RPC server on ``topic`` until the parent says stop (a ServerProcess target)."""
    import logging
    import warnings

    warnings.simplefilter("ignore")
    logging.getLogger().setLevel(logging.ERROR)
    import oslo_messaging
    from oslo_config import cfg

    transport = oslo_messaging.get_rpc_transport(cfg.CONF, url=url)
    target = oslo_messaging.Target(topic=topic, server="bench-server")
    server = oslo_messaging.get_rpc_server(transport, target, [_Endpoint(count)])
    server.start()
    conn.send(("ready", 0))
    with contextlib.suppress(EOFError, OSError):
        conn.recv()  # "stop", or the parent is gone
    os._exit(0)  # oslo.messaging's threads need not be joined: the process ends here


# --- measuring


def _mask(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.partition("@")
    return f"{scheme}{sep}{creds.partition(':')[0]}:***@{host}" if at and ":" in creds else url


def _system(url: str) -> str:
    scheme = urlsplit(url).scheme
    return "oslo.messaging+zmqrpc" if scheme.split("+")[0] == "zmq" else f"oslo.messaging+{scheme}"


def _with_local_host(url: str) -> str:
    """zmq URLs: servers advertise 127.0.0.1 (unless the URL says otherwise), as everything runs here."""
    if urlsplit(url).scheme.split("+")[0] != "zmq" or "rpc_zmq_host=" in url:
        return url
    return url + ("&" if "?" in url else "?") + "rpc_zmq_host=127.0.0.1"


def run_oslo(
    transport_url: str,
    pattern: str,
    concurrency: int,
    duration: float,
    payload_size: int,
    *,
    warmup: float | None = None,
    cast_window: int = 500,
) -> dict[str, Any]:
    """Measure one oslo.messaging figure on ``transport_url`` (``call`` or ``cast``); return its record."""
    if pattern not in PATTERNS:
        raise ValueError(f"pattern must be one of {', '.join(PATTERNS)}, not {pattern!r}")
    import oslo_messaging
    from oslo_config import cfg

    url = _with_local_host(transport_url)
    warmup = min(0.5, 0.2 * duration) if warmup is None else warmup
    topic = f"oslo-bench-{uuid.uuid4().hex[:8]}"
    payload = "x" * payload_size
    with server_group() as procs:
        server = ServerProcess(
            multiprocessing.get_context("spawn"), "oslo-bench-server", _server_main, url, topic
        )
        procs.append(server)
        try:
            wait_ready(procs, START_TIMEOUT)
        except BenchError as exc:
            raise BenchError(f"the oslo.messaging server on {_mask(url)}: {exc}") from None
        transport = oslo_messaging.get_rpc_transport(cfg.CONF, url=url)
        try:
            client = oslo_messaging.get_rpc_client(
                transport, oslo_messaging.Target(topic=topic), timeout=CALL_TIMEOUT
            )
            client.call({}, "echo", payload="warm-up")  # connections open, server ready
            window = Window(warmup, duration)
            if pattern == "call":
                latencies, errors = drive_threads(
                    concurrency, window, lambda: client.call({}, "echo", payload=payload)
                )
                sample = Sample(len(latencies), window.end - window.start, latencies, errors)
            else:
                sample = one_way(
                    lambda: client.cast({}, "sink", payload=payload),
                    concurrency,
                    [server.count],
                    window,
                    cast_window,
                )
        finally:
            transport.cleanup()
    if sample.messages <= 0:
        raise BenchError(f"no {pattern} completed on {_mask(transport_url)}")
    return {
        "system": _system(transport_url),
        "transport": _mask(transport_url),
        "pattern": pattern,
        "concurrency": concurrency,
        "call_mode": "threads",
        "payload_size": payload_size,
        "duration_s": round(sample.seconds, 3),
        "messages": sample.messages,
        "msgs_per_s": round(sample.rate, 1),
        "measured_at": "caller" if pattern == "call" else "receiver",
        "latency_kind": "round_trip" if pattern == "call" else "client_send",
        "p50_us": sample.percentile_us(0.5),
        "p99_us": sample.percentile_us(0.99),
        "errors": sample.errors,
        "cpus": os.cpu_count(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


# --- CLI hook


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags ``zmqrpc bench`` needs for the oslo.messaging figures."""
    group = parser.add_argument_group("oslo.messaging figures (needs the zmqrpc[oslo] extra)")
    group.add_argument(
        "--oslo",
        action="store_true",
        help="also measure oslo.messaging over zmqrpc and over RabbitMQ (call and cast), in the same run",
    )
    group.add_argument(
        "--oslo-zmq-url",
        help="transport URL for oslo.messaging over zmqrpc (default: a private redis-server, "
        "zmq+redis://127.0.0.1:<port>/)",
    )
    group.add_argument(
        "--oslo-rabbit-url",
        help="RabbitMQ transport URL, rabbit://user:pass@host:port/ (default: a private broker started "
        "with scripts/rabbitmq.sh and stopped afterwards)",
    )
    group.add_argument(
        "--oslo-systems",
        default=",".join(SYSTEMS),
        help="which of zmqrpc,rabbitmq to measure (default both)",
    )


def _ints(values: Any, default: Sequence[int]) -> list[int]:
    if not values:
        return list(default)
    if isinstance(values, int):
        return [values]
    items = values if isinstance(values, (list, tuple)) else [values]
    return [int(part) for item in items for part in str(item).split(",") if part.strip()]


def _names(values: Any, default: Sequence[str]) -> list[str]:
    if not values:
        return list(default)
    items = values if isinstance(values, (list, tuple)) else [values]
    return [part.strip() for item in items for part in str(item).split(",") if part.strip()]


def run_from_args(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every oslo.messaging figure the flags ask for: systems x patterns (call, cast) x concurrencies.

    Reads ``--oslo-*`` and, when present, the bench's own ``--pattern``, ``--concurrency``,
    ``--duration``, ``--warmup``, ``--payload-size``, ``--cast-window`` and ``--redis-url``.
    """
    systems = _names(getattr(args, "oslo_systems", None), SYSTEMS)
    patterns = [p for p in _names(getattr(args, "pattern", None), PATTERNS) if p in PATTERNS]
    concurrencies = _ints(getattr(args, "concurrency", None), (1, 16))
    duration = float(getattr(args, "duration", None) or 3.0)
    warmup = getattr(args, "warmup", None)
    payload_size = int(getattr(args, "payload_size", None) or 1024)
    cast_window = int(getattr(args, "cast_window", None) or 500)
    with contextlib.ExitStack() as stack:
        urls = _transport_urls(args, systems, stack)
        return [
            run_oslo(
                urls[system],
                pattern,
                concurrency,
                duration,
                payload_size,
                warmup=warmup,
                cast_window=cast_window,
            )
            for pattern, concurrency, system in itertools.product(patterns, concurrencies, systems)
        ]


def _transport_urls(
    args: argparse.Namespace, systems: list[str], stack: contextlib.ExitStack
) -> dict[str, str]:
    """Each system's transport URL: the one given, else a private broker for the run (``stack`` stops it)."""
    from tests.servers import RabbitMQ, RedisServer

    urls: dict[str, str] = {}
    try:
        if "zmqrpc" in systems:
            url = getattr(args, "oslo_zmq_url", None)
            redis_url = getattr(args, "redis_url", None)
            if not url and redis_url:
                url = "zmq+redis://" + redis_url.split("://", 1)[-1]
            urls["zmqrpc"] = url or stack.enter_context(RedisServer()).url + "/"
        if "rabbitmq" in systems:
            urls["rabbitmq"] = getattr(args, "oslo_rabbit_url", None) or stack.enter_context(RabbitMQ()).url
    except (RuntimeError, TimeoutError) as exc:
        raise BenchError(f"{exc} (or give --oslo-zmq-url / --oslo-rabbit-url)") from exc
    return urls


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_oslo",
        description="oslo.messaging call and cast over zmqrpc and over RabbitMQ (servers in separate "
        "processes).",
    )
    parser.add_argument("--pattern", action="append", help="call, cast (repeatable or comma-separated)")
    parser.add_argument(
        "--concurrency", action="append", help="threads (repeatable or comma-separated; 1,16)"
    )
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per figure (default 3)")
    parser.add_argument("--warmup", type=float)
    parser.add_argument("--payload-size", type=int, default=1024)
    parser.add_argument("--cast-window", type=int, default=500)
    parser.add_argument("--json", action="store_true", help="print JSON lines only")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        records = run_from_args(args)
    except BenchError as exc:
        print(f"bench_oslo: {exc}", file=sys.stderr)
        return 1
    for record in records:
        print(json.dumps(record, sort_keys=True))
    if not args.json:
        print(report.format_table(records, TABLE))
    return 0


if __name__ == "__main__":
    sys.exit(main())
