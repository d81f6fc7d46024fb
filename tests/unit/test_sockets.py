"""Socket creation: port-range binding and its exhaustion error."""

from __future__ import annotations

import pytest
import zmq

from zmqrpc.address import parse_host_port
from zmqrpc.config import load_settings
from zmqrpc.sockets import PortRangeExhausted, SocketFactory


def _factory(**overrides: object) -> SocketFactory:
    settings = load_settings(url="zmq://?rpc_zmq_matchmaker=dummy", overrides=overrides)
    return SocketFactory(settings.zmq)


def test_binds_inside_the_configured_range() -> None:
    factory = _factory(rpc_zmq_min_port=40100, rpc_zmq_max_port=40200, rpc_zmq_bind_address="127.0.0.1")
    sock = factory.router()
    try:
        assert 40100 <= factory.bind_in_range(sock) < 40200
    finally:
        sock.close(0)


def test_exhausted_range_names_the_options() -> None:
    factory = _factory(
        rpc_zmq_min_port=40301,
        rpc_zmq_max_port=40302,
        rpc_zmq_bind_address="127.0.0.1",
        rpc_zmq_bind_port_retries=5,
    )
    first, second = factory.router(), factory.router()
    try:
        assert factory.bind_in_range(first) == 40301
        with pytest.raises(PortRangeExhausted, match=r"port range exhausted.*rpc_zmq_min_port"):
            factory.bind_in_range(second)
    finally:
        first.close(0)
        second.close(0)


def test_router_reports_unroutable_messages() -> None:
    sock = _factory().router()
    try:
        with pytest.raises(zmq.ZMQError):
            sock.send_multipart([b"nobody", b"x"], zmq.NOBLOCK)
    finally:
        sock.close(0)


@pytest.mark.parametrize("address", ["host", "host:", ":5000", "host:99999", "host:abc"])
def test_bad_addresses_are_named(address: str) -> None:
    with pytest.raises(ValueError, match="bad address"):
        parse_host_port(address)
