"""The ring matchmaker: the static, Folsom-era JSON ring file, read and validated in one place.

``{"scheduler": ["sched1", "sched2:5000"]}``: each bare topic maps to its hosts, ``host`` or ``host:port``
(IPv6 in brackets); a host without a port gets ``rpc_zmq_min_port``. :func:`load_ring` is the one reader:
``load_settings`` calls it to refuse a bad file early, :class:`RingMatchMaker` to serve it.
"""

from __future__ import annotations

import json
import logging

from zmqrpc.address import format_host_port, parse_host_port
from zmqrpc.errors import ConfigError
from zmqrpc.matchmaker.base import MatchMaker, MatchmakerError

__all__ = ["RingFileError", "RingMatchMaker", "load_ring"]

LOG = logging.getLogger(__name__)

_SHAPE = (
    'the file must be a JSON object mapping each topic to a list of hosts, e.g. {"scheduler": ["sched1"]}'
)

# topic -> its entries as (host, "host:port")
Ring = dict[str, list[tuple[str, str]]]


class RingFileError(ConfigError, MatchmakerError):
    """The ring file cannot be read or is malformed: a configuration error found by the ring matchmaker."""


def load_ring(path: str, default_port: int) -> Ring:
    """Read and validate the ring file at ``path``; raise :class:`RingFileError` naming the file and entry."""
    where = f"ring file {path} (rpc_zmq_matchmaker_ringfile)"

    def fail(what: str, shape: bool = False) -> RingFileError:
        return RingFileError(f"{where}: {what}" + (f"; {_SHAPE}" if shape else ""))

    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise RingFileError(
            f"ring file {path} not found (rpc_zmq_matchmaker_ringfile): cannot read it"
        ) from None
    except OSError as exc:
        raise fail(f"cannot read: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise fail(f"not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise fail(f"must be a JSON object mapping topics to host lists, got {type(data).__name__}", True)
    ring: Ring = {}
    for topic, hosts in data.items():
        if not topic:
            raise fail("empty topic name", True)
        if not isinstance(hosts, list):
            raise fail(f"topic {topic!r}: must map to a list of hosts, got {type(hosts).__name__}", True)
        entries = []
        for entry in hosts:
            if not isinstance(entry, str) or not entry.strip():
                raise fail(f"topic {topic!r}: host entries must be non-empty strings, got {entry!r}", True)
            try:
                host, port = parse_host_port(entry, default_port)
            except ConfigError as exc:
                raise fail(f"topic {topic!r}: bad host entry {entry.strip()!r}: {exc}") from None
            entries.append((host, format_host_port(host, port)))
        ring[topic] = entries
    return ring


class RingMatchMaker(MatchMaker):
    """Static matchmaker from a ring file (see the module).

    A bare topic returns every host of that topic; a directed topic ``scheduler.sched1`` returns the
    entries of host ``sched1``. Entries without a port get ``default_port``. Registration is a no-op.
    """

    def __init__(self, ringfile: str, default_port: int) -> None:
        self._ringfile = ringfile
        self._default_port = default_port
        self._ring = load_ring(ringfile, default_port)

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
