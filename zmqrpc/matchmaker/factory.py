"""The factory: the one matchmaker a process's typed ``Settings`` name."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from zmqrpc.address import DEFAULT_REDIS_PORT
from zmqrpc.matchmaker.base import MatchMaker, MatchmakerError
from zmqrpc.matchmaker.dummy import DummyMatchMaker
from zmqrpc.matchmaker.redis import RedisMatchMaker
from zmqrpc.matchmaker.ring import RingMatchMaker
from zmqrpc.matchmaker.sentinel import SentinelMatchMaker

if TYPE_CHECKING:
    from zmqrpc.config import Settings

__all__ = ["create_matchmaker"]


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
        if kind == "redis":
            hosts = hosts or [("127.0.0.1", DEFAULT_REDIS_PORT)]
            return RedisMatchMaker(hosts, password=password, username=username, socket_timeout=timeout)
        if not hosts:
            raise MatchmakerError("sentinel matchmaker: no sentinel hosts configured")
        group = settings.sentinel_group_name or ""
        return SentinelMatchMaker(hosts, group, password=password, username=username, socket_timeout=timeout)
    raise MatchmakerError(f"unknown matchmaker {kind!r} (expected redis, sentinel, dummy or ring)")
