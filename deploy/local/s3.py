"""A real S3 server for the local stack: moto's standalone server as a subprocess.

It binds 127.0.0.1 on a free port, runs in its own process group (so stopping it
never leaves a child behind) and is stopped on exit, also when start-up fails.
Use it as a sync or async context manager::

    async with MotoS3(buckets=["infergw-offload"]) as s3:
        s3.endpoint  # http://127.0.0.1:PORT

For fault injection, ``freeze()`` stops the server (SIGSTOP to its group) so it
hangs the way a stuck S3 does: connections are accepted by the kernel and never
answered. ``thaw()`` resumes it; ``stop()`` thaws first so SIGTERM is handled.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from infergw.gateway.processes import ProcessGroup, ProcessStartError, signal_group

START_TIMEOUT_S = 30.0
STOP_GRACE_S = 5.0
PORT_ATTEMPTS = 3
DEFAULT_REGION = "us-east-1"


class S3StartError(RuntimeError):
    """moto_server exited or did not answer in time."""


def _moto_command() -> list[str]:
    # The venv's own script first: a moto_server on PATH may belong to another Python.
    local = Path(sys.executable).with_name("moto_server")
    if local.exists():
        return [str(local)]
    found = shutil.which("moto_server")
    return [found] if found else [sys.executable, "-m", "moto.server"]


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


class MotoS3:
    def __init__(self, buckets: Sequence[str] = (), host: str = "127.0.0.1") -> None:
        self.host = host
        self.buckets = tuple(buckets)
        self.port = 0
        self._group: ProcessGroup | None = None

    @property
    def endpoint(self) -> str:
        if self._group is None:
            raise RuntimeError("MotoS3 is not running")
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._group is not None and self._group.poll() is None

    @property
    def pid(self) -> int | None:
        return self._group.pid if self._group is not None else None

    def log_tail(self) -> str:
        return self._group.log_tail() if self._group is not None else ""

    def wait(self, timeout: float | None = None) -> int:
        """Block until the server exits on its own; its exit code."""
        if self._group is None:
            raise RuntimeError("MotoS3 is not running")
        return self._group.wait(timeout)

    def start(self) -> str:
        """Start on a free port; after ``stop()``, on the port it had (clients keep it)."""
        last: Exception | None = None
        fixed = self.port
        for _ in range(1 if fixed else PORT_ATTEMPTS):  # a free port can be taken meanwhile
            try:
                self._launch(fixed or _free_port(self.host))
                self._create_buckets()
                return self.endpoint
            except S3StartError as exc:
                last = exc
                self.stop()
            except BaseException:
                self.stop()  # e.g. a bad bucket name: never leave the server behind
                raise
        raise S3StartError(f"moto_server did not start: {last}")

    def _launch(self, port: int) -> None:
        self.port = port
        env = {**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "true"}
        argv = [*_moto_command(), "-H", self.host, "-p", str(port)]
        self._group = ProcessGroup.start(argv, env=env, name="moto_server", grace_s=STOP_GRACE_S)
        try:
            self._group.wait_ready(self._answers, START_TIMEOUT_S)
        except ProcessStartError as exc:  # exited, or no answer in time
            raise S3StartError(str(exc)) from exc

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1.0):
                return True
        except urllib.error.HTTPError:
            return True  # it answered: that is all readiness means here
        except OSError:
            return False

    def _create_buckets(self) -> None:
        if not self.buckets:
            return
        import boto3  # a dependency of moto itself

        # moto routes by the SigV4 scope, so requests are signed; any key pair will do.
        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=DEFAULT_REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        try:
            for bucket in self.buckets:
                client.create_bucket(Bucket=bucket)
        finally:
            client.close()

    def freeze(self) -> None:
        """Hang the server: it accepts connections (the kernel does) but answers nothing."""
        if self._group is None:
            raise RuntimeError("MotoS3 is not running")
        signal_group(self._group.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """Resume a frozen server (a no-op when it is not frozen)."""
        if self._group is not None:
            signal_group(self._group.pid, signal.SIGCONT)

    def stop(self) -> None:
        group, self._group = self._group, None
        if group is not None:
            signal_group(group.pid, signal.SIGCONT)  # a stopped process cannot handle SIGTERM
            group.stop()

    def __enter__(self) -> MotoS3:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> MotoS3:
        try:
            await asyncio.to_thread(self.start)
        except BaseException:
            await asyncio.to_thread(self.stop)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)
