"""`edged show JOB`: one job whole: its row, files, result, parent and children, and every attempt."""

from __future__ import annotations

import json
from typing import Any, Optional

from edged.commands import command_parts
from edged.commands.output import emit_json, retry_at, retry_words
from edged.config import Settings
from edged.exitcodes import CliError, ExitCode
from edged.pathnames import for_terminal
from edged.store.detail import job_detail
from edged.timeutil import local_time, utcnow

_TIMES = ("created_at", "started_at", "finished_at", "next_run_at", "lease_expires_at")


def _field(name: str, value: Any, stored: bool = False) -> None:
    # File names, errors and params come from producers and models: escaped, so none can drive the terminal.
    print(f"{name:<18}  {for_terminal(str(value), stored=stored)}")


def _text(value: Any) -> str:
    return for_terminal(str(value))


def _path(value: Any) -> str:
    """A name in the store's readable form (its \\xNN are bytes): escaped, its backslashes as they are."""
    return for_terminal(str(value), stored=True)


def _when(value: Optional[str]) -> str:
    return local_time(value) if value else "-"


def _print_job(info: dict[str, Any]) -> None:
    now = utcnow()
    _field("job", info["id"])
    _field("task", info["task"])
    state = info["status"]
    waiting = retry_words(info, now)
    _field("status", f"{state}, {waiting}" if waiting else state)
    _field("params", json.dumps(info["params"], ensure_ascii=False) if info["params"] else "-")
    _field("model", info["model"] or "-")
    _field("source", info["source_path"], stored=True)
    _field("sha256", info["sha256"] or "-")
    _field("size", f"{info['size_bytes']} bytes" if info["size_bytes"] is not None else "-")
    _field("attempts", f"{info['attempts']} in round {info['round']}" + (
        f", {info['crashes']} unexplained worker deaths" if info["crashes"] else ""))
    for key in _TIMES:
        if key == "next_run_at" and not retry_at(info, now):
            continue  # only a time ahead says something
        if info[key]:
            _field(key.removesuffix("_at"), _when(info[key]))
    if info["lease_owner"]:
        _field("lease", f"{info['lease_owner']} (pid {info['lease_pid']}, {info['lease_batch']} jobs together)")
    if info["solo"]:
        _field("solo", "runs alone next: it was running when a worker died")
    if info["error"]:
        _field("error", info["error"])
    if info["parent"]:
        p = info["parent"]
        _field("parent", f"job {p['id']} ({p['task']}, {p['status']}): its result is this job's input")
    for c in info["children"]:
        params = json.dumps(c["params"], ensure_ascii=False) if c["params"] else ""
        _field("child", f"job {c['id']} ({c['task']}, {c['status']}) {params}".rstrip())
    print()
    print("files")
    if not info["files"]:
        print("  (none: a job spawned from another job's result)")
    for f in info["files"]:
        flags = [w for w, on in (("duplicate", f["duplicate"]), ("left in inbox", f["left_in_inbox"])) if on]
        print(f"  {_path(f['path'])}  [{f['state']}{', ' + ', '.join(flags) if flags else ''}]"
              f"  received {_when(f['received_at'])}")
        if f["moved_to"]:
            print(f"    moved to     {_path(f['moved_to'])}")
        if f["result_file"]:
            print(f"    result file  {_path(f['result_file'])}")
        if f["settle_error"]:
            print(f"    move failed  {_text(f['settle_error'])}")
    print()
    r = info["result"]
    if r is None:
        print("result              -")
    else:
        print(f"result              {r['output_tokens']} output tokens from {r['prompt_tokens']} prompt tokens,"
              f" {r['duration_ms']} ms of model time, {_text(r['model'])}, at {_when(r['created_at'])}")
        for line in (r["output"] or "").splitlines() or [""]:
            print(f"  {for_terminal(line, keep=chr(9))}")  # lines split here; tabs print as tabs
    print()
    print("attempts")
    if not info["attempt_history"]:
        print("  (none recorded)")
    for a in info["attempt_history"]:
        print(f"  round {a['round']} attempt {a['attempt']}  {a['outcome']:<11}  {_when(a['started_at'])}"
              f" -> {_when(a['finished_at'])}" + (f"  {_text(a['error'])}" if a["error"] else ""))


def show(settings: Settings, job_id: int, as_json: bool = False) -> ExitCode:
    parts = command_parts(settings, "read")
    info = job_detail(parts.queue.engine, job_id)
    if info is None:
        raise CliError(f"no job {job_id}", ExitCode.NOT_FOUND)
    # The result file of the job's first file, where the settler wrote it (relative to the spool).
    written = [f["result_file"] for f in info["files"] if f["result_file"]]
    info["result_file"] = str(settings.spool_dir / written[0]) if written else None
    if as_json:
        info["retry_at"] = retry_at(info)
        emit_json(info)
    else:
        _print_job(info)
        if info["result_file"]:
            print()
            print(f"result file         {_path(info['result_file'])}")
    return ExitCode.OK
