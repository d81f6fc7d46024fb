"""``zmqrpc scale-test``: a bus of N simulated nodes on one machine, measured beside ``zmqrpc plan``.

Every simulated node is a real :class:`~zmqrpc.server.RpcServer` with its own host name (``server=`` and
``rpc_zmq_host``) and its own loopback address in 127.0.0.0/8 (``rpc_zmq_bind_address``), many of them per
OS process (``--nodes-per-process``). The bus has a real ``redis-server`` matchmaker started for each run,
real ``zmqrpc proxy`` processes in the proxy topologies, one client process (a real
:class:`~zmqrpc.client.RpcClient`) and, for the notification fan-in, one listener process.

For each topology and each N it measures, in this order:

* the time until every node is registered in Redis, and until the client has had a reply from every
  node's directed topic (reachable);
* call latency p50/p99 to a random node (directed calls, one at a time);
* fanout completion: the time from ``fanout()`` until the last node ran its handler (every node records
  a ``time.monotonic()``, a clock all processes share), and how many nodes got it;
* TCP connections (``ss``), file descriptors (``/proc/<pid>/fd``), threads and RSS at the client, at a
  server process (per node: the process's growth divided by its nodes) and at each proxy;
* Redis commands per second over a quiet window (``INFO stats``);
* notification fan-in: every node notifies the listener at once (one RpcClient per server process sends
  its nodes' notifications); the time until the listener has them all.

Each figure stands beside the plan's prediction for the same bus (one client calling every node). Before
each N it checks the plan against this machine (file limit, memory, ports) and stops a topology there,
or at a step that runs out of time, naming the limit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import multiprocessing
import os
import random
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from zmqrpc import plan as planner
from zmqrpc import protocol

LOG = logging.getLogger("zmqrpc.scale")

NODE_TOPIC = "scale"
EVENTS_TOPIC = "scale-events"
# Each simulated bus gets addresses of its own: nodes 127.10.0.0/16 and up, proxies 127.9.0.0/24.
NODE_NET = (127 << 24) | (10 << 16)
PROXY_NET = (127 << 24) | (9 << 16)
MAX_SOCKETS = 60_000

# [oslo_messaging_zmq] of each topology, as inventory/<name>/group_vars/all.yml selects it.
TOPOLOGY_OPTIONS: dict[str, dict[str, Any]] = {
    "static-direct": {},
    "dynamic-direct": {"use_dynamic_connections": True, "zmq_linger": 60},
    "router-proxy": {"use_router_proxy": True},
    "pubsub": {"use_router_proxy": True, "use_pub_sub": True},
    "dynamic-pubsub": {"use_pub_sub": True, "use_dynamic_connections": True, "zmq_linger": 60},
}
DEFAULT_TOPOLOGIES = ["static-direct", "dynamic-direct", "router-proxy", "pubsub", "dynamic-pubsub"]
# Not simulated: all-in-one (one host), sentinel-ha (static direct with another matchmaker), and
# local-publisher (a local publisher process per node: 1,000 more processes).


def _ip(base: int, index: int) -> str:
    value = base + index + 1
    return ".".join(str((value >> shift) & 255) for shift in (24, 16, 8, 0))


def node_names(count: int) -> list[tuple[str, str]]:
    """(host name, loopback address) of each simulated node."""
    return [(f"node-{i:05d}", _ip(NODE_NET, i)) for i in range(count)]


def _raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def _prepare_child() -> None:
    """Raise the file limit and create the ZeroMQ context before the baseline is read, so that what the
    process holds afterwards is its servers' (or client's) alone."""
    import zmq

    _raise_nofile()
    # libzmq's own cap (ZMQ_MAX_SOCKETS, 1023 by default) is met long before the file limit: a process of
    # many nodes holds several sockets per node.
    zmq.Context.instance().set(zmq.MAX_SOCKETS, MAX_SOCKETS)


# --------------------------------------------------------------------------------------------------
# Child processes: server processes (many nodes), the client, the notification listener
# --------------------------------------------------------------------------------------------------


class _Recorder:
    """When each fanout tag (or notification tag) arrived, per process."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: dict[str, list[float]] = defaultdict(list)

    def add(self, tag: str) -> None:
        now = time.monotonic()
        with self.lock:
            self.seen[tag].append(now)

    def report(self, tag: str) -> tuple[int, float, float]:
        with self.lock:
            times = list(self.seen.get(tag, ()))
        return (len(times), max(times, default=0.0), min(times, default=0.0))


class _NodeEndpoint:
    def __init__(self, host: str, recorder: _Recorder) -> None:
        self.host = host
        self.recorder = recorder

    def ping(self, context: dict[str, Any]) -> str:
        return self.host

    def record(self, context: dict[str, Any], tag: str) -> None:
        self.recorder.add(tag)


class _ListenerEndpoint:
    def __init__(self, recorder: _Recorder) -> None:
        self.recorder = recorder

    def info(self, context: Any, publisher_id: Any, event_type: Any, payload: Any, metadata: Any) -> None:
        self.recorder.add(payload["tag"])


def _settings(url: str, options: dict[str, Any], host: str, address: str) -> Any:
    from zmqrpc.config import load_settings

    return load_settings(
        url=url, overrides={**options, "rpc_zmq_host": host, "rpc_zmq_bind_address": address}
    )


def _limit_of(exc: BaseException) -> str:
    """Which machine limit an exception means: fds, ports, memory, or (unknown) error."""
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, MemoryError):
        return "memory"
    if "Too many open files" in text or "EMFILE" in text:
        return "fds"
    if "PortRangeExhausted" in text or "port range exhausted" in text or "Address already in use" in text:
        return "ports"
    return "error"


def _commands(conn: Any) -> Iterator[tuple[str, Any]]:
    """Say ready, then the orchestrator's commands on ``conn``, until "stop" or a closed pipe."""
    conn.send(("ready", os.getpid()))
    while True:
        try:
            command, arg = conn.recv()
        except EOFError:
            return
        if command == "stop":
            return
        yield command, arg


def _server(url: str, options: dict[str, Any], host: str, address: str, topic: str, endpoint: object) -> Any:
    """An RpcServer of ``topic`` for simulated ``host``, bound to ``address`` (not started)."""
    from zmqrpc.server import RpcServer

    return RpcServer(_settings(url, options, host, address), topic, [endpoint], server=host)


def _server_process(conn: Any, url: str, options: dict[str, Any]) -> None:
    """Many simulated nodes in one process; answers the orchestrator's commands on ``conn``."""
    from zmqrpc.client import RpcClient

    _prepare_child()
    recorder = _Recorder()
    servers: list[Any] = []
    hosts: list[str] = []
    notifier: Any = None
    for command, arg in _commands(conn):
        if command == "start":
            started = time.monotonic()
            try:
                for host, address in arg:
                    server = _server(url, options, host, address, NODE_TOPIC, _NodeEndpoint(host, recorder))
                    server.start()
                    servers.append(server)
                    hosts.append(host)
                conn.send(("ok", time.monotonic() - started))
            except BaseException as exc:
                conn.send(("limit", _limit_of(exc), f"node {len(servers)}: {type(exc).__name__}: {exc}"))
        elif command == "report":
            conn.send(("ok", recorder.report(arg)))
        elif command == "notify":
            if notifier is None:
                notifier = RpcClient(_settings(url, options, f"notifier-{os.getpid()}", "127.0.0.1"))
            for host in hosts:
                notifier.notify(
                    EVENTS_TOPIC, "info", "scale.event", {"tag": arg, "node": host}, publisher_id=host
                )
            conn.send(("ok", len(hosts)))
    if notifier is not None:
        notifier.close()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda s: s.stop(), servers))
    conn.send(("stopped", len(servers)))


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _client_process(conn: Any, url: str, options: dict[str, Any]) -> None:
    """The client: reachability, latency, fanout; answers the orchestrator's commands on ``conn``."""
    from zmqrpc.client import RpcClient

    _prepare_child()
    client = None
    for command, arg in _commands(conn):
        try:
            if client is None:
                client = RpcClient(_settings(url, options, "scale-client", "127.0.0.1"))
            if command == "reach":
                hosts, timeout = arg
                conn.send(("ok", _reach(client, hosts, timeout)))
            elif command == "latency":
                hosts, count = arg
                samples = []
                for _ in range(count):
                    host = random.choice(hosts)
                    t0 = time.perf_counter()
                    client.call(NODE_TOPIC, "ping", timeout=10, server=host)
                    samples.append((time.perf_counter() - t0) * 1e6)
                conn.send(("ok", (_percentile(samples, 0.5), _percentile(samples, 0.99))))
            elif command == "fanout":
                t0 = time.monotonic()
                sent = client.fanout(NODE_TOPIC, "record", {"tag": arg}, strict=True)
                conn.send(("ok", (t0, sent, time.monotonic() - t0)))
        except BaseException as exc:
            conn.send(("limit", _limit_of(exc), f"{command}: {type(exc).__name__}: {exc}"))
    if client is not None:
        client.close()
    conn.send(("stopped", 0))


def _reach(client: Any, hosts: list[str], timeout: float) -> tuple[float, list[str]]:
    """Call every host's directed topic until each has answered once; (seconds, hosts never reached)."""
    started = time.monotonic()
    deadline = started + timeout
    left = list(hosts)
    while left and time.monotonic() < deadline:
        batch_end = min(deadline, time.monotonic() + 10.0)
        futures = []
        for host in left[:500]:
            try:
                futures.append((host, client.call_async(NODE_TOPIC, "ping", timeout=5, server=host)))
            except Exception:
                futures.append((host, None))
        failed = []
        for host, future in futures:
            try:
                wait = max(0.01, batch_end - time.monotonic())
                if future is None or client.wait(future, wait) != host:
                    failed.append(host)
            except Exception:
                failed.append(host)
        left = failed + left[500:]
        if failed:
            time.sleep(0.2)
    return time.monotonic() - started, left


def _listener_process(conn: Any, url: str, options: dict[str, Any]) -> None:

    _raise_nofile()
    recorder = _Recorder()
    events = f"{EVENTS_TOPIC}.info"
    server = _server(url, options, "scale-listener", "127.0.0.1", events, _ListenerEndpoint(recorder)).start()
    for command, arg in _commands(conn):
        if command == "report":
            conn.send(("ok", recorder.report(arg)))
    server.stop()
    conn.send(("stopped", 0))


def _child(target: Any, conn: Any, *args: Any) -> None:
    logging.basicConfig(
        level=logging.ERROR, format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"
    )
    try:
        target(conn, *args)
    except BaseException:
        with contextlib.suppress(OSError):
            conn.send(("error", traceback.format_exc()))
        raise


class Child:
    """A child process and its command pipe."""

    def __init__(self, mp: Any, name: str, target: Any, *args: Any) -> None:
        self.name = name
        self.conn, child_conn = mp.Pipe()
        self.proc = mp.Process(target=_child, args=(target, child_conn, *args), name=name, daemon=True)
        self.proc.start()
        child_conn.close()
        self.pid = 0

    def receive(self, timeout: float) -> tuple[Any, ...]:
        if not self.conn.poll(timeout):
            raise ScaleLimit("time", f"{self.name} did not answer within {timeout:.0f} s")
        try:
            message = self.conn.recv()
        except EOFError:
            raise ScaleLimit("error", f"{self.name} exited (code {self.proc.exitcode})") from None
        if message[0] == "error":
            raise ScaleLimit("error", f"{self.name} failed:\n{message[1]}")
        if message[0] == "limit":
            raise ScaleLimit(message[1], f"{self.name}: {message[2]}")
        return message

    def wait_ready(self, timeout: float) -> None:
        self.pid = self.receive(timeout)[1]

    def ask(self, command: str, arg: Any = None, timeout: float = 60.0) -> Any:
        self.conn.send((command, arg))
        return self.receive(timeout)[1]

    def stop(self, timeout: float = 60.0) -> None:
        with contextlib.suppress(OSError, ScaleLimit):
            self.conn.send(("stop", None))
            self.receive(timeout)
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        self.conn.close()


class ScaleLimit(RuntimeError):
    """A run stopped at a limit: ``limit`` is fds, ports, memory, time or error."""

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message)
        self.limit = limit


# --------------------------------------------------------------------------------------------------
# Counting: ss, /proc
# --------------------------------------------------------------------------------------------------

_PID_RE = re.compile(r"pid=(\d+)")


def tcp_connections() -> dict[int, int]:
    """Established TCP connections per pid, as ``ss -tnp state established`` lists them."""
    out = subprocess.run(
        ["ss", "-tnpH", "state", "established"], capture_output=True, text=True, check=True
    ).stdout
    counts: dict[int, int] = defaultdict(int)
    for line in out.splitlines():
        for pid in set(_PID_RE.findall(line)):
            counts[int(pid)] += 1
    return counts


def proc_stats(pid: int) -> dict[str, float]:
    """fds, threads and RSS (MB) of a process."""
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    threads = int(re.search(r"Threads:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    return {"fds": fds, "threads": threads, "rss_mb": rss_kb / 1024}


def mem_available_mb() -> float:
    text = Path("/proc/meminfo").read_text()
    return int(re.search(r"MemAvailable:\s+(\d+)", text).group(1)) / 1024  # type: ignore[union-attr]


def _error(measured: float, predicted: float) -> float | None:
    return None if not predicted else round((measured - predicted) / predicted, 3)


# --------------------------------------------------------------------------------------------------
# One bus: a topology at one N
# --------------------------------------------------------------------------------------------------


class Proxies:
    """Real ``zmqrpc proxy`` processes, each on a loopback address of its own, registered in Redis."""

    def __init__(self, count: int, url: str, options: dict[str, Any], publish: bool, workdir: str) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        config = os.path.join(workdir, "proxy.conf")
        with open(config, "w", encoding="utf-8") as fh:
            fh.write(f"[DEFAULT]\ntransport_url = {url}\n[oslo_messaging_zmq]\n")
            for key, value in options.items():
                fh.write(f"{key} = {str(value).lower() if isinstance(value, bool) else value}\n")
        for i in range(count):
            address = _ip(PROXY_NET, i)
            host_conf = os.path.join(workdir, f"proxy-{i}.conf")
            with open(host_conf, "w", encoding="utf-8") as fh:
                fh.write(f"[oslo_messaging_zmq]\nrpc_zmq_bind_address = {address}\n")
            cmd = [sys.executable, "-m", "zmqrpc.cli", "proxy", "--config-file", config]
            cmd += [
                "--config-file",
                host_conf,
                "--host",
                address,
                "--frontend-port",
                "0",
                "--backend-port",
                "0",
            ]
            if publish:
                cmd += ["--publisher-port", "0"]
            log = open(os.path.join(workdir, f"proxy-{i}.log"), "ab")  # noqa: SIM115 - closed with the proxy
            self.procs.append(
                subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_raise_nofile)
            )
            log.close()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def _machine_limit(p: planner.Plan, nodes_per_process: int, proxies: int) -> tuple[str, str] | None:
    """The machine limit the plan says this bus would pass, if any: (limit, message)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    costs = planner.COSTS
    worker_fds = costs.process_base_fds + nodes_per_process * p.server.fds
    client_fds = costs.process_base_fds + p.client.fds + p.client.transient_connections
    for what, fds in (("a server process", worker_fds), ("the client", client_fds)):
        if fds > hard:
            return "fds", f"{what} would need {fds} file descriptors, past this machine's hard limit {hard}"
    if p.proxy is not None and p.proxy.fds > hard:
        return "fds", f"each proxy would need {p.proxy.fds} file descriptors, past the hard limit {hard}"
    processes = math.ceil(p.nodes / nodes_per_process) + 2 + proxies
    memory = processes * costs.process_base_rss_mb + p.nodes * p.server.rss_mb
    available = mem_available_mb()
    if memory > 0.8 * available:
        return "memory", f"about {memory:.0f} MB needed, {available:.0f} MB available"
    low, high = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    if p.client.connections > (high - low) * 0.8:
        return "ports", f"the client would hold {p.client.connections} connections, near the ephemeral range"
    return None


def measure_bus(
    topology: str,
    nodes: int,
    proxies: int,
    nodes_per_process: int,
    calls: int,
    fanouts: int,
    redis_window: float,
    timeout: float,
) -> dict[str, Any]:
    """Run one bus and measure it; raises ScaleLimit naming the limit it hit."""
    from tests.servers import RedisServer, wait_until

    options = dict(TOPOLOGY_OPTIONS[topology])
    top = planner.TOPOLOGIES[topology]
    proxies = proxies if top.proxied else 0
    cores = os.cpu_count() or 1
    predicted = planner.plan(nodes, topology, 1, proxies or None, callers=1, clients=1, cores=cores)
    limit = _machine_limit(predicted, nodes_per_process, proxies)
    if limit is not None:
        raise ScaleLimit(*limit)
    record: dict[str, Any] = {"topology": topology, "nodes": nodes, "proxies": proxies, "cores": cores}
    mp = multiprocessing.get_context("spawn")
    names = node_names(nodes)
    groups = [names[i : i + nodes_per_process] for i in range(0, nodes, nodes_per_process)]
    with contextlib.ExitStack() as stack:
        workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="zmqrpc-scale-"))
        redis_server = RedisServer()
        stack.callback(redis_server.cleanup)
        url = redis_server.url
        rc = redis_server.client()
        stack.callback(rc.close)
        proxy_set = None
        if top.proxied:
            proxy_set = Proxies(proxies, url, options, top.pub_sub, workdir)
            stack.callback(proxy_set.stop)
            wanted = {f"zmqrpc:topic:{protocol.PROXY_FRONTENDS}": proxies}
            if top.pub_sub:
                wanted[f"zmqrpc:topic:{protocol.PROXY_PUBLISHERS}"] = proxies
            wait_until(
                lambda: all(rc.zcard(k) >= n for k, n in wanted.items()), 30, "the proxies to register"
            )
        children: list[Child] = []

        def stop_children() -> None:
            for child in children:
                with contextlib.suppress(OSError):
                    child.conn.send(("stop", None))
            for child in children:
                child.stop()

        stack.callback(stop_children)
        client = Child(mp, "client", _client_process, url, options)
        children.append(client)
        workers = [Child(mp, f"servers-{i}", _server_process, url, options) for i in range(len(groups))]
        children.extend(workers)
        for child in children:
            child.wait_ready(60)
        baseline = {child.pid: proc_stats(child.pid) for child in children}

        # Registration and reachability
        t0 = time.monotonic()
        for worker, group in zip(workers, groups, strict=True):
            worker.conn.send(("start", group))
        key = f"zmqrpc:topic:{NODE_TOPIC}"
        deadline = t0 + timeout
        start_times: dict[str, float] = {}
        while rc.zcard(key) < nodes:
            if time.monotonic() > deadline:
                raise ScaleLimit("time", f"{rc.zcard(key)} of {nodes} nodes registered after {timeout:.0f} s")
            for worker in workers:
                if worker.name not in start_times and worker.conn.poll(0):
                    start_times[worker.name] = worker.receive(0)[1]  # raises a limit or an error
            time.sleep(0.02)
        registered = time.monotonic() - t0
        for worker in workers:
            if worker.name not in start_times:
                start_times[worker.name] = worker.receive(timeout)[1]
        hosts = [host for host, _ in names]
        reach_s, unreached = client.ask("reach", (hosts, timeout), timeout + 30)
        if unreached:
            raise ScaleLimit("time", f"{len(unreached)} of {nodes} nodes not reachable after {timeout:.0f} s")
        record.update(
            register_s=round(registered, 3),
            reachable_s=round(registered + reach_s, 3),
            start_per_process_s=round(max(start_times.values()), 3),
        )

        # Latency
        p50, p99 = client.ask("latency", (hosts, calls), 120)
        record.update(call_p50_us=round(p50, 1), call_p99_us=round(p99, 1))

        # Fanout
        rounds = []
        for i in range(fanouts):
            tag = f"fanout-{i}"
            sent_at, sent, send_s = client.ask("fanout", tag)
            end = time.monotonic() + max(10.0, timeout / 4)
            while True:
                reports = [worker.ask("report", tag) for worker in workers]
                got = sum(r[0] for r in reports)
                if got >= nodes or time.monotonic() > end:
                    break
                time.sleep(0.02)
            time.sleep(0.2)  # a duplicate would arrive right behind
            reports = [worker.ask("report", tag) for worker in workers]
            got = sum(r[0] for r in reports)
            last = max(r[1] for r in reports)
            rounds.append({"sent": sent, "reached": got, "s": last - sent_at, "send_s": send_s})
        fanout_s = statistics.median(r["s"] for r in rounds)
        record.update(
            fanout_s=round(fanout_s, 4),
            fanout_max_s=round(max(r["s"] for r in rounds), 4),
            fanout_send_s=round(statistics.median(r["send_s"] for r in rounds), 4),
            fanout_reached=min(r["reached"] for r in rounds),
            fanout_extra_copies=max(r["reached"] for r in rounds) - nodes,
            plan_fanout_s=predicted.fanout_s,
            fanout_error=_error(fanout_s, predicted.fanout_s),
        )

        # Connections, fds, threads, RSS
        conns = tcp_connections()
        client_now = proc_stats(client.pid)
        k = len(groups[0])
        first = workers[0]
        worker_now = proc_stats(first.pid)
        per_node = {
            "connections": conns.get(first.pid, 0) / k,
            "fds": (worker_now["fds"] - baseline[first.pid]["fds"]) / k,
            "threads": (worker_now["threads"] - baseline[first.pid]["threads"]) / k,
            "rss_mb": (worker_now["rss_mb"] - baseline[first.pid]["rss_mb"]) / k,
        }
        client_delta = {
            "connections": conns.get(client.pid, 0),
            "fds": client_now["fds"] - baseline[client.pid]["fds"],
        }
        record.update(
            client_connections=client_delta["connections"],
            plan_client_connections=predicted.client.connections,
            client_connections_error=_error(client_delta["connections"], predicted.client.connections),
            client_fds=client_delta["fds"],
            plan_client_fds=predicted.client.fds,
            client_fds_error=_error(client_delta["fds"], predicted.client.fds),
            client_rss_mb=round(client_now["rss_mb"], 1),
            server_process_nodes=k,
            server_process_connections=conns.get(first.pid, 0),
            server_process_fds=worker_now["fds"],
            server_process_rss_mb=round(worker_now["rss_mb"], 1),
            server_process_threads=worker_now["threads"],
            node_connections=round(per_node["connections"], 3),
            plan_node_connections=predicted.server.connections,
            node_connections_error=_error(per_node["connections"], predicted.server.connections),
            node_fds=round(per_node["fds"], 3),
            plan_node_fds=predicted.server.fds,
            node_fds_error=_error(per_node["fds"], predicted.server.fds),
            node_threads=round(per_node["threads"], 2),
            plan_node_threads=predicted.server.threads,
            node_rss_kb=round(per_node["rss_mb"] * 1024, 1),
            plan_node_rss_kb=round(predicted.server.rss_mb * 1024, 1),
        )
        if proxy_set is not None and predicted.proxy is not None:
            proxy_stats = []
            for pid in proxy_set.pids:
                stats = proc_stats(pid)
                proxy_stats.append(
                    {"connections": conns.get(pid, 0), "fds": stats["fds"], "rss_mb": stats["rss_mb"]}
                )
            worst_c = max(proxy_stats, key=lambda s: abs(s["connections"] - predicted.proxy.connections))
            worst_f = max(proxy_stats, key=lambda s: abs(s["fds"] - predicted.proxy.fds))
            record.update(
                proxy_connections=[s["connections"] for s in proxy_stats],
                plan_proxy_connections=predicted.proxy.connections,
                proxy_connections_error=_error(worst_c["connections"], predicted.proxy.connections),
                proxy_fds=[s["fds"] for s in proxy_stats],
                plan_proxy_fds=predicted.proxy.fds,
                proxy_fds_error=_error(worst_f["fds"], predicted.proxy.fds),
                proxy_rss_mb=[round(s["rss_mb"], 1) for s in proxy_stats],
            )

        # Redis commands per second over a quiet window (the refreshes; registrations are every
        # zmq_target_update, so a short window sees none of them)
        before = int(rc.info("stats")["total_commands_processed"])
        time.sleep(redis_window)
        after = int(rc.info("stats")["total_commands_processed"])
        redis_ops = (after - before - 1) / redis_window
        record.update(
            redis_ops_per_s=round(redis_ops, 1),
            plan_redis_refreshes_per_s=predicted.redis_refreshes_per_s,
            plan_redis_ops_per_s=predicted.redis_ops_per_s,
            redis_ops_error=_error(redis_ops, predicted.redis_refreshes_per_s),
            redis_clients=int(rc.info("clients")["connected_clients"]) - 1,
            plan_redis_connections=predicted.redis_connections,
        )

        # Notification fan-in: every server process notifies for each of its nodes at once
        listener = Child(mp, "listener", _listener_process, url, options)
        children.append(listener)
        listener.wait_ready(60)
        time.sleep(0.5)  # the listener's registration reaches the notifiers' first lookup
        t0 = time.monotonic()
        for worker in workers:
            worker.conn.send(("notify", "events-0"))
        for worker in workers:
            worker.receive(timeout)
        end = time.monotonic() + max(10.0, timeout / 4)
        while True:
            got, last, _ = listener.ask("report", "events-0")
            if got >= nodes or time.monotonic() > end:
                break
            time.sleep(0.02)
        record.update(
            notify_fanin_s=round(last - t0, 4) if got else None,
            notify_received=got,
            notify_per_s=round(got / (last - t0), 1) if got and last > t0 else None,
        )
        record["plan_warnings"] = [w.limit for w in predicted.warnings]
    return record


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zmqrpc scale-test",
        description="Run a bus of N simulated nodes (real RpcServers, Redis, proxies) on this machine and "
        "measure it beside zmqrpc plan's predictions.",
    )
    parser.add_argument(
        "--nodes", type=_ints, default=[10, 100, 300, 1000], help="comma list of N (empty: only --records)"
    )
    parser.add_argument(
        "--topology",
        default=",".join(DEFAULT_TOPOLOGIES),
        help=f"comma list of {', '.join(TOPOLOGY_OPTIONS)}",
    )
    parser.add_argument("--proxies", type=int, default=3, help="central proxies in proxy topologies")
    parser.add_argument("--nodes-per-process", type=int, default=100, help="simulated nodes per OS process")
    parser.add_argument("--calls", type=int, default=200, help="calls for the latency percentiles")
    parser.add_argument("--fanouts", type=int, default=3, help="fanouts timed (the median is reported)")
    parser.add_argument(
        "--redis-window",
        type=float,
        default=10.0,
        help="seconds Redis commands are counted (rpc_zmq_cache_refresh)",
    )
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds a step may take before it is a limit"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line instead of the table")
    parser.add_argument(
        "--records", metavar="FILE", help="JSON lines of earlier runs (--json) to add to the table and plots"
    )
    parser.add_argument(
        "--plot", metavar="DIR", help="write scale-fanout.png and scale-connections.png into DIR"
    )
    return parser


COLUMNS = [
    ("topology", "topology", "{}"),
    ("N", "nodes", "{}"),
    ("reg s", "register_s", "{:.2f}"),
    ("reach s", "reachable_s", "{:.2f}"),
    ("p50 us", "call_p50_us", "{:.0f}"),
    ("p99 us", "call_p99_us", "{:.0f}"),
    ("fanout ms", "fanout_s", "{:.1f}", 1000),
    ("plan", "plan_fanout_s", "{:.1f}", 1000),
    ("reached", "fanout_reached", "{}"),
    ("fan-in ms", "notify_fanin_s", "{:.0f}", 1000),
    ("cli conn", "client_connections", "{}"),
    ("plan", "plan_client_connections", "{}"),
    ("cli fds", "client_fds", "{}"),
    ("plan", "plan_client_fds", "{}"),
    ("node conn", "node_connections", "{:.2f}"),
    ("plan", "plan_node_connections", "{}"),
    ("node fds", "node_fds", "{:.2f}"),
    ("plan", "plan_node_fds", "{}"),
    ("node KB", "node_rss_kb", "{:.0f}"),
    ("proxy conn", "proxy_connections", "{}"),
    ("plan", "plan_proxy_connections", "{}"),
    ("proxy fds", "proxy_fds", "{}"),
    ("plan", "plan_proxy_fds", "{}"),
    ("redis op/s", "redis_ops_per_s", "{:.1f}"),
    ("plan", "plan_redis_refreshes_per_s", "{:.1f}"),
]


def _cell(record: dict[str, Any], column: tuple[Any, ...]) -> str:
    value = record.get(column[1])
    if value is None:
        return "-"
    if isinstance(value, list):
        return "/".join(str(v) for v in value)
    if len(column) > 3:
        value = value * column[3]
    return column[2].format(value)


def format_table(records: list[dict[str, Any]]) -> str:
    rows = [[c[0] for c in COLUMNS]]
    for record in records:
        if "limit" in record:
            rows.append(
                [
                    record["topology"],
                    str(record["nodes"]),
                    f"stopped: limit {record['limit']}: {record['message']}",
                ]
            )
        else:
            rows.append([_cell(record, c) for c in COLUMNS])
    widths = [max(len(r[i]) for r in rows if len(r) == len(COLUMNS)) for i in range(len(COLUMNS))]
    lines = []
    for row in rows:
        if len(row) != len(COLUMNS):
            lines.append(f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]}")
        else:
            lines.append(
                "  ".join(
                    cell.rjust(w) if i else cell.ljust(w)
                    for i, (cell, w) in enumerate(zip(row, widths, strict=True))
                )
            )
    return "\n".join(lines)


def _save(plt: Any, fig: Any, path: str) -> str:
    """Write ``fig`` to ``path`` and free it; return the path."""
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot(records: list[dict[str, Any]], directory: str) -> list[str]:
    """Fanout time against N per topology, and connections (and fds) against N, measured and planned."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(directory, exist_ok=True)
    done = [r for r in records if "limit" not in r]
    by_topology: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in done:
        by_topology[record["topology"]].append(record)
    paths = []

    fig, ax = plt.subplots(figsize=(6, 4), dpi=80)
    for name, rows in by_topology.items():
        rows.sort(key=lambda r: r["nodes"])
        line = ax.plot(
            [r["nodes"] for r in rows], [r["fanout_s"] * 1000 for r in rows], marker="o", label=name
        )
        ax.plot(
            [r["nodes"] for r in rows],
            [r["plan_fanout_s"] * 1000 for r in rows],
            linestyle=":",
            color=line[0].get_color(),
        )
    ax.axhline(1000, color="grey", linewidth=0.8)
    ax.set(xscale="log", yscale="log", xlabel="simulated nodes", ylabel="fanout to every node (ms)")
    ax.set_title("Fanout time (solid: measured, dotted: plan)", fontsize=10)
    ax.legend(fontsize=8)
    paths.append(_save(plt, fig, os.path.join(directory, "scale-fanout.png")))

    fig, axes = plt.subplots(1, 2, figsize=(9, 4), dpi=80)
    for name, rows in by_topology.items():
        rows.sort(key=lambda r: r["nodes"])
        xs = [r["nodes"] for r in rows]
        line = axes[0].plot(xs, [r["client_connections"] for r in rows], marker="o", label=f"{name} client")
        axes[0].plot(
            xs, [r["plan_client_connections"] for r in rows], linestyle=":", color=line[0].get_color()
        )
        if rows[0].get("proxy_connections"):
            line = axes[1].plot(
                xs, [max(r["proxy_connections"]) for r in rows], marker="s", label=f"{name} proxy"
            )
            axes[1].plot(
                xs, [r["plan_proxy_connections"] for r in rows], linestyle=":", color=line[0].get_color()
            )
    axes[0].set(xscale="log", yscale="log", xlabel="simulated nodes", ylabel="TCP connections (ss)")
    axes[0].set_title("Client (solid: ss, dotted: plan)", fontsize=10)
    axes[1].set(xscale="log", yscale="log", xlabel="simulated nodes", ylabel="TCP connections (ss)")
    axes[1].set_title("Each proxy (solid: ss, dotted: plan)", fontsize=10)
    for ax in axes:
        ax.legend(fontsize=7)
    paths.append(_save(plt, fig, os.path.join(directory, "scale-connections.png")))
    return paths


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    topologies = [t for t in args.topology.split(",") if t]
    for name in topologies:
        if name not in TOPOLOGY_OPTIONS:
            raise SystemExit(
                f"zmqrpc scale-test: unknown topology {name!r}: expected {', '.join(TOPOLOGY_OPTIONS)}"
            )
    records: list[dict[str, Any]] = []
    for topology in topologies:
        for nodes in sorted(args.nodes):
            started = time.monotonic()
            try:
                record = measure_bus(
                    topology,
                    nodes,
                    args.proxies,
                    args.nodes_per_process,
                    args.calls,
                    args.fanouts,
                    args.redis_window,
                    args.timeout,
                )
            except ScaleLimit as exc:
                record = {"topology": topology, "nodes": nodes, "limit": exc.limit, "message": str(exc)}
            record["run_s"] = round(time.monotonic() - started, 1)
            records.append(record)
            if args.json:
                print(json.dumps(record, sort_keys=True), flush=True)
            else:
                print(f"# {topology} N={nodes}: done in {record['run_s']} s", file=sys.stderr, flush=True)
            if "limit" in record:
                break  # a larger N passes the same limit
    return records


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds the runs, so every process they started is stopped


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _raise_nofile()
    records = run(args) if args.nodes else []
    if args.records:
        with open(args.records, encoding="utf-8") as fh:
            earlier = [json.loads(line) for line in fh if line.startswith("{")]
        records = earlier + records
    if not args.json:
        print(format_table(records))
    if args.plot:
        for path in plot(records, args.plot):
            print(f"# wrote {path}", file=sys.stderr)
    return 0 if all("limit" not in r for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
