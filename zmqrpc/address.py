"""Addresses: the one parser and formatter of ``host:port`` text, and the default Redis and Sentinel ports.

One rule everywhere (transport URLs, ``subscribe_on``, ``sentinel_hosts``, ring files, registered servers and
proxies): ``host:port``, with an IPv6 host in brackets (``[::1]:6379``); without a port, the caller's
default applies or the address is refused. A bad address raises :class:`~zmqrpc.errors.ConfigError` that
names it.
"""

from __future__ import annotations

from collections.abc import Sequence

from zmqrpc.errors import ConfigError

__all__ = ["DEFAULT_REDIS_PORT", "DEFAULT_SENTINEL_PORT", "format_host_port", "parse_host_port"]

DEFAULT_REDIS_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379


def parse_host_port(value: str | Sequence[str | int], default_port: int | None = None) -> tuple[str, int]:
    """``"h:1"``, ``"[::1]:1"``, ``"h"`` (with ``default_port``) or ``("h", 1)`` -> ``(host, port)``."""
    if not isinstance(value, str):
        host, port = str(value[0]), int(value[1])
        if not host or not 1 <= port <= 65535:
            raise ConfigError(f"bad address {tuple(value)!r}: expected (host, port 1-65535)")
        return host, port
    text = value.strip()
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket:
            raise ConfigError(f"bad address {text!r}: unclosed '['")
        if rest and not rest.startswith(":"):
            raise ConfigError(f"bad address {text!r}: unexpected {rest!r} after ']'")
        port_text = rest[1:] if rest else None
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            host, port_text = text, None
        elif ":" in host:
            raise ConfigError(
                f"bad address {text!r}: an IPv6 address must be written [addr] or [addr]:port, in brackets"
            )
    if not host:
        raise ConfigError(f"bad address {text!r}: empty host")
    if port_text is None:
        if default_port is None:
            raise ConfigError(f"bad address {text!r}: no port, expected host:port")
        return host, default_port
    if not port_text.isdigit():
        raise ConfigError(f"bad address {text!r}: bad port {port_text!r}")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ConfigError(f"bad address {text!r}: port {port} out of range 1-65535")
    return host, port


def format_host_port(host: str, port: int) -> str:
    """``(host, port)`` -> ``"host:port"``, an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
