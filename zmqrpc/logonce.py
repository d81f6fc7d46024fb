"""Log-once: a warning said once per owner (a client, a server), however often its condition recurs.

A misconfiguration seen on every message (no proxy registered yet, a ``use_pub_sub`` mismatch) must show in
the log, but once, not once per message. Each :class:`RpcClient` and :class:`RpcServer` owns one.
"""

from __future__ import annotations

import logging
import threading

__all__ = ["WarnOnce"]


class WarnOnce:
    """``warn(message, *args)`` logs a warning the first time this ``(message, args)`` is seen."""

    def __init__(self, logger: logging.Logger) -> None:
        self._log = logger
        self._said: set[tuple[str, tuple[object, ...]]] = set()
        self._lock = threading.Lock()

    def __call__(self, message: str, *args: object) -> None:
        key = (message, args)
        with self._lock:
            if key in self._said:
                return
            self._said.add(key)
        self._log.warning(message, *args)
