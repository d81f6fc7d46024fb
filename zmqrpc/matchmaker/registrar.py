"""The registrar: a server's registrations, made now and kept fresh until it stops, through outages."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

from zmqrpc import metrics
from zmqrpc.matchmaker.base import MatchMaker, MatchmakerError, check_target
from zmqrpc.periodic import PeriodicTask

__all__ = ["Registrar"]

LOG = logging.getLogger(__name__)


class Registrar:
    """Server-side registration: registers targets now and re-registers them every
    ``update_interval`` seconds from one daemon thread, so they never expire while the server lives.
    A matchmaker outage is logged once and never raised; registrations that could not be made are
    retried every ``retry_interval`` (at most ``update_interval``) until the matchmaker returns."""

    def __init__(
        self, matchmaker: MatchMaker, expire: int, update_interval: float, retry_interval: float = 1.0
    ) -> None:
        self._mm = matchmaker
        self._expire = expire
        self._interval = update_interval
        self._retry_interval = min(retry_interval, update_interval)
        if 0 < expire <= update_interval:
            LOG.warning(
                "zmq_target_update (%ss) >= zmq_target_expire (%ss): registrations will lapse between "
                "refreshes; use about expire/2",
                update_interval,
                expire,
            )
        self._lock = threading.Lock()
        self._targets: set[tuple[str, str]] = set()
        self._pending: set[tuple[str, str]] = set()
        self._outage = False
        self._next_full: float | None = None  # when the next round re-registers every target
        self._refresher = PeriodicTask(
            "zmqrpc-registrar", self._refresh, self._next_wait, what="registrar refresh", logger=LOG
        )

    @property
    def pending(self) -> set[tuple[str, str]]:
        """(topic, address) pairs not yet registered because the matchmaker was unreachable."""
        with self._lock:
            return set(self._pending)

    def add(self, topic: str, address: str) -> None:
        """Register ``address`` for ``topic`` now and keep it registered. Never raises on outage."""
        check_target(topic, address)
        with self._lock:
            self._targets.add((topic, address))
        self._register([(topic, address)])
        self._refresher.start()

    def remove(self, topic: str, address: str) -> None:
        """Stop refreshing and unregister now (best effort)."""
        with self._lock:
            self._targets.discard((topic, address))
            self._pending.discard((topic, address))
        try:
            self._mm.unregister(topic, address)
        except MatchmakerError as exc:
            LOG.warning("could not unregister %s from %r (it will expire): %s", address, topic, exc)

    def _register(self, targets: Iterable[tuple[str, str]]) -> None:
        targets = list(targets)
        for i, (topic, address) in enumerate(targets):
            with self._lock:
                if (topic, address) not in self._targets:
                    continue  # removed meanwhile
            try:
                self._mm.register(topic, address, self._expire)
            except MatchmakerError as exc:
                with self._lock:
                    # Everything not done yet in this round is pending; a down backend fails them all.
                    self._pending.update(t for t in targets[i:] if t in self._targets)
                    first = not self._outage
                    self._outage = True
                if first:
                    LOG.warning("matchmaker unreachable, registrations pending until it returns: %s", exc)
                return
            with self._lock:
                self._pending.discard((topic, address))
        with self._lock:
            was_down = self._outage and not self._pending
            if was_down:
                self._outage = False
            all_written = not self._pending
        if all_written:
            measured = metrics.current()
            measured.registrations_refreshed.set(time.time())
            measured.registration_expire.set(max(0, self._expire))
        if was_down:
            LOG.info("matchmaker reachable again, registrations restored")

    def _next_wait(self) -> float:
        """Until the next full round, or the next retry of pending registrations if that comes first."""
        now = time.monotonic()
        with self._lock:
            if self._next_full is None:
                self._next_full = now + self._interval
            wait = self._retry_interval if self._pending else self._interval
            return min(wait, self._next_full - now)

    def _refresh(self) -> None:
        """One round: every target when a full round is due, else only the pending ones."""
        now = time.monotonic()
        with self._lock:
            if self._next_full is not None and now >= self._next_full:
                self._next_full = now + self._interval
                targets = sorted(self._targets)
            else:
                targets = sorted(self._pending)
        self._register(targets)

    def close(self, timeout: float = 2.0) -> None:
        """Stop the thread and unregister everything (best effort, at most about ``timeout`` s)."""
        self._refresher.stop(timeout=1.0)
        deadline = time.monotonic() + timeout
        with self._lock:
            targets = sorted(self._targets)
            self._targets.clear()
            self._pending.clear()
        for done, (topic, address) in enumerate(targets):
            if time.monotonic() > deadline:
                LOG.warning("registrar close: out of time, %d targets left to expire", len(targets) - done)
                return
            try:
                self._mm.unregister(topic, address)
            except MatchmakerError as exc:
                # The matchmaker is down: do not wait on it for every target, they will expire.
                LOG.warning("registrar close: cannot unregister (targets will expire): %s", exc)
                return
