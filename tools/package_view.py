"""Build ``build/typecheck/infergw``: the folders as the one ``infergw`` package they install as.

The repository keeps its top-level folders (gateway/, backends/, ...) and setup.py maps
them to ``infergw.*``. Type checkers and import linters resolve modules from a directory
tree, so they are pointed at this view: one symlink per top-level package, read from
setup.py's ``PACKAGES`` (the single source of the mapping).

    python tools/package_view.py [DEST]     # default build/typecheck; prints DEST
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def package_dirs(setup_py: Path = ROOT / "setup.py") -> dict[str, Path]:
    """Top-level ``infergw.X`` packages -> their folders, from setup.py's PACKAGES literal."""
    for node in ast.walk(ast.parse(setup_py.read_text())):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "PACKAGES" for t in node.targets
        ):
            mapping: dict[str, str] = ast.literal_eval(node.value)
            return {
                name.split(".")[1]: ROOT / folder
                for name, folder in mapping.items()
                if name.count(".") == 1
            }
    raise SystemExit("setup.py has no PACKAGES mapping")


def build(dest: Path) -> Path:
    package = dest / "infergw"
    package.mkdir(parents=True, exist_ok=True)
    wanted = package_dirs()
    for entry in package.iterdir():
        if entry.is_symlink() and entry.name not in wanted:
            entry.unlink()
    for name, folder in wanted.items():
        link = package / name
        if link.is_symlink() and link.resolve() == folder.resolve():
            continue
        if link.is_symlink():
            link.unlink()
        link.symlink_to(folder.resolve(), target_is_directory=True)
    return dest


if __name__ == "__main__":
    print(build(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "build" / "typecheck"))
