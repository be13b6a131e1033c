"""Config loading: defaults, relative paths, errors that name file and key, the example file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edged.config import ConfigError, Settings, load_config, resolve_config_path

REPO = Path(__file__).resolve().parent.parent


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "etc" / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    s = load_config(_write(tmp_path, ""))
    assert s.model.batch_size == 8 and s.queue.max_attempts == 3 and s.watch.stability_seconds == 2
    assert s.database_url == "sqlite:////var/lib/edged/edged.db"
    assert s.model_dir == Path("/var/lib/edged/models/gemma-3-270m")


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    s = load_config(_write(tmp_path, "state_dir: st\nspool_dir: ../sp\nmodel: {path: m}\ndatabase: sqlite:///db/x.db\n"))
    etc = (tmp_path / "etc").resolve()
    assert s.state_dir == etc / "st"
    assert s.spool_dir == tmp_path.resolve() / "sp"
    assert s.model.path == etc / "m"
    assert s.database_url == f"sqlite:///{etc / 'db' / 'x.db'}"


@pytest.mark.parametrize("text, key, words", [
    ("model: {batch_size: 0}", "model.batch_size", "greater than or equal to 1"),
    ("model: {provider: tpu}", "model.provider", "'auto', 'cuda' or 'cpu'"),
    ("watch: {stability_secs: 3}", "watch.stability_secs", "unknown key"),
    ("tasks: {caption: {max_pixels: -1}}", "tasks.caption.max_pixels", "greater than or equal to 1"),
    ("queue: {max_attempts: many}", "queue.max_attempts", "valid integer"),
])
def test_errors_name_the_file_the_key_and_the_problem(tmp_path: Path, text: str, key: str, words: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg and key in msg and words in msg


def test_unreadable_or_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "model: [unclosed"))
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(_write(tmp_path, "- a\n- b\n"))


def test_config_path_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGED_CONFIG", "/env/c.yaml")
    assert resolve_config_path("/cli/c.yaml") == Path("/cli/c.yaml")
    assert resolve_config_path(None) == Path("/env/c.yaml")
    monkeypatch.delenv("EDGED_CONFIG")
    assert resolve_config_path(None) == Path("/etc/edged/config.yaml")


def _leaves(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_example_documents_every_key_with_its_default() -> None:
    example = yaml.safe_load((REPO / "config.example.yaml").read_text())
    defaults = Settings().model_dump(mode="json", exclude={"source"})
    assert _leaves(example) == _leaves(defaults)
    load_config(REPO / "config.example.yaml")  # and it validates


@pytest.mark.parametrize("text, key, words", [
    ("tasks: {translate: {max_new_tokens: 31}}", "tasks.translate.max_new_tokens", "at least 32"),
    ("tasks: {translate: {max_new_tokens: 0}}", "tasks.translate.max_new_tokens", "every translation would fail"),
    ("tasks: {translate: {max_new_tokens: 40000}}", "tasks.translate.max_new_tokens", "less than or equal to 32768"),
    ("model: {context: 16}", "model.context", "every job would fail"),
])
def test_a_limit_that_would_fail_every_job_is_refused_at_load(tmp_path: Path, text: str, key: str,
                                                               words: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, text))
    msg = str(err.value)
    assert key in msg and words in msg and "Value error" not in msg


def test_the_limits_that_work_load(tmp_path: Path) -> None:
    s = load_config(_write(tmp_path, "tasks: {translate: {max_new_tokens: 32}}\nmodel: {context: 32}\n"))
    assert s.tasks.translate.max_new_tokens == 32 and s.model.context == 32
    assert load_config(_write(tmp_path, "tasks: {translate: {max_new_tokens: null}}")).tasks.translate.max_new_tokens \
        is None


def test_the_translate_floor_is_the_one_the_task_needs(tmp_path: Path) -> None:
    """config.py may not import tasks/: the floor it checks is kept equal to what translate.py needs,
    and the smallest value it lets through translates a text."""
    from edged.config import TRANSLATE_MIN_NEW_TOKENS, parse_config
    from edged.engine.api import ModelInfo
    from edged.tasks import translate

    assert TRANSLATE_MIN_NEW_TOKENS == 2 * translate.MIN_BUDGET
    s = parse_config({"tasks": {"translate": {"max_new_tokens": TRANSLATE_MIN_NEW_TOKENS}}}, tmp_path / "c.yaml")
    words = ModelInfo("m", 4096, True, lambda text: len(text.split()) + 1)
    prepared = translate.prepare({"target_language": "de"}, b"Hello there.", s, words)
    assert len(prepared.requests) == 1 and prepared.requests[0].max_new_tokens == TRANSLATE_MIN_NEW_TOKENS


def test_the_running_message_names_the_key(tmp_path: Path) -> None:
    """What load_config cannot know (the model's context) fails a job with a message naming the keys."""
    from edged.config import parse_config
    from edged.engine.api import ModelInfo
    from edged.tasks import translate
    from edged.tasks.base import InputError

    s = parse_config({"tasks": {"translate": {"max_new_tokens": 100}}}, tmp_path / "c.yaml")
    with pytest.raises(InputError) as err:
        translate.prepare({"target_language": "de"}, b"Hello.", s, ModelInfo("tiny", 64, True, lambda t: len(t)))
    assert "tasks.translate.max_new_tokens (100)" in str(err.value) and "context (64 tokens)" in str(err.value)
    # A cap below the floor set without load_config (model_construct skips validation) names the key too.
    low = s.model_copy(deep=True)
    object.__setattr__(low.tasks.translate, "max_new_tokens", 20)
    with pytest.raises(InputError, match=r"tasks.translate.max_new_tokens \(20\) is below 32"):
        translate.prepare({"target_language": "de"}, b"Hello.", low, ModelInfo("m", 4096, True, lambda t: 2))
