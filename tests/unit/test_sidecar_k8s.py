"""The k8s manifests in deploy/k8s: valid YAML whose ports line up (no cluster needed).

The sidecar's flags must parse with the real CLI, point at the ports the server next to
it listens on, and be what the Service and the probes target; the server's own ports
must stay out of the Service.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from infergw.gateway.cli import build_parser
from infergw.gateway.sidecar.health import LIVENESS_SERVICE

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
# manifest -> (server container, its gRPC port flag, its REST port flag, client-facing ports)
MANIFESTS = {
    "triton-sidecar.yaml": ("triton", "--grpc-port", "--http-port", {8000, 8001, 8002}),
    "tfserving-sidecar.yaml": ("tfserving", "--port", "--rest_api_port", {8500, 8501, 8002}),
}


def _flags(args: list[str]) -> dict[str, str]:
    return dict(a.split("=", 1) for a in args if a.startswith("--") and "=" in a)


def _load(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    docs = list(yaml.safe_load_all((K8S / name).read_text()))
    kinds = {doc["kind"]: doc for doc in docs}
    assert sorted(kinds) == ["Deployment", "Service"] and len(docs) == 2
    return kinds["Deployment"], kinds["Service"]


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_manifest_ports_line_up(name: str) -> None:
    server_name, grpc_flag, rest_flag, public = MANIFESTS[name]
    deployment, service = _load(name)
    pod = deployment["spec"]["template"]
    assert (
        deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    )
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    containers = {c["name"]: c for c in pod["spec"]["containers"]}
    server, sidecar = containers[server_name], containers["infergw-sidecar"]

    args = build_parser().parse_args(sidecar["args"][1:])  # the real CLI accepts them
    server_flags = _flags(server["args"])
    assert args.upstream == f"127.0.0.1:{server_flags[grpc_flag]}"
    assert args.http_upstream == f"127.0.0.1:{server_flags[rest_flag]}"
    sidecar_ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    assert sidecar_ports == {
        "grpc": args.grpc_port,
        "http": args.http_port,
        "metrics": args.metrics_port,
    }
    assert set(sidecar_ports.values()) == public
    assert not {int(server_flags[grpc_flag]), int(server_flags[rest_flag])} & public

    for port in service["spec"]["ports"]:
        assert sidecar_ports[port["targetPort"]] == port["port"]
    assert {p["port"] for p in service["spec"]["ports"]} == public
    assert sidecar["readinessProbe"]["grpc"] == {"port": args.grpc_port}
    assert sidecar["livenessProbe"]["grpc"] == {"port": args.grpc_port, "service": LIVENESS_SERVICE}
    annotations = pod["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == args.metrics_port
    for container in containers.values():
        assert {"requests", "limits"} <= container["resources"].keys()
