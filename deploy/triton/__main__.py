"""``python -m infergw.deploy.triton``: run tritonserver on the bundled repository until signalled.

Prints the endpoints as one JSON line on stdout once the server is ready (handy for
benchmarks and scripts), then stays in the foreground until SIGINT/SIGTERM or until the
server exits on its own (then with a non-zero code and the server's log tail).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from types import FrameType

from infergw.deploy.triton.launcher import TritonServer, TritonStartError


class _Stop(Exception):
    """Raised from the signal handler to leave ``wait()`` and shut down cleanly."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infergw.deploy.triton", description=__doc__)
    parser.add_argument("--model-repository", type=Path, default=None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--grpc-port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--http-port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--metrics-port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--models", nargs="*", default=None, help="load only these models")
    parser.add_argument("--otlp-traces-url", default=None, help="e.g. http://HOST:PORT/v1/traces")
    parser.add_argument(
        "--trace-rate", type=int, default=0, help="0: only requests with traceparent"
    )
    parser.add_argument("--service-name", default="triton")
    parser.add_argument("--startup-timeout", type=float, default=120.0)
    args = parser.parse_args(argv)

    server = TritonServer(
        args.model_repository,
        host=args.host,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        otlp_traces_url=args.otlp_traces_url,
        trace_rate=args.trace_rate,
        service_name=args.service_name,
        startup_timeout_s=args.startup_timeout,
        models=args.models,
    )
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _raise_stop)
    try:
        endpoints = server.start()
        info = {
            "grpc": endpoints.grpc,
            "http": endpoints.http,
            "metrics": endpoints.metrics,
            "pid": server.pid,
            "log": str(server.log_path),
        }
        print(json.dumps(info), flush=True)
        code = server.wait()
        print(f"tritonserver exited with code {code}:\n{server.log_tail()}", file=sys.stderr)
        return code or 1
    except TritonStartError as exc:
        print(exc, file=sys.stderr)
        return 1
    except _Stop:
        return 0
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
