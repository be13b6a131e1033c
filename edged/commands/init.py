"""`edged init DIR`: a config and spool for a local, unprivileged set-up."""

from __future__ import annotations

from pathlib import Path

from edged.config import load_config
from edged.exitcodes import CliError, ExitCode
from edged.tasks import TASK_NAMES
from edged.wiring import build_layout

TEMPLATE = """\
# edged configuration written by `edged init`; every key is documented in config.example.yaml.
# Relative paths are relative to this file.
state_dir: state
spool_dir: spool
"""


def init_dir(target: Path, force: bool = False) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    config = target / "config.yaml"
    if config.exists() and not force:
        raise CliError(f"{config} exists (use --force to overwrite it)", ExitCode.USAGE)
    config.write_text(TEMPLATE, encoding="utf-8")
    settings = load_config(config)
    build_layout(settings).ensure()
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    print(f"Wrote {config}")
    print("Drop files into:")
    for task in TASK_NAMES:
        print(f"  {settings.spool_dir / 'inbox' / task}/")
    print(f"  ({settings.spool_dir / 'inbox' / 'translate'}/<lang>/ picks the target language, e.g. .../translate/de/)")
    print(f"Start the daemon:  edged run -c {config}")
    print(f"Query results:     edged results -c {config}   or   sqlite3 {settings.state_dir / 'edged.db'}")
    return config
