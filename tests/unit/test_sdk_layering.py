"""The SDK stands on the vocabulary and the wire codecs only: no gateway code comes along."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
import infergw.clients
print(json.dumps(sorted(m for m in sys.modules if m.startswith("infergw."))))
"""


def test_importing_the_sdk_loads_no_gateway_module() -> None:
    # A fresh interpreter: in this one, other tests have imported the gateway already.
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = json.loads(out.stdout)
    assert "infergw.clients" in loaded and "infergw.wire.status" in loaded  # the probe worked
    assert [m for m in loaded if m.startswith("infergw.gateway")] == []
