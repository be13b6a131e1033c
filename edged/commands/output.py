"""How the commands print what is meant for scripts."""

from __future__ import annotations

import json
import sys


def emit_json(obj: object) -> None:
    json.dump(obj, sys.stdout, indent=2, ensure_ascii=False, default=str)
    sys.stdout.write("\n")
