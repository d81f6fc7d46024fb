"""The periodic background task that the routing cache, the registrar and the local publisher share."""

from __future__ import annotations

import itertools
import threading
import time

from zmqrpc.periodic import PeriodicTask


def test_runs_every_interval_until_stopped() -> None:
    runs: list[float] = []
    three = threading.Event()

    def run() -> None:
        runs.append(time.monotonic())
        if len(runs) == 3:
            three.set()

    task = PeriodicTask("test-periodic", run, 0.05)
    task.start()
    task.start()  # a second start is a no-op, not a second thread
    assert three.wait(10)
    task.stop()
    assert [t for t in threading.enumerate() if t.name == "test-periodic"] == []
    count = len(runs)
    assert all(later - earlier >= 0.04 for earlier, later in itertools.pairwise(runs))
    time.sleep(0.15)
    assert len(runs) == count  # nothing runs after stop
    task.start()  # a stopped task stays stopped
    assert [t for t in threading.enumerate() if t.name == "test-periodic"] == []


def test_wake_runs_now_and_an_exception_does_not_end_the_task() -> None:
    ran = threading.Event()
    calls = []

    def flaky() -> None:
        calls.append(1)
        ran.set()
        if len(calls) == 1:
            raise RuntimeError("first run fails")

    task = PeriodicTask("test-periodic-wake", flaky, 60.0)
    task.start()
    task.wake()
    assert ran.wait(2)
    ran.clear()
    task.wake()
    assert ran.wait(2)  # alive after the exception
    task.stop()
    assert task.stopping
    assert len(calls) == 2


def test_interval_function_and_first_delay() -> None:
    runs: list[float] = []
    two = threading.Event()

    def run() -> None:
        runs.append(time.monotonic())
        if len(runs) == 2:
            two.set()

    task = PeriodicTask("test-periodic-fn", run, lambda: 0.3 if runs else 60.0)
    task.start(first_delay=0.0)  # at once, then the interval the function gives: 0.3 s, not 60
    assert two.wait(10)
    task.stop()
    assert runs[1] - runs[0] >= 0.29
