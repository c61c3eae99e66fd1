"""h2load (Debian ``nghttp2-client``) as a second opinion on throughput.

h2load is a C HTTP/2 client, so it takes far less of the shared CPU than a Python client.
It does not read grpc-status (a gRPC error still arrives as HTTP 200), so every window is
cross-checked against Triton's own statistics: the identity model's success count must
grow by at least the number of requests h2load completed, and its fail count not at all.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from grpc_load import MODEL_INFER, Payload

from infergw.wire.oip_json import statistics_from_json

INSTALL_HINT = "apt-get install -y --no-install-recommends nghttp2-client"


def h2load_binary() -> str | None:
    return shutil.which("h2load")


def write_grpc_body(payload: Payload, path: Path) -> Path:
    """The request as one gRPC length-prefixed message (uncompressed flag + 4-byte length)."""
    path.write_bytes(b"\x00" + len(payload.request).to_bytes(4, "big") + payload.request)
    return path


@dataclass(frozen=True)
class H2loadResult:
    rps: float
    succeeded: int
    failed: int
    triton_success: int
    triton_fail: int

    @property
    def verified(self) -> bool:
        return self.failed == 0 and self.triton_fail == 0 and self.triton_success >= self.succeeded

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "verified": self.verified}


def triton_counts(triton_http: str, model: str = "identity") -> tuple[int, int]:
    """(success, fail) request counts from Triton's statistics extension."""
    url = f"http://{triton_http}/v2/models/{model}/stats"
    with urllib.request.urlopen(url, timeout=5.0) as reply:
        stats = statistics_from_json(json.load(reply))[0]
    return stats.success.count, stats.fail.count


def run_h2load(
    binary: str,
    address: str,
    body: Path,
    concurrency: int,
    seconds: float,
    triton_http: str,
    *,
    h1: bool = False,
    path: str = MODEL_INFER,
    headers: Mapping[str, str] | None = None,
    rps: int | None = None,
) -> H2loadResult:
    """gRPC ``ModelInfer``: one connection with ``concurrency`` streams in flight for
    ``seconds``. ``h1``: HTTP/1.1 POSTs to ``path`` with ``headers`` instead, one request
    at a time on each of ``concurrency`` keep-alive connections. ``rps``: at most that
    many requests per second on each connection (h2load's ``--rps``)."""
    args = [binary, "-t", "1", "-D", f"{seconds * 1000:.0f}ms"]
    if h1:
        args += ["--h1", "-c", str(concurrency), "-m", "1"]
    else:
        args += ["-c", "1", "-m", str(concurrency)]
        headers = {"content-type": "application/grpc", "te": "trailers"}
    args += ["--warm-up-time", "500ms", "-d", str(body)]
    if rps is not None:
        args += [f"--rps={rps}"]
    for name, value in (headers or {}).items():
        args += ["-H", f"{name}: {value}"]
    before = triton_counts(triton_http)
    out = subprocess.run(
        [*args, f"http://{address}{path}"], capture_output=True, text=True, check=True
    ).stdout
    after = triton_counts(triton_http)
    rps = re.search(r"finished in [^,]+, ([\d.]+) req/s", out)
    reqs = re.search(r"requests: .* (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    if rps is None or reqs is None:
        raise RuntimeError(f"cannot parse h2load output:\n{out}")
    return H2loadResult(
        rps=float(rps.group(1)),
        succeeded=int(reqs.group(1)),
        failed=int(reqs.group(2)) + int(reqs.group(3)),
        # Includes the warm-up's requests, which h2load does not count.
        triton_success=after[0] - before[0],
        triton_fail=after[1] - before[1],
    )
