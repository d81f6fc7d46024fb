"""zmqrpc: a brokerless RPC message bus on ZeroMQ.

The names a user needs are here: ``from zmqrpc import RpcClient, RpcServer, load_settings``. They are
imported on first use, so ``import zmqrpc`` (and the command line's start) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_ERRORS = (
    "CallTimeout",
    "ClientClosed",
    "ConfigError",
    "MatchmakerError",
    "NoRouteError",
    "RemoteError",
    "Unreachable",
    "ZmqRpcError",
)
# name -> the module that defines it
_EXPORTS = {
    "RpcClient": "zmqrpc.client",
    "RpcServer": "zmqrpc.server",
    "Request": "zmqrpc.server",
    "Settings": "zmqrpc.config",
    "load_settings": "zmqrpc.config",
    **dict.fromkeys(_ERRORS, "zmqrpc.errors"),
}
__all__ = ["__version__", *sorted(_EXPORTS)]

if TYPE_CHECKING:  # what the lazy __getattr__ below returns, for type checkers
    from zmqrpc.client import RpcClient as RpcClient
    from zmqrpc.config import Settings as Settings
    from zmqrpc.config import load_settings as load_settings
    from zmqrpc.errors import CallTimeout as CallTimeout
    from zmqrpc.errors import ClientClosed as ClientClosed
    from zmqrpc.errors import ConfigError as ConfigError
    from zmqrpc.errors import MatchmakerError as MatchmakerError
    from zmqrpc.errors import NoRouteError as NoRouteError
    from zmqrpc.errors import RemoteError as RemoteError
    from zmqrpc.errors import Unreachable as Unreachable
    from zmqrpc.errors import ZmqRpcError as ZmqRpcError
    from zmqrpc.server import Request as Request
    from zmqrpc.server import RpcServer as RpcServer


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'zmqrpc' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
