"""The matchmaker interface: what every backend answers about who serves a topic.

A matchmaker maps a topic (``compute`` or the directed ``compute.host1``) to the addresses (``"host:port"``)
of the servers listening on it, each with an expiry.
"""

from __future__ import annotations

import abc

from zmqrpc.errors import MatchmakerError

__all__ = ["MatchMaker", "MatchmakerError", "check_target"]


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


def check_target(topic: str, address: str) -> None:
    if not topic or not isinstance(topic, str):
        raise ValueError(f"matchmaker: topic must be a non-empty string, got {topic!r}")
    if not address or not isinstance(address, str):
        raise ValueError(f"matchmaker: address must be a non-empty 'host:port' string, got {address!r}")
