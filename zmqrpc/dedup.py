"""Duplicate suppression on a server: the message ids it has seen, and the replies its calls got.

With ``rpc_use_acks`` a sender resends what was not acked, so a server may get a message twice. It must
run it once, and answer a resent call with the reply the first run got. The filter remembers each id for
``rpc_message_ttl`` seconds, and call replies up to ``rpc_reply_cache_bytes`` in all: past that the oldest
replies are dropped (counted in ``evicted``) while their ids stay, so a resend after that gets an error, never
a second run.
"""

from __future__ import annotations

import enum
import threading
from collections import OrderedDict

# Ids remembered at most, whatever their ttl: about 150 bytes each.
MAX_IDS = 100_000


class Seen(enum.Enum):
    """What the filter knows of a message id it has seen (a call's finished run is its reply frames)."""

    RUNNING = "running"  # taken, not finished (or queued behind others)
    DONE = "done"  # a cast, fanout copy or notification whose handler returned
    EVICTED = "evicted"  # a call that ran, whose reply was dropped to stay under the byte limit


class DuplicateFilter:
    """Message ids seen within ``ttl`` seconds, with their state. Workers share it, so it locks."""

    def __init__(self, ttl: float, max_reply_bytes: int, max_ids: int = MAX_IDS) -> None:
        self.ttl = ttl
        self.max_reply_bytes = max_reply_bytes
        self.max_ids = max_ids
        self._seen: OrderedDict[bytes, list] = OrderedDict()  # msg_id -> [expires, Seen | reply frames]
        self._replies: OrderedDict[bytes, int] = OrderedDict()  # ids holding a reply, oldest first -> bytes
        self.reply_bytes = 0
        self.evicted = 0  # replies dropped before their ttl, to stay under max_reply_bytes
        self.forgotten = 0  # ids dropped before their ttl, to stay under max_ids
        self._lock = threading.Lock()

    def seen(self, msg_id: bytes, now: float) -> Seen | list[bytes] | None:
        """None for a new id (recorded as running from now); else what is known of it."""
        with self._lock:
            self._expire(now)
            entry = self._seen.get(msg_id)
            if entry is not None:
                return entry[1]
            self._seen[msg_id] = [now + self.ttl, Seen.RUNNING]
            return None

    def done(self, msg_id: bytes) -> None:
        """A one-way message's handler returned."""
        with self._lock:
            entry = self._seen.get(msg_id)
            if entry is not None:
                entry[1] = Seen.DONE

    def remember_reply(self, msg_id: bytes, reply: list[bytes]) -> None:
        """Keep a call's reply for its resends, dropping the oldest replies past the byte limit."""
        size = sum(len(frame) for frame in reply)
        with self._lock:
            entry = self._seen.get(msg_id)
            if entry is None:
                return
            if size > self.max_reply_bytes:
                entry[1] = Seen.EVICTED
                self.evicted += 1
                return
            entry[1] = reply
            self._replies[msg_id] = size
            self.reply_bytes += size
            while self.reply_bytes > self.max_reply_bytes:
                oldest, oldest_size = self._replies.popitem(last=False)
                self.reply_bytes -= oldest_size
                self._seen[oldest][1] = Seen.EVICTED
                self.evicted += 1

    def _expire(self, now: float) -> None:
        seen = self._seen
        while seen:
            msg_id, (expires, _) = next(iter(seen.items()))
            if expires > now and len(seen) <= self.max_ids:
                break
            if expires > now:
                self.forgotten += 1
            del seen[msg_id]
            size = self._replies.pop(msg_id, None)
            if size is not None:
                self.reply_bytes -= size

    def __len__(self) -> int:
        return len(self._seen)
