"""The lint setup catches what it is there for: wrong cross-module calls and layer breaks.

Each check runs the real tool, as `make lint` does, over a throwaway view of the package
(tools/package_view.py) with one probe module added; nothing in the tree is modified.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("package_view", ROOT / "tools" / "package_view.py")
assert _spec is not None and _spec.loader is not None
package_view = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(package_view)

BIN = Path(sys.executable).parent

WRONG_CALLS = """\
from infergw.gateway.core.backend import create_backend
from infergw.vocab.types import Tensor

t = Tensor(1, 2)
create_backend(1, 2, 3) + t.nope
"""

RIGHT_CALLS = """\
from infergw.vocab.types import Tensor

t = Tensor("input", "FP32", (1,), b"\\0\\0\\0\\0")
"""


def _view(tmp_path: Path, probe: str, source: str, *, copy: str | None = None) -> Path:
    view = package_view.build(tmp_path / "view")
    package = view / "infergw"
    if copy is not None:  # a real copy of one folder, so a probe can live inside it
        (package / copy).unlink()
        shutil.copytree(ROOT / copy, package / copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = package / probe
    target.parent.mkdir(parents=True, exist_ok=True)
    (target.parent / "__init__.py").touch()
    target.write_text(source)
    return view


def _mypy(view: Path, module: str) -> list[str]:
    proc = subprocess.run(
        [BIN / "mypy", "--config-file", ROOT / "pyproject.toml", "--cache-dir", view / ".cache",
         "-m", module],
        cwd=view, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    probe = module.replace(".", "/")
    return [line for line in proc.stdout.splitlines() if line.startswith(probe)]


def test_mypy_resolves_infergw_and_rejects_a_wrong_cross_module_call(tmp_path: Path) -> None:
    wrong = _mypy(_view(tmp_path / "a", "_probe/calls.py", WRONG_CALLS), "infergw._probe.calls")
    text = "\n".join(wrong)
    assert 'Argument 1 to "Tensor" has incompatible type "int"' in text, text
    assert '"create_backend"' in text and '"nope"' in text, text

    right = _mypy(_view(tmp_path / "b", "_probe/calls.py", RIGHT_CALLS), "infergw._probe.calls")
    assert right == []


def test_import_linter_rejects_the_sdk_importing_the_gateway(tmp_path: Path) -> None:
    view = _view(
        tmp_path, "clients/_probe.py", "import infergw.gateway.core.router\n", copy="clients"
    )
    proc = subprocess.run(
        [BIN / "lint-imports", "--config", ROOT / "pyproject.toml", "--no-cache"],
        cwd=view, capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(view)},
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "infergw.clients._probe -> infergw.gateway.core.router" in proc.stdout
