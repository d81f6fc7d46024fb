"""The Redis matchmaker: one or more independent Redis servers, one sorted set per topic."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from zmqrpc import metrics
from zmqrpc.address import DEFAULT_REDIS_PORT, format_host_port, parse_host_port
from zmqrpc.matchmaker.base import MatchMaker, MatchmakerError, check_target

__all__ = ["REDIS_ERRORS", "Backend", "RedisMatchMaker"]

LOG = logging.getLogger(__name__)

# Everything redis-py raises for an unreachable, slow, misconfigured or unauthorised server.
# OSError covers the rare socket error that escapes redis-py's own wrapping.
REDIS_ERRORS = (redis.exceptions.RedisError, OSError)

_T = TypeVar("_T")


# Register atomically in one round trip: add the member with its absolute expiry as score, index the
# topic, and set the key's own TTL to the largest member expiry so that a topic whose servers all died
# disappears from Redis. Doing the max in Lua avoids the race where two servers registering at the
# same time leave the key with the smaller TTL. A +inf member (expire <= 0) makes the key persistent.
_REGISTER_LUA = """
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[3])
local top = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if top[2] == 'inf' then
  redis.call('PERSIST', KEYS[1])
else
  redis.call('EXPIREAT', KEYS[1], math.floor(tonumber(top[2])) + 1)
end
return 1
"""

# Purge one topic: return and remove its expired members, and drop the topic from the index once its
# sorted set is gone (atomic, so a concurrent register cannot lose its index entry).
_PURGE_LUA = """
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if #gone > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[2], ARGV[2])
end
return gone
"""


def describe_redis_error(exc: BaseException) -> str:
    """A redis-py error as one short line: its type and message, without the object dumps some errors carry
    (MasterNotFoundError appends each Sentinel's whole client, ``<redis.client.Redis(<...>)>``: 1.5 KB)."""
    text = str(exc)
    kept: list[str] = []
    start = 0
    while (found := text.find("<redis.", start)) >= 0:
        kept.append(text[start:found])
        depth, end = 0, found
        for end in range(found, len(text)):  # the dump's own "<...>" nest: skip to its closing ">"
            depth += {"<": 1, ">": -1}.get(text[end], 0)
            if depth == 0:
                break
        start = end + 1
    kept.append(text[start:])
    return f"{type(exc).__name__}: {' '.join(''.join(kept).split())}"


class Backend:
    """One Redis endpoint: writes go to ``writer``; reads prefer ``reader`` and fall back to it."""

    def __init__(self, label: str, writer: redis.Redis, reader: redis.Redis | None = None) -> None:
        self.label = label
        self.writer = writer
        self.reader = reader
        self.register_script = writer.register_script(_REGISTER_LUA)
        self.purge_script = writer.register_script(_PURGE_LUA)
        self.healthy = True  # for logging state changes only, never to skip a backend

    def read(self, fn: Callable[[redis.Redis], _T]) -> _T:
        if self.reader is not None:
            try:
                return fn(self.reader)
            except REDIS_ERRORS as exc:
                LOG.debug("matchmaker %s: replica read failed (%s), reading from the master", self.label, exc)
        return fn(self.writer)

    def close(self) -> None:
        for client in (self.writer, self.reader):
            if client is not None:
                with contextlib.suppress(*REDIS_ERRORS):
                    client.close()


class RedisMatchMaker(MatchMaker):
    """Matchmaker on one or more *independent* Redis servers (not a Redis Cluster).

    Layout: one sorted set per topic, ``{prefix}:topic:{topic}``, member = address, score = absolute
    expiry (unix seconds, ``+inf`` for never), so expiry is per member. The key itself expires with its
    last member. ``{prefix}:topics`` indexes topic names for :meth:`topics`.

    With several hosts, writes go to every reachable host (success if at least one took it) and reads
    return the union over reachable hosts. Expiry compares scores with the local clock, so hosts are
    expected to run NTP, as OpenStack deployments do.
    """

    backend_name = "redis"

    def __init__(
        self,
        hosts: Sequence[tuple[str, int] | str],
        password: str | None = None,
        username: str | None = None,
        socket_timeout: float = 10.0,
        key_prefix: str = "zmqrpc",
        socket_connect_timeout: float | None = None,
        tls: dict[str, Any] | None = None,
    ) -> None:
        self._hosts = [parse_host_port(h, DEFAULT_REDIS_PORT) for h in hosts]
        if not self._hosts:
            raise MatchmakerError(f"{self.backend_name} matchmaker: no hosts configured")
        self._prefix = key_prefix
        # A dead or black-holed Redis must never block a caller for long: short connect timeout, and
        # one immediate retry only (it heals connections broken by a Redis restart). redis-py's
        # default retries three times with exponential backoff of up to 10 s.
        if socket_connect_timeout is None:
            socket_connect_timeout = min(socket_timeout, 3.0)
        self._conn_kwargs: dict[str, Any] = {
            "username": username,
            "password": password,
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": socket_connect_timeout,
            "retry": Retry(NoBackoff(), 1),
            "decode_responses": True,
            **(tls or {}),  # ssl=True and its files (matchmaker.factory.tls_options)
        }
        self._backends = self._make_backends()

    def _make_backends(self) -> list[Backend]:
        return [
            Backend(f"redis {format_host_port(h, p)}", redis.Redis(host=h, port=p, **self._conn_kwargs))
            for h, p in self._hosts
        ]

    def _key(self, topic: str) -> str:
        return f"{self._prefix}:topic:{topic}"

    @property
    def _topics_key(self) -> str:
        return f"{self._prefix}:topics"

    def _on_all(self, what: str, fn: Callable[[Backend], _T]) -> list[_T]:
        """Run ``fn`` on every backend; return the successful results or raise if none succeeded."""
        results: list[_T] = []
        errors: list[str] = []
        for backend in self._backends:
            try:
                results.append(fn(backend))
            except REDIS_ERRORS as exc:
                errors.append(f"{backend.label}: {describe_redis_error(exc)}")
                metrics.current().matchmaker_errors.inc()
                if backend.healthy:
                    backend.healthy = False
                    # Logged once per outage of that backend; the caller decides about the whole set.
                    LOG.warning(
                        "matchmaker %s unreachable during %s: %s",
                        backend.label,
                        what,
                        describe_redis_error(exc),
                    )
                continue
            if not backend.healthy:
                backend.healthy = True
                LOG.info("matchmaker %s reachable again", backend.label)
        if not results:
            raise MatchmakerError(f"{self.backend_name} matchmaker: {what} failed: {'; '.join(errors)}")
        return results

    def register(self, topic: str, address: str, expire: int) -> None:
        check_target(topic, address)
        score = "+inf" if expire <= 0 else repr(time.time() + expire)
        keys = [self._key(topic), self._topics_key]

        def op(b: Backend) -> None:
            b.register_script(keys=keys, args=[address, score, topic], client=b.writer)

        self._on_all(f"register {address} for topic {topic!r}", op)

    def unregister(self, topic: str, address: str) -> None:
        key = self._key(topic)
        self._on_all(f"unregister {address} from topic {topic!r}", lambda b: b.writer.zrem(key, address))

    def get_hosts(self, topic: str) -> list[str]:
        key = self._key(topic)
        # Exclusive lower bound: a member whose expiry equals now is expired (purge uses <= now).
        low = f"({time.time()!r}"

        def op(b: Backend) -> list[str]:
            return [str(a) for a in b.read(lambda c: c.zrangebyscore(key, low, "+inf"))]

        return sorted(set().union(*self._on_all(f"get_hosts for topic {topic!r}", op)))

    def _topic_names(self, client: redis.Redis) -> list[str]:
        return sorted(str(name) for name in client.smembers(self._topics_key))

    def _read_all_topics(self, client: redis.Redis) -> dict[str, list[tuple[str, float]]]:
        names = self._topic_names(client)
        pipe = client.pipeline(transaction=False)
        for name in names:
            pipe.zrange(self._key(name), 0, -1, withscores=True)
        results = pipe.execute()
        return {name: results[i] for i, name in enumerate(names)}

    def topics(self) -> dict[str, dict[str, float | None]]:
        results = self._on_all("list topics", lambda b: b.read(self._read_all_topics))
        now = time.time()
        merged: dict[str, dict[str, float | None]] = {}
        for per_host in results:
            for topic, members in per_host.items():
                for address, score in members:
                    if score <= now:
                        continue
                    left = None if math.isinf(score) else score - now
                    slot = merged.setdefault(topic, {})
                    if address in slot:
                        old = slot[address]
                        # Same member on several hosts: keep the longest-lived view (None = forever).
                        left = None if old is None or left is None else max(old, left)
                    slot[address] = left
        return merged

    def purge_expired(self) -> int:
        now = repr(time.time())

        def op(b: Backend) -> set[tuple[str, str]]:
            names = self._topic_names(b.writer)
            pipe = b.writer.pipeline(transaction=False)
            for name in names:
                b.purge_script(keys=[self._key(name), self._topics_key], args=[now, name], client=pipe)
            removed: set[tuple[str, str]] = set()
            for i, gone in enumerate(pipe.execute()):
                removed.update((names[i], str(address)) for address in gone)
            return removed

        # Count distinct (topic, address) pairs, not copies on each host.
        return len(set().union(*self._on_all("purge expired", op)))

    def close(self) -> None:
        for backend in self._backends:
            backend.close()
