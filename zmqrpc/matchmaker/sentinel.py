"""The Sentinel matchmaker: Redis behind Sentinel, through redis-py's own Sentinel client."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import redis.sentinel
from redis.backoff import NoBackoff
from redis.retry import Retry

from zmqrpc.address import DEFAULT_SENTINEL_PORT, format_host_port, parse_host_port
from zmqrpc.matchmaker.base import MatchmakerError
from zmqrpc.matchmaker.redis import REDIS_ERRORS, Backend, RedisMatchMaker

__all__ = ["SentinelMatchMaker"]


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
        tls: dict[str, Any] | None = None,
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
            tls=tls,
        )

    def _make_backends(self) -> list[Backend]:
        sentinel_kwargs = {
            "socket_timeout": self._conn_kwargs["socket_timeout"],
            "socket_connect_timeout": self._conn_kwargs["socket_connect_timeout"],
            # Other sentinels are tried anyway; never sleep on a dead one.
            "retry": Retry(NoBackoff(), 0),
            **{k: v for k, v in self._sentinel_auth.items() if v is not None},
            # The Sentinels speak TLS too when Redis does (Debian's redis-sentinel: tls-port).
            **{k: v for k, v in self._conn_kwargs.items() if k.startswith("ssl")},
        }
        self._sentinel = redis.sentinel.Sentinel(
            self._hosts, sentinel_kwargs=sentinel_kwargs, **self._conn_kwargs
        )
        writer = self._sentinel.master_for(self._group)
        reader = self._sentinel.slave_for(self._group) if self._read_from_replicas else None
        via = ",".join(format_host_port(h, p) for h, p in self._hosts)
        return [Backend(f"sentinel group {self._group!r} via {via}", writer, reader)]

    def close(self) -> None:
        super().close()
        if self._sentinel is not None:
            with contextlib.suppress(*REDIS_ERRORS):
                self._sentinel.close()
