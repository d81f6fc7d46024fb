"""All-in-one: the dummy matchmaker shares the host's registrations through rpc_zmq_ipc_dir."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared" / "checks"))

from zmqrpc_lab import NODES, VARS, lab_host, matchmaker_topics

NODE = NODES[0]
IPC_DIR = VARS["zmqrpc_rpc_zmq_ipc_dir"]


def test_registrations_live_in_the_shared_directory():
    host = lab_host(NODE)
    state = host.file(f"{IPC_DIR}/zmqrpc-matchmaker.json")
    assert state.exists, f"no shared registrations in {IPC_DIR} on {NODE}"
    lock = host.file(f"{IPC_DIR}/zmqrpc-matchmaker.json.lock")
    assert lock.user == "zmqrpc", f"the lock file belongs to {lock.user}: the agent could not take it"
    # another process (this CLI run) sees what the agent registered
    assert f"zmqrpc-agent.{NODE}" in matchmaker_topics(NODE)


def test_the_shared_directory_comes_back_at_boot():
    conf = lab_host(NODE).file("/etc/tmpfiles.d/zmqrpc.conf")
    assert conf.contains(f"^d {IPC_DIR} 0750 zmqrpc zmqrpc")
