"""`edged status`: the queue at a glance, for people and for scripts."""

from __future__ import annotations

import shutil
from typing import Any

from edged.commands import open_parts
from edged.config import Settings
from edged.engine.loader import model_name
from edged.exitcodes import ExitCode
from edged.store.queries import queue_summary


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def collect(settings: Settings) -> dict[str, Any]:
    parts = open_parts(settings)
    info = queue_summary(parts.queue.engine)
    info["model"] = model_name(settings.model, settings.model_dir)
    info["spool_dir"] = str(settings.spool_dir)
    try:
        info["spool_free_mb"] = shutil.disk_usage(settings.spool_dir).free // (1024 * 1024)
    except OSError:
        info["spool_free_mb"] = None
    return info


def status(settings: Settings, as_json: bool = False) -> ExitCode:
    from edged.cli import emit_json

    info = collect(settings)
    if as_json:
        emit_json(info)
        return ExitCode.OK
    states = ("queued", "running", "done", "failed")
    print(f"{'task':<12}" + "".join(f"{s:>10}" for s in states))
    for task, counts in sorted(info["by_task"].items()):
        print(f"{task:<12}" + "".join(f"{counts[s]:>10}" for s in states))
    print(f"{'all':<12}" + "".join(f"{info['jobs'][s]:>10}" for s in states))
    hour = info["last_hour"]
    print()
    print(f"oldest queued job   {_age(info['oldest_queued_age_s'])}")
    print(f"files in inbox      {info['files_in_inbox']}")
    print(f"last hour           {hour['done']} done, {hour['failed']} failed, {hour['jobs_per_min']} jobs/min, "
          f"{hour['output_tokens']} output tokens"
          + (f", {hour['output_tok_per_s']} tok/s of model time" if hour["output_tok_per_s"] else ""))
    print(f"model               {info['model']}")
    print(f"spool               {info['spool_dir']} ({info['spool_free_mb']} MB free)")
    return ExitCode.OK
