"""Files shipped with edged besides its code: the example config, the systemd files, the model
recipes, the licence and the README.

A wheel carries them under `edged/_share/` (setup.py copies them there at build time); an
editable install or a plain checkout finds them at the repository root, one folder up.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_MARKER = Path("systemd") / "edged.service"


class ResourceMissing(FileNotFoundError):
    pass


def share_dir() -> Path:
    for base in (_PACKAGE / "_share", _PACKAGE.parent):
        if (base / _MARKER).is_file():
            return base
    raise ResourceMissing(f"edged's data files (systemd/, models/, config.example.yaml) are neither in"
                          f" {_PACKAGE / '_share'} nor in {_PACKAGE.parent}: a broken install (reinstall the wheel)")


def resource(relative: str) -> Path:
    """A shipped file by its path in the repository, e.g. `systemd/edged.service`."""
    path = share_dir() / relative
    if not path.exists():
        raise ResourceMissing(f"{relative} is not among edged's data files ({share_dir()})")
    return path
