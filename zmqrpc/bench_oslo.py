"""oslo.messaging figures for ``zmqrpc bench``: oslo.messaging over zmqrpc beside it over RabbitMQ.

:func:`run_oslo` measures one figure through oslo.messaging's public API: an ``RPCClient`` in this process
against an RPC server (``get_rpc_server``, threading executor) in a separate process, both on the given
transport URL. The same code measures ``zmq+redis://...`` (zmqrpc's driver) and ``rabbit://...`` (oslo's
own driver), so the two are comparable:

* **call**: ``concurrency`` threads doing sequential calls on one client; the rate and the round-trip
  latency are measured at the caller.
* **cast**: ``concurrency`` sender threads; the rate is counted at the receiver (a counter the server
  process shares), and senders pause while more than ``cast_window`` casts are outstanding, so the
  figure is the steady delivered rate, not how fast a queue fills. Latency is the time of one
  ``cast()``.

Only the measured window (after a warm-up) counts. The CLI hook (:func:`add_arguments`,
:func:`run_from_args`, :func:`format_table`) lets ``zmqrpc bench`` add these figures to a run; without
URLs it starts a private redis-server and a private RabbitMQ (``scripts/rabbitmq.sh``) and stops them
afterwards. ``python -m zmqrpc.bench_oslo`` runs them on their own.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

PATTERNS = ("call", "cast")
SYSTEMS = ("zmqrpc", "rabbitmq")
CALL_TIMEOUT = 30.0
START_TIMEOUT = 60.0
STALL_TIMEOUT = 10.0
RABBITMQ_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "rabbitmq.sh"


class BenchError(RuntimeError):
    """A figure could not be measured."""


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
    """An oslo.messaging RPC server on ``topic`` until the parent terminates the process."""
    import logging
    import warnings

    warnings.simplefilter("ignore")
    logging.basicConfig(level=logging.ERROR)
    try:
        import oslo_messaging
        from oslo_config import cfg

        transport = oslo_messaging.get_rpc_transport(cfg.CONF, url=url)
        target = oslo_messaging.Target(topic=topic, server="bench-server")
        server = oslo_messaging.get_rpc_server(transport, target, [_Endpoint(count)])
        server.start()
    except BaseException as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        raise
    conn.send(("ready", ""))
    with contextlib.suppress(EOFError, OSError):
        conn.recv()  # the parent terminates us; a closed pipe means it is gone
    os._exit(0)


@contextlib.contextmanager
def _server(url: str, topic: str, count: Any) -> Iterator[None]:
    mp = multiprocessing.get_context("spawn")
    parent, child = mp.Pipe()
    proc = mp.Process(target=_server_main, args=(child, count, url, topic), name="oslo-bench-server")
    proc.start()
    child.close()
    try:
        if not parent.poll(START_TIMEOUT):
            raise BenchError(
                f"the oslo.messaging server on {_mask(url)} was not ready in {START_TIMEOUT:.0f} s"
            )
        kind, detail = parent.recv()
        if kind != "ready":
            raise BenchError(f"the oslo.messaging server on {_mask(url)} failed: {detail}")
        yield
    finally:
        proc.terminate()
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join()
        parent.close()


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


def _percentile_us(latencies: list[float], q: float) -> float | None:
    if not latencies:
        return None
    return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1e6, 1)


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
    count = multiprocessing.get_context("spawn").RawValue("q", 0)
    payload = "x" * payload_size
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    with _server(url, topic, count):
        transport = oslo_messaging.get_rpc_transport(cfg.CONF, url=url)
        try:
            client = oslo_messaging.get_rpc_client(
                transport, oslo_messaging.Target(topic=topic), timeout=CALL_TIMEOUT
            )
            client.call({}, "echo", payload="warm-up")  # connections open, server ready
            start = time.perf_counter() + warmup
            end = start + duration
            sent = [0]

            def call() -> None:
                client.call({}, "echo", payload=payload)

            def cast() -> None:
                client.cast({}, "sink", payload=payload)

            def throttle() -> None:
                # At most cast_window casts on their way: measure sending, not an ever-growing queue.
                with lock:
                    sent[0] += 1
                    outstanding = sent[0] - count.value
                stalled_since = time.perf_counter()
                while outstanding > cast_window and time.perf_counter() < end:
                    time.sleep(0.0005)
                    outstanding = sent[0] - count.value
                    if time.perf_counter() - stalled_since > STALL_TIMEOUT:
                        raise BenchError("casts are not being delivered")

            def worker() -> None:
                nonlocal errors
                send = call if pattern == "call" else cast
                mine: list[float] = []
                while time.perf_counter() < end:
                    if send is cast:
                        throttle()
                    t0 = time.perf_counter()
                    try:
                        send()
                    except Exception:
                        with lock:
                            errors += 1
                        continue
                    t1 = time.perf_counter()
                    if t0 >= start and t1 <= end:
                        mine.append(t1 - t0)
                with lock:
                    latencies.extend(mine)

            threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
            for thread in threads:
                thread.start()
            delay = start - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            t0, first = time.perf_counter(), count.value
            delay = end - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            t1, last = time.perf_counter(), count.value
            for thread in threads:
                thread.join(CALL_TIMEOUT + 5)
        finally:
            transport.cleanup()
    latencies.sort()
    seconds = t1 - t0
    messages = len(latencies) if pattern == "call" else last - first
    if messages <= 0:
        raise BenchError(f"no {pattern} completed on {_mask(transport_url)}")
    return {
        "system": _system(transport_url),
        "transport": _mask(transport_url),
        "pattern": pattern,
        "concurrency": concurrency,
        "call_mode": "threads",
        "payload_size": payload_size,
        "duration_s": round(seconds, 3),
        "messages": messages,
        "msgs_per_s": round(messages / seconds, 1) if seconds > 0 else 0.0,
        "measured_at": "caller" if pattern == "call" else "receiver",
        "latency_kind": "round_trip" if pattern == "call" else "client_send",
        "p50_us": _percentile_us(latencies, 0.5),
        "p99_us": _percentile_us(latencies, 0.99),
        "errors": errors,
        "cpus": os.cpu_count(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


# --- private brokers for a run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    """A redis-server on 127.0.0.1 (port picked here) for the run; yields its zmq+redis:// URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise BenchError("redis-server not found: install it or give --oslo-zmq-url")
    workdir = tempfile.mkdtemp(prefix="zmqrpc-bench-redis-")
    port = _free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen([*argv, "--dir", workdir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"redis-server on port {port} did not start")
            time.sleep(0.05)
        yield f"zmq+redis://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def private_rabbitmq() -> Iterator[str]:
    """A RabbitMQ broker from scripts/rabbitmq.sh for the run (stopped by PID after); yields its URL."""
    if not RABBITMQ_SCRIPT.exists():
        raise BenchError(f"{RABBITMQ_SCRIPT} not found (a source checkout has it): give --oslo-rabbit-url")
    workdir = tempfile.mkdtemp(prefix="zmqrpc-bench-rabbitmq-")
    try:
        result = subprocess.run(
            ["bash", str(RABBITMQ_SCRIPT), "start", workdir], capture_output=True, text=True, timeout=120
        )
        if result.returncode != 0:
            raise BenchError(f"RabbitMQ did not start: {result.stderr.strip()[-2000:]}")
        yield result.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run(["bash", str(RABBITMQ_SCRIPT), "stop", workdir], timeout=60, check=False)
        shutil.rmtree(workdir, ignore_errors=True)


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
    records: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        urls: dict[str, str] = {}
        if "zmqrpc" in systems:
            url = getattr(args, "oslo_zmq_url", None)
            redis_url = getattr(args, "redis_url", None)
            if not url and redis_url:
                url = "zmq+redis://" + redis_url.split("://", 1)[-1]
            urls["zmqrpc"] = url or stack.enter_context(private_redis())
        if "rabbitmq" in systems:
            urls["rabbitmq"] = getattr(args, "oslo_rabbit_url", None) or stack.enter_context(
                private_rabbitmq()
            )
        for pattern in patterns:
            for concurrency in concurrencies:
                for system in systems:
                    records.append(
                        run_oslo(
                            urls[system],
                            pattern,
                            concurrency,
                            duration,
                            payload_size,
                            warmup=warmup,
                            cast_window=cast_window,
                        )
                    )
    return records


def format_table(records: list[dict[str, Any]]) -> str:
    columns = [
        ("system", "system", "{}"),
        ("pattern", "pattern", "{}"),
        ("N", "concurrency", "{}"),
        ("msgs/s", "msgs_per_s", "{:,.0f}"),
        ("p50 us", "p50_us", "{:,.0f}"),
        ("p99 us", "p99_us", "{:,.0f}"),
        ("errors", "errors", "{}"),
    ]
    rows = [[title for title, _, _ in columns]]
    for record in records:
        rows.append(["-" if record.get(key) is None else fmt.format(record[key]) for _, key, fmt in columns])
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m zmqrpc.bench_oslo",
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
        print(format_table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
