"""A small single-threaded I/O loop: the one thread that owns a set of ZeroMQ sockets.

ZeroMQ sockets are not thread-safe, so a client's background sockets (and a proxy's) belong to one IOLoop.
Other threads hand work to it with :meth:`IOLoop.submit`, which wakes the loop through an eventfd. The
loop's thread follows the host: a green thread under eventlet, which then waits through the hub
(:func:`zmqrpc.green.poll`), or a plain thread that waits inside libzmq.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable

import zmq

from zmqrpc import green

LOG = logging.getLogger(__name__)

Handler = Callable[[int], None]


class IOLoop:
    def __init__(self, name: str, tick_interval: float = 0.1) -> None:
        self.name = name
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._tasks: deque[Callable[[], None]] = deque()
        self._poll_items: list[tuple[zmq.Socket | int, int]] = [(self._wake_fd, zmq.POLLIN)]
        self._handlers: dict[zmq.Socket, Handler] = {}
        self._flags: dict[zmq.Socket, int] = {}
        self._tickers: list[Callable[[float], None]] = []
        self._tick_interval = tick_interval
        self._tick_ms = int(tick_interval * 1000)
        self._next_tick = 0.0
        self._wake_pending = False
        # Guards the eventfd's writes against its close: the loop may see _stopping and close the fd
        # between stop() setting the flag and stop()'s write, and a closed fd number can be reused.
        self._wake_lock = threading.Lock()
        self._wake_closed = False
        self._stopping = False
        self._thread: threading.Thread | None = None

    # --- called from any thread ---
    def submit(self, task: Callable[[], None]) -> None:
        self._tasks.append(task)
        # One wake-up per batch: the loop clears the flag before it drains the tasks, so a task added
        # after that point always writes again (a duplicate write from two racing threads is harmless).
        if not self._wake_pending:
            self._wake_pending = True
            self._wake()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        if not self._stopping:
            self._stopping = True
            self._wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _wake(self) -> None:
        with self._wake_lock:
            if not self._wake_closed:
                os.eventfd_write(self._wake_fd, 1)

    @property
    def in_loop(self) -> bool:
        return threading.current_thread() is self._thread

    # --- called from the loop thread only ---
    def watch(self, sock: zmq.Socket, flags: int, handler: Handler) -> None:
        self._handlers[sock] = handler
        self.set_flags(sock, flags)

    def set_flags(self, sock: zmq.Socket, flags: int) -> None:
        if self._flags.get(sock) != flags:
            self._flags[sock] = flags
            self._rebuild_poll_items()

    def unwatch(self, sock: zmq.Socket) -> None:
        self._handlers.pop(sock, None)
        if self._flags.pop(sock, 0):
            self._rebuild_poll_items()

    def _rebuild_poll_items(self) -> None:
        items: list[tuple[zmq.Socket | int, int]] = [(self._wake_fd, zmq.POLLIN)]
        items += [(sock, flags) for sock, flags in self._flags.items() if flags]
        self._poll_items = items

    def add_ticker(self, ticker: Callable[[float], None]) -> None:
        """Run ``ticker(now)`` about every tick_interval."""
        self._tickers.append(ticker)

    def _run(self) -> None:
        while not self._stopping:
            try:
                events = green.poll(self._poll_items, self._tick_ms)
            except zmq.ZMQError as exc:  # e.g. context terminated under us
                LOG.error("%s: poll failed, loop stops: %s", self.name, exc)
                break
            for sock, flags in events:
                if sock == self._wake_fd:
                    with contextlib.suppress(BlockingIOError):
                        os.eventfd_read(self._wake_fd)
                    self._run_tasks()
                else:
                    handler = self._handlers.get(sock)
                    if handler is not None:
                        self._guard(handler, flags)
            self._run_tasks()
            if self._tickers:
                now = time.monotonic()
                if now >= self._next_tick:
                    self._next_tick = now + self._tick_interval
                    for ticker in self._tickers:
                        self._guard(ticker, now)
        self._run_tasks()
        self._wake_pending = True  # closed: no more writes to the eventfd
        with self._wake_lock:
            self._wake_closed = True
            os.close(self._wake_fd)

    def _run_tasks(self) -> None:
        self._wake_pending = False
        tasks = self._tasks
        while tasks:
            self._guard(tasks.popleft())

    def _guard(self, fn: Callable, *args: object) -> None:
        # Nothing raised by one message may stop the loop that serves all the others.
        try:
            fn(*args)
        except Exception:
            LOG.exception("%s: unexpected error in I/O loop", self.name)
