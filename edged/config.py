"""Loading and validating `config.yaml`.

Every key is documented in `config.example.yaml`; a test keeps the two in step. Errors name
the file, the key and what is wrong, because an operator on a headless box reads them in the
journal and nowhere else.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edged.exitcodes import EdgedError, ExitCode
from edged.languages import accepted, normalise
from edged.windows import parse_window

DEFAULT_CONFIG_PATH = Path("/etc/edged/config.yaml")
CONFIG_ENV = "EDGED_CONFIG"

# Names that producers use for files still being written, and folders that NAS boxes and
# desktop systems litter into shares. Matched against every path component.
DEFAULT_IGNORE = [
    ".*",
    "*.part",
    "*.tmp",
    "*.filepart",
    "*.crdownload",
    "~*",
    "Thumbs.db",
    "@eaDir",
    "__MACOSX",
]


# tasks/translate.py cuts a text into chunks of at most half of tasks.translate.max_new_tokens
# and needs 16 tokens (its MIN_BUDGET) of text per chunk: below twice that, every translation
# fails. config.py may not import tasks/; a test keeps the two in step.
TRANSLATE_MIN_NEW_TOKENS = 32
# A KV slot (model.context) must hold a prompt and its answer: the shortest translation prompt
# is about 13 tokens with Gemma 3's tokenizer (an image alone is 256).
MIN_CONTEXT = 32


class ConfigError(EdgedError):
    """The config file is missing, unreadable or invalid. The message is meant for operators."""

    code = ExitCode.CONFIG


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def live(*args: Any, **kwargs: Any) -> Any:
    """A Field that a running daemon takes on at SIGHUP. Every other key waits for a restart,
    so a key added without thinking about it is never half-applied."""
    kwargs["json_schema_extra"] = {"live": True}
    return Field(*args, **kwargs)


class ModelSettings(_Section):
    path: Optional[Path] = None  # None: the built-in default under state_dir/models
    engine: str = "onnx"  # "onnx", or "module:callable" for an engine plug-in
    provider: Literal["auto", "cuda", "cpu"] = "auto"
    batch_size: int = live(8, ge=1, le=256)
    decoder: Literal["auto", "fused", "traced"] = "auto"
    context: int = Field(0, ge=0)  # positions per KV slot; 0: the model's context
    prefill_chunk: int = Field(256, ge=16, le=8192)
    huge_pages: bool = True  # `edged run` re-executes itself with glibc's THP tunable (edged/hugepages.py)
    max_new_tokens: int = live(256, ge=1, le=32768)
    threads: int = Field(0, ge=0)  # 0: every core this process may use
    graph_optimization: Literal["disabled", "basic", "extended", "all"] = "all"
    temperature: float = Field(0.0, ge=0)  # 0: greedy (deterministic)
    top_k: int = Field(0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: Optional[int] = None
    options: dict[str, Any] = Field(default_factory=dict)  # passed to a plug-in engine

    @field_validator("context")
    @classmethod
    def _context(cls, value: int) -> int:
        if 0 < value < MIN_CONTEXT:
            raise ValueError(f"0 (the model's context) or at least {MIN_CONTEXT}: a KV slot must hold a prompt and"
                             " its answer, and the shortest prompt alone takes about 13; every job would fail")
        return value


class QueueSettings(_Section):
    max_attempts: int = live(3, ge=1)
    backoff_seconds: float = live(30.0, ge=0)
    backoff_max_seconds: float = live(3600.0, ge=0)
    lease_seconds: float = live(300.0, ge=3)
    recover_seconds: float = live(60.0, gt=0)
    drain_grace_seconds: float = live(60.0, ge=0)  # on SIGTERM: how long the batch in flight may finish


class WatchSettings(_Section):
    polling: bool = False
    stability_seconds: float = live(2.0, ge=0)
    rescan_seconds: float = live(300.0, gt=0)
    poll_interval_seconds: float = Field(1.0, gt=0)
    ignore: list[str] = Field(default_factory=lambda: list(DEFAULT_IGNORE))


class SpoolSettings(_Section):
    write_result_files: bool = live(True)
    write_result_json: bool = live(False)  # out/<task>/<name>.<task>.json beside each result file
    min_free_mb: int = live(256, ge=0)  # below this, intake pauses until space comes back
    # A file with several names may be a link to something outside the spool: refused unless
    # the producers are known to publish by hard link.
    allow_hard_links: bool = False


class ScheduleSettings(_Section):
    # "HH:MM-HH:MM" in the box's local time; empty: the model runs at any hour.
    processing_windows: list[str] = live(default_factory=list)
    summary_seconds: float = live(60.0, gt=0)
    maintenance_seconds: float = live(3600.0, gt=0)

    @field_validator("processing_windows")
    @classmethod
    def _windows(cls, value: list[str]) -> list[str]:
        for w in value:
            parse_window(w)
        return value


class ShipSettings(_Section):
    """Mode "ship": this box's rows copied to one central PostgreSQL (shipper.py)."""

    url: Optional[str] = None  # None: nothing is shipped (and nothing is kept for shipping)
    interval_seconds: float = live(30.0, gt=0)
    batch_rows: int = live(1000, ge=1, le=100_000)

    @field_validator("url")
    @classmethod
    def _url(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not value.startswith(("postgresql://", "postgresql+psycopg://")):
            raise ValueError("a PostgreSQL URL (postgresql+psycopg://user@host/dbname), or null")
        return value


class RetentionSettings(_Section):
    days: Optional[float] = live(None, gt=0)  # None: keep everything
    include_failed: bool = live(False)


def parse_listen(value: str) -> tuple[str, int]:
    """'127.0.0.1:9464', '[::1]:9464' or ':9464' (loopback) -> (address, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"metrics.listen {value!r} is not HOST:PORT (e.g. 127.0.0.1:9464)")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


class MetricsSettings(_Section):
    listen: Optional[str] = None  # "127.0.0.1:9464" serves Prometheus metrics; None: off

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: Optional[str]) -> Optional[str]:
        if value is not None:
            parse_listen(value)
        return value


class TaskSettings(_Section):
    prompt: Optional[str] = live(None)  # None: the task's built-in template
    max_new_tokens: Optional[int] = live(None, ge=1)
    max_input_mb: float = live(64.0, gt=0)


class ImageTaskSettings(TaskSettings):
    max_pixels: int = live(64_000_000, ge=1)  # decompression-bomb guard
    pan_and_scan: bool = live(False)  # extra crops of tall or wide pictures (documents)
    max_crops: int = live(4, ge=2, le=16)


class OcrSettings(ImageTaskSettings):
    pan_and_scan: bool = live(True)
    translate_to: Optional[str] = live(None)  # a language: every OCR result also becomes a translate job

    @field_validator("translate_to")
    @classmethod
    def _language(cls, value: Optional[str]) -> Optional[str]:
        return _known_language(value)


class TranslateSettings(TaskSettings):
    target_language: str = live("en")
    source_language: Optional[str] = live(None)
    # Completion-style template for base models (the default 270M); fields as in `prompt`.
    completion_prompt: Optional[str] = live(None)
    # Base models, English source: a prompt with example pairs. auto: for the languages where it
    # measured better (tasks/fewshot.py); always: every language with examples; off: never.
    few_shot: Literal["auto", "always", "off"] = live("auto")
    # Largest piece of a long text sent to the model at once, in tokens.
    chunk_tokens: int = live(384, ge=16)
    # The same ceiling as model.max_new_tokens; the floor is checked below, with its reason.
    max_new_tokens: Optional[int] = live(None, le=32768)

    @field_validator("max_new_tokens")
    @classmethod
    def _new_tokens(cls, value: Optional[int]) -> Optional[int]:
        if value is not None and value < TRANSLATE_MIN_NEW_TOKENS:
            raise ValueError(f"at least {TRANSLATE_MIN_NEW_TOKENS} (or null): a text is cut into chunks of at most"
                             f" half of it, and a chunk needs {TRANSLATE_MIN_NEW_TOKENS // 2} tokens; every"
                             " translation would fail")
        return value

    @field_validator("target_language", "source_language")
    @classmethod
    def _language(cls, value: Optional[str]) -> Optional[str]:
        return _known_language(value)


def _known_language(value: Optional[str]) -> Optional[str]:
    if value is None:
        return None
    tag = normalise(value)
    if tag is None:
        raise ValueError(f"unknown language {value!r}; accepted: {accepted()}")
    return tag


class TasksSettings(_Section):
    caption: ImageTaskSettings = Field(default_factory=ImageTaskSettings)
    ocr: OcrSettings = Field(default_factory=OcrSettings)
    translate: TranslateSettings = Field(default_factory=TranslateSettings)


class LogSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = live("info")
    format: Literal["auto", "json", "console"] = "auto"

    @field_validator("level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


class HooksSettings(_Section):
    # A command (a list: no shell) run after each job ends, with the job's JSON on stdin.
    post_job: Optional[list[str]] = live(None)
    run_on: Literal["all", "done", "failed"] = live("all")
    timeout_seconds: float = live(30.0, gt=0)
    max_pending: int = live(1000, ge=1)

    @field_validator("post_job")
    @classmethod
    def _command(cls, value: Optional[list[str]]) -> Optional[list[str]]:
        if value is not None and (not value or not value[0]):
            raise ValueError("a command and its arguments, e.g. [/usr/local/bin/on-job, --quiet]; null for none")
        return value


class PostgresSettings(_Section):
    """How a box talks to a PostgreSQL server over a real network (store/postgres.py)."""

    pool_size: int = Field(2, ge=1, le=64)
    max_overflow: int = Field(3, ge=0, le=64)
    connect_timeout_seconds: int = Field(10, ge=1)
    statement_timeout_seconds: float = Field(60.0, gt=0)
    idle_in_transaction_timeout_seconds: float = Field(60.0, gt=0)
    keepalive_idle_seconds: int = Field(30, ge=1)


BOX_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


class Settings(_Section):
    state_dir: Path = Path("/var/lib/edged")
    spool_dir: Path = Path("/var/spool/edged")
    database: Optional[str] = None  # SQLAlchemy URL; None: sqlite file in state_dir
    box_id: Optional[str] = None  # None: a UUID made at the first start, kept in <state_dir>/box_id
    shared: bool = False  # mode "shared": boxes of one site on one PostgreSQL queue
    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
    ship: ShipSettings = Field(default_factory=ShipSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    queue: QueueSettings = Field(default_factory=QueueSettings)
    watch: WatchSettings = Field(default_factory=WatchSettings)
    spool: SpoolSettings = Field(default_factory=SpoolSettings)
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    tasks: TasksSettings = Field(default_factory=TasksSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    hooks: HooksSettings = Field(default_factory=HooksSettings)

    # Where the settings came from; not a config key.
    source: Optional[Path] = Field(None, exclude=True)

    @model_validator(mode="after")
    def _shared_on_postgresql(self) -> Settings:
        if self.shared and not (self.database or "").startswith("postgresql"):
            raise ValueError("shared: boxes share a queue in a PostgreSQL `database` (postgresql+psycopg://…);"
                             " a SQLite file is one box's")
        return self

    @model_validator(mode="after")
    def _ship_from_sqlite(self) -> Settings:
        if self.ship.url and self.database and not self.database.startswith("sqlite"):
            raise ValueError("ship.url: a box ships from its own SQLite queue; with `database` on PostgreSQL its"
                             " rows are central already (set ship.url: null)")
        return self

    @field_validator("box_id")
    @classmethod
    def _box_id(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not (0 < len(value) <= 64 and set(value) <= BOX_ID_CHARS):
            raise ValueError("1 to 64 letters, digits, '.', '_' or '-' (it names this box's leases and rows)")
        return value

    @property
    def database_url(self) -> str:
        if self.database:
            return self.database
        return f"sqlite:///{self.state_dir / 'edged.db'}"

    @property
    def model_dir(self) -> Path:
        return self.model.path or self.state_dir / "models" / "gemma-3-270m"


def resolve_config_path(cli_value: Optional[str]) -> Path:
    """-c/--config, else $EDGED_CONFIG, else /etc/edged/config.yaml."""
    if cli_value:
        return Path(cli_value)
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    return DEFAULT_CONFIG_PATH


def _format_errors(path: Path, exc: ValidationError) -> str:
    lines = [f"{path}: invalid configuration"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (see config.example.yaml for the valid ones)"
        elif err["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
        lines.append(f"  {key}: {msg} (got {err.get('input')!r})")
    return "\n".join(lines)


def _absolutise(settings: Settings, base: Path) -> Settings:
    """Paths in a config file are relative to that file, not to the daemon's cwd."""
    def fix(p: Path) -> Path:
        p = p.expanduser()
        return p if p.is_absolute() else (base / p).resolve()

    settings.state_dir = fix(settings.state_dir)
    settings.spool_dir = fix(settings.spool_dir)
    settings.model.path = fix(settings.model.path) if settings.model.path else None
    if settings.database and settings.database.startswith("sqlite:///") and not settings.database.startswith("sqlite:////"):
        rel = settings.database[len("sqlite:///"):]
        if rel and rel != ":memory:":
            settings.database = f"sqlite:///{fix(Path(rel))}"
    return settings


def _inside(path: Path, folder: Path) -> bool:
    real, top = os.path.realpath(path), os.path.realpath(folder)
    return real == top or real.startswith(top.rstrip("/") + "/")


def _check_places(settings: Settings, path: Path) -> None:
    """The daemon's own files must not lie in the spool, where they would be taken as input."""
    places = [("state_dir", settings.state_dir), ("model.path", settings.model.path)]
    if settings.database and settings.database.startswith("sqlite:///"):
        places.append(("database", Path(settings.database[len("sqlite:///"):].split("?", 1)[0])))
    for key, place in places:
        if place is not None and _inside(place, settings.spool_dir):
            raise ConfigError(f"{path}: invalid configuration\n  {key}: {place} is inside spool_dir"
                              f" {settings.spool_dir}; the daemon would take its own files as input. Put it"
                              " outside the spool.")


def parse_config(data: Any, path: Path) -> Settings:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(path, exc)) from None
    settings.source = path
    settings = _absolutise(settings, path.parent.resolve())
    _check_places(settings, path)
    return settings


def load_config(path: Path) -> Settings:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: config file not found (use -c/--config, set ${CONFIG_ENV}, "
            f"or create one with `edged init DIR`)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(data, path)
