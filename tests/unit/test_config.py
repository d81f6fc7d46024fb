"""Option groups, transport URL parsing and effective settings (zmqrpc.config)."""

from __future__ import annotations

import pickle
import socket
from pathlib import Path
from typing import Any

import pytest
from oslo_config import cfg

from zmqrpc import config
from zmqrpc.config import ConfigError, load_settings, parse_transport_url

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
HOSTNAME = socket.gethostname()

ZMQ_DEFAULTS: dict[str, Any] = {
    "rpc_zmq_bind_address": "*",
    "rpc_zmq_matchmaker": "redis",
    "rpc_zmq_matchmaker_ringfile": "/etc/oslo/matchmaker_ring.json",
    "rpc_zmq_host": HOSTNAME,
    "zmq_linger": -1,
    "rpc_poll_timeout": 1,
    "zmq_target_expire": 300,
    "zmq_target_update": 180,
    "use_pub_sub": False,
    "use_router_proxy": False,
    "use_dynamic_connections": False,
    "zmq_failover_connections": 2,
    "rpc_zmq_min_port": 49153,
    "rpc_zmq_max_port": 65536,
    "rpc_zmq_bind_port_retries": 100,
    "rpc_zmq_serialization": "json",
    "zmq_immediate": True,
    "zmq_tcp_keepalive": -1,
    "zmq_tcp_keepalive_idle": -1,
    "zmq_tcp_keepalive_cnt": -1,
    "zmq_tcp_keepalive_intvl": -1,
    "rpc_thread_pool_size": 100,
    "rpc_message_ttl": 300,
    "rpc_reply_cache_bytes": 64 * 1024 * 1024,
    "metrics_port": 0,
    "metrics_bind_address": "127.0.0.1",
    "rpc_use_acks": False,
    "rpc_ack_timeout_base": 15,
    "rpc_ack_timeout_multiplier": 2,
    "rpc_retry_attempts": 3,
    "subscribe_on": (),
    "rpc_zmq_ipc_dir": "/var/run/openstack",
    "rpc_zmq_contexts": 1,
    "rpc_zmq_topic_backlog": None,
    "rpc_zmq_hwm": 1000,
    "rpc_zmq_max_message_size": 16777216,
    "zmq_connect_timeout": 3.0,
    "rpc_zmq_cache_refresh": 10,
    "zmq_fallback_transport_url": None,
    "zmq_fallback_fanout": True,
    "zmq_receiver_enabled": True,
    "zmq_security": "none",
    "zmq_curve_secret_key_file": "",
    "zmq_curve_allowed_keys_dir": "",
    "zmq_curve_authorization": (),
}
PROXY_DEFAULTS = {
    "host": HOSTNAME,
    "frontend_port": 0,
    "backend_port": 0,
    "publisher_port": 0,
    "local_publisher": False,
    "metrics_port": 0,
}
REDIS_DEFAULTS = {
    "host": "127.0.0.1",
    "port": 6379,
    "password": "",
    "sentinel_hosts": (),
    "sentinel_group_name": "oslo-messaging-zeromq",
    "wait_timeout": 2000,
    "check_timeout": 20000,
    "socket_timeout": 10000,
    "username": "",
    "ssl": False,
    "ssl_ca_file": "",
    "ssl_cert_file": "",
    "ssl_key_file": "",
    "sentinel_username": "",
    "sentinel_password": "",
}
HOST_1 = (("host-1", 6379),)


def load_fixture(name: str, **kwargs: Any) -> config.Settings:
    return load_settings(config_files=[str(FIXTURES / name)], **kwargs)


def load_text(tmp_path: Path, text: str, **kwargs: Any) -> config.Settings:
    path = tmp_path / "zmqrpc.conf"
    path.write_text(text)
    return load_settings(config_files=[str(path)], **kwargs)


# --------------------------------------------------------------------------- guide fixtures

GUIDE_FIXTURES: dict[str, tuple[str, tuple[tuple[str, int], ...], dict[str, Any], dict[str, Any]]] = {
    "guide-enabling.conf": (
        "redis",
        (("127.0.0.1", 6379),),
        {"rpc_zmq_host": "{hostname}", "use_pub_sub": False, "use_router_proxy": False},
        {},
    ),
    "guide-matchmaker-redis.conf": ("redis", (("127.0.0.1", 6379),), {}, {}),
    "guide-redis-sentinel.conf": (
        "sentinel",
        (("host1", 26379), ("host2", 26379), ("host3", 26379)),
        {},
        {},
    ),
    "guide-static-direct.conf": (
        "redis",
        HOST_1,
        {
            "use_pub_sub": False,
            "use_router_proxy": False,
            "use_dynamic_connections": False,
            "zmq_target_expire": 60,
            "zmq_target_update": 30,
            "rpc_zmq_min_port": 49153,
            "rpc_zmq_max_port": 65536,
            "zmq_linger": -1,
        },
        {},
    ),
    "guide-dynamic-direct.conf": (
        "redis",
        HOST_1,
        {
            "use_pub_sub": False,
            "use_router_proxy": False,
            "use_dynamic_connections": True,
            "zmq_failover_connections": 2,
            "zmq_linger": 60,
            "zmq_target_expire": 60,
            "zmq_target_update": 30,
        },
        {},
    ),
    "guide-router-proxy-service.conf": (
        "redis",
        HOST_1,
        {"use_pub_sub": False, "use_router_proxy": True, "use_dynamic_connections": False},
        {},
    ),
    "guide-router-proxy-proxy.conf": ("redis", HOST_1, {"use_pub_sub": False}, {"host": "host-1"}),
    "guide-pubsub-service.conf": (
        "redis",
        HOST_1,
        {"use_pub_sub": True, "use_router_proxy": True, "use_dynamic_connections": False},
        {},
    ),
    "guide-pubsub-proxy.conf": (
        "redis",
        HOST_1,
        {"use_pub_sub": True},
        {"host": "host-1", "publisher_port": 0},
    ),
    "guide-local-publisher-service.conf": (
        "redis",
        HOST_1,
        {"use_pub_sub": True, "use_router_proxy": True, "subscribe_on": ("localhost:60001",)},
        {},
    ),
    "guide-combined-dynamic-pubsub.conf": (
        "redis",
        HOST_1,
        {"use_pub_sub": True, "use_router_proxy": False, "use_dynamic_connections": True},
        {},
    ),
    "guide-listening-address.conf": (
        "redis",
        (("127.0.0.1", 6379),),
        {"rpc_zmq_bind_address": "*", "rpc_zmq_bind_port_retries": 100, "advertise_host": HOSTNAME},
        {},
    ),
    "guide-subscribe-on-central.conf": (
        "redis",
        HOST_1,
        {"subscribe_on": ("host-1:50003", "host-2:50003", "host-3:50003")},
        {},
    ),
    "old-style-default-group.conf": (
        "redis",
        (("127.0.0.1", 6379),),
        {
            "rpc_zmq_host": "controller-1",
            "zmq_target_expire": 120,
            "zmq_target_update": 60,
            "use_pub_sub": True,
            "rpc_zmq_min_port": 9050,
            "rpc_zmq_max_port": 10050,
            "rpc_zmq_ipc_dir": "/var/run/openstack",
            "advertise_host": "controller-1",
        },
        {},
    ),
}


def test_every_guide_example_has_a_fixture() -> None:
    on_disk = {p.name for p in FIXTURES.glob("*.conf")}
    assert on_disk == set(GUIDE_FIXTURES)


@pytest.mark.parametrize("name", sorted(GUIDE_FIXTURES))
def test_fixture_loads_unchanged_with_expected_values(name: str) -> None:
    matchmaker, hosts, zmq_expected, proxy_expected = GUIDE_FIXTURES[name]
    settings = load_fixture(name)
    assert settings.matchmaker == matchmaker
    assert settings.redis_hosts == hosts
    assert settings.redis_password is None
    assert settings.ringfile is None
    for option, value in {**ZMQ_DEFAULTS, **zmq_expected}.items():
        assert getattr(settings.zmq, option) == value, option
    assert dict(settings.proxy) == {**PROXY_DEFAULTS, **proxy_expected}


def test_quoted_transport_url_in_file_is_unquoted() -> None:
    assert load_fixture("guide-dynamic-direct.conf").transport_url == "zmq+redis://host-1:6379"
    assert load_fixture("guide-enabling.conf").transport_url == "zmq://"


def test_sentinel_fixture_uses_default_group_name() -> None:
    settings = load_fixture("guide-redis-sentinel.conf")
    assert settings.sentinel_group_name == "oslo-messaging-zeromq"
    assert settings.redis_socket_timeout == 10.0


def test_old_style_none_password_means_no_password() -> None:
    settings = load_fixture("old-style-default-group.conf")
    assert settings.matchmaker_redis.password == "None"
    assert settings.redis_password is None


# --------------------------------------------------------------------------- defaults and list_opts


def test_defaults_match_the_documented_table() -> None:
    settings = load_settings()
    assert {k: v for k, v in settings.zmq.items() if k != "advertise_host"} == ZMQ_DEFAULTS
    assert dict(settings.proxy) == PROXY_DEFAULTS
    assert dict(settings.matchmaker_redis) == REDIS_DEFAULTS
    assert settings.transport_url == "zmq://"
    assert settings.matchmaker == "redis"
    assert settings.redis_hosts == (("127.0.0.1", 6379),)
    assert settings.zmq.advertise_host == HOSTNAME


def test_list_opts_covers_every_option() -> None:
    groups = {group: {opt.name: opt for opt in opts} for group, opts in config.list_opts()}
    assert set(groups) == {"DEFAULT", "oslo_messaging_zmq", "zmq_proxy_opts", "matchmaker_redis"}
    assert set(groups["DEFAULT"]) == {"transport_url"}
    assert groups["DEFAULT"]["transport_url"].secret
    assert set(groups["oslo_messaging_zmq"]) == set(ZMQ_DEFAULTS)
    assert set(groups["zmq_proxy_opts"]) == set(PROXY_DEFAULTS)
    assert set(groups["matchmaker_redis"]) == set(REDIS_DEFAULTS)
    assert groups["matchmaker_redis"]["password"].secret
    assert groups["matchmaker_redis"]["sentinel_password"].secret
    for group, opts in groups.items():
        for opt in opts.values():
            assert opt.help, f"[{group}] {opt.name} has no help"
    for opt in groups["oslo_messaging_zmq"].values():
        assert any(d.group == "DEFAULT" for d in opt.deprecated_opts), opt.name
    for opt in groups["zmq_proxy_opts"].values():
        assert any(d.group == "zmq_proxy_opt" for d in opt.deprecated_opts), opt.name
    assert groups["oslo_messaging_zmq"]["rpc_zmq_host"].sample_default == "localhost"
    assert groups["zmq_proxy_opts"]["host"].sample_default == "localhost"


@pytest.mark.parametrize("name", ["rpc_zmq_hwm", "rpc_zmq_max_message_size", "zmq_connect_timeout"])
def test_new_options_say_they_are_zmqrpc_options(name: str) -> None:
    opts = dict(config.list_opts())["oslo_messaging_zmq"]
    assert "zmqrpc" in (next(o for o in opts if o.name == name).help or "")


# --------------------------------------------------------------------------- register_opts and conf handling


def test_register_opts_is_idempotent_and_tolerates_oslo_messaging_transport_url() -> None:
    conf = cfg.ConfigOpts()
    conf.register_opt(cfg.StrOpt("transport_url", default="zmq+redis://other:6379", secret=True, help="x"))
    config.register_opts(conf)
    config.register_opts(conf)
    conf(args=[])
    assert conf.transport_url == "zmq+redis://other:6379"
    assert conf.oslo_messaging_zmq.rpc_zmq_hwm == 1000
    assert load_settings(conf).redis_hosts == (("other", 6379),)


def test_register_opts_does_not_swallow_other_duplicates() -> None:
    conf = cfg.ConfigOpts()
    conf.register_opt(cfg.IntOpt("rpc_zmq_hwm", default=5), group="oslo_messaging_zmq")
    with pytest.raises(cfg.DuplicateOptError):
        config.register_opts(conf)


def test_passed_conf_is_read_but_never_mutated(tmp_path: Path) -> None:
    path = tmp_path / "a.conf"
    path.write_text("[oslo_messaging_zmq]\nzmq_linger = 60\n")
    conf = cfg.ConfigOpts()
    config.register_opts(conf)
    conf(args=[], default_config_files=[str(path)])
    settings = load_settings(conf, url="zmq://?zmq_linger=5", overrides={"rpc_zmq_hwm": 7})
    assert settings.zmq.zmq_linger == 5
    assert settings.zmq.rpc_zmq_hwm == 7
    assert conf.oslo_messaging_zmq.zmq_linger == 60
    assert conf.oslo_messaging_zmq.rpc_zmq_hwm == 1000
    assert load_settings(conf).zmq.zmq_linger == 60


def test_config_files_with_conf_is_refused() -> None:
    with pytest.raises(ConfigError, match="config_files"):
        load_settings(cfg.ConfigOpts(), config_files=[str(FIXTURES / "guide-enabling.conf")])


def test_missing_config_file_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.conf"
    with pytest.raises(ConfigError, match=r"nope\.conf"):
        load_settings(config_files=[str(missing)])


def test_unparsable_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"zmqrpc\.conf"):
        load_text(tmp_path, "[oslo_messaging_zmq\nuse_pub_sub = true\n")


# --------------------------------------------------------------------------- precedence


def test_query_parameters_win_over_file_and_are_type_converted() -> None:
    url = (
        "zmq+redis://host-1:6379?zmq_linger=5&use_pub_sub=true&rpc_zmq_hwm=50"
        "&subscribe_on=a:1,b:2&zmq_connect_timeout=0.5&rpc_zmq_serialization=msgpack"
    )
    settings = load_fixture("guide-dynamic-direct.conf", url=url)
    assert settings.zmq.zmq_linger == 5
    assert settings.zmq.use_pub_sub is True
    assert settings.zmq.rpc_zmq_hwm == 50
    assert settings.zmq.subscribe_on == ("a:1", "b:2")
    assert settings.zmq.zmq_connect_timeout == 0.5
    assert settings.zmq.rpc_zmq_serialization == "msgpack"
    assert settings.zmq.use_dynamic_connections is True  # untouched file value
    assert settings.zmq.zmq_target_expire == 60


def test_query_in_transport_url_option_of_the_file(tmp_path: Path) -> None:
    settings = load_text(
        tmp_path,
        '[DEFAULT]\ntransport_url = "zmq+redis://h:6379?use_router_proxy=true"\n'
        "[oslo_messaging_zmq]\nuse_router_proxy = false\n",
    )
    assert settings.zmq.use_router_proxy is True


def test_overrides_win_over_query_and_file() -> None:
    settings = load_fixture(
        "guide-dynamic-direct.conf",
        url="zmq+redis://host-1:6379?zmq_linger=5",
        overrides={"zmq_linger": 1, "rpc_zmq_cache_refresh": 0.25, "frontend_port": 50001},
    )
    assert settings.zmq.zmq_linger == 1
    assert settings.zmq.rpc_zmq_cache_refresh == 0.25
    assert settings.proxy.frontend_port == 50001


def test_url_argument_wins_over_transport_url_option() -> None:
    settings = load_fixture("guide-dynamic-direct.conf", url="zmq+sentinel://s1,s2:26380")
    assert settings.matchmaker == "sentinel"
    assert settings.redis_hosts == (("s1", 26379), ("s2", 26380))


# --------------------------------------------------------------------------- deprecated placements


def test_new_proxy_group_spelling(tmp_path: Path) -> None:
    settings = load_text(
        tmp_path, "[zmq_proxy_opts]\nhost = node-123\nfrontend_port = 50001\nbackend_port = 50002\n"
    )
    assert (settings.proxy.host, settings.proxy.frontend_port, settings.proxy.backend_port) == (
        "node-123",
        50001,
        50002,
    )


def test_old_proxy_group_spelling(tmp_path: Path) -> None:
    settings = load_text(tmp_path, "[zmq_proxy_opt]\npublisher_port = 60001\nlocal_publisher = true\n")
    assert settings.proxy.publisher_port == 60001
    assert settings.proxy.local_publisher is True


def test_new_group_wins_over_default_placement(tmp_path: Path) -> None:
    settings = load_text(
        tmp_path, "[DEFAULT]\nzmq_linger = 10\nrpc_zmq_hwm = 20\n[oslo_messaging_zmq]\nzmq_linger = 30\n"
    )
    assert settings.zmq.zmq_linger == 30
    assert settings.zmq.rpc_zmq_hwm == 20


def test_deprecated_rpc_cast_timeout_name(tmp_path: Path) -> None:
    assert load_text(tmp_path, "[DEFAULT]\nrpc_cast_timeout = 45\n").zmq.zmq_linger == 45


def test_deprecated_matchmaker_ring_ringfile(tmp_path: Path) -> None:
    ring = FIXTURES / "ring.json"
    settings = load_text(
        tmp_path, f"[DEFAULT]\nrpc_zmq_matchmaker = ring\n[matchmaker_ring]\nringfile = {ring}\n"
    )
    assert settings.matchmaker == "ring"
    assert settings.ringfile == str(ring)
    assert settings.redis_hosts == ()


# --------------------------------------------------------------------------- matchmaker selection


def test_dummy_matchmaker_has_no_redis_endpoint() -> None:
    settings = load_settings(overrides={"rpc_zmq_matchmaker": "dummy"})
    assert settings.matchmaker == "dummy"
    assert settings.redis_hosts == ()
    assert settings.ringfile is None


def test_plain_zmq_redis_takes_matchmaker_redis_section(tmp_path: Path) -> None:
    settings = load_text(tmp_path, "[matchmaker_redis]\nhost = redis-a\nport = 6380\npassword = s3cret\n")
    assert settings.matchmaker == "redis"
    assert settings.redis_hosts == (("redis-a", 6380),)
    assert settings.redis_password == "s3cret"
    assert "s3cret" not in repr(settings)
    assert "s3cret" not in repr(settings.matchmaker_redis)


def test_url_password_wins_over_section(tmp_path: Path) -> None:
    settings = load_text(
        tmp_path,
        '[DEFAULT]\ntransport_url = "zmq+redis://app:fromurl@r1:6379"\n'
        "[matchmaker_redis]\npassword = fromfile\n",
    )
    assert (settings.redis_username, settings.redis_password) == ("app", "fromurl")


def test_section_password_used_when_url_has_none(tmp_path: Path) -> None:
    settings = load_text(tmp_path, "[matchmaker_redis]\npassword = fromfile\n", url="zmq+redis://r1")
    assert settings.redis_password == "fromfile"
    assert settings.redis_hosts == (("r1", 6379),)


def test_plain_zmq_sentinel_takes_sentinel_hosts(tmp_path: Path) -> None:
    settings = load_text(
        tmp_path,
        "[DEFAULT]\nrpc_zmq_matchmaker = sentinel\n"
        "[matchmaker_redis]\nsentinel_hosts = s1:26379,s2\n"
        "sentinel_group_name = mymaster\nsocket_timeout = 500\n",
    )
    assert settings.matchmaker == "sentinel"
    assert settings.redis_hosts == (("s1", 26379), ("s2", 26379))
    assert settings.sentinel_group_name == "mymaster"
    assert settings.redis_socket_timeout == 0.5


@pytest.mark.parametrize(
    ("url", "group"),
    [
        ("zmq+sentinel://h1:26379/mymaster", "mymaster"),
        ("zmq+sentinel://h1:26379?sentinel_group_name=fromquery", "fromquery"),
        ("zmq+sentinel://h1:26379/frompath?sentinel_group_name=fromquery", "fromquery"),
        ("zmq+sentinel://h1:26379", "oslo-messaging-zeromq"),
    ],
)
def test_sentinel_group_name_sources(url: str, group: str) -> None:
    assert load_settings(url=url).sentinel_group_name == group


def test_sentinel_without_any_hosts_is_an_error() -> None:
    with pytest.raises(ConfigError, match="sentinel_hosts"):
        load_settings(overrides={"rpc_zmq_matchmaker": "sentinel"})


def test_url_scheme_wins_over_rpc_zmq_matchmaker() -> None:
    settings = load_settings(url="zmq+redis://r1:6379", overrides={"rpc_zmq_matchmaker": "dummy"})
    assert settings.matchmaker == "redis"


# --------------------------------------------------------------------------- ring file


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "not found (rpc_zmq_matchmaker_ringfile)"),
        ("{not json", "not valid JSON"),
        ('["sched1"]', "JSON object mapping"),
        ('{"scheduler": "sched1"}', "JSON object mapping"),
        ('{"scheduler": [1, 2]}', "JSON object mapping"),
    ],
)
def test_bad_ring_file(tmp_path: Path, content: str | None, message: str) -> None:
    ring = tmp_path / "ring.json"
    if content is not None:
        ring.write_text(content)
    overrides = {"rpc_zmq_matchmaker": "ring", "rpc_zmq_matchmaker_ringfile": str(ring)}
    with pytest.raises(ConfigError, match="ring file") as info:
        load_settings(overrides=overrides)
    assert message in str(info.value)
    assert str(ring) in str(info.value)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"rpc_zmq_min_port": 60000, "rpc_zmq_max_port": 50000}, "rpc_zmq_min_port (60000)"),
        ({"rpc_zmq_min_port": 0}, "rpc_zmq_min_port"),
        ({"rpc_zmq_max_port": 70000}, "rpc_zmq_max_port"),
        ({"rpc_zmq_serialization": "yaml"}, "rpc_zmq_serialization"),
        ({"rpc_zmq_matchmaker": "zookeeper"}, "rpc_zmq_matchmaker"),
        ({"zmq_target_expire": 60, "zmq_target_update": 90}, "zmq_target_update (90)"),
        ({"rpc_zmq_hwm": 0}, "rpc_zmq_hwm"),
        ({"rpc_zmq_hwm": -5}, "-5"),
        ({"rpc_zmq_max_message_size": 0}, "rpc_zmq_max_message_size"),
        ({"zmq_connect_timeout": 0}, "zmq_connect_timeout"),
        ({"subscribe_on": ["localhost"]}, "'localhost'"),
        ({"subscribe_on": ["localhost:60001", "host-2:abc"]}, "subscribe_on"),
        ({"use_pub_sub": "maybe"}, "use_pub_sub"),
        ({"frontend_port": 70000}, "frontend_port"),
        ({"no_such_option": 1}, "no_such_option"),
        ({"rpc_zmq_hwm": None}, "rpc_zmq_hwm"),
    ],
)
def test_bad_values_raise_config_error_naming_them(overrides: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(overrides=overrides)
    assert expected in str(info.value)


def test_target_update_may_exceed_expire_when_records_never_expire() -> None:
    settings = load_settings(overrides={"zmq_target_expire": 0, "zmq_target_update": 500})
    assert (settings.zmq.zmq_target_expire, settings.zmq.zmq_target_update) == (0, 500)


def test_unknown_serialization_in_file_names_option_and_choices(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, "[oslo_messaging_zmq]\nrpc_zmq_serialization = yaml\n")
    message = str(info.value)
    assert "rpc_zmq_serialization" in message
    assert "json, msgpack" in message
    assert "yaml" in message


def test_bad_integer_in_file_names_option(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="rpc_zmq_min_port") as info:
        load_text(tmp_path, "[oslo_messaging_zmq]\nrpc_zmq_min_port = lots\n")
    assert "lots" in str(info.value)


def test_min_port_above_max_port_in_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"rpc_zmq_min_port \(9000\).*rpc_zmq_max_port \(8000\)"):
        load_text(tmp_path, "[oslo_messaging_zmq]\nrpc_zmq_min_port = 9000\nrpc_zmq_max_port = 8000\n")


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("rpc_zmq_hwm=many", "many"),
        ("rpc_zmq_serialization=yaml", "json, msgpack"),
        ("use_pub_sub=perhaps", "use_pub_sub"),
        ("bogus=1", "bogus"),
        ("frontend_port=1", "frontend_port"),
    ],
)
def test_bad_query_parameters(query: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(url=f"zmq+redis://:hunter2@r1:6379?{query}")
    assert expected in str(info.value)
    assert "hunter2" not in str(info.value)


# --------------------------------------------------------------------------- transport URL parsing


@pytest.mark.parametrize(
    ("url", "scheme", "matchmaker", "hosts", "username", "password", "vhost"),
    [
        ("zmq://", "zmq", None, (), None, None, None),
        ("zmq:///", "zmq", None, (), None, None, None),
        ('"zmq://"', "zmq", None, (), None, None, None),
        ("  'zmq+redis://127.0.0.1:6379' ", "zmq+redis", "redis", (("127.0.0.1", 6379),), None, None, None),
        ("zmq+redis://r1", "zmq+redis", "redis", (("r1", 6379),), None, None, None),
        (
            "zmq+redis://r1:6379,r2:6380",
            "zmq+redis",
            "redis",
            (("r1", 6379), ("r2", 6380)),
            None,
            None,
            None,
        ),
        (
            "zmq+sentinel://h1:26379,h2:26379,h3:26379",
            "zmq+sentinel",
            "sentinel",
            (("h1", 26379), ("h2", 26379), ("h3", 26379)),
            None,
            None,
            None,
        ),
        (
            "zmq+sentinel://h1,h2",
            "zmq+sentinel",
            "sentinel",
            (("h1", 26379), ("h2", 26379)),
            None,
            None,
            None,
        ),
        ("zmq+redis://:secret@h:6379", "zmq+redis", "redis", (("h", 6379),), None, "secret", None),
        (
            "zmq+redis://user:pw@h1:7000,h2:7001",
            "zmq+redis",
            "redis",
            (("h1", 7000), ("h2", 7001)),
            "user",
            "pw",
            None,
        ),
        ("zmq+redis://:p%40ss@h", "zmq+redis", "redis", (("h", 6379),), None, "p@ss", None),
        (
            "zmq+sentinel://h1:26379/mymaster",
            "zmq+sentinel",
            "sentinel",
            (("h1", 26379),),
            None,
            None,
            "mymaster",
        ),
        ("zmq+redis://[::1]:6379", "zmq+redis", "redis", (("::1", 6379),), None, None, None),
        (
            "zmq+sentinel://[fe80::1],[::1]:26380",
            "zmq+sentinel",
            "sentinel",
            (("fe80::1", 26379), ("::1", 26380)),
            None,
            None,
            None,
        ),
        ("ZMQ+Redis://r1:1", "zmq+redis", "redis", (("r1", 1),), None, None, None),
    ],
)
def test_parse_transport_url(
    url: str,
    scheme: str,
    matchmaker: str | None,
    hosts: tuple[tuple[str, int], ...],
    username: str | None,
    password: str | None,
    vhost: str | None,
) -> None:
    parsed = parse_transport_url(url)
    assert (parsed.scheme, parsed.matchmaker, parsed.hosts) == (scheme, matchmaker, hosts)
    assert (parsed.username, parsed.password, parsed.virtual_host) == (username, password, vhost)


def test_parse_transport_url_query() -> None:
    parsed = parse_transport_url("zmq+sentinel://h1/grp?sentinel_group_name=x&zmq_linger=5")
    assert parsed.query == {"sentinel_group_name": "x", "zmq_linger": "5"}
    assert parsed.virtual_host == "grp"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://h:1", "'http'"),
        ("zmq+foo://h:1", "'zmq+foo'"),
        ("rabbit://", "'rabbit'"),
        ("zmq", "expected scheme://"),
        ("", "expected scheme://"),
        ("zmq+redis://h:abc", "'abc'"),
        ("zmq+redis://h:0", "port 0 out of range"),
        ("zmq+redis://h:65536", "port 65536 out of range"),
        ("zmq+redis://h:", "bad port ''"),
        ("zmq+redis://h1:6379,,h2:6379", "empty host"),
        ("zmq+redis://h1:6379,", "empty host"),
        ("zmq+redis://:6379", "empty host"),
        ("zmq+redis://::1:6379", "brackets"),
        ("zmq+redis://[::1:6379", "zmq+redis://[::1:6379"),
        ("zmq+redis://a:b@h1,c:d@h2", "different credentials"),
        ("zmq+redis://h#frag", "fragment"),
    ],
)
def test_bad_transport_urls(url: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_transport_url(url)
    assert expected in str(info.value)


def test_bad_url_error_quotes_url_with_password_masked() -> None:
    with pytest.raises(ConfigError) as info:
        parse_transport_url("zmq+redis://user:hunter2@h1:6379,h2:abc")
    message = str(info.value)
    assert "'zmq+redis://user:***@h1:6379,h2:abc'" in message
    assert "hunter2" not in message
    assert "'abc'" in message


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("zmq+redis://:pw@h:1", "zmq+redis://:***@h:1"),
        ("zmq+redis://u:p@ss@h:1/x?y=1", "zmq+redis://u:***@h:1/x?y=1"),
        ("zmq+redis://h:1", "zmq+redis://h:1"),
        ("zmq+redis://u@h:1", "zmq+redis://u@h:1"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert config.mask_url(url) == masked


@pytest.mark.parametrize(
    ("text", "default", "expected"),
    [
        ("localhost:60001", None, ("localhost", 60001)),
        ("[::1]:50003", None, ("::1", 50003)),
        ("h", 26379, ("h", 26379)),
        (" h:1 ", None, ("h", 1)),
    ],
)
def test_parse_host_port(text: str, default: int | None, expected: tuple[str, int]) -> None:
    assert config.parse_host_port(text, default) == expected


def test_parse_host_port_requires_port_without_default() -> None:
    with pytest.raises(ConfigError, match="no port"):
        config.parse_host_port("localhost")


# --------------------------------------------------------------------------- Settings object


@pytest.mark.parametrize(
    ("bind", "host", "expected"),
    [
        ("*", "node-1", "node-1"),
        ("eth0", "node-1", "node-1"),
        ("0.0.0.0", "node-1", "node-1"),
        ("::", "node-1", "node-1"),
        ("10.0.0.5", "node-1", "10.0.0.5"),
        ("fd00::5", "node-1", "fd00::5"),
    ],
)
def test_advertise_host(bind: str, host: str, expected: str) -> None:
    settings = load_settings(overrides={"rpc_zmq_bind_address": bind, "rpc_zmq_host": host})
    assert settings.zmq.advertise_host == expected


def test_settings_are_immutable() -> None:
    settings = load_settings()
    with pytest.raises(AttributeError):
        settings.zmq.rpc_zmq_hwm = 5  # type: ignore[misc]
    with pytest.raises(AttributeError):
        settings.matchmaker = "dummy"  # type: ignore[misc]
    with pytest.raises(AttributeError, match="no_such_option"):
        _ = settings.zmq.no_such_option
    with pytest.raises(TypeError):
        settings.zmq["rpc_zmq_hwm"] = 5  # type: ignore[index]
    assert settings.zmq["rpc_zmq_hwm"] == 1000
    assert isinstance(load_fixture("guide-local-publisher-service.conf").zmq.subscribe_on, tuple)


def test_with_zmq_returns_validated_copy() -> None:
    settings = load_settings(url="zmq+redis://r1:6379?rpc_zmq_hwm=10")
    changed = settings.with_zmq(use_router_proxy=True, zmq_linger="7", rpc_zmq_bind_address="10.1.1.1")
    assert changed.zmq.use_router_proxy is True
    assert changed.zmq.zmq_linger == 7
    assert changed.zmq.advertise_host == "10.1.1.1"
    assert changed.zmq.rpc_zmq_hwm == 10
    assert changed.redis_hosts == (("r1", 6379),)
    assert settings.zmq.use_router_proxy is False
    assert settings.zmq.advertise_host == HOSTNAME
    with pytest.raises(ConfigError, match="rpc_zmq_hwm"):
        settings.with_zmq(rpc_zmq_hwm=0)
    with pytest.raises(ConfigError, match="advertise_host"):
        settings.with_zmq(advertise_host="x")
    assert settings.with_zmq(rpc_zmq_matchmaker="dummy").matchmaker == "redis"  # the URL scheme decides


def test_with_zmq_can_switch_plain_zmq_matchmaker() -> None:
    settings = load_settings(overrides={"rpc_zmq_matchmaker": "dummy"})
    assert settings.with_zmq(rpc_zmq_matchmaker="redis").redis_hosts == (("127.0.0.1", 6379),)


def test_settings_survive_pickling_and_compare_equal() -> None:
    settings = load_fixture("guide-local-publisher-service.conf", url="zmq+redis://:pw@host-1:6379")
    copy = pickle.loads(pickle.dumps(settings))
    assert copy == settings
    assert hash(copy) == hash(settings)
    assert copy.zmq.subscribe_on == ("localhost:60001",)
    assert copy.redis_password == "pw"


def test_every_numeric_option_has_a_range() -> None:
    """A numeric option without min= would take any value silently (a negative ack timeout, say)."""
    unbounded = [
        f"[{group}] {name}"
        for group, opts in config._GROUP_OPTS.items()
        for name, opt in opts.items()
        if isinstance(opt, (cfg.IntOpt, cfg.FloatOpt, cfg.PortOpt)) and getattr(opt.type, "min", None) is None
    ]
    assert unbounded == []


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("rpc_ack_timeout_base", "-5"),
        ("rpc_ack_timeout_multiplier", "-2"),
        ("rpc_message_ttl", "-10"),
        ("rpc_reply_cache_bytes", "-1"),
        ("rpc_retry_attempts", "-2"),
        ("rpc_thread_pool_size", "0"),
    ],
)
def test_out_of_range_value_in_a_file_is_refused_naming_the_option(
    tmp_path: Path, name: str, value: str
) -> None:
    with pytest.raises(config.ConfigError, match=rf"\[oslo_messaging_zmq\] {name}.*greater than or equal"):
        load_text(tmp_path, f"[oslo_messaging_zmq]\n{name} = {value}\n")


def test_out_of_range_value_in_the_url_query_is_refused_naming_the_option() -> None:
    with pytest.raises(config.ConfigError, match=r"rpc_ack_timeout_base.*greater than or equal"):
        config.load_settings(url="zmq://?rpc_ack_timeout_base=-5")
