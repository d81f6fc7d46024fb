"""The oslo.messaging driver with zmq_security = curve, through oslo.messaging's public API only: the same
options secure it (the server reads them from its config file, the client from its transport URL)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import oslo_messaging
import pytest
import zmq.auth
from oslo_config import cfg

from tests.oslo.conftest import ALLOWED_EXMODS, FAST, OsloNode, start_all, stop_all, zmq_url
from tests.servers import RedisServer

pytestmark = pytest.mark.integration


def _keys(tmp: Path) -> Path:
    allowed = tmp / "allowed"
    allowed.mkdir()
    for name in ("srv-a", "client-1", "stranger"):
        public, secret = zmq.auth.create_certificates(str(tmp), name)
        os.chmod(secret, 0o600)
        if name != "stranger":
            shutil.move(public, allowed / f"{name}.key")
    return tmp


def _curve(keys: Path, name: str) -> dict[str, object]:
    return {
        "zmq_security": "curve",
        "zmq_curve_secret_key_file": str(keys / f"{name}.key_secret"),
        "zmq_curve_allowed_keys_dir": str(keys / "allowed"),
    }


def test_oslo_rpc_over_curve_and_a_stranger_is_refused(tmp_path: Path) -> None:
    keys = _keys(tmp_path)
    redis = RedisServer()
    transports: list[oslo_messaging.Transport] = []
    server = OsloNode(
        tmp_path,
        "server",
        "oslo-secure",
        "srv-a",
        zmq_url(redis.port),
        {**FAST, **_curve(keys, "srv-a"), "rpc_zmq_host": "127.0.0.2", "rpc_zmq_bind_address": "127.0.0.2"},
    )
    nodes = []
    try:
        nodes = start_all([server])

        def client(name: str) -> oslo_messaging.RPCClient:
            url = zmq_url(redis.port, rpc_zmq_host="127.0.0.1", **FAST, **_curve(keys, name))
            transport = oslo_messaging.get_rpc_transport(
                cfg.CONF, url=url, allowed_remote_exmods=ALLOWED_EXMODS
            )
            transports.append(transport)
            return oslo_messaging.get_rpc_client(
                transport, oslo_messaging.Target(topic="oslo-secure"), timeout=5
            )

        assert client("client-1").call({}, "whoami") == "srv-a"
        client("client-1").cast({}, "record", tag="allowed")
        with pytest.raises(oslo_messaging.MessagingTimeout):
            client("stranger").call({}, "record", tag="stranger")
        assert client("client-1").call({}, "whoami") == "srv-a"
        assert server.tags() == ["allowed"]
    finally:
        for transport in transports:
            transport.cleanup()
        stop_all(nodes)
        redis.cleanup()
