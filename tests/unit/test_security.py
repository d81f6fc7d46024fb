"""zmqrpc.security without sockets: key files, allowed keys, peer keys, authorization rules, options."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import zmq.auth

from zmqrpc.config import load_settings
from zmqrpc.errors import ConfigError
from zmqrpc.security import AllowedKeys, CurveSecurity, UntrustedPeer, load_keypair, parse_rules


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    (tmp_path / "allowed").mkdir()
    for name in ("host-1", "host-2"):
        public, secret = zmq.auth.create_certificates(str(tmp_path), name)
        os.chmod(secret, 0o600)
        shutil.move(public, tmp_path / "allowed" / f"{name}.key")
    return tmp_path


def test_a_keypair_is_named_after_its_file(keys: Path) -> None:
    pair = load_keypair(keys / "host-1.key_secret")
    assert pair.name == "host-1"
    assert len(pair.public) == len(pair.secret) == 40
    assert pair.secret.decode() not in repr(pair)  # the secret is never shown


def test_a_public_certificate_is_not_a_keypair(keys: Path) -> None:
    os.chmod(keys / "allowed" / "host-1.key", 0o600)
    with pytest.raises(ConfigError, match="holds no secret-key"):
        load_keypair(keys / "allowed" / "host-1.key")


def test_allowed_keys_by_name_and_reload(keys: Path) -> None:
    allowed = AllowedKeys(keys / "allowed")
    assert set(allowed.by_name) == {"host-1", "host-2"}
    assert allowed.reload() is False
    public, _ = zmq.auth.create_certificates(str(keys), "host-3")
    shutil.move(public, keys / "allowed" / "host-3.key")
    assert allowed.reload() is True
    assert allowed.by_key[allowed.by_name["host-3"][0]] == "host-3"
    (keys / "allowed" / "broken.key").write_text("garbage")
    assert allowed.reload() is False  # a bad file later is logged; the last good set stays
    assert "host-3" in allowed.by_name


def test_a_peer_key_comes_from_the_registered_name_then_the_host(keys: Path) -> None:
    own = load_keypair(keys / "host-1.key_secret")
    security = CurveSecurity(own, AllowedKeys(keys / "allowed"), parse_rules([]))
    allowed = security.allowed.by_name
    assert security.key_for("host-2:5000") == allowed["host-2"][0]
    assert security.key_for("localhost:60001") == own.public  # this node: its own key
    security.names = lambda address: [("host-2", "")] if address == "10.0.0.9:5000" else []
    assert security.key_for("10.0.0.9:5000") == allowed["host-2"][0]
    with pytest.raises(UntrustedPeer, match=r"10\.0\.0\.8:5000"):
        security.key_for("10.0.0.8:5000")


def test_rules() -> None:
    rules = parse_rules(["controller-*:*", "compute-*:conductor:call+cast", "compute-*:compute.{key}"])
    assert rules.check("controller-1", "compute.compute-9", "call") is None
    assert rules.check("compute-1", "conductor", "cast") is None
    assert rules.check("compute-1", "compute.compute-1", "call") is None
    refused = rules.check("compute-1", "compute.compute-2", "call")
    assert refused and "compute-*:compute.{key}" in refused
    assert rules.check("compute-1", "conductor", "fanout")
    assert rules.check("stranger", "conductor", "call")
    # {key} is matched literally: a key name with glob characters cannot widen its own rule.
    assert parse_rules(["*:t.{key}"]).check("a*", "t.ab", "call")
    assert not parse_rules([]), "no rules: everything allowed"
    assert parse_rules([]).check("anyone", "anything", "call") is None


@pytest.mark.parametrize("rule", ["nocolon", ":topic", "key:", "k:t:call+launch", "a:b:c:d"])
def test_a_malformed_rule_is_named(rule: str) -> None:
    with pytest.raises(ConfigError, match="zmq_curve_authorization"):
        load_settings(overrides={"zmq_curve_authorization": [rule]})


def test_curve_needs_both_files() -> None:
    with pytest.raises(ConfigError, match="zmq_curve_secret_key_file"):
        load_settings(overrides={"zmq_security": "curve"})
    with pytest.raises(ConfigError, match="zmq_security"):
        load_settings(overrides={"zmq_security": "tls"})


def test_redis_tls_and_acl_settings(tmp_path: Path) -> None:
    assert not load_settings(url="zmq+redis://h:6379").redis_tls
    assert load_settings(url="zmq+rediss://h:6379").redis_tls
    assert load_settings(url="zmq+sentinels://h:26379/g").matchmaker == "sentinel"
    conf = tmp_path / "z.conf"
    conf.write_text("[DEFAULT]\ntransport_url = zmq+redis://h:6379\n[matchmaker_redis]\nusername = zmqrpc\n")
    settings = load_settings(config_files=[str(conf)])
    assert settings.redis_username == "zmqrpc"
    conf.write_text("[matchmaker_redis]\nssl_ca_file = /no/such/ca.pem\n")
    with pytest.raises(ConfigError, match="ssl_ca_file"):
        load_settings(config_files=[str(conf)])


def test_a_client_sees_a_rotated_in_key(keys: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rotation adds the new keys first: a client (no authenticator thread) must find them by itself."""
    from zmqrpc import security

    monkeypatch.setattr(security, "RELOAD_INTERVAL", 0.0)
    curve = CurveSecurity(
        load_keypair(keys / "host-1.key_secret"), AllowedKeys(keys / "allowed"), parse_rules([])
    )
    with pytest.raises(UntrustedPeer):
        curve.key_for("host-9:5000")
    public, _ = zmq.auth.create_certificates(str(keys), "host-9")
    shutil.move(public, keys / "allowed" / "host-9.key")
    assert curve.key_for("host-9:5000") == curve.allowed.by_name["host-9"][0]


def test_two_keys_of_one_name_during_a_rotation(keys: Path) -> None:
    """``host-2+next.key`` is a second key of host-2: both authenticate as host-2, and a client expects the
    one host-2 registered (if its own directory allows it for host-2)."""
    old = zmq.auth.load_certificate(keys / "allowed" / "host-2.key")[0]
    public, _ = zmq.auth.create_certificates(str(keys), "host-2+next")
    shutil.move(public, keys / "allowed" / "host-2+next.key")
    new = zmq.auth.load_certificate(keys / "allowed" / "host-2+next.key")[0]
    own = load_keypair(keys / "host-1.key_secret")
    security = CurveSecurity(own, AllowedKeys(keys / "allowed"), parse_rules([]))
    assert security.allowed.by_key[old] == security.allowed.by_key[new] == "host-2"
    for registered in (old, new):
        security.names = lambda address, key=registered: [("host-2", key.decode())]
        assert security.key_for("10.0.0.2:5000") == registered
    stranger = zmq.auth.load_certificate(keys / "host-1.key_secret")[0]  # allowed, but as host-1
    security.names = lambda address: [("host-2", stranger.decode())]
    assert security.key_for("10.0.0.2:5000") in (old, new)  # host-2's, never the claimed one


def test_the_user_id_does_not_survive_a_device_hop(keys: Path) -> None:
    """Why a direct CURVE server stamps the caller itself: libzmq clears a message's properties when a
    socket sends it, so behind zmq.proxy (or any forwarding) a worker cannot read the ZAP User-Id."""
    from zmqrpc.config import load_settings
    from zmqrpc.security import load_security
    from zmqrpc.sockets import SocketFactory

    settings = load_settings(
        overrides={
            "zmq_security": "curve",
            "zmq_curve_secret_key_file": str(keys / "host-1.key_secret"),
            "zmq_curve_allowed_keys_dir": str(keys / "allowed"),
        }
    )
    context = zmq.Context()
    try:
        factory = SocketFactory(settings.zmq, context, load_security(settings.zmq))
        front = factory.router(mandatory=False)
        port = factory.bind_port(front, "127.0.0.1", 0)
        hop_in, hop_out = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
        hop_in.bind("inproc://hop")
        hop_out.connect("inproc://hop")
        peer = factory.dealer()
        peer.setsockopt(zmq.CURVE_SECRETKEY, load_keypair(keys / "host-2.key_secret").secret)
        peer.setsockopt(zmq.CURVE_PUBLICKEY, load_keypair(keys / "host-2.key_secret").public)
        peer.setsockopt(zmq.CURVE_SERVERKEY, load_keypair(keys / "host-1.key_secret").public)
        peer.connect(f"tcp://127.0.0.1:{port}")
        peer.send(b"hello")
        assert front.poll(5000)
        received = front.recv_multipart(copy=False)
        assert received[0].get("User-Id") == "host-2"  # read where it arrived: the key's name
        hop_in.send_multipart(received, copy=False)
        forwarded = hop_out.recv_multipart(copy=False)
        with pytest.raises(zmq.ZMQError):
            forwarded[0].get("User-Id")  # one hop further: gone
        for sock in (front, hop_in, hop_out, peer):
            sock.close(0)
    finally:
        from zmqrpc.security import running_authenticator

        auth = running_authenticator(context)
        if auth is not None:
            auth.stop()
        context.term()
