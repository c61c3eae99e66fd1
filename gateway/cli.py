"""The ``infergw`` command line.

    infergw serve --config FILE [--grpc-port N --http-port M --metrics-port K]
    infergw local up [--ready-file FILE] [ports]    the embedded local stack, foreground
    infergw demo [--out DIR]                         local stack + short benchmark + report

Every command that listens takes --grpc-port/--http-port/--metrics-port
(defaults 8001/8000/8002, Triton's, so clients' defaults work).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from infergw.gateway import logs
from infergw.vocab.errors import InferGWError, InvalidArgument

log = logging.getLogger("infergw")


def port_number(text: str) -> int:
    """An argparse type: 0..65535 (0 binds a free port, reported once bound)."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number (0..65535): {text!r}")
    return port


def _add_listen_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=None, help="address to bind (default 0.0.0.0)")
    parser.add_argument("--grpc-port", type=port_number, help="gRPC port (default 8001)")
    parser.add_argument("--http-port", type=port_number, help="HTTP port (default 8000)")
    parser.add_argument("--metrics-port", type=port_number, help="Prometheus port (default 8002)")


def _listen_overrides(args: argparse.Namespace) -> dict[str, object]:
    pairs = {
        "host": args.host,
        "grpc_port": args.grpc_port,
        "http_port": args.http_port,
        "metrics_port": args.metrics_port,
    }
    return {k: v for k, v in pairs.items() if v is not None}


def throttle_exhaustion_logs() -> None:
    """Out of file descriptors: one log line per interval, not a traceback per connection."""
    from infergw.gateway.sites import ExhaustionLogFilter

    exhaustion = ExhaustionLogFilter()
    for handler in logging.getLogger().handlers:
        handler.addFilter(exhaustion)


async def run_until_signal(start: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``start(stop_event)``; SIGINT/SIGTERM set the event for a clean shutdown.

    A second signal while shutting down cuts it short: the drain's wait for calls in
    flight is cancelled (they are cancelled too), as Ctrl-C twice does in most servers.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    cut = False

    def on_signal() -> None:
        nonlocal cut
        if not stop.is_set():
            stop.set()
        elif not cut:
            cut = True
            log.warning("second signal: not waiting for the calls still in flight")
            task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        await start(stop)
    except asyncio.CancelledError:
        if not cut:
            raise
        task.uncancel()


def cmd_serve(args: argparse.Namespace) -> int:
    from infergw.gateway.app import Gateway
    from infergw.gateway.core.config import config_error, load_config
    from infergw.gateway.telemetry import configure_tracing, shutdown_tracing

    config = load_config(args.config)
    config = config.replace(listen=config.listen.replace(**_listen_overrides(args)))
    configure_tracing(config.tracing)
    throttle_exhaustion_logs()

    async def serve(stop: asyncio.Event) -> None:
        try:
            gateway = Gateway(config)  # creates the backends, which check their options
        except InvalidArgument as exc:
            raise config_error([f"{args.config}: {exc.message}"]) from exc
        async with gateway:
            # One JSON line with the bound addresses (ports 0 are resolved by now).
            print(f"infergw serving: {json.dumps(gateway.addresses)}", flush=True)
            await stop.wait()

    try:
        asyncio.run(run_until_signal(serve))
    finally:
        shutdown_tracing()
    return 0


def cmd_local_up(args: argparse.Namespace) -> int:
    from infergw.deploy.local.stack import StackOverrides, run_local_stack

    overrides = StackOverrides.load(args.config) if args.config is not None else None
    throttle_exhaustion_logs()
    listen = _listen_overrides(args)
    idle = args.serverless_idle_timeout_s
    asyncio.run(
        run_until_signal(
            lambda stop: run_local_stack(stop, args.ready_file, listen, overrides, idle)
        )
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from infergw.deploy.local.demo import run_demo

    return run_demo(Path(args.out), args.requests)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="infergw", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway from a config file")
    serve.add_argument("--config", required=True, type=Path, help="YAML config")
    _add_listen_args(serve)
    serve.set_defaults(func=cmd_serve)

    local = sub.add_parser("local", help="the embedded local stack")
    local_sub = local.add_subparsers(dest="local_command", required=True)
    up = local_sub.add_parser("up", help="start Triton + gateway; Ctrl-C stops everything")
    up.add_argument("--ready-file", type=Path, default=None, help="write endpoints JSON here")
    up.add_argument(
        "--config",
        type=Path,
        default=None,
        help="YAML: its models replace the stack's routes, its backends.NAME keys are merged in",
    )
    up.add_argument(
        "--serverless-idle-timeout-s",
        type=float,
        default=300.0,
        help="an idle serverless stand-in instance is stopped after this (default 300)",
    )
    _add_listen_args(up)
    up.set_defaults(func=cmd_local_up)

    demo = sub.add_parser("demo", help="local stack, a short benchmark, a report; then exit")
    demo.add_argument("--out", default="out/demo", help="report directory (default out/demo)")
    demo.add_argument("--requests", type=int, default=100, help="warm requests per row")
    demo.set_defaults(func=cmd_demo)

    # Subcommands that live with their subsystem (argparse only; heavy imports are lazy).
    from infergw.experiments import hybrid_cli
    from infergw.gateway.sidecar_cli import register as register_sidecar
    from infergw.loadgen.cli import register as register_bench
    from infergw.planner.cli import register as register_plan

    register_bench(sub, {"hybrid": (hybrid_cli.add_options, hybrid_cli.run)})
    register_plan(sub)
    register_sidecar(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(verbose=args.verbose)  # redacts secrets and payloads, whoever logs
    try:
        return int(args.func(args))
    except InferGWError as exc:  # bad config or arguments: one line per problem, no traceback
        for line in exc.message.splitlines():
            print(f"infergw: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
