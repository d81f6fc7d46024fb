"""pytest plugin the runner loads into each suite process: if a test still runs after
``OSLO_FUNCTIONAL_DUMP_AFTER`` seconds, print the stack of every greenlet to stderr (the test's log).

faulthandler (pytest's ``faulthandler_timeout``) shows OS threads only; under eventlet, the test and the
oslo.messaging servers are greenlets, and when the hub sits idle in epoll their stacks say what they wait
for. The timer is a real OS thread (``eventlet.patcher.original``), so it runs even when the hub is blocked.
"""

from __future__ import annotations

import gc
import os
import traceback
from collections.abc import Iterator
from typing import Any

import pytest

# The real stderr (the test's log), kept before pytest's capture redirects fd 2 into its own files, which a
# killed process never prints.
_STDERR = os.dup(2)


def _dump(nodeid: str, after: float) -> None:
    import greenlet

    os.write(_STDERR, f"\n=== {nodeid} still running after {after:.0f} s: greenlet stacks\n".encode())
    for obj in gc.get_objects():
        if isinstance(obj, greenlet.greenlet) and obj.gr_frame is not None:
            stack = "".join(traceback.format_stack(obj.gr_frame))
            os.write(_STDERR, f"--- {obj!r}\n{stack}".encode(errors="replace"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: Any) -> Iterator[None]:
    after = float(os.environ.get("OSLO_FUNCTIONAL_DUMP_AFTER") or 0)
    timer = None
    if after > 0:
        from eventlet import patcher

        timer = patcher.original("threading").Timer(after, _dump, args=(item.nodeid, after))
        timer.daemon = True
        timer.start()
    try:
        yield
    finally:
        if timer is not None:
            timer.cancel()
