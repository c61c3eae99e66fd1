"""``infergw sidecar`` flags parse into what the sidecar needs (no servers started)."""

from __future__ import annotations

from infergw.gateway.cli import build_parser


def test_drain_grace_defaults_to_kubernetes_grace_and_can_be_set() -> None:
    parser = build_parser()
    assert parser.parse_args(["sidecar", "--upstream", "127.0.0.1:9001"]).drain_grace_s == 30.0
    args = parser.parse_args(["sidecar", "--upstream", "127.0.0.1:9001", "--drain-grace-s", "5"])
    assert args.drain_grace_s == 5.0
