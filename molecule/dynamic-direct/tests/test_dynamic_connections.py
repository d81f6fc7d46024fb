"""Dynamic direct: a client connects for each message and keeps no connection after the call."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared" / "checks"))

from zmqrpc_lab import COMPUTES, CONTROLLERS, client_connections


@pytest.mark.parametrize("source", COMPUTES)
def test_no_connection_persists_after_a_call(source):
    target = CONTROLLERS[0]
    snapshots = client_connections(source, target, calls=3, pause=1.0)
    assert snapshots == [[], [], []], (
        f"{source} -> agent of {target}: connections still held after each call {snapshots}"
    )
