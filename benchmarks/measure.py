"""The measured window: how a benchmark drives an operation and what one side of a figure saw.

Every side of a figure (zmqrpc, raw pyzmq, nats-py, oslo.messaging) is driven the same way: a warm-up,
then a window of ``duration`` seconds (:class:`Window`). Only operations that start and end inside the
window count; one-way traffic is counted at the receivers, and senders are held back by a :class:`Gate`
so the figure is the steady delivered rate, not how fast a queue fills. The result is a :class:`Sample`.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

LOG = logging.getLogger(__name__)

DRAIN_TIMEOUT = 2.0  # seconds receivers get to catch up after a one-way window
STALL_TIMEOUT = 5.0  # seconds a sender waits for receivers to make progress before giving up


class BenchError(RuntimeError):
    """A measurement could not run (a server did not start, nothing was delivered, ...)."""


@dataclasses.dataclass
class Sample:
    """What one side (zmqrpc or a baseline) of a measurement saw."""

    messages: int
    seconds: float
    latencies: list[float]  # seconds
    errors: int = 0
    undelivered: int | None = None  # one-way: sent but not delivered by DRAIN_TIMEOUT after the window

    def __post_init__(self) -> None:
        self.latencies.sort()

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0

    def percentile_us(self, q: float) -> float | None:
        if not self.latencies:
            return None
        return round(self.latencies[min(len(self.latencies) - 1, int(q * len(self.latencies)))] * 1e6, 1)


class Window:
    """The measured window: warm-up first, then ``duration`` seconds (perf_counter times)."""

    def __init__(self, warmup: float, duration: float) -> None:
        self.start = time.perf_counter() + warmup
        self.end = self.start + duration

    def counted(self, t0: float, t1: float) -> bool:
        return t0 >= self.start and t1 <= self.end

    def receiver_rate(self, counters: Sequence[Any]) -> tuple[int, float]:
        """Sleep through the window; return the messages the receivers counted in it and its length."""
        _sleep_until(self.start)
        t0, first = time.perf_counter(), sum(c.value for c in counters)
        _sleep_until(self.end)
        t1, last = time.perf_counter(), sum(c.value for c in counters)
        return last - first, t1 - t0


def _sleep_until(when: float) -> None:
    delay = when - time.perf_counter()
    if delay > 0:
        time.sleep(delay)


class Gate:
    """Keeps about ``window`` deliveries outstanding: messages sent (times receivers) minus received.

    The fast path is one counter increment; only a sender that finds the window full reads the
    receivers' counters, and one blocked sender at a time polls them while the others wait on the lock
    without spinning, so a full window costs the process under test little CPU.
    """

    def __init__(self, counters: Sequence[Any], per_message: int, window: int) -> None:
        self._counters = counters
        self._per_message = per_message
        self._window = window
        self._lock = threading.Lock()
        self._sent = itertools.count(1)  # next() is atomic under the GIL
        self._delivered = 0
        self.stalled = False

    def sent(self, end: float) -> None:
        """Count one message sent, then block while too much is outstanding.

        Returns at ``end`` (the end of the window) at the latest, or after STALL_TIMEOUT without any
        delivery (then ``stalled`` is set).
        """
        sent = next(self._sent) * self._per_message
        if sent - self._delivered <= self._window:
            return
        with self._lock:
            since = time.perf_counter()
            while True:
                delivered = sum(c.value for c in self._counters)
                if delivered != self._delivered:
                    self._delivered, since = delivered, time.perf_counter()
                if sent - delivered <= self._window:
                    return
                now = time.perf_counter()
                if now > end:
                    return
                if now - since > STALL_TIMEOUT:
                    self.stalled = True
                    return
                time.sleep(0.0005)

    def drain(self, timeout: float) -> int:
        """Wait up to ``timeout`` s for the receivers to catch up; return the deliveries still missing."""
        deadline = time.perf_counter() + timeout
        expected = (next(self._sent) - 1) * self._per_message  # the senders have stopped
        while True:
            missing = expected - sum(c.value for c in self._counters)
            if missing <= 0 or time.perf_counter() > deadline:
                return max(missing, 0)
            time.sleep(0.002)


def drive_threads(
    threads: int, window: Window, op: Callable[[], None], gate: Gate | None = None
) -> tuple[list[float], int]:
    """Run ``op`` in a loop on ``threads`` threads until the window ends.

    Returns the latencies of the operations that ran entirely inside the window, and the errors.
    """
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors = [0] * threads

    def worker(i: int) -> None:
        mine = latencies[i]
        clock = time.perf_counter
        while True:
            t0 = clock()
            if t0 >= window.end:
                return
            try:
                op()
            except Exception as exc:
                errors[i] += 1
                if errors[i] == 1:
                    LOG.warning("bench operation failed: %s: %s", type(exc).__name__, exc)
                continue
            t1 = clock()
            if window.counted(t0, t1):
                mine.append(t1 - t0)
            if gate is not None:
                gate.sent(window.end)

    pool = [threading.Thread(target=worker, args=(i,), name=f"bench-{i}") for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return [x for per_thread in latencies for x in per_thread], sum(errors)


def one_way(
    send: Callable[[], None], threads: int, counters: list[Any], window: Window, cast_window: int
) -> Sample:
    """Run ``send`` (one message to every receiver) on ``threads`` threads, counting at the receivers."""
    result: list[tuple[int, float]] = []
    counter = threading.Thread(target=lambda: result.append(window.receiver_rate(counters)))
    counter.start()
    gate = Gate(counters, len(counters), cast_window)
    latencies, errors = drive_threads(threads, window, send, gate)
    counter.join()
    if gate.stalled:
        errors += 1
        LOG.warning("receivers stopped making progress for %.0f s", STALL_TIMEOUT)
    messages, seconds = result[0]
    return Sample(messages, seconds, latencies, errors, undelivered=gate.drain(DRAIN_TIMEOUT))
