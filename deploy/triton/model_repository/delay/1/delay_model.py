"""Triton python-backend entry point; the shared adapter serves the model named like this dir."""

from infergw.deploy.triton.python_model import TritonPythonModel

__all__ = ["TritonPythonModel"]
