"""Node placement read from ONNX Runtime's own session log, and the loud report of nodes off the GPU."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from structlog.testing import capture_logs

from edged.engine import placement
from edged.engine.session import SessionSettings, _create, check_placement

# ORT's format (session_state.cc, VerifyEachNodeIsAssignedToAnEp) for a session split across providers.
P = "2026-12-01 10:00:00.000000001 [{}:onnxruntime:, session_state.cc:1594 VerifyEachNodeIsAssignedToAnEp]"
V, W = P.format("V"), P.format("W")
SPLIT = "\n".join([
    f"{V} Node placements",
    f"{V}  Node(s) placed on [CUDAExecutionProvider]. Number of nodes: 3",
    f"{V}   MatMulNBits (/layers.0/mlp/up_proj/MatMul)",
    f"{V}   Add (/layers.0/add)",
    f"{V}   MemcpyFromHost (Memcpy)",
    f"{V}  Node(s) placed on [CPUExecutionProvider]. Number of nodes: 3",
    "  DynamicQuantizeLinear (/lm_head/MatMul_quant)",  # one message of several lines: no prefix
    "  MatMulInteger (/lm_head/MatMul_MatMulInteger)",
    "  Shape (/Shape_3)",
    f"{W} Some nodes were not assigned to the preferred execution providers which may or may not have an "
    "negative impact on performance.",
    "2026-12-01 10:00:00.000000008 [V:onnxruntime:, graph.cc:12 Other] something else",
])


def test_a_split_session_is_read_node_by_node() -> None:
    found = placement.parse(SPLIT)
    assert found.counts == {"CUDAExecutionProvider": 3, "CPUExecutionProvider": 3}
    assert [op for op, _ in found.nodes["CUDAExecutionProvider"]] == ["MatMulNBits", "Add", "MemcpyFromHost"]
    assert found.summary("CUDAExecutionProvider") == {"DynamicQuantizeLinear": 1, "MatMulInteger": 1, "Shape": 1}
    assert [n for _, n in found.heavy_off("CUDAExecutionProvider")] == [
        "/lm_head/MatMul_quant", "/lm_head/MatMul_MatMulInteger"]  # Shape arithmetic is ORT's choice


def test_heavy_nodes_on_the_host_are_reported_loudly_and_a_clean_session_quietly() -> None:
    with capture_logs() as logs:
        check_placement("decoder_model_merged.onnx", placement.parse(SPLIT))
        check_placement("embed_tokens.onnx", placement.parse(SPLIT.replace("MatMulInteger", "Cast")
                                                             .replace("DynamicQuantizeLinear", "Cast")))
    warn = [e for e in logs if e["event"] == "nodes_off_the_gpu"]
    assert len(warn) == 1 and warn[0]["log_level"] == "warning" and warn[0]["graph"] == "decoder_model_merged.onnx"
    assert warn[0]["ops"] == {"DynamicQuantizeLinear": 1, "MatMulInteger": 1} and warn[0]["nodes"] == 2
    info = [e for e in logs if e["event"] == "node_placement"]
    assert [e["on_cpu"] for e in info] == [3, 3] and info[0]["on_gpu"] == 3


def _tiny(path: Path) -> Path:
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
                               helper.make_node("Relu", ["h"], ["y"], name="relu")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    onnx.save(helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def test_the_real_session_log_of_this_onnxruntime_is_read_and_other_stderr_passes_through(tmp_path, capfd) -> None:
    model = _tiny(tmp_path / "tiny.onnx")
    with placement.capture() as log:
        os.write(2, b"a line of ours\n")
        _create(model, SessionSettings(provider="cpu", optimization="disabled"), ["CPUExecutionProvider"], False)
    assert "a line of ours" in log[0]
    sess, text = _create(model, SessionSettings(provider="cpu", optimization="disabled"), ["CPUExecutionProvider"],
                         report=True)
    assert sess.run(None, {"x": np.ones((1, 4), np.float32)})[0].shape == (1, 4)
    assert placement.parse(text).counts == {"CPUExecutionProvider": 2}
    err = capfd.readouterr().err
    assert "a line of ours" in err and "VerifyEachNodeIsAssignedToAnEp" not in err  # ORT's chatter captured
