"""Whether CUDA can work here, found out without ONNX Runtime's noise.

Asked for the CUDA provider on a box without CUDA's libraries, ONNX Runtime prints coloured
error lines to stderr at every start (`libcublasLt.so.13: cannot open shared object file`,
`Failed to create CUDAExecutionProvider`), and `preload_dlls()` prints one line per missing
library to stdout. The probe asks the same questions quietly: can the CUDA provider library
be loaded with its dependencies (what ORT does first), and does the CUDA runtime see a
device. What ORT would have printed is kept for a debug line.
"""

from __future__ import annotations

import ctypes
import os
import re
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import onnxruntime as ort

from edged.logs import get_logger

log = get_logger("edged.engine")

_CUDA = "CUDAExecutionProvider"


@dataclass(frozen=True)
class Probe:
    usable: bool
    reason: str
    noise: str = ""  # what ONNX Runtime or the loader printed meanwhile, for a debug line


@contextmanager
def quiet_fds() -> Iterator[list[str]]:
    """Native code writing to fds 1 and 2 writes to a temporary file instead; its text is given back.

    Python's own writers (the daemon's other threads log meanwhile) keep the real streams:
    sys.stdout and sys.stderr, where they are those fds, are pointed at copies of them for
    the while. A closed fd 1 or 2 leaves nothing to quiet."""
    captured: list[str] = []
    _flush()
    try:
        saved = [os.dup(1), os.dup(2)]
    except OSError:
        yield captured
        return
    swapped = {}
    try:
        with tempfile.TemporaryFile() as sink:
            for name, fd in (("stdout", saved[0]), ("stderr", saved[1])):
                stream = getattr(sys, name)
                if _fileno(stream) in (1, 2):
                    swapped[name] = stream
                    setattr(sys, name, os.fdopen(os.dup(fd), "w", buffering=1, encoding=stream.encoding,
                                                 errors=stream.errors))
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            try:
                yield captured
            finally:
                _flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                sink.seek(0)
                captured.append(re.sub(r"\x1b\[[0-9;]*m", "", sink.read().decode("utf-8", "replace")))
    finally:
        for name, stream in swapped.items():
            getattr(sys, name).close()
            setattr(sys, name, stream)
        for fd in saved:
            os.close(fd)


def _fileno(stream: object) -> int:
    try:
        return int(stream.fileno())  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return -1


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass


def _provider_library() -> Path:
    return Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"


def _pip_cuda_present() -> bool:
    """Whether CUDA libraries came from pip (onnxruntime-gpu[cuda,cudnn]), where preload_dlls looks.

    It looks in the site-packages folder beside onnxruntime's: nvidia/cu13/lib for CUDA 13's
    consolidated wheel, nvidia/<component>/lib for CUDA 12's, nvidia/cudnn/lib for cuDNN.
    """
    return (Path(ort.__file__).resolve().parent.parent / "nvidia").is_dir()


def _loaded_cudart() -> str | None:
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    found = re.findall(r"(/\S*libcudart\.so[.\d]*)", maps)
    return found[0] if found else None


def _device_count(cudart: str) -> tuple[int, int]:
    lib = ctypes.CDLL(cudart)
    count = ctypes.c_int(0)
    err = lib.cudaGetDeviceCount(ctypes.byref(count))
    return int(err), count.value


def probe() -> Probe:
    """Can a CUDA session come up here? Decided before ONNX Runtime is asked for one."""
    offered = ort.get_available_providers()
    if _CUDA not in offered:
        return Probe(False, f"onnxruntime {ort.__version__} offers no CUDA provider ({', '.join(offered)})")
    noise: list[str] = []
    with quiet_fds() as printed:
        preload = getattr(ort, "preload_dlls", None)
        if preload is not None and _pip_cuda_present():
            try:
                preload()
            except Exception as exc:  # what is missing shows in the load below
                noise.append(f"preload_dlls: {exc}")
        lib = _provider_library()
        error = None
        if lib.is_file():  # other builds (Windows, custom) name it otherwise: let the session decide
            try:
                ctypes.CDLL(str(lib), mode=os.RTLD_LAZY)
            except OSError as exc:
                error = str(exc)
    noise += printed
    text = "".join(noise)
    if error is not None:
        missing = re.search(r"(lib[\w.+-]+\.so[.\d]*): cannot open shared object file", error)
        what = f"{missing.group(1)} is not installed" if missing else error
        return Probe(False, f"the CUDA provider cannot load: {what} (pip install 'edged[gpu]' brings CUDA and"
                            " cuDNN, or install them system-wide)", text)
    cudart = _loaded_cudart()
    if cudart is not None:
        try:
            err, count = _device_count(cudart)
        except (OSError, AttributeError) as exc:
            return Probe(False, f"the CUDA runtime does not answer: {exc}", text)
        if err != 0 or count == 0:
            why = "no NVIDIA driver or GPU visible" if err in (35, 100) else f"cudaGetDeviceCount error {err}"
            return Probe(False, f"CUDA sees no device ({why})", text)
        return Probe(True, f"CUDA runtime sees {count} device(s)", text)
    return Probe(True, "onnxruntime offers CUDAExecutionProvider", text)
