"""Option groups, transport URL parsing and the effective settings of a zmqrpc process.

Options are oslo.config options in the groups the deployment guide documents: ``[DEFAULT] transport_url``,
``[oslo_messaging_zmq]``, ``[zmq_proxy_opts]`` and the deprecated ``[matchmaker_redis]``. Older placements
(``[DEFAULT]`` for driver options, ``[zmq_proxy_opt]`` for the proxy) are accepted as deprecated aliases.

`load_settings` merges config files, the transport URL (whose query parameters override options) and
explicit overrides into one validated, immutable `Settings` object that the rest of the package reads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import socket
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

from oslo_config import cfg

from zmqrpc.address import DEFAULT_REDIS_PORT, DEFAULT_SENTINEL_PORT, parse_host_port
from zmqrpc.errors import ConfigError

ZMQ_GROUP = "oslo_messaging_zmq"
PROXY_GROUP = "zmq_proxy_opts"
REDIS_GROUP = "matchmaker_redis"

DEFAULT_TRANSPORT_URL = "zmq://"

# URL scheme -> matchmaker it selects (None: taken from rpc_zmq_matchmaker).
SCHEMES: Mapping[str, str | None] = MappingProxyType(
    {
        "zmq": None,
        "zmq+redis": "redis",
        "zmq+sentinel": "sentinel",
        "zmq+rediss": "redis",  # TLS, as redis-py's rediss://
        "zmq+sentinels": "sentinel",  # TLS to the Sentinels and to Redis
    }
)
TLS_SCHEMES = frozenset({"zmq+rediss", "zmq+sentinels"})
# Query keys that are not [oslo_messaging_zmq] options.
_URL_ONLY_QUERY_KEYS = frozenset({"sentinel_group_name"})


def _zmq_opt(opt_cls: type[cfg.Opt], name: str, **kwargs: Any) -> cfg.Opt:
    """An [oslo_messaging_zmq] option that older files may still put in [DEFAULT]."""
    return opt_cls(name, deprecated_group="DEFAULT", **kwargs)


TRANSPORT_URL_OPT = cfg.StrOpt(
    "transport_url",
    secret=True,
    help="Messaging backend URL: zmq:// (matchmaker from rpc_zmq_matchmaker), "
    "zmq+redis://host:port[,host:port] or zmq+sentinel://h1:26379,h2:26379[/group]. "
    "Any [oslo_messaging_zmq] option may be given as a query parameter and then wins.",
)

ZMQ_OPTS: tuple[cfg.Opt, ...] = (
    _zmq_opt(
        cfg.StrOpt,
        "rpc_zmq_bind_address",
        default="*",
        help="Address servers bind to: '*' (all), an IP address or an interface name.",
    ),
    _zmq_opt(
        cfg.StrOpt,
        "rpc_zmq_matchmaker",
        default="redis",
        choices=[
            ("redis", "Redis server(s), from transport_url or [matchmaker_redis]"),
            ("sentinel", "Redis Sentinel, from transport_url or [matchmaker_redis] sentinel_hosts"),
            ("dummy", "in-process, everything is local (all-in-one and tests)"),
            ("ring", "static JSON ring file (rpc_zmq_matchmaker_ringfile)"),
        ],
        help="Matchmaker used when transport_url is plain zmq://.",
    ),
    _zmq_opt(
        cfg.StrOpt,
        "rpc_zmq_matchmaker_ringfile",
        default="/etc/oslo/matchmaker_ring.json",
        deprecated_opts=[cfg.DeprecatedOpt("ringfile", group="matchmaker_ring")],
        help="JSON file mapping each bare topic to a list of hosts, for the ring matchmaker.",
    ),
    _zmq_opt(
        cfg.StrOpt,
        "rpc_zmq_host",
        default=socket.gethostname(),
        sample_default="localhost",
        help="Name of this node, advertised in the matchmaker. Must be resolvable by other nodes.",
    ),
    _zmq_opt(
        cfg.IntOpt,
        "zmq_linger",
        default=-1,
        min=-1,
        deprecated_opts=[
            cfg.DeprecatedOpt("rpc_cast_timeout", group="DEFAULT"),
            cfg.DeprecatedOpt("rpc_cast_timeout", group=ZMQ_GROUP),
        ],
        help="Seconds to wait for unsent messages when a socket closes; -1 waits forever. "
        "Set it finite with dynamic connections, or sockets to dead hosts leak.",
    ),
    _zmq_opt(
        cfg.IntOpt,
        "rpc_poll_timeout",
        default=1,
        min=1,
        help="Seconds a poll waits for incoming messages before checking for shutdown.",
    ),
    _zmq_opt(
        cfg.IntOpt,
        "zmq_target_expire",
        default=300,
        min=0,
        help="Seconds before a matchmaker record expires; 0 or less means records never expire.",
    ),
    _zmq_opt(
        cfg.IntOpt,
        "zmq_target_update",
        default=180,
        min=1,
        help="Seconds between matchmaker record refreshes by servers; about zmq_target_expire / 2.",
    ),
    _zmq_opt(
        cfg.BoolOpt,
        "use_pub_sub",
        default=False,
        help="Send fanout through PUB/SUB publisher proxies. Must match across all services and proxies.",
    ),
    _zmq_opt(
        cfg.BoolOpt,
        "use_router_proxy",
        default=False,
        help="Send direct messages through ROUTER proxies instead of straight to servers.",
    ),
    _zmq_opt(
        cfg.BoolOpt,
        "use_dynamic_connections",
        default=False,
        help="Connect per message and disconnect after it, instead of keeping connections open.",
    ),
    _zmq_opt(
        cfg.IntOpt,
        "zmq_failover_connections",
        default=2,
        min=0,
        help="With dynamic connections, how many extra workers of the topic to connect to.",
    ),
    _zmq_opt(
        cfg.IntOpt,
        "rpc_zmq_min_port",
        default=49153,
        min=1,
        max=65536,
        help="Lowest port servers bind to (random binding).",
    ),
    _zmq_opt(
        cfg.IntOpt,
        "rpc_zmq_max_port",
        default=65536,
        min=1,
        max=65536,
        help="Upper bound (exclusive) of the ports servers bind to (random binding).",
    ),
    _zmq_opt(
        cfg.IntOpt,
        "rpc_zmq_bind_port_retries",
        default=100,
        min=1,
        help="Random ports to try before binding fails with 'ports range exceeded'.",
    ),
    _zmq_opt(
        cfg.StrOpt,
        "rpc_zmq_serialization",
        default="json",
        choices=[("json", "JSON"), ("msgpack", "MessagePack")],
        help="Serialization of message bodies.",
    ),
    _zmq_opt(
        cfg.BoolOpt,
        "zmq_immediate",
        default=True,
        help="Queue outgoing messages only on completed connections (ZMQ_IMMEDIATE).",
    ),
    _zmq_opt(
        cfg.IntOpt,
        "zmq_tcp_keepalive",
        default=-1,
        min=-1,
        max=1,
        help="TCP keepalive on sockets: 1 on, 0 off, -1 OS default.",
    ),
    _zmq_opt(
        cfg.IntOpt,
        "zmq_tcp_keepalive_idle",
        default=-1,
        min=-1,
        help="Seconds of idle before the first keepalive probe; -1 OS default.",
    ),
    _zmq_opt(
        cfg.IntOpt,
        "zmq_tcp_keepalive_cnt",
        default=-1,
        min=-1,
        help="Unanswered keepalive probes before a connection is dropped; -1 OS default.",
    ),
    _zmq_opt(
        cfg.IntOpt,
        "zmq_tcp_keepalive_intvl",
        default=-1,
        min=-1,
        help="Seconds between keepalive probes; -1 OS default.",
    ),
    _zmq_opt(
        cfg.IntOpt,
        "rpc_thread_pool_size",
        default=100,
        min=1,
        help="Maximum number of threads that run incoming requests.",
    ),
    _zmq_opt(
        cfg.IntOpt,
        "rpc_message_ttl",
        default=300,
        min=1,
        help="Seconds a message id is remembered for duplicate suppression.",
    ),
    _zmq_opt(
        cfg.IntOpt,
        "rpc_reply_cache_bytes",
        default=64 * 1024 * 1024,
        min=0,
        help="zmqrpc: bytes of call replies a server keeps (with rpc_use_acks) to answer a resent call "
        "without running it again. The oldest are dropped first when full; a resend whose reply was "
        "dropped gets an error, never a second run.",
    ),
    _zmq_opt(
        cfg.BoolOpt,
        "rpc_use_acks",
        default=False,
        help="Servers acknowledge receipt; clients resend unacknowledged messages.",
    ),
    _zmq_opt(
        cfg.FloatOpt,
        "rpc_ack_timeout_base",
        default=15.0,
        min=0.001,
        help="Seconds to wait for an ack before the first resend.",
    ),
    _zmq_opt(
        cfg.FloatOpt,
        "rpc_ack_timeout_multiplier",
        default=2.0,
        min=1.0,
        help="Factor the ack timeout grows by with each resend.",
    ),
    _zmq_opt(
        cfg.IntOpt,
        "rpc_retry_attempts",
        default=3,
        min=-1,
        help="Resends of an unacknowledged message; -1 means retry forever.",
    ),
    _zmq_opt(
        cfg.ListOpt,
        "subscribe_on",
        default=[],
        help="host:port publishers to subscribe to (e.g. a local publisher localhost:60001). "
        "When set, wins over the publishers found in the matchmaker.",
    ),
    _zmq_opt(
        cfg.StrOpt,
        "rpc_zmq_ipc_dir",
        default="/var/run/openstack",
        help="Directory for IPC sockets. Accepted for old config files; unused by zmqrpc.",
    ),
    _zmq_opt(
        cfg.IntOpt,
        "rpc_zmq_contexts",
        default=1,
        min=1,
        help="Number of ZeroMQ contexts. Accepted for old config files; unused by zmqrpc.",
    ),
    _zmq_opt(
        cfg.IntOpt,
        "rpc_zmq_topic_backlog",
        min=0,
        help="Maximum queued messages per topic. Accepted for old config files; unused by zmqrpc.",
    ),
    _zmq_opt(
        cfg.IntOpt,
        "rpc_zmq_hwm",
        default=1000,
        min=1,
        help="zmqrpc: send and receive high-water mark of every socket, in messages. Must be > 0, so "
        "queues are bounded.",
    ),
    _zmq_opt(
        cfg.IntOpt,
        "rpc_zmq_max_message_size",
        default=16 * 1024 * 1024,
        min=1024,
        help="zmqrpc: largest message accepted, in bytes; larger received messages are dropped and counted.",
    ),
    _zmq_opt(
        cfg.FloatOpt,
        "zmq_connect_timeout",
        default=3.0,
        min=0.001,
        help="zmqrpc: seconds a dynamic connection waits for a peer before trying the next worker.",
    ),
    _zmq_opt(
        cfg.FloatOpt,
        "rpc_zmq_cache_refresh",
        default=10.0,
        min=0.01,
        help="zmqrpc: seconds between refreshes of the client routing cache from the matchmaker.",
    ),
    _zmq_opt(
        cfg.IntOpt,
        "metrics_port",
        default=0,
        min=0,
        max=65535,
        help="zmqrpc: serve Prometheus metrics of this process's clients and servers on this port (0: off). "
        "A service with several worker processes sets PROMETHEUS_MULTIPROC_DIR; one of them serves the sum.",
    ),
    _zmq_opt(
        cfg.StrOpt,
        "metrics_bind_address",
        default="127.0.0.1",
        help="zmqrpc: address the metrics port listens on.",
    ),
    _zmq_opt(
        cfg.StrOpt,
        "zmq_fallback_transport_url",
        secret=True,
        help="zmqrpc (oslo.messaging driver): transport URL of a second backend, e.g. "
        "rabbit://user:pass@host:5672/, for migrating a fleet node by node. Servers listen on zmq and on it; "
        "calls and casts go over zmq when their target is registered in the matchmaker, else over it. "
        "Unset: zmq only.",
    ),
    _zmq_opt(
        cfg.BoolOpt,
        "zmq_fallback_fanout",
        default=True,
        help="zmqrpc (oslo.messaging driver): while zmq_fallback_transport_url is set, send fanout casts "
        "and notifications over the fallback, which every node of a migrating fleet listens on. Set it "
        "to false on every node once all of them run the zmq receiver, before removing the fallback.",
    ),
    _zmq_opt(
        cfg.BoolOpt,
        "zmq_receiver_enabled",
        default=True,
        mutable=True,
        help="zmqrpc (oslo.messaging driver): run the zmq receiver of this service's servers and "
        "listeners. Mutable: set it to false and reload the config (SIGHUP to an oslo.service service) to "
        "unregister, drain and stop the receivers while the service keeps serving over "
        "zmq_fallback_transport_url (rolling a node back); true starts them again.",
    ),
)

SECURITY_OPTS: tuple[cfg.Opt, ...] = (
    _zmq_opt(
        cfg.StrOpt,
        "zmq_security",
        default="none",
        choices=[
            ("none", "no authentication, no encryption (only the firewall stands in the way)"),
            ("curve", "CurveZMQ on every socket: peers authenticated by key, traffic encrypted"),
        ],
        help="zmqrpc: security of the bus. Every node of a bus must use the same value.",
    ),
    _zmq_opt(
        cfg.StrOpt,
        "zmq_curve_secret_key_file",
        default="",
        help="zmqrpc: this node's CURVE certificate with its secret key (<name>.key_secret, as "
        "zmq.auth.create_certificates writes it; mode 0600). <name> is the node's key name, normally its "
        "host name.",
    ),
    _zmq_opt(
        cfg.StrOpt,
        "zmq_curve_allowed_keys_dir",
        default="",
        help="zmqrpc: directory of the public certificates (<name>.key) of every peer allowed to connect; "
        "a server's or proxy's key is also taken from here by its name. Re-read when it changes (key "
        "rotation).",
    ),
    _zmq_opt(
        cfg.ListOpt,
        "zmq_curve_authorization",
        default=[],
        help="zmqrpc: which key names may send to which topics, as <key glob>:<topic glob>[:<types>], "
        "types joined by '+' from call, cast, fanout, notify (all if omitted); {key} in the topic glob is "
        "the sender's key name. E.g. 'controller-*:*', 'compute-*:conductor:call+cast', "
        "'compute-*:compute.{key}'. A request no rule allows is refused. Empty: every allowed key may "
        "send anything.",
    ),
)

PROXY_OPTS: tuple[cfg.Opt, ...] = (
    cfg.StrOpt(
        "host",
        default=socket.gethostname(),
        sample_default="localhost",
        deprecated_group="zmq_proxy_opt",
        help="Host name or address the proxy advertises in the matchmaker.",
    ),
    *(
        cfg.IntOpt(
            f"{kind}_port",
            default=0,
            min=0,
            max=65535,
            deprecated_group="zmq_proxy_opt",
            help=f"Port of the proxy's {kind} socket; 0 means a random port.",
        )
        for kind in ("frontend", "backend", "publisher")
    ),
    cfg.BoolOpt(
        "local_publisher",
        default=False,
        deprecated_group="zmq_proxy_opt",
        help="Run as a local publisher that subscribes to the central publishers.",
    ),
    cfg.IntOpt(
        "metrics_port",
        default=0,
        min=0,
        max=65535,
        deprecated_group="zmq_proxy_opt",
        help="zmqrpc: serve the proxy's Prometheus metrics on this port (0: off), on "
        "[oslo_messaging_zmq] metrics_bind_address.",
    ),
)

REDIS_OPTS: tuple[cfg.Opt, ...] = (
    cfg.StrOpt("host", default="127.0.0.1", help="Redis host, used when transport_url names none."),
    cfg.IntOpt("port", default=DEFAULT_REDIS_PORT, min=1, max=65535, help="Redis port."),
    cfg.StrOpt(
        "username",
        default="",
        help="zmqrpc: Redis ACL user (Redis 6+), with password; the transport_url user wins. Empty: the "
        "default user.",
    ),
    cfg.StrOpt(
        "password",
        default="",
        secret=True,
        help="Redis password; the transport_url password wins. 'None' or empty means none.",
    ),
    cfg.BoolOpt(
        "ssl",
        default=False,
        help="zmqrpc: talk TLS to Redis and Sentinel (as zmq+rediss:// and zmq+sentinels:// do).",
    ),
    cfg.StrOpt(
        "ssl_ca_file",
        default="",
        help="zmqrpc: CA certificate(s) that Redis's TLS certificate is checked against.",
    ),
    cfg.StrOpt(
        "ssl_cert_file",
        default="",
        help="zmqrpc: client certificate for Redis TLS (when Redis asks for one).",
    ),
    cfg.StrOpt("ssl_key_file", default="", help="zmqrpc: the client certificate's private key."),
    cfg.StrOpt(
        "sentinel_username", default="", help="zmqrpc: ACL user for the Sentinels themselves (empty: none)."
    ),
    cfg.StrOpt(
        "sentinel_password",
        default="",
        secret=True,
        help="zmqrpc: password for the Sentinels themselves (their requirepass); empty: none.",
    ),
    cfg.ListOpt(
        "sentinel_hosts", default=[], help="host:port Sentinels, used when transport_url names none."
    ),
    cfg.StrOpt("sentinel_group_name", default="oslo-messaging-zeromq", help="Sentinel master group name."),
    cfg.IntOpt("wait_timeout", default=2000, min=1, help="Milliseconds to wait between connection attempts."),
    cfg.IntOpt(
        "check_timeout", default=20000, min=1, help="Milliseconds to wait for Redis to become available."
    ),
    cfg.IntOpt(
        "socket_timeout", default=10000, min=1, help="Milliseconds a Redis socket operation may take."
    ),
)

_GROUP_OPTS: Mapping[str, Mapping[str, cfg.Opt]] = MappingProxyType(
    {
        group: MappingProxyType({opt.dest: opt for opt in opts})
        for group, opts in (
            (ZMQ_GROUP, ZMQ_OPTS + SECURITY_OPTS),
            (PROXY_GROUP, PROXY_OPTS),
            (REDIS_GROUP, REDIS_OPTS),
        )
    }
)


def register_opts(conf: cfg.ConfigOpts) -> None:
    """Register all zmqrpc options on *conf*; safe to call repeatedly."""
    # oslo.messaging may have registered its own transport_url already; it is read the same way.
    with contextlib.suppress(cfg.DuplicateOptError):
        conf.register_opt(TRANSPORT_URL_OPT)
    for group, opts in _GROUP_OPTS.items():
        conf.register_opts(list(opts.values()), group=group)


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """All options by group, for oslo-config-generator."""
    default: list[cfg.Opt] = [TRANSPORT_URL_OPT]
    return [("DEFAULT", default)] + [(g, list(opts.values())) for g, opts in _GROUP_OPTS.items()]


# --------------------------------------------------------------------------- transport URL


@dataclasses.dataclass(frozen=True)
class TransportURL:
    """A parsed ``zmq[+redis|+sentinel]://`` transport URL."""

    scheme: str
    matchmaker: str | None
    hosts: tuple[tuple[str, int], ...]
    username: str | None
    password: str | None = dataclasses.field(repr=False)
    virtual_host: str | None
    query: dict[str, str]
    url: str = dataclasses.field(repr=False)  # the URL text, quotes stripped

    @property
    def masked(self) -> str:
        """The URL with its password replaced by ``***``, safe to log."""
        return mask_url(self.url)


def mask_url(url: str) -> str:
    """Replace every ``user:password@`` password in *url* by ``***``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    masked = []
    for segment in rest[:end].split(","):
        creds, at, host = segment.rpartition("@")
        if at and ":" in creds:
            segment = f"{creds.partition(':')[0]}:***@{host}"
        masked.append(segment)
    return f"{scheme}{sep}{','.join(masked)}{rest[end:]}"


def _strip_quotes(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


def parse_transport_url(url: str) -> TransportURL:
    """Parse *url*; raise ConfigError naming the bad part for anything but the supported zmq schemes."""
    text = _strip_quotes(url)
    masked = mask_url(text)
    try:
        parts = urlsplit(text)
    except ValueError as exc:
        raise ConfigError(f"malformed transport URL {masked!r}: {exc}") from None
    if "://" not in text:
        raise ConfigError(f"malformed transport URL {masked!r}: expected scheme://[hosts][/path][?query]")
    if parts.scheme not in SCHEMES:
        raise ConfigError(
            f"unsupported scheme {parts.scheme!r} in transport URL {masked!r}: use one of "
            + ", ".join(f"{s}://" for s in SCHEMES)
        )
    if parts.fragment:
        raise ConfigError(f"unexpected fragment {parts.fragment!r} in transport URL {masked!r}")
    matchmaker = SCHEMES[parts.scheme]
    default_port = DEFAULT_SENTINEL_PORT if matchmaker == "sentinel" else DEFAULT_REDIS_PORT
    try:
        hosts, username, password = _parse_netloc(parts, default_port)
    except ConfigError as exc:
        raise ConfigError(f"bad host list in transport URL {masked!r}: {exc}") from None
    return TransportURL(
        scheme=parts.scheme,
        matchmaker=matchmaker,
        hosts=hosts,
        username=username,
        password=password,
        virtual_host=unquote(parts.path.lstrip("/")) or None,
        query=dict(parse_qsl(parts.query, keep_blank_values=True)),
        url=text,
    )


def _parse_netloc(
    parts: SplitResult, default_port: int
) -> tuple[tuple[tuple[str, int], ...], str | None, str | None]:
    """Hosts and the one set of credentials of a URL's netloc (credentials given once apply to all)."""
    if not parts.netloc:
        return (), None, None
    hosts = []
    credentials: set[tuple[str | None, str | None]] = set()
    for segment in parts.netloc.split(","):
        creds, at, hostport = segment.rpartition("@")
        if at:
            user, colon, secret = creds.partition(":")
            credentials.add((unquote(user) or None, unquote(secret) if colon else None))
        hosts.append(parse_host_port(hostport, default_port))
    if len(credentials) > 1:
        raise ConfigError("hosts give different credentials; give them once for all hosts")
    username, password = credentials.pop() if credentials else (None, None)
    return tuple(hosts), username, password


# --------------------------------------------------------------------------- settings


class OptionValues(Mapping[str, Any]):
    """Read-only effective values of one option group, readable as attributes or as a mapping."""

    __slots__ = ("_group", "_secrets", "_values")

    def __init__(self, group: str, values: Mapping[str, Any], secrets: frozenset[str] = frozenset()) -> None:
        frozen = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        object.__setattr__(self, "_group", group)
        object.__setattr__(self, "_secrets", secrets)
        object.__setattr__(self, "_values", MappingProxyType(frozen))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"[{self._group}] has no option {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"[{self._group}] settings are read-only")

    __delattr__ = __setattr__  # type: ignore[assignment]

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __hash__(self) -> int:
        return hash((self._group, frozenset(self._values.items())))

    def __reduce__(self) -> tuple[Any, ...]:
        return (OptionValues, (self._group, dict(self._values), self._secrets))

    def __repr__(self) -> str:
        shown = {k: "***" if k in self._secrets and v else v for k, v in self._values.items()}
        return f"OptionValues({self._group!r}, {shown!r})"


@dataclasses.dataclass(frozen=True)
class Settings:
    """Validated, effective configuration of one zmqrpc process."""

    zmq: OptionValues  # every [oslo_messaging_zmq] option, plus the derived advertise_host
    proxy: OptionValues  # [zmq_proxy_opts]
    matchmaker: str  # redis, sentinel, dummy or ring
    redis_hosts: tuple[tuple[str, int], ...]  # Redis servers or Sentinels; empty for dummy and ring
    redis_username: str | None
    redis_password: str | None = dataclasses.field(repr=False)
    sentinel_group_name: str
    redis_socket_timeout: float  # seconds
    ringfile: str | None  # set for the ring matchmaker only
    redis_tls: bool  # TLS to Redis and Sentinel (zmq+rediss://, zmq+sentinels:// or [matchmaker_redis] ssl)
    transport_url: str = dataclasses.field(repr=False)
    matchmaker_redis: OptionValues = dataclasses.field(repr=False)  # raw [matchmaker_redis] values

    def with_zmq(self, **changes: Any) -> Settings:
        """A copy with some [oslo_messaging_zmq] options changed, validated like load_settings."""
        zmq = {k: v for k, v in self.zmq.items() if k in _GROUP_OPTS[ZMQ_GROUP]}
        for name, value in changes.items():
            zmq[name] = _convert(ZMQ_GROUP, name, value, "with_zmq")
        return _build_settings(
            parse_transport_url(self.transport_url), zmq, dict(self.proxy), dict(self.matchmaker_redis)
        )


def load_settings(
    conf: cfg.ConfigOpts | None = None,
    url: str | None = None,
    config_files: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> Settings:
    """Effective settings from *conf* (or *config_files*), the transport URL and *overrides*, validated.

    Precedence, lowest first: option defaults, config files, transport URL query parameters, *overrides*
    (option names of [oslo_messaging_zmq] or [zmq_proxy_opts] mapped to Python values). *conf* is read
    but never modified beyond registering the options.
    """
    if conf is None:
        conf = cfg.ConfigOpts()
        register_opts(conf)
        if config_files:
            _parse_config_files(conf, config_files)
    elif config_files:
        raise ConfigError("config_files can only be given without conf; parse them into conf instead")
    else:
        register_opts(conf)

    parsed = parse_transport_url(url if url is not None else conf.transport_url or DEFAULT_TRANSPORT_URL)
    zmq, proxy, redis = (_read_group(conf, group) for group in (ZMQ_GROUP, PROXY_GROUP, REDIS_GROUP))
    for key, value in parsed.query.items():
        if key in _URL_ONLY_QUERY_KEYS:
            continue
        if key not in zmq:
            raise ConfigError(
                f"unknown option {key!r} in the query of transport URL {parsed.masked!r}: "
                f"query parameters must name [{ZMQ_GROUP}] options"
            )
        zmq[key] = _convert(ZMQ_GROUP, key, value, "transport URL")
    for key, value in (overrides or {}).items():
        if key not in zmq and key not in proxy:
            raise ConfigError(f"unknown option {key!r} in overrides: not in [{ZMQ_GROUP}] or [{PROXY_GROUP}]")
        group, values = (ZMQ_GROUP, zmq) if key in zmq else (PROXY_GROUP, proxy)
        values[key] = _convert(group, key, value, "overrides")
    return _build_settings(parsed, zmq, proxy, redis)


def _parse_config_files(conf: cfg.ConfigOpts, config_files: list[str]) -> None:
    try:
        conf(args=[], default_config_files=list(config_files))
    except cfg.ConfigFilesNotFoundError as exc:
        raise ConfigError(f"config file not found: {', '.join(exc.config_files)}") from None
    except cfg.Error as exc:
        raise ConfigError(f"cannot load config files {', '.join(config_files)}: {exc}") from None


def _choices_hint(opt: cfg.Opt) -> str:
    choices = getattr(opt.type, "choices", None)
    return f" (allowed: {', '.join(map(str, choices))})" if choices else ""


def _read_group(conf: cfg.ConfigOpts, group: str) -> dict[str, Any]:
    """The values of *group* in *conf*, with oslo.config's value errors turned into ConfigError."""
    values = {}
    for name, opt in _GROUP_OPTS[group].items():
        try:
            values[name] = conf[group][name]
        except (cfg.Error, ValueError) as exc:
            raise ConfigError(f"invalid [{group}] {name}{_choices_hint(opt)}: {exc}") from None
    return values


def _convert(group: str, name: str, value: Any, source: str) -> Any:
    """Convert *value* (text or Python) with the option's own oslo.config type."""
    opt = _GROUP_OPTS[group].get(name)
    if opt is None:
        raise ConfigError(f"unknown option {name!r} in {source}: not an option of [{group}]")
    try:
        converted = None if value is None else opt.type(value)
    except (ValueError, TypeError, AttributeError) as exc:
        raise ConfigError(
            f"invalid value {value!r} for [{group}] {name} from {source}{_choices_hint(opt)}: {exc}"
        ) from None
    if converted is None and opt.default is not None:
        raise ConfigError(f"[{group}] {name} from {source} needs a value, got {value!r}")
    return converted


def _validate_zmq(zmq: Mapping[str, Any]) -> None:
    """Cross-option checks that oslo.config types cannot express."""
    if zmq["rpc_zmq_min_port"] > zmq["rpc_zmq_max_port"]:
        raise ConfigError(
            f"rpc_zmq_min_port ({zmq['rpc_zmq_min_port']}) is greater than "
            f"rpc_zmq_max_port ({zmq['rpc_zmq_max_port']})"
        )
    expire, update = zmq["zmq_target_expire"], zmq["zmq_target_update"]
    if expire > 0 and update > expire:
        raise ConfigError(
            f"zmq_target_update ({update}) is greater than zmq_target_expire ({expire}): records would "
            "expire before servers refresh them; use about zmq_target_expire / 2"
        )
    for entry in zmq["subscribe_on"]:
        try:
            parse_host_port(entry)
        except ConfigError as exc:
            raise ConfigError(f"subscribe_on entry {entry!r} is not host:port: {exc}") from None


def _advertise_host(zmq: Mapping[str, Any]) -> str:
    """rpc_zmq_bind_address when it is a concrete IP address, else rpc_zmq_host."""
    try:
        address = ipaddress.ip_address(zmq["rpc_zmq_bind_address"].strip("[]"))
    except ValueError:  # '*' or an interface name
        return zmq["rpc_zmq_host"]
    return zmq["rpc_zmq_host"] if address.is_unspecified else str(address)


def _no_password(value: str | None) -> bool:
    return value is None or value.strip() in ("", "None")


def _redis_endpoint(
    parsed: TransportURL, matchmaker: str, redis: Mapping[str, Any]
) -> tuple[tuple[tuple[str, int], ...], str | None, str | None]:
    """Redis servers (or Sentinels), username and password: from the URL, else from [matchmaker_redis]."""
    hosts = parsed.hosts
    if not hosts and matchmaker == "redis":
        hosts = ((redis["host"], redis["port"]),)
    elif not hosts:
        try:
            hosts = tuple(parse_host_port(h, DEFAULT_SENTINEL_PORT) for h in redis["sentinel_hosts"])
        except ConfigError as exc:
            raise ConfigError(f"bad [{REDIS_GROUP}] sentinel_hosts: {exc}") from None
        if not hosts:
            raise ConfigError(
                "the sentinel matchmaker needs Sentinel hosts: use zmq+sentinel://h1:26379,h2:26379 "
                f"or [{REDIS_GROUP}] sentinel_hosts"
            )
    username = parsed.username or redis["username"] or None
    if not _no_password(parsed.password):
        return hosts, username, parsed.password
    return hosts, username, None if _no_password(redis["password"]) else redis["password"]


def _redis_tls(parsed: TransportURL, redis: Mapping[str, Any]) -> bool:
    """TLS to Redis: asked for by the URL scheme or [matchmaker_redis] ssl; the files named must exist."""
    for name in ("ssl_ca_file", "ssl_cert_file", "ssl_key_file"):
        path = redis[name]
        if path and not os.path.isfile(path):
            raise ConfigError(f"[{REDIS_GROUP}] {name}: {path} is not a readable file")
    if bool(redis["ssl_cert_file"]) != bool(redis["ssl_key_file"]):
        raise ConfigError(f"[{REDIS_GROUP}] ssl_cert_file and ssl_key_file go together: set both or neither")
    return parsed.scheme in TLS_SCHEMES or bool(redis["ssl"])


def _validate_security(zmq: Mapping[str, Any]) -> None:
    """zmq_security = curve needs its two files named; the rules must parse (files are read later, by
    :mod:`zmqrpc.security`, when a client, server or proxy starts)."""
    from zmqrpc.security import parse_rules  # imported late: security imports zmq and this module's errors

    parse_rules(zmq["zmq_curve_authorization"])
    if zmq["zmq_security"] != "curve":
        return
    for name in ("zmq_curve_secret_key_file", "zmq_curve_allowed_keys_dir"):
        if not zmq[name]:
            raise ConfigError(f"zmq_security = curve needs [{ZMQ_GROUP}] {name}")


def _build_settings(
    parsed: TransportURL, zmq: dict[str, Any], proxy: dict[str, Any], redis: dict[str, Any]
) -> Settings:
    """Validate merged option values and derive the matchmaker endpoint."""
    _validate_zmq(zmq)
    _validate_security(zmq)
    matchmaker = parsed.matchmaker or zmq["rpc_zmq_matchmaker"]
    hosts: tuple[tuple[str, int], ...] = ()
    username = password = ringfile = None
    if matchmaker == "ring":
        from zmqrpc.matchmaker.ring import load_ring  # the ring's one reader; imported late, it needs redis

        ringfile = zmq["rpc_zmq_matchmaker_ringfile"]
        load_ring(ringfile, zmq["rpc_zmq_min_port"])  # a bad file fails here, naming it
    elif matchmaker in ("redis", "sentinel"):
        hosts, username, password = _redis_endpoint(parsed, matchmaker, redis)
    secrets = frozenset(name for name, opt in _GROUP_OPTS[REDIS_GROUP].items() if opt.secret)
    zmq_secrets = frozenset(name for name, opt in _GROUP_OPTS[ZMQ_GROUP].items() if opt.secret)
    return Settings(
        zmq=OptionValues(ZMQ_GROUP, {**zmq, "advertise_host": _advertise_host(zmq)}, zmq_secrets),
        proxy=OptionValues(PROXY_GROUP, proxy),
        matchmaker=matchmaker,
        redis_hosts=hosts,
        redis_username=username,
        redis_password=password,
        sentinel_group_name=(
            parsed.query.get("sentinel_group_name") or parsed.virtual_host or redis["sentinel_group_name"]
        ),
        redis_socket_timeout=redis["socket_timeout"] / 1000.0,
        ringfile=ringfile,
        redis_tls=_redis_tls(parsed, redis),
        transport_url=parsed.url,
        matchmaker_redis=OptionValues(REDIS_GROUP, redis, secrets),
    )
