"""The CUDA probe: `provider: auto` picks the CPU on a box without CUDA, quietly, saying why."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import onnxruntime as ort
import pytest

from conftest import REPO, DaemonProcess
from edged.engine import cuda
from edged.engine.api import ModelUnavailable
from edged.engine.session import SessionSettings, choose_provider
from model_cache import built_model

# ONNX Runtime's own log format ("[E:onnxruntime:Default, provider_bridge_ort.cc:…]"), and
# what preload_dlls prints for a missing library.
ORT_NOISE = re.compile(r"\[[EWF]:onnxruntime|Failed to (load|create)|CUDAExecutionProvider.*Require")


def test_native_writes_are_caught_not_printed(capfd) -> None:
    with cuda.quiet_fds() as text:
        os.write(2, b"\x1b[1;31m[E:onnxruntime:Default] boom\x1b[m\n")
        os.write(1, b"Failed to load libx.so\n")
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert text == ["[E:onnxruntime:Default] boom\nFailed to load libx.so\n"]


@pytest.fixture
def cuda_offered(monkeypatch, tmp_path: Path) -> Path:
    """ORT says it offers CUDA; its provider library is one that cannot load (as without CUDA)."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    lib = tmp_path / "libonnxruntime_providers_cuda.so"
    lib.write_bytes(b"not an ELF file")
    monkeypatch.setattr(cuda, "_provider_library", lambda: lib)
    return lib


def test_offered_but_unloadable_cuda_means_cpu_with_the_reason(cuda_offered: Path, capfd) -> None:
    found = cuda.probe()
    assert not found.usable and "the CUDA provider cannot load" in found.reason
    want, why = choose_provider(SessionSettings(provider="auto"))
    assert (want, why) == ("cpu", found.reason)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_required_cuda_that_cannot_work_is_a_model_error(cuda_offered: Path) -> None:
    with pytest.raises(ModelUnavailable, match="model.provider is cuda, but the CUDA provider cannot load"):
        choose_provider(SessionSettings(provider="cuda"))


def test_no_cuda_provider_at_all(monkeypatch) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert choose_provider(SessionSettings()) == ("cpu", f"onnxruntime {ort.__version__} offers no CUDA provider"
                                                         " (CPUExecutionProvider)")


def test_edged_run_with_provider_auto_prints_no_onnxruntime_line(daemon_factory) -> None:
    """The noise check of the issue, on this CPU-only box with whichever onnxruntime is installed."""
    model = built_model(f"random:{REPO / 'models' / 'tiny-gemma3-text.json'}", weights="fp32")
    d: DaemonProcess = daemon_factory(model={"engine": "onnx", "path": str(model), "provider": "auto"})
    d.start()
    assert d.stop() == 0
    lines = d.log_path.read_text().splitlines()
    assert lines and not [ln for ln in lines if ORT_NOISE.search(ln)], lines
    records = [json.loads(ln) for ln in lines]  # every line is one of edged's records
    loaded = next(r for r in records if r["event"] == "model_loaded")
    assert loaded["provider"] == "cpu" and loaded["reason"]


def test_without_any_onnxruntime_the_model_error_says_which_extra(tmp_path: Path) -> None:
    """An install that chose neither the cpu nor the gpu extra: exit 6 naming both, not a traceback."""
    import subprocess
    import sys

    model = built_model(f"random:{REPO / 'models' / 'tiny-gemma3-text.json'}", weights="fp32")
    code = ("import sys; sys.modules['onnxruntime'] = None\n"
            "from edged.config import ModelSettings\nfrom edged.engine.loader import load_engine\n"
            "from edged.engine.api import ModelUnavailable\nfrom pathlib import Path\n"
            f"try:\n    load_engine(ModelSettings(path={str(model)!r}), Path({str(model)!r}))\n"
            "except ModelUnavailable as exc:\n    print(exc)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert "onnxruntime is not installed" in res.stdout and "edged[cpu]" in res.stdout, res.stdout + res.stderr


def test_pip_cuda_is_looked_for_where_preload_dlls_looks(monkeypatch, tmp_path: Path) -> None:
    """CUDA 13's pip wheel is one nvidia/cu13 package beside onnxruntime (no nvidia/cuda_runtime)."""
    site = tmp_path / "site-packages"
    (site / "onnxruntime").mkdir(parents=True)
    monkeypatch.setattr(ort, "__file__", str(site / "onnxruntime" / "__init__.py"))
    assert not cuda._pip_cuda_present()
    (site / "nvidia" / "cu13" / "lib").mkdir(parents=True)
    assert cuda._pip_cuda_present()


@pytest.fixture(scope="session")
def gpu_build() -> Path:
    """onnxruntime-gpu of the installed version, unpacked once into the cache: the build that
    printed the errors (it offers CUDA; this machine has no CUDA libraries and no GPU)."""
    import glob
    import shutil
    import subprocess
    import sys
    import zipfile

    from model_cache import CACHE

    version = ort.__version__
    target = CACHE.parent / f"onnxruntime-gpu-{version}"
    if (target / "onnxruntime" / "capi").is_dir():
        return target
    wheels = CACHE.parent / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d",
                    str(wheels), f"onnxruntime-gpu=={version}"], capture_output=True, timeout=900)
    found = glob.glob(str(wheels / f"onnxruntime_gpu-{version}-*.whl"))
    if not found:
        pytest.skip(f"onnxruntime-gpu {version} could not be downloaded")
    tmp = Path(str(target) + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(found[0]) as z:
        z.extractall(tmp, [n for n in z.namelist() if n.startswith("onnxruntime/")])
    tmp.rename(target)
    return target


@pytest.mark.slow
def test_with_the_gpu_build_on_a_box_without_cuda_auto_is_quiet(daemon_factory, gpu_build: Path) -> None:
    """The issue's noise check for real: onnxruntime-gpu on this CPU-only machine, provider auto."""
    model = built_model(f"random:{REPO / 'models' / 'tiny-gemma3-text.json'}", weights="fp32")
    d: DaemonProcess = daemon_factory(model={"engine": "onnx", "path": str(model), "provider": "auto"})
    env = d.env()
    env["PYTHONPATH"] = os.pathsep.join([str(gpu_build), env["PYTHONPATH"]])
    d.env = lambda: env  # type: ignore[method-assign]
    d.start(timeout=120)
    assert d.stop() == 0
    lines = d.log_path.read_text().splitlines()
    assert lines and not [ln for ln in lines if ORT_NOISE.search(ln)], lines
    loaded = next(json.loads(ln) for ln in lines if '"model_loaded"' in ln)
    assert loaded["provider"] == "cpu" and "the CUDA provider cannot load" in loaded["reason"], loaded


def test_onnxruntime_telemetry_is_off_and_says_nothing(tmp_path: Path) -> None:
    """ORT 1.31 stores a telemetry device id in ~/.cache at import and warns in colour where it
    cannot (a read-only home, as a service user may have): edged turns its telemetry off."""
    import subprocess
    import sys

    # CI: set by .ci/run, and onnxruntime keeps quiet under it, which would make this test moot.
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_CACHE_HOME", "ORT_DISABLE_TELEMETRY", "CI")}
    env.update(HOME="/proc/self", PYTHONPATH=str(REPO))  # no folder can be made there, not even by root
    bare = subprocess.run([sys.executable, "-c", "import onnxruntime"], capture_output=True, text=True, env=env,
                          timeout=60)
    ours = subprocess.run([sys.executable, "-c", "import edged.engine.session, os;"
                           " print(os.environ['ORT_DISABLE_TELEMETRY'])"], capture_output=True, text=True,
                          env=env, timeout=60)
    if "telemetry" not in bare.stderr:
        pytest.skip(f"onnxruntime {ort.__version__} has no telemetry to turn off")
    assert ours.stderr == "" and ours.stdout.strip() == "1", ours.stderr


def test_quieting_native_writes_leaves_python_writers_their_stream(tmp_path: Path) -> None:
    """The probe runs while the daemon's other threads log: their lines must reach the real
    stderr, only what native code writes to fd 2 is caught. A closed fd 2 is no error."""
    import subprocess
    import sys

    code = ("import os, sys, threading\nfrom edged.engine import cuda\n"
            "with cuda.quiet_fds() as text:\n"
            "    os.write(2, b'native noise\\n')\n"
            "    t = threading.Thread(target=lambda: sys.stderr.write('a log line from a thread\\n'))\n"
            "    t.start(); t.join()\n"
            "print('caught:', text[0].strip(), flush=True)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert res.stderr == "a log line from a thread\n" and res.stdout == "caught: native noise\n", res
    closed = subprocess.run([sys.executable, "-c", code.rsplit("print(", 1)[0]],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, timeout=60,
                            preexec_fn=lambda: os.close(2))
    assert closed.returncode == 0
