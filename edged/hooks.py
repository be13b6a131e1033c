"""After a job ends: its JSON sidecar beside the result file, and the operator's post-job hook.

The settler calls `AfterJob.ended(job_id)` once a finished job's files have settled (the
outcome is committed by then). The sidecar (`spool.write_result_json`) is written there and
then, on the worker's thread: it is small, and it must exist whenever the result file does.
The hook (`hooks.post_job`: a command, no shell) gets the job as `edged show --json` prints
it on stdin, runs on a thread of its own, one at a time, killed with its process group after
`hooks.timeout_seconds`; whatever it does is logged and never changes the job. A hook that
falls behind skips jobs beyond `hooks.max_pending`, saying so; one in flight when the daemon
stops is given `timeout_seconds` to finish. Hooks run at most once per job end: a crash
between the settle and the hook loses that call.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
from typing import Any, Optional

from sqlalchemy import Engine

from edged.config import Settings
from edged.logs import get_logger
from edged.spool import SpoolFiles
from edged.store.detail import job_detail

log = get_logger("edged.hooks")

_STOP = -1


def sidecar_body(detail: dict[str, Any], result_file: str) -> dict[str, Any]:
    """What a script reading out/ wants beside the text: who made it, from what, at what cost."""
    result = detail.get("result") or {}
    return {"job_id": detail["id"], "task": detail["task"], "status": detail["status"], "params": detail["params"],
            "model": result.get("model") or detail.get("model"), "source": detail["source_path"],
            "result_file": result_file, "prompt_tokens": result.get("prompt_tokens"),
            "output_tokens": result.get("output_tokens"), "duration_ms": result.get("duration_ms"),
            "attempts": detail["attempts"], "parent_id": detail["parent_id"], "created_at": detail["created_at"],
            "started_at": detail["started_at"], "finished_at": detail["finished_at"]}


class AfterJob:
    def __init__(self, settings: Settings, engine: Engine, files: SpoolFiles) -> None:
        self.engine = engine
        self.files = files
        self._pending: queue.Queue[int] = queue.Queue()
        self._thread: Optional[threading.Thread] = None
        self.apply(settings)

    def apply(self, settings: Settings) -> None:
        self.sidecars = settings.spool.write_result_json and settings.spool.write_result_files
        self.command = list(settings.hooks.post_job or [])
        self.run_on = settings.hooks.run_on
        self.timeout = settings.hooks.timeout_seconds
        self.max_pending = settings.hooks.max_pending
        if self.command and self._thread is None:
            self._thread = threading.Thread(target=self._run_hooks, name="post-job-hook", daemon=True)
            self._thread.start()

    def ended(self, job_id: int) -> None:
        """Called by the settler; never raises (the job is settled, whatever happens here)."""
        if not self.sidecars and not self.command:
            return
        try:
            detail = job_detail(self.engine, job_id)
            if detail is None:
                return
            if self.sidecars and detail["status"] == "done":
                self._write_sidecars(detail)
        except Exception as exc:
            log.warning("sidecar_failed", job_id=job_id, error=f"{type(exc).__name__}: {exc}")
            return
        if self.command and self.run_on in ("all", detail["status"]):
            if self._pending.qsize() >= self.max_pending:
                log.warning("hook_skipped", job_id=job_id, pending=self._pending.qsize(),
                            detail="the post-job hook is behind by hooks.max_pending jobs")
                return
            self._pending.put(job_id)

    def _write_sidecars(self, detail: dict[str, Any]) -> None:
        paths = [f["result_file"] for f in detail["files"] if f.get("result_file")]
        if not detail["files"] and detail["result"] is not None:
            # A spawned job (OCR -> translate) has no input file: its result file is found by
            # writing the same text again, which returns the file already there.
            found = self.files.write_result(detail["source_path"], detail["task"], detail["result"]["output"])
            paths = [found] if found else []
        for path in dict.fromkeys(paths):  # duplicates of one input share a result file
            body = json.dumps(sidecar_body(detail, path), indent=2, ensure_ascii=False) + "\n"
            self.files.write_sidecar(path, body.encode("utf-8"))

    # -- the hook's thread -------------------------------------------------------------

    def _run_hooks(self) -> None:
        while True:
            job_id = self._pending.get()
            if job_id == _STOP:
                return
            try:
                self._run_one(job_id)
            except Exception as exc:  # the hook's trouble is the hook's
                log.warning("hook_failed", job_id=job_id, error=f"{type(exc).__name__}: {exc}")

    def _run_one(self, job_id: int) -> None:
        detail = job_detail(self.engine, job_id)
        if detail is None or not self.command:
            return
        payload = json.dumps(detail, ensure_ascii=False, default=str).encode("utf-8")
        env = {**os.environ, "EDGED_JOB_ID": str(job_id), "EDGED_JOB_STATUS": detail["status"],
               "EDGED_TASK": detail["task"]}
        proc = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
        try:
            out, _ = proc.communicate(payload, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            try:
                proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                # Something that left the process group (setsid) still holds the pipe: stop
                # reading it rather than wait for it.
                if proc.stdout is not None:
                    proc.stdout.close()
                proc.wait(timeout=5)
            log.warning("hook_timeout", job_id=job_id, command=self.command[0], timeout_s=self.timeout,
                        detail="killed with its process group; the job is not affected")
            return
        text = out.decode("utf-8", "replace").strip()[-500:]
        if proc.returncode != 0:
            log.warning("hook_failed", job_id=job_id, command=self.command[0], exit_code=proc.returncode,
                        output=text or None, detail="the job is not affected")
        else:
            log.debug("hook_done", job_id=job_id, command=self.command[0], output=text or None)

    def close(self) -> None:
        """Let the hook in flight finish (within its timeout); the ones still queued are skipped."""
        if self._thread is None:
            return
        skipped = self._pending.qsize()
        while not self._pending.empty():
            try:
                self._pending.get_nowait()
            except queue.Empty:
                break
        self._pending.put(_STOP)
        self._thread.join(self.timeout + 5)
        if skipped:
            log.warning("hooks_skipped_at_stop", jobs=skipped)
