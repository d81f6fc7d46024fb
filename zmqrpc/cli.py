"""The ``zmqrpc`` command: ``bench``, ``ping`` and ``matchmaker`` today; ``proxy`` and ``agent`` follow."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence

from zmqrpc import __version__


def _settings(args: argparse.Namespace):  # -> config.Settings
    from zmqrpc import config

    return config.load_settings(url=args.transport_url, config_files=args.config_file or None)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config-file", action="append", help="oslo.config file (repeatable)")
    parser.add_argument("--transport-url", help="overrides [DEFAULT] transport_url")


def _cmd_ping(args: argparse.Namespace) -> int:
    from zmqrpc.client import RpcClient

    with RpcClient(_settings(args)) as client:
        started = time.perf_counter()
        reply = client.call(args.topic, "ping", timeout=args.timeout, server=args.server)
        latency_ms = (time.perf_counter() - started) * 1000
    print(json.dumps({"topic": args.topic, "server": args.server, "reply": reply, "latency_ms": latency_ms}))
    return 0


def _cmd_matchmaker(args: argparse.Namespace) -> int:
    from zmqrpc.matchmaker import create_matchmaker

    matchmaker = create_matchmaker(_settings(args))
    try:
        if args.action == "list":
            print(json.dumps(matchmaker.topics(), indent=2, sort_keys=True))
        elif args.action == "purge":
            print(json.dumps({"purged": matchmaker.purge_expired()}))
    finally:
        matchmaker.close()
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from zmqrpc import bench

    return bench.main(args.bench_args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zmqrpc", description="Brokerless RPC message bus on ZeroMQ")
    parser.add_argument("--version", action="version", version=f"zmqrpc {__version__}")
    parser.add_argument("--debug", action="store_true", help="log at debug level")
    sub = parser.add_subparsers(dest="command", required=True)

    ping = sub.add_parser("ping", help="call 'ping' on a topic and print the reply and latency")
    _add_common(ping)
    ping.add_argument("topic")
    ping.add_argument("--server", help="directed call to this server")
    ping.add_argument("--timeout", type=float, default=5.0)
    ping.set_defaults(func=_cmd_ping)

    mm = sub.add_parser("matchmaker", help="inspect the matchmaker")
    _add_common(mm)
    mm.add_argument("action", choices=["list", "purge"])
    mm.set_defaults(func=_cmd_matchmaker)

    bench = sub.add_parser("bench", help="measure zmqrpc against a raw pyzmq baseline", add_help=False)
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    bench.set_defaults(func=_cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from zmqrpc.config import ConfigError
    from zmqrpc.errors import ZmqRpcError
    from zmqrpc.matchmaker import MatchmakerError

    try:
        return args.func(args)
    except (ConfigError, ZmqRpcError, MatchmakerError, ValueError) as exc:
        print(f"zmqrpc {args.command}: error: {exc}", file=sys.stderr)
        return 2


def proxy_main(argv: Sequence[str] | None = None) -> int:
    """``zmqrpc-proxy`` / ``oslo-messaging-zmq-proxy``: the proxy arrives with the proxy topologies."""
    print("zmqrpc proxy: the proxy is not part of this release yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
