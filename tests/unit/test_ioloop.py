"""The I/O loop's wake-up eventfd: never written after the loop has closed it."""

from __future__ import annotations

import os

import pytest

from zmqrpc import ioloop
from zmqrpc.ioloop import IOLoop


def test_stop_never_writes_to_a_wake_fd_the_loop_has_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop can notice stop() on its own poll timeout, exit and close its eventfd before stop() writes
    the wake-up (seen as ``OSError: [Errno 9] Bad file descriptor`` from a client's close under load)."""
    loop = IOLoop("race", tick_interval=0.01)
    loop.start()
    real_write = os.eventfd_write

    def write_late(fd: int, value: int) -> None:
        assert loop._thread is not None
        loop._thread.join(0.5)  # give the loop every chance to exit and close the fd first
        real_write(fd, value)

    monkeypatch.setattr(ioloop.os, "eventfd_write", write_late)
    loop.stop()
    assert loop._thread is not None and not loop._thread.is_alive()


def test_a_task_submitted_after_stop_is_dropped_without_error() -> None:
    loop = IOLoop("late")
    loop.start()
    loop.stop()
    loop.submit(lambda: None)
