"""``infergw sidecar``: put infergw's timing, traces and metrics in front of a running server.

    infergw sidecar --upstream 127.0.0.1:9001 --protocol oip --http-upstream 127.0.0.1:9000
    infergw sidecar --upstream 127.0.0.1:9500 --protocol tfserving --grpc-port 8500

Only argparse is imported here; the sidecar itself loads when the command runs.
"""

from __future__ import annotations

import argparse
from typing import Any

from infergw.gateway.native_plane import DATA_PLANES  # stdlib only

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # the gateway's default limit


def register(sub: Any) -> None:
    """Add the ``sidecar`` subcommand to the ``infergw`` parser's subparsers."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "sidecar",
        help="transparent proxy in front of Triton / TF Serving, adding timing, traces, metrics",
        description=__doc__.split("\n")[0],
    )
    parser.add_argument("--upstream", required=True, help="HOST:PORT of the upstream's gRPC")
    parser.add_argument(
        "--protocol", choices=("oip", "tfserving"), default="oip", help="upstream's protocol"
    )
    parser.add_argument(
        "--http-upstream",
        default=None,
        help="HOST:PORT of the upstream's REST API (OIP or TF Serving's; optional)",
    )
    parser.add_argument("--host", default="0.0.0.0", help="address to bind (default 0.0.0.0)")
    parser.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (default 8001)")
    parser.add_argument("--http-port", type=int, default=8000, help="HTTP port (default 8000)")
    parser.add_argument(
        "--metrics-port", type=int, default=8002, help="Prometheus port (default 8002)"
    )
    parser.add_argument(
        "--max-message-bytes",
        type=int,
        default=DEFAULT_MAX_MESSAGE_BYTES,
        help="largest request message/body accepted (default 64 MiB)",
    )
    parser.add_argument(
        "--health-model",
        default=None,
        help="tfserving without grpc.health: ready when this model has a version AVAILABLE",
    )
    parser.add_argument(
        "--drain-grace-s",
        type=float,
        default=30.0,
        help="on SIGTERM: how long calls in flight may take to finish (default 30)",
    )
    parser.add_argument(
        "--data-plane",
        choices=DATA_PLANES,
        default="auto",
        help="who serves gRPC: the Rust plane (auto, the default, when it is built) or the "
        "Python proxy (INFERGW_NATIVE=1/0 overrides; TLS keeps the Python proxy)",
    )
    parser.add_argument("--tls-cert-file", default=None, help="serve TLS: certificate chain (PEM)")
    parser.add_argument("--tls-key-file", default=None, help="serve TLS: its private key (PEM)")
    parser.add_argument(
        "--tls-client-ca-file",
        default=None,
        help="mutual TLS: clients must present a certificate this CA signed (PEM)",
    )
    parser.add_argument(
        "--otlp-endpoint",
        default=None,
        help="OTLP/HTTP traces URL (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT); off by default",
    )
    parser.add_argument(
        "--service-name", default="infergw-sidecar", help="service.name of exported spans"
    )
    parser.set_defaults(func=cmd_sidecar)


def cmd_sidecar(args: argparse.Namespace) -> int:
    import asyncio

    from infergw.gateway.cli import run_until_signal
    from infergw.gateway.core.config import TlsConfig, TracingConfig
    from infergw.gateway.sidecar.app import Sidecar, SidecarConfig
    from infergw.gateway.telemetry import configure_tracing, shutdown_tracing

    tls = None
    if args.tls_cert_file or args.tls_key_file or args.tls_client_ca_file:
        if not (args.tls_cert_file and args.tls_key_file):
            raise SystemExit("infergw sidecar: --tls-cert-file and --tls-key-file go together")
        tls = TlsConfig(
            cert_file=args.tls_cert_file,
            key_file=args.tls_key_file,
            client_ca_file=args.tls_client_ca_file,
        )
    try:
        config = SidecarConfig(
            upstream=args.upstream,
            protocol=args.protocol,
            http_upstream=args.http_upstream,
            host=args.host,
            grpc_port=args.grpc_port,
            http_port=args.http_port,
            metrics_port=args.metrics_port,
            max_message_bytes=args.max_message_bytes,
            health_model=args.health_model,
            drain_grace_s=args.drain_grace_s,
            tls=tls,
            data_plane=args.data_plane,
        )
    except ValueError as exc:
        raise SystemExit(f"infergw sidecar: {exc}") from exc
    configure_tracing(
        TracingConfig(otlp_endpoint=args.otlp_endpoint, service_name=args.service_name)
    )

    async def serve(stop: asyncio.Event) -> None:
        async with Sidecar(config) as sidecar:
            print(
                f"infergw sidecar serving: {sidecar.addresses} -> {config.upstream} "
                f"(data plane: {sidecar.data_plane})",
                flush=True,
            )
            await stop.wait()

    try:
        asyncio.run(run_until_signal(serve))
    finally:
        shutdown_tracing()
    return 0
