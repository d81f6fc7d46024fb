"""The dummy matchmaker: in-process (or one JSON file per host), for all-in-one use and tests."""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import threading
import time
from collections.abc import Iterator

from zmqrpc.matchmaker.base import MatchMaker, MatchmakerError, check_target

__all__ = ["DummyMatchMaker"]


class DummyMatchMaker(MatchMaker):
    """Matchmaker for all-in-one use. All instances in a process share one store, so a client and a server
    created independently in the same process find each other. Expiry is honoured.

    With ``state_dir`` (``rpc_zmq_ipc_dir``, when that directory exists), the store is a JSON file there
    instead, shared by every process of the host under a file lock: an agent and a ``zmqrpc ping`` on an
    all-in-one node then find each other.
    """

    STATE_FILE = "zmqrpc-matchmaker.json"

    # topic -> {address: expiry time, or inf}; monotonic in-process, wall clock in the shared file
    _store: dict[str, dict[str, float]] = {}
    _lock = threading.Lock()

    def __init__(self, state_dir: str | None = None) -> None:
        self.state_file = os.path.join(state_dir, self.STATE_FILE) if state_dir else None

    @contextlib.contextmanager
    def _members(self, write: bool) -> Iterator[tuple[dict[str, dict[str, float]], float]]:
        """The store and the current time on its clock, locked for the duration."""
        if self.state_file is None:
            with self._lock:
                yield self._store, time.monotonic()
            return
        with open(self.state_file + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX if write else fcntl.LOCK_SH)
            store = self._load()
            yield store, time.time()
            if write:
                self._save(store)

    def _load(self) -> dict[str, dict[str, float]]:
        assert self.state_file is not None
        try:
            with open(self.state_file) as f:
                raw = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise MatchmakerError(f"dummy matchmaker: cannot read {self.state_file}: {exc}") from exc
        return {t: {a: math.inf if d is None else float(d) for a, d in m.items()} for t, m in raw.items()}

    def _save(self, store: dict[str, dict[str, float]]) -> None:
        assert self.state_file is not None
        data = {t: {a: None if math.isinf(d) else d for a, d in m.items()} for t, m in store.items()}
        tmp = f"{self.state_file}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(data, f)
        os.replace(tmp, self.state_file)  # readers never see a half-written file

    def register(self, topic: str, address: str, expire: int) -> None:
        check_target(topic, address)
        with self._members(write=True) as (store, now):
            store.setdefault(topic, {})[address] = math.inf if expire <= 0 else now + expire

    def unregister(self, topic: str, address: str) -> None:
        with self._members(write=True) as (store, _):
            members = store.get(topic)
            if members is not None:
                members.pop(address, None)
                if not members:
                    del store[topic]

    def get_hosts(self, topic: str) -> list[str]:
        with self._members(write=False) as (store, now):
            return sorted(addr for addr, deadline in store.get(topic, {}).items() if deadline > now)

    def topics(self) -> dict[str, dict[str, float | None]]:
        result: dict[str, dict[str, float | None]] = {}
        with self._members(write=False) as (store, now):
            for topic, members in store.items():
                live = {
                    addr: (None if math.isinf(deadline) else deadline - now)
                    for addr, deadline in members.items()
                    if deadline > now
                }
                if live:
                    result[topic] = live
        return result

    def purge_expired(self) -> int:
        removed = 0
        with self._members(write=True) as (store, now):
            for topic in list(store):
                members = store[topic]
                for addr in [a for a, deadline in members.items() if deadline <= now]:
                    del members[addr]
                    removed += 1
                if not members:
                    del store[topic]
        return removed

    @classmethod
    def clear(cls) -> None:
        """Forget every registration in this process (for tests)."""
        with cls._lock:
            cls._store.clear()
