"""Periodic tasks: one daemon thread that runs a function every interval until stopped.

The routing cache's refresher, the registrar's re-registration and the local publisher's upstream discovery
are all this one lifecycle: start once, wait on an :class:`threading.Event` between runs (so ``stop()`` and
``wake()`` take effect at once), survive whatever the function raises, and join on stop.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

__all__ = ["PeriodicTask"]

LOG = logging.getLogger(__name__)


class PeriodicTask:
    """Runs ``fn`` in a daemon thread named ``name``, ``interval`` seconds apart.

    ``interval`` is a number or a function asked after every run (and before the first unless
    ``first_delay`` is given), for tasks whose pace depends on their state. An exception from ``fn`` is
    logged as ``"<what> failed"`` and the task goes on.
    """

    def __init__(
        self,
        name: str,
        fn: Callable[[], object],
        interval: float | Callable[[], float],
        what: str | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.name = name
        self._fn = fn
        self._interval = interval
        self._what = what or name
        self._log = logger or LOG
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called; a long ``fn`` may check it to return early."""
        return self._stopping

    def start(self, first_delay: float | None = None) -> None:
        """Start the thread; a no-op if it runs already or the task was stopped."""
        with self._lock:
            if self._thread is not None or self._stopping:
                return
            self._thread = threading.Thread(
                target=self._run, args=(first_delay,), name=self.name, daemon=True
            )
            self._thread.start()

    def wake(self) -> None:
        """Run ``fn`` now instead of at the end of the current wait."""
        self._wake.set()

    def stop(self, timeout: float = 1.0) -> None:
        """Stop the thread and wait up to ``timeout`` seconds for a run in progress to end."""
        with self._lock:
            self._stopping = True
            thread = self._thread
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _next_wait(self) -> float:
        interval = self._interval
        return max(0.0, interval() if callable(interval) else interval)

    def _run(self, first_delay: float | None) -> None:
        wait = self._next_wait() if first_delay is None else first_delay
        while True:
            self._wake.wait(wait)
            self._wake.clear()
            if self._stopping:
                return
            try:
                self._fn()
            except Exception:  # keep the task alive whatever fn does
                self._log.exception("%s failed", self._what)
            wait = self._next_wait()
