"""zmq_security = curve across real processes: refused peers, caller identity, authorization, no fail-open,
bad key files, rogue registrations, CURVE through proxies, and the matchmaker locked (Redis ACL and TLS).

Keys are made with ``zmq.auth.create_certificates`` in a temporary directory. Servers are ``tests.rpc_node``
processes; a ledger file they write proves what ran.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import zmq
import zmq.auth

from tests.integration.test_metrics import scrape, value
from tests.procs import ROOT, ProxyProcess, ServerProcess, run_python
from tests.servers import RedisServer, SentinelProcess, find_binary, free_port, wait_for
from zmqrpc import protocol
from zmqrpc.client import RpcClient
from zmqrpc.config import load_settings
from zmqrpc.errors import MatchmakerError, RemoteError
from zmqrpc.matchmaker import RedisMatchMaker
from zmqrpc.protocol import MessageType

pytestmark = pytest.mark.integration

FAST = {
    "zmq_target_update": 1,
    "zmq_target_expire": 5,
    "rpc_zmq_cache_refresh": 1,
    "zmq_connect_timeout": 1.0,
}
NODES = ("node-a", "node-b", "client-1")  # allowed; "stranger" has a key nobody allows


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<dir>/<name>.key_secret`` for every node and the stranger; ``<dir>/allowed/`` the allowed keys."""
    root = tmp_path_factory.mktemp("keys")
    allowed = root / "allowed"
    allowed.mkdir()
    for name in (*NODES, "stranger"):
        public, secret = zmq.auth.create_certificates(str(root), name)
        os.chmod(secret, 0o600)
        if name != "stranger":
            shutil.move(public, allowed / f"{name}.key")
    return root


def curve(keys: Path, name: str, **extra: Any) -> dict[str, Any]:
    return {
        **FAST,
        "zmq_security": "curve",
        "zmq_curve_secret_key_file": str(keys / f"{name}.key_secret"),
        "zmq_curve_allowed_keys_dir": str(keys / "allowed"),
        **extra,
    }


def curve_lines(keys: Path, name: str) -> str:
    """``name``'s security options as config-file lines (what a proxy process reads)."""
    return "".join(f"{k} = {v}\n" for k, v in curve(keys, name).items() if k.startswith("zmq_"))


def wait_registered(redis_server: RedisServer, topic: str) -> None:
    """Until something (a proxy: ``protocol.PROXY_*``) is registered under ``topic``."""
    mm = RedisMatchMaker([redis_server.address])
    try:
        assert wait_for(lambda: mm.get_hosts(topic), timeout=15), f"nothing registered under {topic}"
    finally:
        mm.close()


@pytest.fixture(scope="module")
def redis_server():
    with RedisServer() as server:
        yield server


def serve(redis_server: RedisServer, keys: Path, name: str, tmp_path: Path, **extra: Any) -> ServerProcess:
    overrides = curve(keys, name, rpc_zmq_host=name, rpc_zmq_bind_address="127.0.0.1", **extra)
    ledger = str(tmp_path / f"{name}.ledger")
    return ServerProcess(redis_server.url, ["svc"], name, ledger=ledger, **overrides).start()


def client(redis_server: RedisServer, keys: Path, name: str, **extra: Any) -> RpcClient:
    return RpcClient(load_settings(url=redis_server.url, overrides=curve(keys, name, **extra)))


def ledger(tmp_path: Path, name: str) -> list[str]:
    path = tmp_path / f"{name}.ledger"
    return path.read_text().split() if path.exists() else []


def cast_frames(tag: str) -> list[bytes]:
    body = {"message": {"method": "record", "args": {"tag": tag}}, "context": {}}
    return protocol.encode(MessageType.CAST, "svc", body, protocol.get_serializer("json"))


def raw_dealer(address: str, secret_file: Path | None, server_public: bytes | None) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    if secret_file is not None:
        public, secret = zmq.auth.load_certificate(secret_file)
        sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = public, secret, server_public
    sock.connect(f"tcp://{address}")
    return sock


def test_peers_without_an_allowed_key_are_refused_counted_and_never_run(redis_server, keys, tmp_path) -> None:
    port = free_port()
    server = serve(redis_server, keys, "node-a", tmp_path, metrics_port=port)
    try:
        node_a_public, _ = zmq.auth.load_certificate(keys / "allowed" / "node-a.key")
        failures = 0.0
        # One at a time, so each kind of refusal must be counted on its own.
        for secret, tag in ((None, "from-no-key"), (keys / "stranger.key_secret", "from-stranger")):
            sock = raw_dealer(server.address, secret, node_a_public if secret else None)
            for _ in range(3):
                sock.send_multipart(cast_frames(tag))
            counted = wait_for(
                lambda seen=failures: (n := value(scrape(port), "zmqrpc_auth_failures_total")) > seen and n,
                timeout=10,
            )
            assert counted, f"the peer of {tag} was not counted in zmqrpc_auth_failures_total"
            failures = counted
            sock.close()
        with client(redis_server, keys, "client-1") as allowed:
            allowed.cast("svc", "record", {"tag": "from-client-1"})
            assert allowed.call("svc", "whoami", timeout=10) == "node-a"
        time.sleep(1.0)  # what the refused peers sent had every chance to arrive
        assert ledger(tmp_path, "node-a") == ["from-client-1"]
    finally:
        server.stop()


MODES = {
    "static": {},
    "dynamic": {"use_dynamic_connections": True, "zmq_linger": 1},
    "acks": {"rpc_use_acks": True},  # through the client's I/O thread
}


@pytest.mark.parametrize("mode", list(MODES))
def test_every_request_carries_the_callers_key_name(redis_server, keys, tmp_path, mode: str) -> None:
    server = serve(redis_server, keys, "node-a", tmp_path, **MODES[mode])
    try:
        for name in ("client-1", "node-b"):
            with client(redis_server, keys, name, **MODES[mode]) as c:
                assert c.call("svc", "caller", timeout=10) == name
                assert c.call("svc", "caller", timeout=10, server="node-a") == name
    finally:
        server.stop()


def test_authorization_rules_allow_and_refuse(redis_server, keys, tmp_path) -> None:
    rules = ["client-*:svc:call", "node-*:svc.{key}"]
    server = serve(redis_server, keys, "node-a", tmp_path, zmq_curve_authorization=rules)
    try:
        with client(redis_server, keys, "client-1") as c:
            assert c.call("svc", "whoami", timeout=10) == "node-a"
            c.cast("svc", "record", {"tag": "cast-by-client-1"})  # only calls are allowed to it
            with pytest.raises(RemoteError) as refused:
                c.call("svc", "whoami", timeout=10, server="node-a")
            assert refused.value.exc_type == "zmqrpc.errors.NotAuthorized"
            assert "client-*:svc:call" in refused.value.message
        with client(redis_server, keys, "node-a") as own:  # {key}: a node may reach its own directed topic
            own.cast("svc", "record", {"tag": "cast-by-node-a"}, server="node-a")
            assert own.call("svc", "whoami", timeout=10, server="node-a") == "node-a"
        with client(redis_server, keys, "node-b") as other, pytest.raises(RemoteError):
            other.call("svc", "whoami", timeout=10, server="node-a")  # ...but not another node's
        with client(redis_server, keys, "client-1") as c:
            drops = c.call("svc", "drops", timeout=10)
        assert drops.get("not authorized", 0) >= 3
        assert ledger(tmp_path, "node-a") == ["cast-by-node-a"]
    finally:
        server.stop()


def test_a_dead_authenticator_ends_the_process_and_lets_no_one_in(redis_server, keys, tmp_path) -> None:
    server = serve(redis_server, keys, "node-a", tmp_path)
    try:
        with client(redis_server, keys, "client-1") as c:
            assert c.call("svc", "whoami", timeout=10) == "node-a"
        assert server.proc is not None
        server.proc.send_signal(signal.SIGUSR2)  # tests.rpc_node's hook: the ZAP thread dies
        assert server.proc.wait(10) == 70
    finally:
        server.kill()


NO_WATCHDOG = """
import sys, time, zmq, zmq.auth
from zmqrpc import security
from zmqrpc.config import load_settings
from zmqrpc.sockets import SocketFactory
keys = sys.argv[1]
settings = load_settings(overrides={"zmq_security": "curve",
                                    "zmq_curve_secret_key_file": keys + "/node-a.key_secret",
                                    "zmq_curve_allowed_keys_dir": keys + "/allowed"})
factory = SocketFactory(settings.zmq, security=security.load_security(settings.zmq))
router = factory.router()
port = factory.bind_port(router, "127.0.0.1", 0)
auth = security.running_authenticator(zmq.Context.instance())
auth._stopping = True  # the watchdog stands aside: what does libzmq do with no ZAP handler at all?
auth.kill_for_test()
time.sleep(0.5)
public, secret = zmq.auth.load_certificate(keys + "/client-1.key_secret")
peer = zmq.Context.instance().socket(zmq.DEALER)
peer.curve_publickey, peer.curve_secretkey = public, secret
peer.curve_serverkey = zmq.auth.load_certificate(keys + "/allowed/node-a.key")[0]
peer.linger = 0
peer.connect(f"tcp://127.0.0.1:{port}")
peer.send(b"hello")
print("served" if router.poll(2000) else "refused", flush=True)
import os; os._exit(0)
"""


def test_without_a_zap_handler_libzmq_refuses_even_a_valid_key(keys) -> None:
    """ZMQ_ZAP_ENFORCE_DOMAIN: the moments between the handler's death and the exit serve no one."""
    done = run_python("-c", NO_WATCHDOG, str(keys), timeout=60)
    assert done.stdout.strip() == "refused", done.stderr[-2000:]


def agent_with(tmp_path: Path, keys: Path, secret: Path, allowed: Path) -> subprocess.CompletedProcess:
    conf = tmp_path / "agent.conf"
    conf.write_text(
        "[DEFAULT]\ntransport_url = zmq://\n[oslo_messaging_zmq]\nrpc_zmq_matchmaker = dummy\n"
        f"rpc_zmq_ipc_dir = {tmp_path}\nzmq_security = curve\nzmq_curve_secret_key_file = {secret}\n"
        f"zmq_curve_allowed_keys_dir = {allowed}\n"
    )
    return run_python("-m", "zmqrpc.cli", "agent", "--config-file", str(conf), timeout=60)


@pytest.mark.parametrize("case", ["open secret key", "missing file", "malformed file", "no allowed keys"])
def test_each_bad_key_file_is_named_and_exits_2(keys, tmp_path, case: str) -> None:
    secret, allowed = tmp_path / "node-a.key_secret", tmp_path / "allowed"
    shutil.copy(keys / "node-a.key_secret", secret)
    shutil.copytree(keys / "allowed", allowed)
    os.chmod(secret, 0o600)
    named, says = secret, ""
    if case == "open secret key":
        os.chmod(secret, 0o644)
        says = "readable by group or others"
    elif case == "missing file":
        secret.unlink()
        says = "No such file"
    elif case == "malformed file":
        secret.write_text('metadata\ncurve\n    public-key = "not a key"\n    secret-key = "nor this"\n')
        says = "malformed"
    else:
        for key in allowed.iterdir():
            key.unlink()
        named, says = allowed, "holds no <name>.key"
    done = agent_with(tmp_path, keys, secret, allowed)
    assert done.returncode == 2, done.stderr[-2000:]
    assert str(named) in done.stderr and says in done.stderr, done.stderr[-2000:]


def test_a_rogue_registration_gets_no_message(redis_server, keys, tmp_path) -> None:
    """A process that registers itself for 'svc' under node-a's key name cannot complete a handshake."""
    server = serve(redis_server, keys, "node-a", tmp_path)
    context = zmq.Context.instance()
    rogues = []
    try:
        mm = RedisMatchMaker([redis_server.address])
        # One rogue with the stranger's key claiming node-a's name, one without CURVE at all.
        for secret in (keys / "stranger.key_secret", None):
            rogue = context.socket(zmq.ROUTER)
            rogue.linger = 0
            if secret is not None:
                public, private = zmq.auth.load_certificate(secret)
                rogue.curve_server, rogue.curve_publickey, rogue.curve_secretkey = True, public, private
            address = f"127.0.0.1:{rogue.bind_to_random_port('tcp://127.0.0.1')}"
            mm.register("svc", address, 60)
            mm.register(protocol.KEY_NAMES, f"{address}|node-a", 60)
            rogues.append((rogue, address))
        with client(redis_server, keys, "client-1") as c:
            answered = [c.call("svc", "whoami", timeout=10) for _ in range(6)]
            c.cast("svc", "record", {"tag": "after-rogues"})
            assert c.call("svc", "whoami", timeout=10) == "node-a"
        assert answered == ["node-a"] * 6
        for rogue, _ in rogues:
            assert not rogue.poll(200), "a rogue received a message"
        assert ledger(tmp_path, "node-a") == ["after-rogues"]
        for _, address in rogues:
            mm.unregister("svc", address)
        mm.close()
    finally:
        for rogue, _ in rogues:
            rogue.close()
        server.stop()


def test_curve_through_router_proxies_and_publishers(redis_server, keys, tmp_path) -> None:
    """Router proxy + PUB/SUB: every hop speaks CURVE; calls, casts and published fanout arrive."""
    extra = curve_lines(keys, "node-b")
    proxy = ProxyProcess(tmp_path, redis_server.url, use_pub_sub=True, publisher_port=0, extra=extra).start()
    topology = {"use_router_proxy": True, "use_pub_sub": True}
    server = None
    try:
        wait_registered(redis_server, protocol.PROXY_PUBLISHERS)
        server = serve(redis_server, keys, "node-a", tmp_path, **topology)
        with client(redis_server, keys, "client-1", **topology) as c:
            assert wait_for(lambda: c.call("svc", "whoami", timeout=5), timeout=20) == "node-a"
            c.cast("svc", "record", {"tag": "proxied-cast"})
            c.fanout("svc", "record", {"tag": "published-fanout"})
            wait_for(lambda: len(ledger(tmp_path, "node-a")) == 2, timeout=15)
        assert sorted(ledger(tmp_path, "node-a")) == ["proxied-cast", "published-fanout"]
    finally:
        if server is not None:
            server.stop()
        proxy.stop()


def test_proxies_apply_the_authorization_rules(redis_server, keys, tmp_path) -> None:
    """Servers behind a proxy see only the proxy: the proxy, which knows the sender, checks the rules."""
    rules = "client-*:svc:call"
    extra = curve_lines(keys, "node-b")
    proxy = ProxyProcess(tmp_path, redis_server.url, extra=extra + f"zmq_curve_authorization = {rules}\n")
    topology = {"use_router_proxy": True}
    server = None
    try:
        proxy.start()
        wait_registered(redis_server, protocol.PROXY_BACKENDS)
        server = serve(redis_server, keys, "node-a", tmp_path, **topology)
        with client(redis_server, keys, "client-1", **topology) as c:
            assert wait_for(lambda: c.call("svc", "whoami", timeout=5), timeout=20) == "node-a"
            assert c.call("svc", "caller", timeout=5) is None  # through a proxy: the proxy's word only
            c.cast("svc", "record", {"tag": "refused-cast"})
            with pytest.raises(RemoteError) as refused:
                c.call("svc", "whoami", timeout=5, server="node-a")
            assert refused.value.exc_type == "zmqrpc.errors.NotAuthorized"
            assert rules in refused.value.message
            assert c.call("svc", "whoami", timeout=5) == "node-a"  # after the cast, on the same path
        assert ledger(tmp_path, "node-a") == []
    finally:
        if server is not None:
            server.stop()
        proxy.stop()


def test_a_key_rotation_under_calls_loses_none(redis_server, keys, tmp_path) -> None:
    """Two phases, as the deployment rotates: add the new key everywhere, restart the server on it, drop the
    old key. A client calling all along loses no call (acks resend what a stopping server did not take)."""
    allowed = tmp_path / "allowed"
    shutil.copytree(keys / "allowed", allowed)
    rotated = tmp_path / "rotated"
    rotated.mkdir()
    public, secret = zmq.auth.create_certificates(str(rotated), "node-a+next")
    os.chmod(secret, 0o600)
    acks = {"rpc_use_acks": True, "rpc_ack_timeout_base": 1.0, "zmq_curve_allowed_keys_dir": str(allowed)}
    old = serve(redis_server, keys, "node-a", tmp_path, **acks)
    new = None
    answers: list[object] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def keep_calling() -> None:
        with client(redis_server, keys, "client-1", **acks) as c:
            while not stop.is_set():
                try:
                    answers.append(c.call("svc", "caller", timeout=15))
                except Exception as exc:  # counted: the test fails on any
                    errors.append(exc)

    caller = threading.Thread(target=keep_calling)
    caller.start()
    try:
        assert wait_for(lambda: len(answers) > 20, timeout=20)
        shutil.copy(public, allowed / "node-a+next.key")  # phase 1: the new key is allowed everywhere
        time.sleep(1.5)
        overrides = curve(keys, "node-a", zmq_curve_secret_key_file=secret, **acks)
        new = ServerProcess(
            redis_server.url,
            ["svc"],
            "node-a",
            ledger=str(tmp_path / "new.ledger"),
            rpc_zmq_host="node-a",
            rpc_zmq_bind_address="127.0.0.1",
            **overrides,
        ).start()
        old.stop()  # the service restarted on its new key
        count = len(answers)
        (allowed / "node-a.key").unlink()  # phase 2: the old key goes
        assert wait_for(lambda: len(answers) > count + 50, timeout=30)
    finally:
        stop.set()
        caller.join(30)
        old.stop()
        if new is not None:
            new.stop()
    assert errors == []
    assert set(answers) == {"client-1"}


def test_curve_through_a_local_publisher(redis_server, keys, tmp_path) -> None:
    """A node's local publisher runs with the node's own key: the node's server subscribes to it on
    localhost, and it subscribes to the central publisher with the central proxy's key."""
    central_extra = curve_lines(keys, "node-b")
    local_extra = curve_lines(keys, "node-a")
    central = ProxyProcess(
        tmp_path, redis_server.url, use_pub_sub=True, publisher_port=0, extra=central_extra
    )
    local_port = free_port()
    local = ProxyProcess(
        tmp_path,
        redis_server.url,
        use_pub_sub=True,
        local_publisher=True,
        publisher_port=local_port,
        extra=local_extra,
    )
    topology = {"use_router_proxy": True, "use_pub_sub": True}
    server = None
    try:
        central.start()
        wait_registered(redis_server, protocol.PROXY_PUBLISHERS)
        local.start()
        server = serve(
            redis_server, keys, "node-a", tmp_path, subscribe_on=[f"localhost:{local_port}"], **topology
        )
        with client(redis_server, keys, "client-1", **topology) as c:
            assert wait_for(lambda: c.call("svc", "whoami", timeout=5), timeout=20) == "node-a"
            for n in range(20):  # until the subscriptions have travelled up both publishers
                c.fanout("svc", "record", {"tag": f"fanout-{n}"})
                if wait_for(lambda: ledger(tmp_path, "node-a"), timeout=0.5):
                    break
        assert ledger(tmp_path, "node-a"), (
            "no published fanout reached the server through the local publisher"
        )
    finally:
        if server is not None:
            server.stop()
        local.stop()
        central.stop()


# --------------------------------------------------------------------------- the matchmaker locked


def acl_args(directory: Path, password: str) -> list[str]:
    """redis-server arguments: the default user off, ``zmqrpc`` on ``zmqrpc:*`` keys only, and ``admin``."""
    acl = directory / "users.acl"
    acl.write_text(
        "user default off\n"
        f"user zmqrpc on >{password} ~zmqrpc:* resetchannels -@all +@read +@write +@scripting "
        "+@connection +ping +info\n"
        f"user admin on >{password} ~* &* +@all\n"
    )
    return ["--aclfile", str(acl)]


class AclRedis(RedisServer):
    """redis-server whose default user is off: only ``zmqrpc`` with its password, on ``zmqrpc:*`` keys."""

    def __init__(self, password: str) -> None:
        self.acl_password = password
        super().__init__()

    def _argv(self) -> list[str]:
        return [*super()._argv(), *acl_args(self.dir, self.acl_password)]

    def client(self, **kwargs: Any) -> redis.Redis:
        kwargs.setdefault("decode_responses", True)
        kwargs.setdefault("socket_timeout", 5)
        return redis.Redis(
            host=self.host, port=self.port, username="admin", password=self.acl_password, **kwargs
        )


def test_redis_acl_user_and_password(keys, tmp_path) -> None:
    secret = "s3cret-acl-pass"
    with AclRedis(secret) as acl_redis:
        url = f"zmq+redis://zmqrpc:{secret}@127.0.0.1:{acl_redis.port}"
        server = ServerProcess(url, ["svc"], "node-a", rpc_zmq_bind_address="127.0.0.1", **FAST).start()
        try:
            with RpcClient(load_settings(url=url, overrides=FAST)) as c:
                assert c.call("svc", "whoami", timeout=10) == "node-a"
            for user, password in ((None, None), ("zmqrpc", None), ("zmqrpc", "wrong")):
                mm = RedisMatchMaker([("127.0.0.1", acl_redis.port)], username=user, password=password)
                with pytest.raises(MatchmakerError):
                    mm.get_hosts("svc")
                mm.close()
            # The user sees nothing outside zmqrpc's keys.
            plain = redis.Redis(port=acl_redis.port, username="zmqrpc", password=secret)
            with pytest.raises(redis.exceptions.NoPermissionError):
                plain.get("other:key")
            plain.close()
            # The password appears neither in `zmqrpc matchmaker list` nor in its log.
            conf = tmp_path / "list.conf"
            conf.write_text(f"[DEFAULT]\ntransport_url = {url}\n")
            listed = run_python(
                "-m", "zmqrpc.cli", "--debug", "matchmaker", "--config-file", str(conf), "list", timeout=60
            )
            assert listed.returncode == 0, listed.stderr[-2000:]
            assert "svc" in listed.stdout
            assert secret not in listed.stdout + listed.stderr
        finally:
            server.stop()


def make_tls(tmp_path: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1, made with openssl."""
    files = {name: tmp_path / f"{name}.pem" for name in ("ca", "ca-key", "server", "server-key")}

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=zmqrpc test CA",
        "-keyout", str(files["ca-key"]), "-out", str(files["ca"]))  # fmt: skip
    csr = tmp_path / "server.csr"
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", str(files["server-key"]), "-out", str(csr))  # fmt: skip
    ext = tmp_path / "san.ext"
    ext.write_text("subjectAltName = IP:127.0.0.1\n")
    run("x509", "-req", "-in", str(csr), "-CA", str(files["ca"]), "-CAkey", str(files["ca-key"]),
        "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(files["server"]))  # fmt: skip
    return files


class TlsRedis(RedisServer):
    """redis-server with TLS only (Debian 12's build has it): its plain port is off."""

    def __init__(self, tls: dict[str, Path]) -> None:
        self.tls = tls
        super().__init__()

    def _argv(self) -> list[str]:
        argv = super()._argv()
        argv[argv.index("--port") + 1] = "0"
        return [
            *argv,
            "--tls-port", str(self.port),
            "--tls-cert-file", str(self.tls["server"]),
            "--tls-key-file", str(self.tls["server-key"]),
            "--tls-ca-cert-file", str(self.tls["ca"]),
            "--tls-auth-clients", "no",
        ]  # fmt: skip

    def client(self, **kwargs: Any) -> redis.Redis:
        kwargs.setdefault("decode_responses", True)
        kwargs.setdefault("socket_timeout", 5)
        return redis.Redis(
            host=self.host, port=self.port, ssl=True, ssl_ca_certs=str(self.tls["ca"]), **kwargs
        )


@pytest.mark.skipif(find_binary("openssl") is None, reason="openssl is needed to make the certificates")
def test_redis_tls(tmp_path) -> None:
    tls = make_tls(tmp_path)
    with TlsRedis(tls) as tls_redis:
        conf = tmp_path / "tls.conf"
        conf.write_text(
            f"[DEFAULT]\ntransport_url = zmq+rediss://127.0.0.1:{tls_redis.port}\n"
            f"[matchmaker_redis]\nssl_ca_file = {tls['ca']}\n"
        )
        settings = load_settings(
            config_files=[str(conf)], overrides={**FAST, "rpc_zmq_bind_address": "127.0.0.1"}
        )
        assert settings.redis_tls
        from zmqrpc.matchmaker import create_matchmaker

        mm = create_matchmaker(settings)
        mm.register("svc", "127.0.0.1:1", 30)
        assert mm.get_hosts("svc") == ["127.0.0.1:1"]
        mm.close()
        # Without TLS the same port answers nothing a plain client understands.
        plain = RedisMatchMaker([("127.0.0.1", tls_redis.port)], socket_timeout=2.0)
        with pytest.raises(MatchmakerError):
            plain.get_hosts("svc")
        plain.close()
        # A CA that did not sign the server's certificate is refused.
        (tmp_path / "other").mkdir()
        other = make_tls(tmp_path / "other")
        conf.write_text(
            f"[DEFAULT]\ntransport_url = zmq+rediss://127.0.0.1:{tls_redis.port}\n"
            f"[matchmaker_redis]\nssl_ca_file = {other['ca']}\n"
        )
        wrong = create_matchmaker(load_settings(config_files=[str(conf)]))
        with pytest.raises(MatchmakerError):
            wrong.get_hosts("svc")
        wrong.close()


class LockedRedis(TlsRedis):
    """redis-server with TLS only and the ACL users of :class:`AclRedis`."""

    def __init__(self, tls: dict[str, Path], password: str) -> None:
        self.acl_password = password
        super().__init__(tls)

    def _argv(self) -> list[str]:
        return [*super()._argv(), *acl_args(self.dir, self.acl_password)]

    def client(self, **kwargs: Any) -> redis.Redis:
        kwargs.setdefault("username", "admin")
        kwargs.setdefault("password", self.acl_password)
        return super().client(**kwargs)


class LockedSentinel(SentinelProcess):
    """redis-sentinel speaking TLS only, with a password of its own, logging in to the master as admin."""

    def __init__(self, master: LockedRedis, group: str, password: str) -> None:
        super().__init__(group, master.address, 1, 1000, 3000)
        self.tls, self.password = master.tls, password
        text = self.conf_path.read_text().replace(f"port {self.port}\n", f"port 0\ntls-port {self.port}\n")
        text += (
            f"tls-cert-file {self.tls['server']}\ntls-key-file {self.tls['server-key']}\n"
            f"tls-ca-cert-file {self.tls['ca']}\ntls-auth-clients no\ntls-replication yes\n"
            f"sentinel auth-user {group} admin\nsentinel auth-pass {group} {master.acl_password}\n"
            f"requirepass {password}\n"
        )
        self.conf_path.write_text(text)

    def client(self) -> redis.Redis:
        return redis.Redis(
            host=self.host,
            port=self.port,
            password=self.password,
            ssl=True,
            ssl_ca_certs=str(self.tls["ca"]),
            socket_timeout=2,
            decode_responses=True,
        )


@pytest.mark.skipif(find_binary("openssl") is None, reason="openssl is needed to make the certificates")
def test_sentinel_with_tls_an_acl_user_and_a_sentinel_password(keys, tmp_path) -> None:
    """A real redis-sentinel and Redis, both TLS only; zmqrpc logs in to Redis as its ACL user and to the
    Sentinel with the Sentinel's password, and serves and calls over CURVE on top."""
    tls = make_tls(tmp_path)
    secret = "acl-and-tls-pass"
    with LockedRedis(tls, secret) as master:
        sentinel = LockedSentinel(master, "locked", "sentinel-pass").start()
        try:
            url = f"zmq+sentinels://zmqrpc:{secret}@127.0.0.1:{sentinel.port}/locked"

            def conf(name: str, sentinel_password: str) -> Path:
                path = tmp_path / f"{name}.conf"
                path.write_text(
                    f"[DEFAULT]\ntransport_url = {url}\n[matchmaker_redis]\nssl_ca_file = {tls['ca']}\n"
                    f"sentinel_password = {sentinel_password}\n"
                )
                return path

            good = load_settings(config_files=[str(conf("good", "sentinel-pass"))], overrides=FAST)
            from zmqrpc.matchmaker import create_matchmaker

            mm = create_matchmaker(good)
            mm.register("probe", "127.0.0.1:1", 30)
            assert mm.get_hosts("probe") == ["127.0.0.1:1"]
            mm.close()
            bad = create_matchmaker(load_settings(config_files=[str(conf("bad", "wrong"))]))
            with pytest.raises(MatchmakerError):
                bad.get_hosts("probe")
            bad.close()
            # A whole server and client on it, with CURVE: the server reads the same file.
            cfg_file = conf("server", "sentinel-pass")
            cfg_file.write_text(
                cfg_file.read_text()
                + "[oslo_messaging_zmq]\n"
                + "".join(f"{k} = {v}\n" for k, v in curve(keys, "node-a").items())
                + "rpc_zmq_host = node-a\nrpc_zmq_bind_address = 127.0.0.1\n"
            )
            agent = subprocess.Popen(
                [sys.executable, "-m", "zmqrpc.cli", "agent", "--config-file", str(cfg_file)],
                env=dict(os.environ, PYTHONPATH=str(ROOT)),
                cwd=ROOT,
            )
            try:
                client_settings = load_settings(
                    config_files=[str(conf("client", "sentinel-pass"))], overrides=curve(keys, "client-1")
                )
                with RpcClient(client_settings) as c:
                    pong = wait_for(lambda: _ping(c), timeout=20)
                assert pong, "the agent did not answer over CURVE through the locked Sentinel"
            finally:
                agent.terminate()
                agent.wait(10)
        finally:
            sentinel.cleanup()


def _ping(c: RpcClient) -> Any:
    try:
        return c.call("zmqrpc-agent", "ping", timeout=2, server="node-a")
    except Exception:
        return None
