"""Exceptions a zmqrpc user can catch. Each message names the topic, address or option involved."""

from __future__ import annotations


class ZmqRpcError(Exception):
    """Base class of zmqrpc errors."""


class CallTimeout(ZmqRpcError, TimeoutError):
    """A call got no reply within its timeout."""


class Unreachable(CallTimeout):
    """No connection to any server of the topic could be made in time; the call was not delivered."""


class NoRouteError(ZmqRpcError):
    """The matchmaker knows no server for the topic."""

    def __init__(self, topic: str) -> None:
        super().__init__(f"no server is registered for topic {topic!r}")
        self.topic = topic


class RemoteError(ZmqRpcError):
    """The remote method raised; carries the remote exception's type, message and traceback."""

    def __init__(self, exc_type: str, message: str, traceback: str = "") -> None:
        super().__init__(f"{exc_type}: {message}")
        self.exc_type = exc_type
        self.message = message
        self.traceback = traceback


class ClientClosed(ZmqRpcError):
    """The client was closed while the request was pending."""
