"""Static direct: a client keeps its connection to an agent between calls (one per peer, reused)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared" / "checks"))

from zmqrpc_lab import COMPUTES, CONTROLLERS, client_connections


@pytest.mark.parametrize("source", COMPUTES)
def test_connections_persist_between_calls(source):
    target = CONTROLLERS[0]
    snapshots = client_connections(source, target, calls=3)
    assert all(len(held) == 1 for held in snapshots), (
        f"{source} -> agent of {target}: connections held after each call {snapshots}, expected one kept"
    )
    assert len({held[0] for held in snapshots}) == 1, (
        f"{source} -> agent of {target}: a new connection per call {snapshots}, expected the same one"
    )
