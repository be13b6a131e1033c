"""`edged doctor`: checks the daemon's user's access for real, loads the manifest for real,
tells "CUDA works" from "CUDA offered", and says how to fix what fails."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import onnxruntime as ort
import pytest
import yaml

from conftest import base_config
from edged.cli import main
from edged.engine import cuda
from edged.exitcodes import ExitCode


def _doctor(capsys, cfg: Path, *extra: str) -> tuple[int, dict]:
    code = main(["doctor", "-c", str(cfg), "--json", *extra])
    return code, {c["check"]: c for c in json.loads(capsys.readouterr().out)["checks"]}


def _config(tmp_path: Path, **model) -> Path:
    data = base_config(tmp_path)
    if model:
        data["model"] = model
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_an_empty_manifest_fails_the_model_check(tmp_path: Path, capsys) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "edged-model.json").write_text("{}")
    code, checks = _doctor(capsys, _config(tmp_path, engine="onnx", path=str(model)))
    assert code == ExitCode.CHECK_FAILED
    assert checks["model"]["result"] == "FAIL" and "unknown format" in checks["model"]["detail"]
    assert "rebuild or re-import" in checks["model"]["fix"]


def test_a_model_file_of_the_wrong_size_fails(tmp_path: Path, capsys) -> None:
    import shutil

    from conftest import REPO
    from model_cache import built_model

    src = built_model(f"random:{REPO / 'models' / 'tiny-gemma3-text.json'}", weights="fp32")
    model = tmp_path / "model"
    shutil.copytree(src, model)
    code, checks = _doctor(capsys, _config(tmp_path, engine="onnx", path=str(model)))
    assert checks["model"]["result"] == "ok", checks["model"]
    with open(model / "tokenizer.json", "a") as f:
        f.write(" ")
    code, checks = _doctor(capsys, _config(tmp_path, engine="onnx", path=str(model)))
    assert code == ExitCode.CHECK_FAILED and "tokenizer.json" in checks["model"]["detail"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_folders_are_checked_as_the_daemons_user_with_the_fix(tmp_path: Path, capsys) -> None:
    import users

    users.ensure_users()
    os.chmod(tmp_path, 0o755)
    cfg = _config(tmp_path)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)  # root's: fine for root, closed to the daemon's user
    code, as_root = _doctor(capsys, cfg, "--user", "root")
    assert as_root["state_dir"]["result"] == "ok"
    code, checks = _doctor(capsys, cfg, "--user", users.DAEMON)
    assert code == ExitCode.CHECK_FAILED
    assert checks["state_dir"]["result"] == "FAIL" and users.DAEMON in checks["state_dir"]["detail"]
    assert checks["state_dir"]["fix"].startswith(f"chown {users.DAEMON}:{users.GROUP} {state}")


def test_cuda_offered_but_not_working_is_said_so(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    lib = tmp_path / "libonnxruntime_providers_cuda.so"
    lib.write_bytes(b"not an ELF file")
    monkeypatch.setattr(cuda, "_provider_library", lambda: lib)
    _code, checks = _doctor(capsys, _config(tmp_path))
    assert "CUDA does not work here" in checks["onnxruntime"]["detail"]
    assert "the CPU is used" in checks["onnxruntime"]["detail"]
    _code, checks = _doctor(capsys, _config(tmp_path, engine="onnx", provider="cuda", path=str(tmp_path / "m")))
    assert checks["onnxruntime"]["result"] == "FAIL"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_model_files_the_daemons_user_cannot_read_fail(tmp_path: Path, capsys) -> None:
    import shutil

    import users
    from conftest import REPO
    from model_cache import built_model

    users.ensure_users()
    base = Path(tempfile.mkdtemp(prefix="edged-doctor-", dir="/tmp"))  # every user may enter it
    os.chmod(base, 0o755)
    model = base / "model"
    shutil.copytree(built_model(f"random:{REPO / 'models' / 'tiny-gemma3-text.json'}", weights="fp32"), model)
    os.chmod(model, 0o755)
    for p in model.iterdir():
        os.chmod(p, 0o644)
    os.chmod(model / "weights.data" if (model / "weights.data").exists() else next(model.glob("*.onnx")), 0o600)
    try:
        cfg = _config(tmp_path, engine="onnx", path=str(model))
        _code, checks = _doctor(capsys, cfg, "--user", users.DAEMON)
        assert checks["model_access"]["result"] == "FAIL" and "may not read" in checks["model_access"]["detail"]
        assert checks["model_access"]["fix"].startswith(f"chown -R {users.DAEMON}:")
        for p in model.iterdir():
            os.chmod(p, 0o644)
        _code, checks = _doctor(capsys, cfg, "--user", users.DAEMON)
        assert checks["model_access"]["result"] == "ok", checks["model_access"]
    finally:
        shutil.rmtree(base)


def test_every_failure_names_a_fix(tmp_path: Path, capsys) -> None:
    cfg = _config(tmp_path, engine="onnx", path=str(tmp_path / "none"), provider="cuda")
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "edged.db").write_text("not a database")
    _code, checks = _doctor(capsys, cfg)
    failed = [c for c in checks.values() if c["result"] == "FAIL"]
    assert {c["check"] for c in failed} >= {"model", "database"}, failed
    assert all(c["fix"] for c in failed), failed


def test_whose_access_is_checked(tmp_path: Path, make_settings) -> None:
    """The owner of the database or state folder (root's too), else the caller: an `edged` user
    on the box does not make a root-run local set-up's doctor check as edged."""
    import pwd

    from edged.commands.access import daemon_user

    s = make_settings()
    me = pwd.getpwuid(os.geteuid()).pw_name
    assert daemon_user(s, None) == me  # nothing made yet
    s.state_dir.mkdir(parents=True, exist_ok=True)
    assert daemon_user(s, None) == pwd.getpwuid(s.state_dir.stat().st_uid).pw_name
    assert daemon_user(s, "somebody") == "somebody"
    if os.geteuid() == 0:
        import users

        users.ensure_users()
        os.chown(s.state_dir, users.uid(users.DAEMON), users.gid())
        assert daemon_user(s, None) == users.DAEMON


def test_a_state_folder_of_an_unknown_uid_is_a_failure_not_a_crash(tmp_path: Path, make_settings, capsys) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to chown")
    cfg = _config(tmp_path)
    (tmp_path / "state").mkdir()
    os.chown(tmp_path / "state", 54321, 54321)  # a restored image: no account has this uid
    code, checks = _doctor(capsys, cfg)
    assert code == ExitCode.CHECK_FAILED
    assert "uid 54321, which has no account" in checks["access"]["detail"] and checks["access"]["fix"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_a_check_that_dies_as_the_user_is_a_failure(tmp_path: Path, monkeypatch) -> None:
    import signal

    import users
    from edged.commands import access

    users.ensure_users()
    found = access.as_user(users.DAEMON, lambda: os.kill(os.getpid(), signal.SIGKILL) or [])
    assert [(a.check, a.result) for a in found] == [("access", "FAIL")] and "signal 9" in found[0].detail
