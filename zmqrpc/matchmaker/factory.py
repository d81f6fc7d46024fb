"""The factory: the one matchmaker a process's typed ``Settings`` name."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from zmqrpc.address import DEFAULT_REDIS_PORT
from zmqrpc.matchmaker.base import MatchMaker, MatchmakerError
from zmqrpc.matchmaker.dummy import DummyMatchMaker
from zmqrpc.matchmaker.redis import RedisMatchMaker
from zmqrpc.matchmaker.ring import RingMatchMaker
from zmqrpc.matchmaker.sentinel import SentinelMatchMaker

if TYPE_CHECKING:
    from zmqrpc.config import Settings

__all__ = ["create_matchmaker"]


def tls_options(settings: Settings) -> dict[str, Any]:
    """redis-py's TLS arguments from ``[matchmaker_redis]`` (empty: no TLS). The server certificate is
    checked against ssl_ca_file (else the system's CAs), host name included."""
    if not settings.redis_tls:
        return {}
    opts = settings.matchmaker_redis
    tls: dict[str, Any] = {"ssl": True, "ssl_cert_reqs": "required"}
    for option, arg in (
        ("ssl_ca_file", "ssl_ca_certs"),
        ("ssl_cert_file", "ssl_certfile"),
        ("ssl_key_file", "ssl_keyfile"),
    ):
        if opts[option]:
            tls[arg] = opts[option]
    return tls


def create_matchmaker(settings: Settings) -> MatchMaker:
    """Build the matchmaker that ``settings.matchmaker`` names ("redis", "sentinel", "dummy", "ring")."""
    kind = settings.matchmaker
    if kind == "dummy":
        state_dir = str(settings.zmq.rpc_zmq_ipc_dir or "")
        shared = bool(state_dir) and os.path.isdir(state_dir) and os.access(state_dir, os.W_OK)
        return DummyMatchMaker(state_dir if shared else None)
    if kind == "ring":
        if settings.ringfile is None:
            raise MatchmakerError("ring matchmaker: no ring file configured (rpc_zmq_matchmaker_ringfile)")
        return RingMatchMaker(settings.ringfile, settings.zmq.rpc_zmq_min_port)
    if kind in ("redis", "sentinel"):
        password = settings.redis_password or None
        username = settings.redis_username or None
        timeout = settings.redis_socket_timeout
        hosts = list(settings.redis_hosts)
        tls = tls_options(settings)
        if kind == "redis":
            hosts = hosts or [("127.0.0.1", DEFAULT_REDIS_PORT)]
            return RedisMatchMaker(
                hosts, password=password, username=username, socket_timeout=timeout, tls=tls
            )
        if not hosts:
            raise MatchmakerError("sentinel matchmaker: no sentinel hosts configured")
        group = settings.sentinel_group_name or ""
        redis_opts = settings.matchmaker_redis
        return SentinelMatchMaker(
            hosts,
            group,
            password=password,
            username=username,
            socket_timeout=timeout,
            tls=tls,
            sentinel_password=redis_opts.sentinel_password or None,
            sentinel_username=redis_opts.sentinel_username or None,
        )
    raise MatchmakerError(f"unknown matchmaker {kind!r} (expected redis, sentinel, dummy or ring)")
