"""The `edged` command: parses arguments, calls a part, prints. Exit codes: edged.exitcodes."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

from edged import __version__
from edged.config import ConfigError, Settings, load_config, resolve_config_path
from edged.exitcodes import CliError, ExitCode
from edged.logs import configure_logging
from edged.tasks import TASK_NAMES


def _settings(args: argparse.Namespace) -> Settings:
    try:
        settings = load_config(resolve_config_path(args.config))
    except ConfigError as exc:
        raise CliError(str(exc), ExitCode.CONFIG) from None
    level = getattr(args, "log_level", None) or settings.log.level
    configure_logging(level, settings.log.format)
    return settings


def cmd_run(args: argparse.Namespace) -> ExitCode:
    from edged.daemon import Daemon

    return Daemon(_settings(args)).run()


def cmd_init(args: argparse.Namespace) -> ExitCode:
    from edged.commands.init import init_dir

    init_dir(Path(args.dir), force=args.force)
    return ExitCode.OK


def cmd_submit(args: argparse.Namespace) -> ExitCode:
    from edged.commands.submit import submit

    return submit(_settings(args), [Path(f) for f in args.files], args.task, args.lang)


def cmd_status(args: argparse.Namespace) -> ExitCode:
    from edged.commands.status import status

    return status(_settings(args), as_json=args.json)


def cmd_results(args: argparse.Namespace) -> ExitCode:
    from edged.commands.results import results

    return results(_settings(args), task=args.task, since=args.since, status=args.status, fmt=args.format,
                   limit=args.limit)


def cmd_retry(args: argparse.Namespace) -> ExitCode:
    from edged.commands.retry import retry

    if not args.job_ids and not args.failed:
        raise CliError("name job ids, or use --failed to retry every failed job", ExitCode.USAGE)
    return retry(_settings(args), args.job_ids, all_failed=args.failed)


def cmd_doctor(args: argparse.Namespace) -> ExitCode:
    from edged.commands.doctor import doctor

    try:
        settings = _settings(args)
    except CliError as exc:
        print(f"FAIL  config      {exc}")
        return ExitCode.CHECK_FAILED
    return doctor(settings, as_json=args.json)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", default=argparse.SUPPRESS,
                        help="config file (default: $EDGED_CONFIG, else /etc/edged/config.yaml)")
    parser = argparse.ArgumentParser(
        prog="edged",
        description="Batch-processing daemon for edge boxes: spool folders -> SQLite queue -> Gemma 3 on ONNX Runtime.",
        epilog="Exit codes: " + ", ".join(f"{c.value} {c.name.lower()}" for c in ExitCode),
    )
    parser.add_argument("--version", action="version", version=f"edged {__version__}")
    parser.add_argument("-c", "--config", default=None, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    def verb(name: str, func: Callable[[argparse.Namespace], ExitCode], help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_, description=help_)
        p.set_defaults(func=func)
        return p

    p = verb("run", cmd_run, "run the daemon in the foreground (what the systemd unit starts)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="override log.level")

    p = verb("init", cmd_init, "create a config file and spool folders for a local, unprivileged set-up")
    p.add_argument("dir", help="folder to hold config.yaml, state/ and spool/")
    p.add_argument("--force", action="store_true", help="overwrite an existing config.yaml")

    p = verb("submit", cmd_submit, "copy files into the inbox atomically and queue them; prints job ids")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--task", "-t", required=True, choices=TASK_NAMES)
    p.add_argument("--lang", "-l", help="target language for translate (BCP-47, e.g. de, pt-BR)")

    p = verb("status", cmd_status, "queue counts, oldest queued job, last hour's throughput")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = verb("results", cmd_results, "list finished jobs and their results")
    p.add_argument("--task", choices=TASK_NAMES)
    p.add_argument("--since", help="only jobs finished since: 30m, 2h, 7d or an ISO-8601 time (UTC)")
    p.add_argument("--status", choices=["queued", "running", "done", "failed"])
    p.add_argument("--format", choices=["table", "json", "jsonl"], default="table")
    p.add_argument("--limit", type=int, default=50, help="at most N rows, newest first (0: all)")

    p = verb("retry", cmd_retry, "queue failed jobs again (their files move back from failed/ to the inbox)")
    p.add_argument("job_ids", nargs="*", type=int, metavar="JOB_ID")
    p.add_argument("--failed", action="store_true", help="retry every failed job")

    p = verb("doctor", cmd_doctor, "check config, paths, permissions, disk, ONNX Runtime providers and the model")
    p.add_argument("--json", action="store_true")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except CliError as exc:
        print(f"edged: {exc}", file=sys.stderr)
        return int(exc.code)
    except KeyboardInterrupt:
        return int(ExitCode.INTERRUPTED)


def emit_json(obj: object) -> None:
    json.dump(obj, sys.stdout, indent=2, ensure_ascii=False, default=str)
    sys.stdout.write("\n")
