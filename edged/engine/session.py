"""ONNX Runtime sessions and the choice of execution provider."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from edged.engine import cuda, placement
from edged.engine.api import ModelUnavailable
from edged.logs import get_logger

log = get_logger("edged.engine")

_OPT = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@dataclass(frozen=True)
class SessionSettings:
    provider: str = "auto"  # auto | cuda | cpu
    threads: int = 0
    optimization: str = "all"


def _options(s: SessionSettings) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = _OPT[s.optimization]
    # ORT's own default (0) measured 25 % slower decode here than naming the cores we may
    # use; one graph runs at a time, so no inter-op pool is needed.
    opts.intra_op_num_threads = s.threads or len(os.sched_getaffinity(0))
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # ORT's own warnings go to stderr unstructured; we log what matters
    return opts


def choose_provider(s: SessionSettings) -> tuple[str, str]:
    """(provider to try, why). CUDA is tried only where the probe found it can work (cuda.py)."""
    if s.provider == "cpu":
        return "cpu", "model.provider is cpu"
    found = cuda.probe()
    if found.noise:
        log.debug("cuda_probe_output", output=found.noise.strip()[-2000:])
    if found.usable:
        return "cuda", found.reason
    if s.provider == "cuda":
        raise ModelUnavailable(f"model.provider is cuda, but {found.reason}")
    return "cpu", found.reason


def _create(path: Path, s: SessionSettings, providers: list[str], report: bool) -> tuple[ort.InferenceSession, str]:
    """The session, and ORT's own log of its creation when `report` (verbose: node placements)."""
    opts = _options(s)
    if not report:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers), ""
    opts.log_severity_level = 0
    with placement.capture() as log:
        sess = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    return sess, "".join(log)


def check_placement(graph: str, found: placement.Placement, provider: str = "CUDAExecutionProvider") -> None:
    """Say where a GPU session's nodes run; loudly when weights or attention run on the host."""
    off = found.off(provider)
    log.info("node_placement", graph=graph, on_gpu=found.counts.get(provider, 0), on_cpu=len(off),
             cpu_ops=found.summary(provider))
    heavy = found.heavy_off(provider)
    if heavy:
        log.warning("nodes_off_the_gpu", graph=graph, nodes=len(heavy),
                    ops=dict(Counter(op for op, _ in heavy)), first=[n for _, n in heavy[:12]],
                    detail="the CUDA provider has no kernel for these; they run on the host CPU at every step")


def open_session(path: Path, s: SessionSettings, want: str) -> tuple[ort.InferenceSession, str]:
    """A session on `want` (cuda falls back to cpu unless cuda was required); returns (session, got).

    A CUDA session's node placement is read from ORT's own log and reported (check_placement)."""
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if want == "cuda" else ["CPUExecutionProvider"]
    try:
        sess, creation = _create(path, s, providers, report=want == "cuda")
    except Exception as exc:  # ORT raises its own types; all mean the same here
        raise ModelUnavailable(f"{path.name}: onnxruntime cannot load it: {exc}") from None
    got = "cuda" if sess.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
    if got == "cuda":
        check_placement(path.name, placement.parse(creation))
    if want == "cuda" and got != "cuda":
        if s.provider == "cuda":
            raise ModelUnavailable(f"{path.name}: the CUDA provider did not initialise (CUDA/cuDNN libraries missing?)")
        log.warning("cuda_unavailable", graph=path.name,
                    detail="onnxruntime offered CUDA but the session came up on the CPU (CUDA libraries missing?)")
    return sess, got
