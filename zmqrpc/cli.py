"""The ``zmqrpc`` command: ``proxy``, ``agent``, ``ping``, ``matchmaker``, ``health``, ``top`` and ``bench``.

``zmqrpc-proxy`` and ``oslo-messaging-zmq-proxy`` are :func:`proxy_main` (same as ``zmqrpc proxy``)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from zmqrpc import __version__

if TYPE_CHECKING:
    from zmqrpc.client import RpcClient
    from zmqrpc.config import Settings

EXIT_CODES = "exit status: 0 ok, 1 a check failed (ping), 2 an error (the message names it)"


def _settings(args: argparse.Namespace, serve_metrics: bool = False) -> Settings:
    """The settings of the config files and --transport-url. Only a service (the agent) serves metrics_port:
    a one-shot command (ping, matchmaker) shares the node's config file with it and must not take its port."""
    from zmqrpc import config

    settings = config.load_settings(url=args.transport_url, config_files=args.config_file or None)
    if settings.zmq.metrics_port and not serve_metrics:
        settings = settings.with_zmq(metrics_port=0)
    return settings


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config-file", action="append", help="oslo.config file (repeatable)")
    parser.add_argument("--transport-url", help="overrides [DEFAULT] transport_url")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid timeout {text!r}: expected seconds, e.g. 5") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"invalid timeout {text!r}: must be more than 0 seconds")
    return value


def _cmd_ping(args: argparse.Namespace) -> int:
    """Check the bus from this node: call, cast, fanout or notify the agents and prove what arrived."""
    from zmqrpc.agent import AGENT_NOTIFICATIONS
    from zmqrpc.client import RpcClient

    hosts = [h for h in (args.hosts or "").split(",") if h]
    tag = f"ping-{uuid.uuid4().hex}"
    result: dict[str, Any] = {"mode": args.mode, "topic": args.topic, "server": args.server}
    with RpcClient(_settings(args)) as client:
        started = time.perf_counter()
        if args.mode == "call":
            reply = client.call(args.topic, "ping", timeout=args.timeout, server=args.server)
            result.update(responder=reply.get("host"), reply=reply)
        elif args.mode == "cast":
            client.cast(args.topic, "record", {"tag": tag}, server=args.server, strict=True)
        elif args.mode == "fanout":
            result["sent_to"] = client.fanout(args.topic, "record", {"tag": tag}, strict=True)
        else:
            client.notify(AGENT_NOTIFICATIONS, "info", "zmqrpc.ping", {"tag": tag}, strict=True)
        result["latency_ms"] = round((time.perf_counter() - started) * 1000, 3)
        if args.mode != "call":
            checked = hosts or ([args.server] if args.server else [])
            result["received"] = _collect(client, args, checked, tag)
    ok = _ping_ok(args.mode, result)
    result["ok"] = ok
    print(json.dumps(result, sort_keys=True))
    return 0 if ok else 1


def _collect(client: RpcClient, args: argparse.Namespace, hosts: list[str], tag: str) -> dict[str, int]:
    """How many copies of ``tag`` each host's agent recorded, waiting up to --timeout for them to arrive."""

    def count(host: str) -> int:
        seen = client.call(args.topic, "seen", timeout=args.timeout, server=host)
        return sum(
            1
            for item in seen
            if item == tag or (isinstance(item, dict) and item.get("payload") == {"tag": tag})
        )

    deadline = time.monotonic() + args.timeout
    while True:
        received = {host: count(host) for host in hosts}
        # fanout: every host; cast and notify: one of them
        done = all(received.values()) if args.mode == "fanout" else sum(received.values()) >= 1
        if done or time.monotonic() > deadline:
            time.sleep(0.2)  # a duplicate would arrive right behind the first copy
            return {host: count(host) for host in hosts}
        time.sleep(0.1)


def _ping_ok(mode: str, result: dict[str, Any]) -> bool:
    received = result.get("received", {})
    if mode == "call":
        return bool(result.get("responder"))
    if mode == "fanout":
        return bool(received) and all(n == 1 for n in received.values())
    # cast and notify: exactly one of the checked hosts got it (none checked: sent is all we know)
    return not received or sum(received.values()) == 1


def _cmd_matchmaker(args: argparse.Namespace) -> int:
    from zmqrpc.errors import ZmqRpcError
    from zmqrpc.matchmaker import create_matchmaker

    matchmaker = create_matchmaker(_settings(args))
    try:
        if args.action == "list":
            topics = matchmaker.topics()
            if args.topic:
                topics = {t: v for t, v in topics.items() if t == args.topic}
            print(json.dumps(topics, indent=2, sort_keys=True))
        elif args.action == "purge":
            print(json.dumps({"purged": matchmaker.purge_expired()}))
        else:
            if not args.topic or not args.address:
                raise ZmqRpcError(f"matchmaker {args.action} needs --topic and --address")
            if args.action == "register":
                matchmaker.register(args.topic, args.address, args.expire)
            else:
                matchmaker.unregister(args.topic, args.address)
            print(json.dumps({args.action: {"topic": args.topic, "address": args.address}}))
    finally:
        matchmaker.close()
    return 0


def _cmd_agent(args: argparse.Namespace) -> int:
    from zmqrpc.agent import Agent

    logging.getLogger().setLevel(logging.DEBUG if args.debug else logging.INFO)
    agent = Agent(_settings(args, serve_metrics=True), host=args.host).start()
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    agent.stop()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zmqrpc", description="Brokerless RPC message bus on ZeroMQ", epilog=EXIT_CODES
    )
    parser.add_argument("--version", action="version", version=f"zmqrpc {__version__}")
    parser.add_argument("--debug", action="store_true", help="log at debug level")
    sub = parser.add_subparsers(dest="command", required=True)

    ping = sub.add_parser(
        "ping",
        help="call, cast, fanout or notify the agents; JSON result, exit 1 if not ok",
        description="Check the bus from this node: call, cast, fanout or notify the node agents "
        "(zmqrpc agent) and, for cast, fanout and notify, ask the agents what arrived. Prints one JSON "
        "line with the responder, latency and copies received.",
        epilog=EXIT_CODES,
    )
    _add_common(ping)
    ping.add_argument(
        "--topic", default="zmqrpc-agent", help="topic to send to (default: %(default)s, the agents' topic)"
    )
    ping.add_argument("--server", help="directed to this host's agent")
    ping.add_argument(
        "--mode",
        choices=["call", "cast", "fanout", "notify"],
        default="call",
        help="call: one agent answers; cast: one agent records it; fanout: every agent records it once; "
        "notify: one listener records it (default: %(default)s)",
    )
    ping.add_argument(
        "--hosts", help="comma list of hosts whose agents must have received a cast/fanout/notify"
    )
    ping.add_argument(
        "--timeout",
        type=_seconds,
        default=5.0,
        help="seconds to wait for the reply, and for copies to arrive (default: %(default)s)",
    )
    ping.set_defaults(func=_cmd_ping)

    mm = sub.add_parser("matchmaker", help="list, register, unregister or purge matchmaker entries")
    _add_common(mm)
    mm.add_argument("action", choices=["list", "purge", "register", "unregister"])
    mm.add_argument("--topic")
    mm.add_argument("--address", help="host:port (or a proxy routing id)")
    mm.add_argument("--expire", type=int, default=300, help="seconds; 0 or less never expires")
    mm.set_defaults(func=_cmd_matchmaker)

    agent = sub.add_parser("agent", help="run the node agent (answers ping and info on zmqrpc-agent)")
    _add_common(agent)
    agent.add_argument("--host", help="host name (default: rpc_zmq_host)")
    agent.set_defaults(func=_cmd_agent)

    proxy = sub.add_parser(
        "proxy",
        allow_abbrev=False,
        help="run a central proxy or a local publisher (same as zmqrpc-proxy)",
        description=PROXY_DESCRIPTION,
        epilog=PROXY_EXIT_CODES,
    )
    _add_proxy_args(proxy)
    proxy.set_defaults(func=_cmd_proxy)

    from zmqrpc import plan

    plan_parser = sub.add_parser(
        "plan", help="predict connections, fds, ports, memory, Redis load and fanout time of a bus of N nodes"
    )
    plan.add_arguments(plan_parser)
    plan_parser.set_defaults(func=plan.run)

    from zmqrpc import health, top

    health_parser = sub.add_parser(
        "health",
        help="check this node: matchmaker, own registrations, proxies, agent; one JSON line, exit 0/1/2",
        description="Check the bus as this node sees it: the matchmaker answers, this host's agent "
        "registrations are present and fresh, the proxies the topology needs are registered, and the local "
        "agent answers a ping. Prints one JSON line with each check's name, status and detail.",
        epilog=health.EXIT_CODES,
    )
    health.add_arguments(health_parser)
    health_parser.set_defaults(func=health.run)

    top_parser = sub.add_parser(
        "top",
        help="live view of the bus: hosts, topics, message rates, proxies, expiring registrations",
        description=top.DESCRIPTION,
    )
    top.add_arguments(top_parser)
    top_parser.set_defaults(func=top.run)

    # Dispatched in main() before parsing; listed here for --help.
    sub.add_parser(
        "scale-test", help="run a bus of N simulated nodes on this machine (zmqrpc scale-test --help)"
    )
    sub.add_parser(
        "bench", help="measure zmqrpc beside raw pyzmq and nats-py, from a checkout (zmqrpc bench --help)"
    )
    return parser


def _run_from_checkout(command: str, module: str, argv: list[str]) -> int:
    """Run ``module.main(argv)`` from benchmarks/, which a source checkout has and the installed package not.

    An editable install finds the checkout beside this package, so ``zmqrpc bench`` works from anywhere.
    """
    import importlib
    import importlib.util

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if importlib.util.find_spec("benchmarks") is None and os.path.isdir(os.path.join(root, "benchmarks")):
        sys.path.insert(0, root)
    try:
        entry = importlib.import_module(module).main
    except ModuleNotFoundError as exc:
        if exc.name not in ("benchmarks", module, "tests", "tests.servers"):
            raise  # a missing dependency, not a missing checkout: show it
        print(
            f"zmqrpc {command}: the benchmarks are not part of the installed package; run them from a source "
            "checkout of zmqrpc: python -m benchmarks --help",
            file=sys.stderr,
        )
        return 2
    return int(entry(argv))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        # bench owns its whole command line (argparse REMAINDER would swallow "--help" and reject flags).
        return _run_from_checkout("bench", "benchmarks.bench", argv[1:])
    if argv[:1] == ["scale-test"]:
        return _run_from_checkout("scale-test", "benchmarks.scale", argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from zmqrpc.errors import ZmqRpcError

    try:
        return args.func(args)
    except ZmqRpcError as exc:
        print(f"zmqrpc {args.command}: error: {exc}", file=sys.stderr)
        return 2


def proxy_main(argv: Sequence[str] | None = None) -> int:
    """``zmqrpc-proxy`` / ``oslo-messaging-zmq-proxy``: run a central proxy or a local publisher."""
    parser = build_proxy_parser(prog=_prog_name("zmqrpc-proxy"))
    return run_proxy(parser.parse_args(argv), parser.prog)


# --------------------------------------------------------------------------------------------------
# The proxy: `zmqrpc proxy`, `zmqrpc-proxy`, `oslo-messaging-zmq-proxy`
# --------------------------------------------------------------------------------------------------

_PROXY_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
PROXY_DESCRIPTION = (
    "Run a central proxy (a frontend ROUTER for clients, a backend ROUTER for servers and, with "
    "--publisher-port or use_pub_sub, a PUB for fanout), or with --local-publisher a local publisher that "
    "republishes the central publishers on this node. It registers its addresses in the matchmaker of "
    "[DEFAULT] transport_url. SIGUSR1 logs its counters; SIGTERM or SIGINT stops it."
)
PROXY_EXIT_CODES = "exit status: 0 stopped by SIGTERM/SIGINT, 2 bad config or a port in use (one error line)"


def _prog_name(default: str) -> str:
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return name if name in ("zmqrpc-proxy", "oslo-messaging-zmq-proxy") else default


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: expected a number 0-65535") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {value}: expected 0-65535 (0 means random)")
    return value


def _add_proxy_args(parser: argparse.ArgumentParser) -> None:
    """Exactly the documented proxy flags; each overrides the same option of [zmq_proxy_opts]."""
    parser.add_argument(
        "--config-file",
        action="append",
        metavar="PATH",
        help="oslo.config file (repeatable; later files win): [DEFAULT] transport_url, "
        "[oslo_messaging_zmq], [zmq_proxy_opts]",
    )
    parser.add_argument("--log-file", metavar="PATH", help="log here instead of to stderr")
    parser.add_argument("--host", help="host name advertised in the matchmaker ([zmq_proxy_opts] host)")
    for kind in ("frontend", "backend", "publisher"):
        parser.add_argument(
            f"--{kind}-port",
            type=_port,
            metavar="PORT",
            help=f"port of the {kind} socket, 0 = random ([zmq_proxy_opts] {kind}_port)",
        )
    parser.add_argument(
        "--local-publisher",
        action="store_true",
        default=None,
        help="run as a local publisher that republishes the central publishers "
        "([zmq_proxy_opts] local_publisher)",
    )
    parser.add_argument(
        "--debug",
        dest="proxy_debug",
        action="store_true",
        help="log every dispatched message (slow: not for production)",
    )


def build_proxy_parser(prog: str = "zmqrpc-proxy") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        allow_abbrev=False,
        description=PROXY_DESCRIPTION,
        epilog=PROXY_EXIT_CODES,
    )
    _add_proxy_args(parser)
    return parser


@dataclasses.dataclass(frozen=True)
class ProxyOptions:
    """Effective proxy settings: flags over [zmq_proxy_opts] (or [zmq_proxy_opt]) over defaults."""

    settings: Settings
    host: str
    frontend_port: int
    backend_port: int
    publisher_port: int
    local_publisher: bool
    publish: bool
    publish_reason: str  # why publishing is on (or off), for the startup line
    debug: bool
    log_file: str | None


def proxy_options(args: argparse.Namespace) -> ProxyOptions:
    """Load the config files and apply the flags; raises ConfigError naming the bad file or option."""
    from zmqrpc import config

    flags = {
        "host": args.host,
        "frontend_port": args.frontend_port,
        "backend_port": args.backend_port,
        "publisher_port": args.publisher_port,
        "local_publisher": args.local_publisher,
    }
    overrides = {name: value for name, value in flags.items() if value is not None}
    settings = config.load_settings(config_files=args.config_file or None, overrides=overrides)
    proxy = settings.proxy
    if args.publisher_port is not None:
        publish, reason = True, "--publisher-port given"
    elif settings.zmq.use_pub_sub:
        publish, reason = True, "use_pub_sub = true"
    elif proxy.publisher_port:
        publish, reason = True, "[zmq_proxy_opts] publisher_port set"
    else:
        publish, reason = False, "use_pub_sub = false and no --publisher-port"
    return ProxyOptions(
        settings=settings,
        host=proxy.host,
        frontend_port=proxy.frontend_port,
        backend_port=proxy.backend_port,
        publisher_port=proxy.publisher_port,
        local_publisher=proxy.local_publisher,
        publish=publish,
        publish_reason=reason,
        debug=bool(args.proxy_debug),
        log_file=args.log_file,
    )


def _setup_proxy_logging(debug: bool, log_file: str | None) -> None:
    handler: logging.Handler = (
        logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, handlers=[handler], force=True)


def _matchmaker_text(settings: Settings) -> str:
    from zmqrpc.address import format_host_port

    if settings.matchmaker in ("redis", "sentinel"):
        hosts = ",".join(format_host_port(h, p) for h, p in settings.redis_hosts)
        return f"{settings.matchmaker} {hosts}"
    return str(settings.matchmaker)


def run_proxy(args: argparse.Namespace, prog: str = "zmqrpc-proxy") -> int:
    """Run until SIGTERM/SIGINT (exit 0). Bad config or a port in use: one error line, exit 2.

    SIGUSR1 logs the counters as ``zmqrpc proxy stats: {json}``; they are logged at exit too.
    """
    from zmqrpc.errors import ZmqRpcError
    from zmqrpc.proxy import CentralProxy, LocalPublisher

    log = logging.getLogger("zmqrpc.proxy")
    try:
        _setup_proxy_logging(bool(args.proxy_debug), args.log_file)
    except OSError as exc:
        print(
            f"{prog}: error: cannot open --log-file {args.log_file}: {exc.strerror or exc}", file=sys.stderr
        )
        return 2

    def fail(message: str) -> int:
        log.error("%s: error: %s", prog, message)
        if args.log_file:  # the operator who started it sees it too
            print(f"{prog}: error: {message}", file=sys.stderr)
        return 2

    # Signals are taken synchronously by the main thread (sigtimedwait), so no handler ever runs in the
    # middle of logging or of a stop; threads started from here inherit the mask.
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _PROXY_SIGNALS)
    proxy: CentralProxy | LocalPublisher | None = None
    try:
        try:
            opts = proxy_options(args)
            if opts.local_publisher:
                proxy = LocalPublisher(opts.settings, opts.host, opts.publisher_port, debug=opts.debug)
            else:
                ports = (opts.frontend_port, opts.backend_port, opts.publisher_port)
                proxy = CentralProxy(opts.settings, opts.host, *ports, publish=opts.publish, debug=opts.debug)
            proxy.start()
        except ZmqRpcError as exc:
            if proxy is not None:
                proxy.stop()
            return fail(str(exc))
        if isinstance(proxy, LocalPublisher):
            log.info("zmqrpc local publisher on %s: %s", opts.host, proxy.describe())
        else:
            log.info(
                "zmqrpc proxy on %s: %s (%s); matchmaker %s",
                opts.host,
                proxy.describe(),
                opts.publish_reason,
                _matchmaker_text(opts.settings),
            )
        while True:
            info = signal.sigtimedwait(_PROXY_SIGNALS, 1.0)
            if info is None:
                if proxy.wait(0):
                    break
                continue
            if info.si_signo == signal.SIGUSR1:
                proxy.log_stats()
                continue
            log.info("%s received, stopping", signal.Signals(info.si_signo).name)
            break
        proxy.stop()
        return 0
    finally:
        if proxy is not None:
            proxy.stop()
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def _cmd_proxy(args: argparse.Namespace) -> int:
    args.proxy_debug = args.proxy_debug or args.debug
    return run_proxy(args, "zmqrpc proxy")


if __name__ == "__main__":
    sys.exit(main())
