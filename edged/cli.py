"""The `edged` command: parses arguments, calls a part, prints. Exit codes: edged.exitcodes."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

from edged import __version__
from edged.config import ConfigError, Settings, load_config, resolve_config_path
from edged.exitcodes import CliError, EdgedError, ExitCode
from edged.logs import configure_logging
from edged.tasks import TASK_NAMES


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_config(resolve_config_path(args.config))
    level = getattr(args, "log_level", None) or settings.log.level
    configure_logging(level, settings.log.format)
    return settings


def cmd_run(args: argparse.Namespace) -> ExitCode:
    from edged import hugepages
    from edged.daemon import Daemon

    settings = _settings(args)
    if settings.model.huge_pages:
        hugepages.ensure()  # returns only when no re-exec is needed
    return Daemon(settings).run()


def cmd_init(args: argparse.Namespace) -> ExitCode:
    from edged.commands.init import init_dir

    init_dir(Path(args.dir), force=args.force)
    return ExitCode.OK


def cmd_submit(args: argparse.Namespace) -> ExitCode:
    from edged.commands.submit import submit

    return submit(_settings(args), [Path(f) for f in args.files], args.task, args.lang, name=args.name)


def cmd_status(args: argparse.Namespace) -> ExitCode:
    from edged.commands import as_database_owner
    from edged.commands.status import fleet, status

    settings = _settings(args)
    if args.fleet:
        return fleet(settings, as_json=args.json)
    with as_database_owner(settings):
        return status(settings, as_json=args.json)


def cmd_results(args: argparse.Namespace) -> ExitCode:
    from edged.commands import as_database_owner
    from edged.commands.results import results

    settings = _settings(args)
    with as_database_owner(settings):
        return results(settings, task=args.task, since=args.since, status=args.status, fmt=args.format,
                       limit=args.limit, follow=args.follow)


def cmd_show(args: argparse.Namespace) -> ExitCode:
    from edged.commands import as_database_owner
    from edged.commands.show import show

    settings = _settings(args)
    with as_database_owner(settings):
        return show(settings, args.job_id, as_json=args.json)


def cmd_retry(args: argparse.Namespace) -> ExitCode:
    from edged.commands import as_database_owner
    from edged.commands.retry import retry

    if not args.job_ids and not args.failed:
        raise CliError("name job ids, or use --failed to retry every failed job", ExitCode.USAGE)
    settings = _settings(args)
    with as_database_owner(settings):
        return retry(settings, args.job_ids, all_failed=args.failed)


def cmd_reload(args: argparse.Namespace) -> ExitCode:
    from edged.commands import as_database_owner
    from edged.commands.reload import reload

    try:
        settings = _settings(args)
    except ConfigError as exc:  # the daemon would refuse it too: say so without signalling it
        raise ConfigError(f"reload refused, the running configuration stays: {exc}") from None
    with as_database_owner(settings):
        return reload(settings, args.pid, args.timeout)


def cmd_install_service(args: argparse.Namespace) -> ExitCode:
    from edged.commands.service import install_service

    return install_service(Path(args.root), config=args.config_path, spool=args.spool, bin_path=args.bin,
                           enable=args.enable)


def cmd_note_exit(args: argparse.Namespace) -> ExitCode:
    """ExecStopPost: keep systemd's word on how the daemon ended, for crash attribution."""
    from edged.death import record_exit

    record_exit(_settings(args).state_dir)
    return ExitCode.OK


def cmd_doctor(args: argparse.Namespace) -> ExitCode:
    from edged.commands.doctor import doctor

    try:
        settings = _settings(args)
    except ConfigError as exc:
        print(f"FAIL  config      {exc}")
        return ExitCode.CHECK_FAILED
    from edged.commands.doctor import preload

    preload()
    return doctor(settings, as_json=args.json, user=args.user)


def _patterns(given: Optional[list[str]]) -> Optional[tuple[str, ...]]:
    return None if given is None else tuple(p for p in given if p != "none")


def cmd_model(args: argparse.Namespace) -> ExitCode:
    from edged.commands import model

    if args.model_verb == "export":
        return model.export(args.source, Path(args.out), {
            "weights": args.weights, "algorithm": args.algorithm, "block_size": args.block_size,
            "symmetric": args.symmetric, "int8_layers": _patterns(args.int8),
            "lm_head_bits": args.lm_head_bits, "accuracy_level": args.accuracy_level, "name": args.name,
            "chat": args.chat,
            "context_length": args.context_length, "verify": not args.no_verify})
    if args.model_verb == "build-default":
        out = Path(args.out) if args.out else _settings(args).model_dir
        return model.build_default(out, args.force)
    if args.model_verb == "import":
        return model.import_release(Path(args.dir), Path(args.out), args.dtype, args.name)
    if args.model_verb == "pull":
        if args.out:
            configure_logging()  # no config needed; structlog's own default would print on stdout
        models_dir = None if args.out else _settings(args).state_dir / "models"
        return model.pull(args.name, Path(args.out) if args.out else None, models_dir, args.dtype, args.file,
                          args.revision, args.sha256, args.endpoint)
    if args.model_verb == "list":
        settings = _settings(args)
        return model.list_models(settings.state_dir / "models", settings.model_dir, settings.model.engine,
                                 settings.source, args.json)
    if args.model_verb == "verify":
        return model.verify(Path(args.dir), args.prompt, args.tokens)
    return model.info(Path(args.dir), args.json)


def _model_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("model", help="export, build, import, pull, list, verify and describe models",
                       description="export, build, import, pull, list, verify and describe models")
    p.set_defaults(func=cmd_model)
    msub = p.add_subparsers(dest="model_verb", metavar="ACTION", required=True)
    e = msub.add_parser("export", help="export a Gemma 3 model to int4/int8/fp16/fp32 ONNX",
                        description="SOURCE: a Hugging Face folder, a .gguf file, random:RECIPE.json,"
                                    " or a hub model id")
    e.add_argument("--from", dest="source", required=True, metavar="SOURCE")
    e.add_argument("--out", required=True, metavar="DIR")
    e.add_argument("--weights", choices=["auto", "gguf", "int4", "int8", "fp16", "fp32"], default="auto",
                   help="auto (default): a .gguf source keeps its own blocks (gguf), others get int4")
    q = e.add_argument_group("int4 recipe (defaults: the one chosen by measurement, see README)")
    q.add_argument("--algorithm", choices=["rtn", "k_quant", "hqq"], help="rounding of the 4-bit blocks")
    q.add_argument("--block-size", type=int, choices=[16, 32, 64, 128, 256], help="values per 4-bit block")
    q.add_argument("--symmetric", action=argparse.BooleanOptionalAction, default=None,
                   help="rtn without zero points")
    q.add_argument("--int8", action="append", metavar="PATTERN",
                   help="MatMul nodes kept at 8 bits: fnmatch on the node name, e.g. '*/v_proj/*'; "
                        "'none' for no layer; repeatable")
    q.add_argument("--lm-head-bits", type=int, choices=[4, 8], help="output layer and embedding table")
    e.add_argument("--accuracy-level", type=int, choices=[1, 4],
                   help="4 (default): int8 activations, ONNX Runtime's fast kernels (as llama.cpp computes); "
                        "1: fp32 activations, exact weights' arithmetic, ~40x slower on CPU for 8-bit weights")
    e.add_argument("--name", help="model name recorded with jobs (default: from the source)")
    chat = e.add_mutually_exclusive_group()
    chat.add_argument("--chat", dest="chat", action="store_true", default=None, help="instruction-tuned: chat format")
    chat.add_argument("--no-chat", dest="chat", action="store_false", help="base model: completion prompts")
    e.add_argument("--context-length", type=int, help="cap the context (default: the model's)")
    e.add_argument("--no-verify", action="store_true", help="skip the parity checks against PyTorch")
    b = msub.add_parser("build-default", parents=[common],
                        help="build the built-in Gemma 3 270M into the state directory (once, cached)")
    b.add_argument("--out", help="folder (default: <state_dir>/models/gemma-3-270m from the config)")
    b.add_argument("--force", action="store_true", help="rebuild even if a valid model is there")
    i = msub.add_parser("import", help="import a published ONNX release (onnx-community layout)")
    i.add_argument("dir", help="the release folder (with onnx/ and config.json)")
    i.add_argument("--out", required=True, metavar="DIR")
    i.add_argument("--dtype", default="q4", help="variant: q4, q4f16, fp16, quantized, fp32 (default q4)")
    i.add_argument("--name")
    pl = msub.add_parser("pull", parents=[common], help="download a published ONNX release or a GGUF and install it",
                         description="NAME: a Hugging Face repository id (onnx-community/gemma-3-4b-it-ONNX), a hub"
                                     " URL, or the URL of a .gguf file. Resumes an interrupted download, checks every"
                                     " file's checksum, installs nothing unless all of it checked. $HF_TOKEN: the"
                                     " token for gated repositories (Gemma: accept its licence on the hub first);"
                                     " $HF_ENDPOINT: another hub.")
    pl.add_argument("name", metavar="NAME")
    pl.add_argument("--out", metavar="DIR", help="model folder (default: <state_dir>/models/<name> from the config)")
    pl.add_argument("--dtype", default="q4", help="release variant: q4, q4f16, fp16, quantized, fp32 (default q4)")
    pl.add_argument("--file", metavar="PATTERN", help="which GGUF of a repository (fnmatch, e.g. '*Q4_K_M.gguf')")
    pl.add_argument("--revision", default="main", metavar="REV", help="branch, tag or commit (default main)")
    pl.add_argument("--sha256", metavar="HEX", help="the file's sha256, for a plain URL whose server gives none")
    pl.add_argument("--endpoint", metavar="URL", help="the hub (default: $HF_ENDPOINT, else https://huggingface.co)")
    ls = msub.add_parser("list", parents=[common], help="installed models, their size and tasks, and the one in use")
    ls.add_argument("--json", action="store_true")
    v = msub.add_parser("verify", help="checksums, graph inputs and outputs, one short generation")
    v.add_argument("dir")
    v.add_argument("--prompt", default="The capital of France is")
    v.add_argument("--tokens", type=int, default=16)
    n = msub.add_parser("info", help="what a model folder holds, and its parity figures in words")
    n.add_argument("dir")
    n.add_argument("--json", action="store_true", help="the manifest as JSON, with the explanations")


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
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="files, folders (their files, recursively, under the folder's name) or - (standard input)")
    p.add_argument("--task", "-t", required=True, choices=TASK_NAMES)
    p.add_argument("--lang", "-l", help="target language for translate (BCP-47, e.g. de, pt-BR)")
    p.add_argument("--name", help="file name for what - reads from standard input (default: stdin-<UTC time>"
                                  " with .txt for translate, else the image format's extension)")

    p = verb("status", cmd_status, "queue counts, oldest queued job, last hour's throughput")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--fleet", action="store_true",
                   help="every box shipping into the central database of ship.url (mode ship)")

    p = verb("results", cmd_results, "list finished jobs and their results")
    p.add_argument("--task", choices=TASK_NAMES)
    p.add_argument("--since", help="only jobs finished since: 30m, 2h, 7d or an ISO-8601 time (UTC)")
    p.add_argument("--status", choices=["queued", "running", "done", "failed"])
    p.add_argument("--format", choices=["table", "csv", "json", "jsonl"], default="table",
                   help="table (fits the terminal; whole outputs when not a terminal), csv (a header row, whole"
                        " outputs), json, jsonl")
    p.add_argument("--limit", type=int, default=50, help="at most N rows, newest first (0: all)")
    p.add_argument("--follow", "-f", action="store_true",
                   help="then keep printing jobs as they finish, until Ctrl-C")

    p = verb("show", cmd_show, "one job whole: its fields, files, result, parent and children, and every attempt")
    p.add_argument("job_id", type=int, metavar="JOB")
    p.add_argument("--json", action="store_true", help="machine-readable output (times in UTC)")

    p = verb("retry", cmd_retry, "queue failed jobs again (their files move back from failed/ to the inbox)")
    p.add_argument("job_ids", nargs="*", type=int, metavar="JOB_ID")
    p.add_argument("--failed", action="store_true", help="retry every failed job")

    p = verb("reload", cmd_reload, "make the daemon read its config again, and wait until it has (the unit's"
             " ExecReload; exits 3 when the file was refused)")
    p.add_argument("--pid", type=int, help="the daemon's pid (default: the one it recorded)")
    p.add_argument("--timeout", type=float, default=300, help="seconds to wait for it (default 300)")

    p = sub.add_parser("install-service", help="install the systemd unit, the edged account and the spool folders"
                       " (as root)", description="write the unit (with this install's paths), sysusers.d and"
                       " tmpfiles.d entries and a config, make the account and folders with systemd's tools, and"
                       " print what was done")
    p.set_defaults(func=cmd_install_service)
    p.add_argument("--root", default="/", help="install into this tree instead of / (an image, a test)")
    p.add_argument("--config", dest="config_path", default="/etc/edged/config.yaml",
                   help="where the config lives (written from config.example.yaml only when absent)")
    p.add_argument("--spool", help="the spool folder (default: the one an existing config names, else"
                   " /var/spool/edged)")
    p.add_argument("--bin", help="the edged program the unit starts (default: the one of this install)")
    p.add_argument("--enable", action="store_true", help="also systemctl enable --now edged")

    _model_parser(sub, common)

    verb("note-exit", cmd_note_exit, "for the unit's ExecStopPost: record $SERVICE_RESULT, $EXIT_CODE and"
         " $EXIT_STATUS, so the next start knows whether the daemon died of a job (crash, OOM, watchdog)")

    p = verb("doctor", cmd_doctor, "check config, the daemon user's access to its folders and database, disk,"
             " whether CUDA works, and the model; says how to fix what fails")
    p.add_argument("--json", action="store_true")
    p.add_argument("--user", help="the daemon's user (default: the owner of its database or state, else edged)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        try:
            code = int(args.func(args))
            sys.stdout.flush()  # a closed pipe shows here, not at exit as "Exception ignored"
            return code
        except EdgedError as exc:  # the one handler: each error carries its exit code
            print(f"edged: {exc}", file=sys.stderr)
            return int(exc.code)
        except KeyboardInterrupt:
            return int(ExitCode.INTERRUPTED)
    except BrokenPipeError:
        # The reader went away (`edged results | head`): what is left to print has no one to
        # read it. Point stdout at /dev/null so that the flush at exit cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        # The daemon losing its log stream is a failure, not a clean stop: Restart=on-failure
        # must start it again.
        return int(ExitCode.ERROR if args.verb == "run" else ExitCode.OK)
