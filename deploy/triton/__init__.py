"""Triton Inference Server on the other side: the bundled model repository and its launcher.

``TritonServer`` runs the real ``tritonserver`` binary from the nvidia-pytriton wheel (CPU
here; the same repository runs on GPU nodes). ``python -m infergw.deploy.triton`` runs it
from the command line.
"""

from infergw.deploy.triton.launcher import (
    BUNDLED_REPOSITORY,
    TritonEndpoints,
    TritonServer,
    TritonStartError,
)

__all__ = ["BUNDLED_REPOSITORY", "TritonEndpoints", "TritonServer", "TritonStartError"]
