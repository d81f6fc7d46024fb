"""Server processes of a measurement: separate processes that report ready and count what they receive.

Each server (zmqrpc, raw pyzmq, nats-py, oslo.messaging) runs ``target(conn, count, *args)`` in a child
started with ``multiprocessing``'s spawn method: it sends ``("ready", port)`` (or ``("error", traceback)``)
on ``conn``, bumps the shared ``count`` per message received, and returns when the parent says stop or goes
away (:func:`watch_stop`). :class:`ServerProcess` is the parent's handle and the one place a server is
stopped. Daemons a run needs (redis-server, nats-server, RabbitMQ) come from ``tests/servers.py``, which
the tests use too.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from benchmarks.measure import BenchError

START_TIMEOUT = 30.0  # seconds for a server process to come up


def watch_stop(conn: Any) -> threading.Event:
    """An event set when the parent says stop or goes away (its end of the pipe closes)."""
    stop = threading.Event()

    def watch() -> None:
        with contextlib.suppress(EOFError, OSError):
            conn.recv()
        stop.set()

    threading.Thread(target=watch, name="bench-stop", daemon=True).start()
    return stop


def _child_main(conn: Any, count: Any, target: Callable[..., None], args: tuple[Any, ...]) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(processName)s %(levelname)s %(message)s")
    try:
        target(conn, count, *args)
    except BaseException:
        with contextlib.suppress(OSError):
            conn.send(("error", traceback.format_exc()))
        raise


class ServerProcess:
    """A server in its own process, with a shared counter of the messages it received."""

    def __init__(self, mp: Any, name: str, target: Callable[..., None], *args: Any) -> None:
        self.name = name
        self.port = 0  # the port it bound, once ready
        self.count = mp.RawValue("q", 0)
        self.conn, child_conn = mp.Pipe()
        self.proc = mp.Process(
            target=_child_main, args=(child_conn, self.count, target, args), name=name, daemon=True
        )
        self.proc.start()
        child_conn.close()

    def wait_ready(self, deadline: float) -> None:
        while True:
            if self.conn.poll(0.05):
                try:
                    message = self.conn.recv()
                except EOFError:
                    message = ("error", "")
                if message[0] == "ready":
                    self.port = message[1]
                    return
                raise BenchError(f"{self.name} failed to start:\n{message[1]}".rstrip())
            if not self.proc.is_alive():
                raise BenchError(f"{self.name} exited with code {self.proc.exitcode} before it was ready")
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name} was not ready in time")

    def request_stop(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send("stop")

    def stop(self) -> None:
        """Ask the process to stop; terminate it, then kill it, if it does not."""
        self.request_stop()
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(2)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


@contextlib.contextmanager
def server_group() -> Iterator[list[ServerProcess]]:
    """A list to start server processes into; every one of them is stopped on the way out."""
    processes: list[ServerProcess] = []
    try:
        yield processes
    finally:
        for proc in processes:
            proc.request_stop()  # all at once: they shut down in parallel
        for proc in processes:
            proc.stop()


def wait_ready(processes: list[ServerProcess], timeout: float = START_TIMEOUT) -> None:
    """Wait until every process said it is ready; BenchError naming the first that failed."""
    deadline = time.monotonic() + timeout
    for proc in processes:
        proc.wait_ready(deadline)
