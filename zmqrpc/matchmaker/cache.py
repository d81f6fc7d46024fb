"""The routing cache: a client's view of the matchmaker, refreshed in the background, kept through outages."""

from __future__ import annotations

import logging
import threading
import time

from zmqrpc import metrics
from zmqrpc.matchmaker.base import MatchMaker, MatchmakerError
from zmqrpc.periodic import PeriodicTask

__all__ = ["RoutingCache"]

LOG = logging.getLogger(__name__)


class RoutingCache:
    """Client-side route cache. The first lookup of a topic asks the matchmaker; afterwards one daemon
    thread refreshes every known topic each ``refresh_interval`` seconds, so a lookup is never a
    matchmaker round trip. While the matchmaker is down, the last known routes keep being served
    (the old driver made a Redis outage fatal, bug 1610958).

    An address the client found dead (:meth:`forget_address`) is held down for ``hold_down`` seconds: a
    dead server stays registered until its entry expires (``zmq_target_expire``), and without the hold
    every refresh would bring it back and stall the next message sent to it for ``zmq_connect_timeout``.
    A held address is still used when a topic has no other one."""

    def __init__(
        self,
        matchmaker: MatchMaker,
        refresh_interval: float = 10.0,
        idle_timeout: float = 600.0,
        hold_down: float = 60.0,
    ) -> None:
        self._mm = matchmaker
        self._interval = refresh_interval
        self._hold_down = hold_down
        self._held: dict[str, float] = {}  # address -> monotonic time its hold ends
        # Topics nobody looked up for this long stop being refreshed (bounded matchmaker load for
        # clients that address many directed topics once).
        self._idle_timeout = max(idle_timeout, refresh_interval)
        self._lock = threading.Lock()
        self._routes: dict[str, list[str]] = {}
        self._stale: set[str] = set()  # invalidated: re-fetch synchronously, keep old routes as fallback
        self._last_used: dict[str, float] = {}
        self._outage = False
        self._refresher = PeriodicTask(
            "zmqrpc-routing-cache", self.refresh, refresh_interval, what="routing cache refresh", logger=LOG
        )

    def lookup(self, topic: str) -> list[str]:
        """Addresses serving ``topic`` (possibly empty). Raises :class:`MatchmakerError` only when the
        matchmaker fails and nothing is known about the topic yet."""
        with self._lock:
            self._last_used[topic] = time.monotonic()
            if topic in self._routes and topic not in self._stale:
                return list(self._routes[topic])
        try:
            hosts = self._mm.get_hosts(topic)
        except MatchmakerError as exc:
            with self._lock:
                known = self._routes.get(topic)
                if known is None:
                    self._last_used.pop(topic, None)
                    raise
                # Serve the old routes until the background refresh succeeds, rather than paying a
                # failing round trip on every lookup during the outage.
                self._stale.discard(topic)
            self._note_outage(exc)
            return list(known)
        self._note_ok()
        with self._lock:
            hosts = self._routes[topic] = self._without_held(hosts)
            self._stale.discard(topic)
        self._refresher.start()
        return list(hosts)

    def lookup_cached(self, topic: str) -> list[str]:
        """The cached addresses for ``topic`` ([] if unknown); never asks the matchmaker, so it is safe
        from an I/O loop that must not block. It is a use: a topic read only this way (a server's proxies)
        stays refreshed instead of being dropped as idle after ``idle_timeout``."""
        with self._lock:
            if topic in self._routes:
                self._last_used[topic] = time.monotonic()
            return list(self._routes.get(topic, ()))

    def invalidate(self, topic: str | None = None) -> None:
        """Make the next lookup of ``topic`` (or of every topic) ask the matchmaker again."""
        with self._lock:
            if topic is None:
                self._stale.update(self._routes)
            elif topic in self._routes:
                self._stale.add(topic)

    def forget_address(self, address: str) -> None:
        """Drop a dead ``address`` from every cached topic, and hold it down (see the class)."""
        with self._lock:
            self._held[address] = time.monotonic() + self._hold_down
            for topic, hosts in self._routes.items():
                if address in hosts:
                    self._routes[topic] = [h for h in hosts if h != address]

    def refresh(self) -> None:
        """Refresh every known topic now (the background thread calls this)."""
        now = time.monotonic()
        with self._lock:
            for topic in [t for t, used in self._last_used.items() if now - used > self._idle_timeout]:
                self._last_used.pop(topic, None)
                self._routes.pop(topic, None)
                self._stale.discard(topic)
            topics = list(self._routes)
        for topic in topics:
            if self._refresher.stopping:
                return
            try:
                hosts = self._mm.get_hosts(topic)
            except MatchmakerError as exc:
                # The backend is down: the other topics would fail the same way, try again next round.
                self._note_outage(exc)
                return
            with self._lock:
                if topic in self._routes:
                    self._routes[topic] = self._without_held(hosts)
                    self._stale.discard(topic)
        self._note_ok()

    def _without_held(self, hosts: list[str]) -> list[str]:
        """``hosts`` less the held-down addresses, unless none would be left (call with the lock held)."""
        if not self._held:
            return hosts
        now = time.monotonic()
        for address in [a for a, until in self._held.items() if until <= now]:
            del self._held[address]
        live = [h for h in hosts if h not in self._held]
        return live or hosts

    def _note_outage(self, exc: Exception) -> None:
        metrics.current().cache_refresh_errors.inc()
        with self._lock:
            first = not self._outage
            self._outage = True
        if first:
            LOG.warning("matchmaker unreachable, serving cached routes until it returns: %s", exc)

    def _note_ok(self) -> None:
        metrics.current().cache_refreshed.set(time.time())
        with self._lock:
            was_down, self._outage = self._outage, False
        if was_down:
            LOG.info("matchmaker reachable again, routes refreshed")

    def close(self) -> None:
        """Stop the refresher thread (joins within about a second)."""
        self._refresher.stop(timeout=1.0)
