"""Copies the files an installed edged needs from the repository root into the package.

The owner's layout keeps config.example.yaml, LICENSE, README.md, systemd/ and models/ at the
top of the repository, outside the `edged` package; a wheel carries only packages. This
build_py step puts copies under `edged/_share/` in the build (never in the source tree), and
`edged.resources` finds them there, or at the repository root in an editable install.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SHARED = ["config.example.yaml", "LICENSE", "README.md", "systemd", "models"]


class BuildWithShare(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads them from the repository itself
        target = Path(self.build_lib) / "edged" / "_share"
        for name in SHARED:
            src = ROOT / name
            dst = target / name
            if src.is_dir():
                shutil.copytree(src, dst, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)


setup(cmdclass={"build_py": BuildWithShare})
