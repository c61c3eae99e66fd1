"""What TLS and API keys cost per call: the gateway plain, with auth, with TLS, with both,
on each data plane.

    .venv/bin/python bench/security_overhead.py [--rounds R] [--requests N]
                                                [--planes python,native] [--out DIR]

Starts the real Triton and one ``infergw serve`` process per variant and plane in front of
it (each its own process group; ``python``: ``INFERGW_NATIVE=0``, ``native``:
``INFERGW_NATIVE=1``, where the Rust plane terminates the TLS and checks the key itself),
makes a throwaway CA, and times tiny identity calls (1x16 FP32) over one long-lived gRPC
connection per gateway, all interleaved in rounds. Prints the median over rounds of each
one's p50 and its difference to the same plane's plain gateway; writes every round as
JSON. The handshake is paid once per connection and is not in these figures (gRPC keeps
the connection).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc
import grpc_load
import servers

from infergw.deploy.triton.launcher import TritonServer
from infergw.wire import grpc_channel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.certs import CertificateAuthority

KEY = "bench-key-5b0c"
VARIANTS = ("plain", "auth", "tls", "tls+auth")
PLANES = {"python": {"INFERGW_NATIVE": "0"}, "native": {"INFERGW_NATIVE": "1"}}


def secured_gateway(
    triton: str,
    tls: dict[str, str] | None,
    keys_file: str | None,
    registry: list[int],
    env: dict[str, str],
) -> servers.GatewayProcess:
    """``infergw serve`` routing ``identity`` to Triton (a named route: the native plane
    forwards it itself), with ``listen.tls``/``auth`` as given."""
    listen: dict[str, object] = {"host": "127.0.0.1"}
    if tls:
        listen["tls"] = tls
    doc: dict[str, object] = {
        "listen": listen,
        "backends": {"triton": {"kind": "triton", "url": triton}},
        "models": {"identity": {"backend": "triton"}},
    }
    if keys_file:
        doc["auth"] = {"api_keys_file": keys_file}
    # JSON is YAML; no readiness probe: it speaks no TLS, main() waits on a real call.
    return servers.GatewayProcess(registry=registry, config=json.dumps(doc), env=env, wait=False)


def client(address: str, ca_file: str | None) -> grpc.Channel:
    credentials = grpc_channel.tls_credentials(ca_file) if ca_file else None
    return grpc_channel.sync_channel(address, credentials=credentials, private=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--planes", default="python,native", help="comma-separated")
    parser.add_argument("--out", default="out/bench")
    args = parser.parse_args()
    planes = [p for p in args.planes.split(",") if p]
    if not set(planes) <= set(PLANES):
        parser.error(f"--planes: choose among {', '.join(PLANES)}")
    names = [f"{plane}/{variant}" for plane in planes for variant in VARIANTS]
    # The throwaway CA and keys file, removed on the way out.
    with tempfile.TemporaryDirectory(prefix="infergw-bench-pki-") as pki:
        return measure(args, names, Path(pki))


def measure(args: argparse.Namespace, names: list[str], pki: Path) -> int:
    ca = CertificateAuthority(pki, "ca")
    server = ca.issue("server")
    (pki / "keys").write_text(f"{KEY}\n")
    tls = {"cert_file": server.cert_file, "key_file": server.key_file}
    keys = str(pki / "keys")
    settings = {"plain": (None, None), "auth": (None, keys), "tls": (tls, None)}
    settings["tls+auth"] = (tls, keys)
    payload = grpc_load.identity_payload("tiny", 16)
    registry: list[int] = []
    gateways: dict[str, servers.GatewayProcess] = {}
    p50s: dict[str, list[float]] = {n: [] for n in names}
    with TritonServer(models=["identity"]) as triton:
        try:
            for name in names:
                plane, variant = name.split("/")
                gateways[name] = secured_gateway(
                    triton.endpoints.grpc, *settings[variant], registry, PLANES[plane]
                )
                gateways[name].start()
            channels = {
                n: client(g.grpc, ca.cert_file if "tls" in n else None) for n, g in gateways.items()
            }
            metadata = (("authorization", f"Bearer {KEY}"),)
            calls = {v: c.unary_unary(grpc_load.MODEL_INFER) for v, c in channels.items()}

            def call(variant: str) -> None:
                calls[variant](payload.request, timeout=30, metadata=metadata)

            for variant in names:  # ready, warm
                deadline = time.monotonic() + 60
                while True:
                    try:
                        call(variant)
                        break
                    except grpc.RpcError:
                        gateway = gateways[variant]
                        if gateway.proc is None or gateway.proc.poll() is not None:
                            raise servers.StartError(servers.tail(gateway.log)) from None
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.2)
                for _ in range(200):
                    call(variant)
            for round_no in range(args.rounds):
                shift = round_no % len(names)
                for variant in names[shift:] + names[:shift]:
                    samples = []
                    for _ in range(args.requests):
                        t0 = time.perf_counter_ns()
                        call(variant)
                        samples.append((time.perf_counter_ns() - t0) / 1e6)
                    p50s[variant].append(statistics.median(samples))
                line = "  ".join(f"{n} {p50s[n][-1]:.3f}" for n in names)
                print(f"round {round_no + 1}: p50 ms  {line}", flush=True)
            for channel in channels.values():
                channel.close()
        finally:
            for gateway in gateways.values():
                gateway.stop()
    print("\ngateway            p50 ms (median of rounds)   vs the plane's plain gateway")
    for name in names:
        plain = statistics.median(p50s[f"{name.split('/')[0]}/plain"])
        p50 = statistics.median(p50s[name])
        print(f"{name:<17}  {p50:8.3f}                     {p50 - plain:+.3f} ms")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "security_overhead.json").write_text(json.dumps({"p50_ms_per_round": p50s}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
