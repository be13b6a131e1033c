"""`edged status`: the queue at a glance, for people and for scripts."""

from __future__ import annotations

import shutil
from typing import Any

from sqlalchemy import exc

from edged.box import box_id
from edged.commands import command_parts
from edged.commands.output import emit_json
from edged.config import Settings
from edged.engine.loader import model_name
from edged.exitcodes import CliError, ExitCode
from edged.lock import HolderUnknown, StateLock
from edged.pathnames import for_terminal
from edged.store import DatabaseMissing, StoreUnavailable, open_engine
from edged.store.central import fleet_summary
from edged.store.outbox import Outbox
from edged.store.postgres import shown
from edged.store.queries import finished_between, queue_summary, site_summary, throughput_since
from edged.store.stats import Stats
from edged.timeutil import local_time, relative
from edged.wiring import lock_path, postgres_options


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _empty() -> dict[str, Any]:
    zero = {"queued": 0, "running": 0, "done": 0, "failed": 0}
    return {"jobs": zero, "by_task": {}, "files_in_inbox": 0, "files_unsettled": 0, "files_left_in_inbox": 0,
            "oldest_queued_at": None, "oldest_queued_age_s": None, "waiting_for_retry": 0, "next_retry_at": None,
            "last_hour": {"since": None, "until": None, "done": 0, "failed": 0, "jobs_per_min": 0.0,
                          "output_tokens": 0, "output_tok_per_s": None}}


def collect(settings: Settings) -> dict[str, Any]:
    try:
        parts = command_parts(settings, "read")
    except DatabaseMissing as exc:
        throughput: dict[str, Any] = {"periods": 0}
        info, daemon = _empty(), {}
        info["database"] = str(exc)
    else:
        info = queue_summary(parts.queue.engine)
        daemon = Stats(parts.queue.engine, parts.queue.spool_box).runtime()
        throughput = throughput_since(parts.queue.engine, hours=1)
        if settings.shared:
            info["site"] = site_summary(parts.queue.engine)
        ship = Outbox(parts.queue.engine).state()
        if ship.enabled:
            info["ship"] = {"central": ship.central, "backlog_rows": ship.backlog, "shipped_rows": ship.shipped_rows,
                            "last_ok_at": ship.last_ok_at, "last_try_at": ship.last_try_at,
                            "last_error": ship.last_error}
        if throughput["periods"]:
            # The same window from the jobs table: the two agree where their windows do.
            throughput["jobs_table"] = finished_between(parts.queue.engine, throughput["window_start"],
                                                        throughput["window_end"])
    info["model"] = model_name(settings.model, settings.model_dir)
    try:
        daemon["running"] = StateLock(lock_path(settings)).holder() is not None
    except HolderUnknown as exc:  # null in --json: neither true nor false is known
        daemon["running"], daemon["running_unknown"] = None, str(exc)
    if not daemon["running"]:
        # What a stopped daemon last wrote is history, not state.
        for key in ("intake_paused", "processing_open", "next_opening", "low_disk"):
            daemon.pop(key, None)
    info["daemon"] = daemon
    info["throughput_last_hour"] = throughput
    info["spool_dir"] = str(settings.spool_dir)
    try:
        info["spool_free_mb"] = shutil.disk_usage(settings.spool_dir).free // (1024 * 1024)
    except OSError:
        info["spool_free_mb"] = None
    return info


def status(settings: Settings, as_json: bool = False) -> ExitCode:
    info = collect(settings)
    if as_json:
        emit_json(info)
        return ExitCode.OK
    if info.get("database"):
        print(f"database            {info['database']}")
    states = ("queued", "running", "done", "failed")
    print(f"{'task':<12}" + "".join(f"{s:>10}" for s in states))
    for task, counts in sorted(info["by_task"].items()):
        print(f"{task:<12}" + "".join(f"{counts[s]:>10}" for s in states))
    print(f"{'all':<12}" + "".join(f"{info['jobs'][s]:>10}" for s in states))
    hour = info["last_hour"]
    print()
    print(f"oldest queued job   {_age(info['oldest_queued_age_s'])}")
    if info["waiting_for_retry"]:
        nxt = info["next_retry_at"]
        print(f"waiting for retry   {info['waiting_for_retry']} queued after a failure; the next at"
              f" {local_time(nxt)} ({relative(nxt)})")
    print(f"files in inbox      {info['files_in_inbox']}")
    if info["files_unsettled"]:
        print(f"files not moved     {info['files_unsettled']} finished, but their move out of the inbox failed"
              " (retried; `edged doctor` says why)")
    if info["files_left_in_inbox"]:
        print(f"files left in inbox {info['files_left_in_inbox']} copied to done/ or failed/: the daemon may not"
              " remove them from their folder (see the README on producers)")
    since = f"{local_time(hour['since'])[11:]} to now" if hour.get("since") else "last 60 min"
    print(f"last hour           ({since}, from the jobs) {hour['done']} done, {hour['failed']} failed,"
          f" {hour['jobs_per_min']} jobs/min, {hour['output_tokens']} output tokens"
          + (f", {hour['output_tok_per_s']} tok/s of model time" if hour["output_tok_per_s"] else ""))
    d = info["daemon"]
    t = info["throughput_last_hour"]
    if t["periods"]:
        # The daemon writes a row when a period ends: this window stops at the last row written.
        # Its job counts come from the jobs table, over that window, as the line above counts them:
        # the two lines differ only by what their windows name, never by who counted (a batch that
        # ended across a period's edge is in the other row). The rows' own counts: --json.
        window = f"{local_time(t['window_start'])[11:19]} to {local_time(t['window_end'])[11:]}"
        jobs = t["jobs_table"]
        print(f"measured            ({window}, {t['periods']} summary periods) {jobs['done']} done,"
              f" {jobs['failed']} failed, {t['output_tokens']} output tokens,"
              f" {t['output_tok_per_s'] or '-'} tok/s in the engine, engine busy {t['engine_busy_pct']}%")
    if d["running"] is None:
        running = f"unknown: cannot tell whether a daemon is running ({d['running_unknown']})"
    elif d["running"]:
        running = f"running (pid {d.get('pid')}, since {local_time(d.get('started_at'))})"
    else:
        running = "not running"
    print(f"daemon              {running}")
    provider = f" on {d['provider']}" if d.get("provider") else ""
    print(f"model               {d.get('model') or info['model']}{provider}")
    if d.get("intake_paused"):
        low = ", ".join(f"{place} {mb} MB free" for place, mb in (d.get("low_disk") or {}).items())
        print(f"intake              PAUSED: low disk space ({low or str(d.get('spool_free_mb')) + ' MB free'}, "
              f"below spool.min_free_mb {d.get('min_free_mb')})")
    if d.get("processing_open") is False:
        print(f"processing          waiting: outside the processing windows (next opening"
              f" {local_time(d.get('next_opening'))})")
    if "site" in info:
        print("site boxes          " + ("none has started yet" if not info["site"]["boxes"] else ""))
        for b in info["site"]["boxes"]:
            state = "live" if b["live"] else "GONE"
            print(f"  {b['box_id']:<38} {state:<5} seen {_age(b['last_seen_age_s'])} ago"
                  f"  {for_terminal(b['host'] or '-')}  {for_terminal(b['model'] or '-')} on {b['provider']}"
                  f"  tasks: {', '.join(b['tasks']) or '-'}")
        for s in info["site"]["queued_no_live_box_can_run"]:
            print(f"  STRANDED: {s['jobs']} queued {s['task']} job(s) for model {for_terminal(s['model'])}: no live box"
                  " runs them")
    if "ship" in info:
        sh = info["ship"]
        last = f"last shipped {local_time(sh['last_ok_at'])} ({relative(sh['last_ok_at'])})" if sh["last_ok_at"] \
            else "nothing shipped yet"
        trouble = f"; the last try failed: {sh['last_error']}" if sh["last_error"] else ""
        print(f"shipping            to {sh['central']}: {sh['backlog_rows']} changed rows waiting, {last}{trouble}")
    print(f"spool               {info['spool_dir']} ({info['spool_free_mb']} MB free)")
    return ExitCode.OK


def fleet(settings: Settings, as_json: bool = False) -> ExitCode:
    """`edged status --fleet`: every box that ships into the central database of ship.url."""
    if not settings.ship.url:
        raise CliError("--fleet reads the fleet's central database: set ship.url in the config", ExitCode.USAGE)
    engine = open_engine(settings.ship.url, readonly=True, postgres=postgres_options(settings, box_id(settings)))
    try:
        boxes = fleet_summary(engine)
    except (exc.OperationalError, StoreUnavailable) as error:
        raise CliError(f"cannot use the fleet's database {shown(settings.ship.url)}: {getattr(error, 'orig', error)}",
                       ExitCode.UNAVAILABLE) from None
    finally:
        engine.dispose()
    if as_json:
        emit_json({"central": shown(settings.ship.url), "boxes": boxes})
        return ExitCode.OK
    print(f"fleet               {shown(settings.ship.url)}: {len(boxes)} box(es) ship here")
    for b in boxes:
        j = b["jobs"]
        print(f"  {b['box_id']:<38} last shipped {local_time(b['last_shipped_at'])} ({relative(b['last_shipped_at'])}),"
              f" backlog {b['backlog'] if b['backlog'] is not None else '-'}  {for_terminal(b['host'] or '-')}"
              f"  {for_terminal(b['model'] or '-')} on {b['provider'] or '-'}"
              f"  jobs: {j['done']} done, {j['failed']} failed, {j['queued'] + j['running']} waiting")
    return ExitCode.OK
