"""Matchmakers: who serves a topic. One module per backend, plus what clients and servers build on them.

A matchmaker maps a topic (``compute`` or the directed ``compute.host1``) to the addresses
(``"host:port"``) of the servers listening on it (:mod:`~zmqrpc.matchmaker.base`). Backends:

* :class:`DummyMatchMaker` (:mod:`~zmqrpc.matchmaker.dummy`): in-process, shared by every instance in the
  process (tests, single host).
* :class:`RedisMatchMaker` (:mod:`~zmqrpc.matchmaker.redis`): one or more independent Redis servers.
* :class:`SentinelMatchMaker` (:mod:`~zmqrpc.matchmaker.sentinel`): Redis behind Sentinel, using redis-py's
  own Sentinel client.
* :class:`RingMatchMaker` (:mod:`~zmqrpc.matchmaker.ring`): the static Folsom-era JSON ring file.

On top of any backend, :class:`RoutingCache` (client side, :mod:`~zmqrpc.matchmaker.cache`) caches routes
and refreshes them in the background, so a Redis outage never stops RPC between hosts that are already
known, and :class:`Registrar` (server side, :mod:`~zmqrpc.matchmaker.registrar`) registers targets and keeps
refreshing them, retrying while the matchmaker is unreachable. :func:`create_matchmaker`
(:mod:`~zmqrpc.matchmaker.factory`) builds the backend that a process's settings name.
"""

from zmqrpc.matchmaker.base import MatchMaker, MatchmakerError
from zmqrpc.matchmaker.cache import RoutingCache
from zmqrpc.matchmaker.dummy import DummyMatchMaker
from zmqrpc.matchmaker.factory import create_matchmaker
from zmqrpc.matchmaker.redis import RedisMatchMaker
from zmqrpc.matchmaker.registrar import Registrar
from zmqrpc.matchmaker.ring import RingFileError, RingMatchMaker, load_ring
from zmqrpc.matchmaker.sentinel import SentinelMatchMaker

__all__ = [
    "DummyMatchMaker",
    "MatchMaker",
    "MatchmakerError",
    "RedisMatchMaker",
    "Registrar",
    "RingFileError",
    "RingMatchMaker",
    "RoutingCache",
    "SentinelMatchMaker",
    "create_matchmaker",
    "load_ring",
]
