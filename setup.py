"""Build hook: generate the Python protobuf modules from proto/*.proto.

The generated modules are never edited by hand and never committed. They are
loaded into infergw's own descriptor pool (``infergw.proto.POOL``) instead of
protobuf's default pool, because tritonclient registers the same
``inference.*`` names there and both must be importable in one process.
"""

from __future__ import annotations

import re
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PROTO_DIR = ROOT / "proto"
DEFAULT_POOL = "_descriptor_pool.Default()"
PRIVATE_POOL = "__import__('infergw.proto._pool', fromlist=['POOL']).POOL"


def generate_protos() -> None:
    from grpc_tools import protoc  # build-time dependency only

    well_known = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto
    sources = sorted(PROTO_DIR.rglob("*.proto"))
    # Files in subfolders import each other as "sub/x.proto"; protoc then emits
    # "from sub import x_pb2", which must become "from infergw.proto.sub import x_pb2".
    subpackages = sorted(
        {s.relative_to(PROTO_DIR).parts[0] for s in sources if s.parent != PROTO_DIR}
    )
    local_import = re.compile(rf"^from ({'|'.join(subpackages) or '(?!)'})\b", re.M)
    for source in sources:
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"-I{well_known}",
            f"--python_out={PROTO_DIR}",
            f"--pyi_out={PROTO_DIR}",
            str(source),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed for {source.name}")
        for suffix in (".py", ".pyi"):
            module = source.with_name(f"{source.stem}_pb2{suffix}")
            text = local_import.sub(r"from infergw.proto.\1", module.read_text())
            if suffix == ".py":
                if DEFAULT_POOL not in text:
                    raise RuntimeError(f"unexpected protoc output in {module.name}")
                text = text.replace(DEFAULT_POOL, PRIVATE_POOL)
            module.write_text(text)


class BuildPyWithProtos(build_py):
    def run(self) -> None:
        generate_protos()
        super().run()


PACKAGES = {
    "infergw.vocab": "vocab",
    "infergw.wire": "wire",
    "infergw.models": "models",
    "infergw.gateway": "gateway",
    "infergw.gateway.core": "gateway/core",
    "infergw.gateway.core.routing": "gateway/core/routing",
    "infergw.gateway.frontends": "gateway/frontends",
    "infergw.gateway.sidecar": "gateway/sidecar",
    "infergw.backends": "backends",
    "infergw.clients": "clients",
    "infergw.loadgen": "loadgen",
    "infergw.planner": "planner",
    "infergw.experiments": "experiments",
    "infergw.deploy": "deploy",
    "infergw.deploy.triton": "deploy/triton",
    "infergw.deploy.local": "deploy/local",
    "infergw.deploy.lambda": "deploy/lambda",  # a keyword: import it with importlib
    "infergw.deploy.sagemaker": "deploy/sagemaker",
    "infergw.deploy.cloudrun": "deploy/cloudrun",
    "infergw.proto": "proto",
    "infergw.proto.tfs": "proto/tfs",
}


def rust_extensions() -> list[object]:
    """The native data plane (native/, issue 13) as ``infergw._native``, built by cargo.

    Optional: when cargo fails (or setuptools-rust is missing) the package installs
    without it and the Python data plane runs (``infergw.gateway.native_plane``).
    """
    try:
        from setuptools_rust import Binding, RustExtension
    except ImportError:
        return []
    return [
        RustExtension(
            "infergw._native",
            "native/Cargo.toml",
            binding=Binding.PyO3,
            optional=True,
            debug=False,
        )
    ]


# ``infergw`` itself (a namespace package) gets the folder the extension is built into
# in place (editable installs), so ``infergw._native`` is found beside the subpackages.
NATIVE_DIR = {"infergw": "native/python"}

setup(
    packages=[*NATIVE_DIR, *PACKAGES],
    package_dir={**NATIVE_DIR, **PACKAGES},
    cmdclass={"build_py": BuildPyWithProtos},
    rust_extensions=rust_extensions(),
)
