"""zmqrpc: a brokerless RPC message bus on ZeroMQ.

The names a user needs are here: ``from zmqrpc import RpcClient, RpcServer, load_settings``. They are
imported on first use, so ``import zmqrpc`` (and the command line's start) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "CallTimeout",
    "ClientClosed",
    "ConfigError",
    "MatchmakerError",
    "NoRouteError",
    "RemoteError",
    "Request",
    "RpcClient",
    "RpcServer",
    "Settings",
    "Unreachable",
    "ZmqRpcError",
    "__version__",
    "load_settings",
]

# name -> the module that defines it
_EXPORTS = {
    "RpcClient": "zmqrpc.client",
    "RpcServer": "zmqrpc.server",
    "Request": "zmqrpc.server",
    "Settings": "zmqrpc.config",
    "load_settings": "zmqrpc.config",
    **{
        name: "zmqrpc.errors"
        for name in (
            "CallTimeout",
            "ClientClosed",
            "ConfigError",
            "MatchmakerError",
            "NoRouteError",
            "RemoteError",
            "Unreachable",
            "ZmqRpcError",
        )
    },
}

if TYPE_CHECKING:
    from zmqrpc.client import RpcClient
    from zmqrpc.config import Settings, load_settings
    from zmqrpc.errors import (
        CallTimeout,
        ClientClosed,
        ConfigError,
        MatchmakerError,
        NoRouteError,
        RemoteError,
        Unreachable,
        ZmqRpcError,
    )
    from zmqrpc.server import Request, RpcServer


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'zmqrpc' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
