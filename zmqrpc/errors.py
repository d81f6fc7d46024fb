"""The error tree: every exception zmqrpc raises derives from :class:`ZmqRpcError`.

Where a builtin fits, it is a mixin (``ConfigError`` is also a ``ValueError``, ``CallTimeout`` a
``TimeoutError``), so code written against the builtin keeps working. Each message names the topic, address or
option involved. The modules that raise an error re-export it (``zmqrpc.config.ConfigError``, ...).
"""

from __future__ import annotations

__all__ = [
    "BindError",
    "CallTimeout",
    "ClientClosed",
    "ConfigError",
    "MatchmakerError",
    "NoRouteError",
    "NoSuchMethod",
    "NotAuthorized",
    "PortRangeExhausted",
    "ProtocolError",
    "ProxyError",
    "RemoteError",
    "ReplyEvicted",
    "Unreachable",
    "ZmqRpcError",
]


class ZmqRpcError(Exception):
    """Base class of zmqrpc errors."""


class ConfigError(ZmqRpcError, ValueError):
    """A configuration value, config file or transport URL is invalid; the message names the culprit."""


class MatchmakerError(ZmqRpcError):
    """The matchmaker could not answer; the message names the backend, address and/or topic."""


class ProtocolError(ZmqRpcError, ValueError):
    """A received message broke the envelope rules; ``reason`` is a short, stable label for counting."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class BindError(ZmqRpcError, RuntimeError):
    """A socket could not bind; the message names the address and the option that set it."""


class PortRangeExhausted(BindError):
    """No free port in rpc_zmq_min_port..rpc_zmq_max_port after rpc_zmq_bind_port_retries attempts."""


class ProxyError(ZmqRpcError):
    """A proxy could not start; the message names the socket, port and option involved."""


class NoSuchMethod(ZmqRpcError, AttributeError):
    """No endpoint has the requested method."""


class NotAuthorized(ZmqRpcError, PermissionError):
    """The caller's key name may not send this message type to this topic (zmq_curve_authorization)."""


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


class ReplyEvicted(ZmqRpcError):
    """A resent call had run, but its reply had left the server's reply cache (rpc_reply_cache_bytes)."""


class ClientClosed(ZmqRpcError):
    """The client was closed while the request was pending."""
