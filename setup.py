"""Build hook: generate the Python protobuf modules from proto/*.proto.

The generated modules are never edited by hand and never committed. They are
loaded into infergw's own descriptor pool (``infergw.proto.POOL``) instead of
protobuf's default pool, because tritonclient registers the same
``inference.*`` names there and both must be importable in one process.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PROTO_DIR = ROOT / "proto"
DEFAULT_POOL = "_descriptor_pool.Default()"
PRIVATE_POOL = "__import__('infergw.proto._pool', fromlist=['POOL']).POOL"


def generate_protos() -> None:
    from grpc_tools import protoc  # build-time dependency only

    for source in sorted(PROTO_DIR.glob("*.proto")):
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"--python_out={PROTO_DIR}",
            f"--pyi_out={PROTO_DIR}",
            str(source),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed for {source.name}")
        module = PROTO_DIR / f"{source.stem}_pb2.py"
        text = module.read_text()
        if DEFAULT_POOL not in text:
            raise RuntimeError(f"unexpected protoc output in {module.name}")
        module.write_text(text.replace(DEFAULT_POOL, PRIVATE_POOL))


class BuildPyWithProtos(build_py):
    def run(self) -> None:
        generate_protos()
        super().run()


PACKAGES = {
    "infergw.gateway": "gateway",
    "infergw.gateway.core": "gateway/core",
    "infergw.gateway.frontends": "gateway/frontends",
    "infergw.backends": "backends",
    "infergw.clients": "clients",
    "infergw.loadgen": "loadgen",
    "infergw.deploy": "deploy",
    "infergw.deploy.models": "deploy/models",
    "infergw.deploy.triton": "deploy/triton",
    "infergw.deploy.local": "deploy/local",
    "infergw.deploy.lambda": "deploy/lambda",  # a keyword: import it with importlib
    "infergw.deploy.sagemaker": "deploy/sagemaker",
    "infergw.deploy.cloudrun": "deploy/cloudrun",
    "infergw.proto": "proto",
}

setup(packages=list(PACKAGES), package_dir=PACKAGES, cmdclass={"build_py": BuildPyWithProtos})
