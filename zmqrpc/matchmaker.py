"""Matchmakers: who serves a topic.

A matchmaker maps a topic (``compute`` or the directed ``compute.host1``) to the addresses
(``"host:port"``) of the servers listening on it. Backends:

* :class:`DummyMatchMaker`: in-process, shared by every instance in the process (tests, single host).
* :class:`RedisMatchMaker`: one or more independent Redis servers.
* :class:`SentinelMatchMaker`: Redis behind Sentinel, using redis-py's own Sentinel client.
* :class:`RingMatchMaker`: the static Folsom-era JSON ring file.

On top of any backend, :class:`RoutingCache` (client side) caches routes and refreshes them in the
background, so a Redis outage never stops RPC between hosts that are already known, and
:class:`Registrar` (server side) registers targets and keeps refreshing them, retrying while the
matchmaker is unreachable.
"""

from __future__ import annotations

import abc
import contextlib
import fcntl
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import redis
import redis.sentinel
from redis.backoff import NoBackoff
from redis.retry import Retry

LOG = logging.getLogger(__name__)

DEFAULT_REDIS_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379

# Everything redis-py raises for an unreachable, slow, misconfigured or unauthorised server.
# OSError covers the rare socket error that escapes redis-py's own wrapping.
_REDIS_ERRORS = (redis.exceptions.RedisError, OSError)

_T = TypeVar("_T")


class MatchmakerError(Exception):
    """The matchmaker could not answer; the message names the backend, address and/or topic."""


class MatchMaker(abc.ABC):
    """Maps topics to the ``"host:port"`` addresses of the servers that listen on them."""

    @abc.abstractmethod
    def register(self, topic: str, address: str, expire: int) -> None:
        """Announce that ``address`` serves ``topic`` for ``expire`` seconds (``<= 0``: forever)."""

    @abc.abstractmethod
    def unregister(self, topic: str, address: str) -> None:
        """Withdraw ``address`` from ``topic``."""

    @abc.abstractmethod
    def get_hosts(self, topic: str) -> list[str]:
        """Live (non-expired) addresses serving ``topic``: sorted, without duplicates."""

    @abc.abstractmethod
    def topics(self) -> dict[str, dict[str, float | None]]:
        """Every topic with live members -> {address: seconds left, or None if it never expires}."""

    @abc.abstractmethod
    def purge_expired(self) -> int:
        """Remove expired members; return how many (topic, address) pairs were removed."""

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release connections. The matchmaker must not be used afterwards."""

    def __enter__(self) -> MatchMaker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_target(topic: str, address: str) -> None:
    if not topic or not isinstance(topic, str):
        raise ValueError(f"matchmaker: topic must be a non-empty string, got {topic!r}")
    if not address or not isinstance(address, str):
        raise ValueError(f"matchmaker: address must be a non-empty 'host:port' string, got {address!r}")


# --------------------------------------------------------------------------------------------------
# Dummy (in-process)
# --------------------------------------------------------------------------------------------------


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
        _check_target(topic, address)
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


# --------------------------------------------------------------------------------------------------
# Redis and Sentinel
# --------------------------------------------------------------------------------------------------

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


def parse_host_port(value: str | tuple[str, int] | Sequence[Any], default_port: int) -> tuple[str, int]:
    """``("h", 1)``, ``"h:1"``, ``"[::1]:1"`` or ``"h"`` -> ``(host, port)``."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):  # [ipv6] or [ipv6]:port
            host, _, rest = text[1:].partition("]")
            port_text = rest[1:] if rest.startswith(":") else ""
        elif text.count(":") == 1:
            host, port_text = text.split(":")
        else:
            host, port_text = text, ""
        if not host:
            raise MatchmakerError(f"matchmaker: bad address {value!r}: empty host")
        try:
            port = int(port_text) if port_text else default_port
        except ValueError:
            raise MatchmakerError(f"matchmaker: bad address {value!r}: port is not a number") from None
    else:
        host, port = value[0], int(value[1])
    if not 0 < port < 65536:
        raise MatchmakerError(f"matchmaker: bad address {value!r}: port out of range")
    return str(host), port


def _format_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Backend:
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
            except _REDIS_ERRORS as exc:
                LOG.debug("matchmaker %s: replica read failed (%s), reading from the master", self.label, exc)
        return fn(self.writer)

    def close(self) -> None:
        for client in (self.writer, self.reader):
            if client is not None:
                with contextlib.suppress(*_REDIS_ERRORS):
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
        }
        self._backends = self._make_backends()

    def _make_backends(self) -> list[_Backend]:
        return [
            _Backend(f"redis {_format_host_port(h, p)}", redis.Redis(host=h, port=p, **self._conn_kwargs))
            for h, p in self._hosts
        ]

    def _key(self, topic: str) -> str:
        return f"{self._prefix}:topic:{topic}"

    @property
    def _topics_key(self) -> str:
        return f"{self._prefix}:topics"

    def _on_all(self, what: str, fn: Callable[[_Backend], _T]) -> list[_T]:
        """Run ``fn`` on every backend; return the successful results or raise if none succeeded."""
        results: list[_T] = []
        errors: list[str] = []
        for backend in self._backends:
            try:
                results.append(fn(backend))
            except _REDIS_ERRORS as exc:
                errors.append(f"{backend.label}: {type(exc).__name__}: {exc}")
                if backend.healthy:
                    backend.healthy = False
                    # Logged once per outage of that backend; the caller decides about the whole set.
                    LOG.warning("matchmaker %s unreachable during %s: %s", backend.label, what, exc)
                continue
            if not backend.healthy:
                backend.healthy = True
                LOG.info("matchmaker %s reachable again", backend.label)
        if not results:
            raise MatchmakerError(f"{self.backend_name} matchmaker: {what} failed: {'; '.join(errors)}")
        return results

    def register(self, topic: str, address: str, expire: int) -> None:
        _check_target(topic, address)
        score = "+inf" if expire <= 0 else repr(time.time() + expire)
        keys = [self._key(topic), self._topics_key]

        def op(b: _Backend) -> None:
            b.register_script(keys=keys, args=[address, score, topic], client=b.writer)

        self._on_all(f"register {address} for topic {topic!r}", op)

    def unregister(self, topic: str, address: str) -> None:
        key = self._key(topic)
        self._on_all(f"unregister {address} from topic {topic!r}", lambda b: b.writer.zrem(key, address))

    def get_hosts(self, topic: str) -> list[str]:
        key = self._key(topic)
        # Exclusive lower bound: a member whose expiry equals now is expired (purge uses <= now).
        low = f"({time.time()!r}"

        def op(b: _Backend) -> list[str]:
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

        def op(b: _Backend) -> set[tuple[str, str]]:
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


class SentinelMatchMaker(RedisMatchMaker):
    """Redis behind Sentinel. Discovery and failover are redis-py's ``redis.sentinel.Sentinel``: writes
    go through ``master_for()``, reads through ``slave_for()`` and fall back to the master on error.
    Replica reads may lag the master by the replication delay; the routing cache tolerates that."""

    backend_name = "sentinel"

    def __init__(
        self,
        sentinels: Sequence[tuple[str, int] | str],
        group_name: str,
        password: str | None = None,
        username: str | None = None,
        socket_timeout: float = 10.0,
        key_prefix: str = "zmqrpc",
        socket_connect_timeout: float | None = None,
        sentinel_password: str | None = None,
        sentinel_username: str | None = None,
        read_from_replicas: bool = True,
    ) -> None:
        if not group_name:
            raise MatchmakerError("sentinel matchmaker: no sentinel group name configured")
        self._group = group_name
        self._sentinel_auth = {"password": sentinel_password, "username": sentinel_username}
        self._read_from_replicas = read_from_replicas
        self._sentinel: redis.sentinel.Sentinel | None = None
        super().__init__(
            [parse_host_port(s, DEFAULT_SENTINEL_PORT) for s in sentinels],
            password=password,
            username=username,
            socket_timeout=socket_timeout,
            key_prefix=key_prefix,
            socket_connect_timeout=socket_connect_timeout,
        )

    def _make_backends(self) -> list[_Backend]:
        sentinel_kwargs = {
            "socket_timeout": self._conn_kwargs["socket_timeout"],
            "socket_connect_timeout": self._conn_kwargs["socket_connect_timeout"],
            # Other sentinels are tried anyway; never sleep on a dead one.
            "retry": Retry(NoBackoff(), 0),
            **{k: v for k, v in self._sentinel_auth.items() if v is not None},
        }
        self._sentinel = redis.sentinel.Sentinel(
            self._hosts, sentinel_kwargs=sentinel_kwargs, **self._conn_kwargs
        )
        writer = self._sentinel.master_for(self._group)
        reader = self._sentinel.slave_for(self._group) if self._read_from_replicas else None
        via = ",".join(_format_host_port(h, p) for h, p in self._hosts)
        return [_Backend(f"sentinel group {self._group!r} via {via}", writer, reader)]

    def close(self) -> None:
        super().close()
        if self._sentinel is not None:
            with contextlib.suppress(*_REDIS_ERRORS):
                self._sentinel.close()


# --------------------------------------------------------------------------------------------------
# Ring file (static)
# --------------------------------------------------------------------------------------------------


class RingMatchMaker(MatchMaker):
    """Static matchmaker from a Folsom-era JSON ring file: ``{"scheduler": ["sched1", "sched2:5000"]}``.

    A bare topic returns every host of that topic; a directed topic ``scheduler.sched1`` returns the
    entries of host ``sched1``. Entries without a port get ``default_port``. Registration is a no-op.
    """

    def __init__(self, ringfile: str, default_port: int) -> None:
        self._ringfile = ringfile
        self._default_port = default_port
        # topic -> list of (host, "host:port")
        self._ring = self._load()

    def _fail(self, what: str) -> MatchmakerError:
        return MatchmakerError(f"ring matchmaker: ring file {self._ringfile}: {what}")

    def _load(self) -> dict[str, list[tuple[str, str]]]:
        try:
            with open(self._ringfile, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise self._fail(f"cannot read: {exc.strerror or exc}") from exc
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise self._fail(f"invalid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise self._fail(f"must be a JSON object mapping topics to host lists, got {type(data).__name__}")
        ring: dict[str, list[tuple[str, str]]] = {}
        for topic, hosts in data.items():
            if not topic:
                raise self._fail("empty topic name")
            if not isinstance(hosts, list):
                raise self._fail(f"topic {topic!r}: must map to a list of hosts, got {type(hosts).__name__}")
            entries = []
            for entry in hosts:
                if not isinstance(entry, str) or not entry.strip():
                    raise self._fail(
                        f"topic {topic!r}: host entries must be non-empty strings, got {entry!r}"
                    )
                entries.append(self._parse_entry(topic, entry.strip()))
            ring[topic] = entries
        return ring

    def _parse_entry(self, topic: str, entry: str) -> tuple[str, str]:
        if not entry.startswith("[") and entry.count(":") > 1:
            raise self._fail(f"topic {topic!r}: IPv6 host {entry!r} must be written [addr] or [addr]:port")
        try:
            host, port = parse_host_port(entry, self._default_port)
        except MatchmakerError:
            raise self._fail(f"topic {topic!r}: bad host entry {entry!r}: port must be 1-65535") from None
        return host, _format_host_port(host, port)

    def get_hosts(self, topic: str) -> list[str]:
        entries = self._ring.get(topic)
        if entries is not None:
            return sorted({addr for _, addr in entries})
        # Directed topic: "<bare topic>.<host>", and host names may contain dots, so split at the first
        # dot. Only if that prefix is not in the ring, try later dots (ring topics containing dots).
        pos = topic.find(".")
        while pos > 0:
            bare, host = topic[:pos], topic[pos + 1 :]
            if bare in self._ring:
                return sorted({addr for h, addr in self._ring[bare] if h == host})
            pos = topic.find(".", pos + 1)
        return []

    def register(self, topic: str, address: str, expire: int) -> None:
        LOG.debug("ring matchmaker: ignoring register of %s for %r (static ring file)", address, topic)

    def unregister(self, topic: str, address: str) -> None:
        LOG.debug("ring matchmaker: ignoring unregister of %s for %r (static ring file)", address, topic)

    def topics(self) -> dict[str, dict[str, float | None]]:
        return {topic: dict.fromkeys(self.get_hosts(topic)) for topic in self._ring}

    def purge_expired(self) -> int:
        return 0


# --------------------------------------------------------------------------------------------------
# Factory
# --------------------------------------------------------------------------------------------------


def _host_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str):
        return [part for part in (p.strip() for p in value.split(",")) if part]
    return list(value)


def create_matchmaker(settings: Any) -> MatchMaker:
    """Build the matchmaker that ``settings.matchmaker`` names ("redis", "sentinel", "dummy", "ring")."""
    kind = str(getattr(settings, "matchmaker", "") or "").lower()
    if kind == "dummy":
        state_dir = str(getattr(getattr(settings, "zmq", None), "rpc_zmq_ipc_dir", None) or "")
        shared = bool(state_dir) and os.path.isdir(state_dir) and os.access(state_dir, os.W_OK)
        return DummyMatchMaker(state_dir if shared else None)
    if kind == "ring":
        return RingMatchMaker(settings.ringfile, settings.zmq.rpc_zmq_min_port)
    if kind in ("redis", "sentinel"):
        common: dict[str, Any] = {
            "password": getattr(settings, "redis_password", None) or None,
            "username": getattr(settings, "redis_username", None) or None,
        }
        timeout = getattr(settings, "redis_socket_timeout", None)
        if timeout is not None:
            common["socket_timeout"] = float(timeout)
        hosts = _host_list(getattr(settings, "redis_hosts", None))
        if kind == "redis":
            return RedisMatchMaker(hosts or [("127.0.0.1", DEFAULT_REDIS_PORT)], **common)
        if not hosts:
            raise MatchmakerError("sentinel matchmaker: no sentinel hosts configured")
        return SentinelMatchMaker(hosts, getattr(settings, "sentinel_group_name", None) or "", **common)
    raise MatchmakerError(f"unknown matchmaker {kind!r} (expected redis, sentinel, dummy or ring)")


# --------------------------------------------------------------------------------------------------
# Client-side routing cache and server-side registrar
# --------------------------------------------------------------------------------------------------


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
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

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
        self._ensure_thread()
        return list(hosts)

    def lookup_cached(self, topic: str) -> list[str]:
        """The cached addresses for ``topic`` ([] if unknown); never asks the matchmaker, so it is safe
        from an I/O loop that must not block."""
        with self._lock:
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
            if self._stop.is_set():
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
        with self._lock:
            first = not self._outage
            self._outage = True
        if first:
            LOG.warning("matchmaker unreachable, serving cached routes until it returns: %s", exc)

    def _note_ok(self) -> None:
        with self._lock:
            was_down, self._outage = self._outage, False
        if was_down:
            LOG.info("matchmaker reachable again, routes refreshed")

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is not None or self._stop.is_set():
                return
            self._thread = threading.Thread(target=self._run, name="zmqrpc-routing-cache", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.refresh()
            except Exception:  # keep the refresher alive whatever a backend does
                LOG.exception("routing cache refresh failed")

    def close(self) -> None:
        """Stop the refresher thread (joins within about a second)."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=1.0)


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
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def pending(self) -> set[tuple[str, str]]:
        """(topic, address) pairs not yet registered because the matchmaker was unreachable."""
        with self._lock:
            return set(self._pending)

    def add(self, topic: str, address: str) -> None:
        """Register ``address`` for ``topic`` now and keep it registered. Never raises on outage."""
        _check_target(topic, address)
        with self._lock:
            self._targets.add((topic, address))
        self._register([(topic, address)])
        self._ensure_thread()

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
        if was_down:
            LOG.info("matchmaker reachable again, registrations restored")

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is not None or self._stop.is_set():
                return
            self._thread = threading.Thread(target=self._run, name="zmqrpc-registrar", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        next_full = time.monotonic() + self._interval
        while True:
            with self._lock:
                wait = self._retry_interval if self._pending else self._interval
            if self._stop.wait(max(0.0, min(wait, next_full - time.monotonic()))):
                return
            try:
                if time.monotonic() >= next_full:
                    next_full = time.monotonic() + self._interval
                    with self._lock:
                        targets = sorted(self._targets)
                else:
                    with self._lock:
                        targets = sorted(self._pending)
                self._register(targets)
            except Exception:  # keep the registrar alive whatever a backend does
                LOG.exception("registrar refresh failed")

    def close(self, timeout: float = 2.0) -> None:
        """Stop the thread and unregister everything (best effort, at most about ``timeout`` s)."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=1.0)
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
