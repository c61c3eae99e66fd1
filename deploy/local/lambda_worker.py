"""One Lambda execution environment, as a real process.

    python -m infergw.deploy.local.lambda_worker --handler infergw.deploy.lambda.handler.handler

Importing the handler module is the Init phase (our handler loads its models
there). Then it listens on 127.0.0.1:0, prints ``READY <port>`` and serves one
invocation at a time: ``POST /invoke`` with the event JSON as body and the request
id in ``X-Request-Id``. The answer is always 200 with the handler's result JSON, or
``{errorMessage, errorType, stackTrace}`` plus ``X-Function-Error: Unhandled``;
``X-Duration-Ms`` (perf_counter around the handler call), ``X-Max-Memory-Mb``
(ru_maxrss) and ``X-Log-B64`` (what the handler printed) go to the stand-in for
its REPORT line.

Like Lambda: a handler running past ``INFERGW_LAMBDA_TIMEOUT_S`` gets "Task timed
out after X seconds" and the environment is destroyed (the process exits); an
Init failure is answered to the first invocation, then the environment exits.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import importlib
import io
import json
import os
import resource
import sys
import threading
import time
import traceback
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

LOG_TAIL_BYTES = 4096
Handler = Callable[[Any, Any], Any]


class LambdaContext:
    """The subset of Lambda's context object handlers commonly use."""

    def __init__(self, request_id: str, timeout_s: float) -> None:
        self.aws_request_id = request_id
        self.function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "local")
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024")
        region = os.environ.get("AWS_REGION", "us-east-1")
        self.invoked_function_arn = (
            f"arn:aws:lambda:{region}:123456789012:function:{self.function_name}"
        )
        self._deadline = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def _error(exc: BaseException, error_type: str | None = None) -> dict[str, Any]:
    return {
        "errorMessage": str(exc),
        "errorType": error_type or type(exc).__name__,
        "stackTrace": traceback.format_tb(exc.__traceback__),
    }


def _max_memory_mb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024  # KB on Linux


class Environment:
    def __init__(self, spec: str, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.handler: Handler | None = None
        self.init_error: dict[str, Any] | None = None
        self.lock = threading.Lock()  # one invocation at a time, and the timeout's claim
        module_name, _, func = spec.rpartition(".")
        try:
            module = importlib.import_module(module_name)  # the Init phase
        except Exception as exc:
            self.init_error = _error(exc, "Runtime.ImportModuleError")
            return
        self.handler = getattr(module, func, None)
        if not callable(self.handler):
            self.init_error = {
                "errorMessage": f"Handler '{func}' missing on module '{module_name}'",
                "errorType": "Runtime.HandlerNotFound",
                "stackTrace": [],
            }


def make_request_handler(env: Environment) -> type[BaseHTTPRequestHandler]:
    class Invoke(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # else headers + body as two writes meet delayed ACK

        def log_message(self, format: str, *args: Any) -> None:
            pass  # stdout belongs to the READY protocol; never log payloads anyway

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            request_id = self.headers.get("X-Request-Id", "")
            if env.init_error is not None:
                self._reply(json.dumps(env.init_error).encode(), True, 0.0, "", ended=True)
                self._exit_after_reply()
                return
            assert env.handler is not None
            logs = io.StringIO()
            done = threading.Event()
            timer = threading.Timer(env.timeout_s, self._time_out, (done, logs))
            t0 = time.perf_counter()
            timer.start()
            failed = False
            try:
                with contextlib.redirect_stdout(logs), contextlib.redirect_stderr(logs):
                    event = json.loads(body)
                    result = env.handler(event, LambdaContext(request_id, env.timeout_s))
                payload = json.dumps(result).encode()
            except Exception as exc:
                failed = True
                payload = json.dumps(_error(exc)).encode()
            duration_ms = (time.perf_counter() - t0) * 1000.0
            timer.cancel()
            with env.lock:  # the timeout may have claimed this invocation already
                if done.is_set():
                    return
                done.set()
                self._reply(payload, failed, duration_ms, logs.getvalue())

        def _time_out(self, done: threading.Event, logs: io.StringIO) -> None:
            with env.lock:
                if done.is_set():
                    return
                done.set()
                message = f"Task timed out after {env.timeout_s:.2f} seconds"
                error = {"errorMessage": message, "errorType": "Sandbox.Timedout"}
                duration_ms = env.timeout_s * 1000.0
                self._reply(json.dumps(error).encode(), True, duration_ms, logs.getvalue(), True)
                self._exit_after_reply()

        def _reply(
            self, payload: bytes, failed: bool, duration_ms: float, logs: str, ended: bool = False
        ) -> None:
            tail = logs.encode()[-LOG_TAIL_BYTES:]
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Connection", "close")  # one connection per invoke: never stuck
            self.send_header("X-Duration-Ms", f"{duration_ms:.3f}")
            self.send_header("X-Max-Memory-Mb", str(_max_memory_mb()))
            self.send_header("X-Log-B64", base64.b64encode(tail).decode())
            if failed:
                self.send_header("X-Function-Error", "Unhandled")
            if ended:  # this process exits right after the reply
                self.send_header("X-Environment-Ended", "1")
            self.close_connection = True
            self.end_headers()
            self.wfile.write(payload)
            self.wfile.flush()

        def _exit_after_reply(self) -> None:
            # The environment is gone, as on Lambda; the next invoke starts a new one.
            with contextlib.suppress(OSError):
                self.connection.shutdown(1)
            os._exit(0)

    return Invoke


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--handler", required=True, help="module.function")
    args = parser.parse_args(argv)
    timeout_s = float(os.environ.get("INFERGW_LAMBDA_TIMEOUT_S", "3"))
    env = Environment(args.handler, timeout_s)
    server = HTTPServer(("127.0.0.1", 0), make_request_handler(env))
    print(f"READY {server.server_address[1]}", flush=True)
    sys.stdout.flush()
    server.serve_forever()


if __name__ == "__main__":
    main()
