"""The host's concurrency: plain threads, or eventlet green threads after ``eventlet.monkey_patch()``.

OpenStack services run either way. Under monkey patching, ``threading.Thread``, locks, events and
``time.sleep`` already become green, so zmqrpc's own threads follow the host for free. What does not
follow is ZeroMQ: a blocking ``recv`` or ``zmq.Poller.poll`` inside a green thread blocks the whole hub.
This module is the one place that decides, per process, how zmqrpc waits on a socket:

* a socket a green thread blocks on is an ``eventlet.green.zmq`` socket, which waits through the hub;
* a loop that polls many sockets uses :func:`poll`, which under eventlet waits on the sockets'
  file descriptors through the hub instead of inside libzmq;
* a device that runs in C (``zmq.proxy``) gets a real OS thread (:func:`os_thread`), since it never
  returns to Python and would otherwise hold the hub forever.

All sockets come from one ``zmq.Context``, so inproc endpoints join green and plain sockets alike.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

import zmq


def patched() -> bool:
    """True when eventlet has monkey-patched threads in this process."""
    eventlet = sys.modules.get("eventlet")
    if eventlet is None:
        return False
    try:
        return bool(eventlet.patcher.is_monkey_patched("thread"))
    except AttributeError:  # a partial import: eventlet is being imported right now
        return False


def socket_class() -> type[zmq.Socket]:
    """The socket class a thread of this process may block on."""
    if patched():
        from eventlet.green import zmq as green_zmq

        return green_zmq.Socket  # type: ignore[no-any-return]
    return zmq.Socket


def os_thread(target: Callable[[], Any], name: str) -> threading.Thread:
    """A real OS thread even under monkey patching (for C code that never yields to the hub)."""
    if patched():
        from eventlet import patcher

        thread_cls = patcher.original("threading").Thread
    else:
        thread_cls = threading.Thread
    return thread_cls(target=target, name=name, daemon=True)  # type: ignore[no-any-return]


def poll(items: Sequence[tuple[Any, int]], timeout_ms: int) -> list[tuple[Any, int]]:
    """Wait up to ``timeout_ms`` for events on zmq sockets or plain file descriptors.

    Plain processes poll inside libzmq. Green processes must not block there: they ask each socket for
    its pending events (which also re-arms its edge-triggered file descriptor) and, when nothing is
    pending, wait on the descriptors through the hub.
    """
    if not patched():
        return zmq.zmq_poll(list(items), timeout_ms)  # type: ignore[no-any-return]
    ready = _pending(items)
    if ready:
        return ready
    from eventlet.green import select

    fds = [item if isinstance(item, int) else item.getsockopt(zmq.FD) for item, _ in items]
    select.select(fds, [], [], max(timeout_ms, 0) / 1000)
    return _pending(items)


def _pending(items: Sequence[tuple[Any, int]]) -> list[tuple[Any, int]]:
    from eventlet.green import select

    ready = []
    fds = []
    for item, flags in items:
        if isinstance(item, int):
            fds.append(item)
        else:
            events = item.getsockopt(zmq.EVENTS) & flags
            if events:
                ready.append((item, events))
    if fds:
        readable, _, _ = select.select(fds, [], [], 0)
        ready += [(fd, zmq.POLLIN) for fd in readable]
    return ready
