"""Switching metrics on: off by default (no-op metrics), and a port that cannot be served is named."""

from __future__ import annotations

import socket

import pytest

from zmqrpc import metrics


def test_metrics_are_off_without_a_port() -> None:
    assert metrics.enable(0) is metrics.OFF
    assert metrics.current() is metrics.OFF
    off = metrics.OFF
    off.sent_by_type["call"].inc()
    off.call_duration.observe(0.1)
    off.dropped.labels("bad header").inc()  # every metric takes the calls a real one takes


def test_a_port_in_use_is_refused_naming_the_option() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=rf"127.0.0.1:{port} \(metrics_port\)"):
            metrics.enable(port, "127.0.0.1")
    assert metrics.current() is metrics.OFF  # nothing half-enabled
