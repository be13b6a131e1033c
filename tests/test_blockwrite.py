"""The block writer: float tensors too large to inline go to the shared file, keyed by content."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edged.models.blockwrite import SHARED, write_graphs


class _KeepFloat:
    """A form source that gives no weight a form: everything stays float."""

    notes: list[str] = []

    def matmul(self, node, weight):
        return None

    def gather(self, node, table):
        return None


def _save(path: Path, node: helper.NodeProto, x: helper.ValueInfoProto, w: np.ndarray) -> None:
    graph = helper.make_graph([node], "g", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "W")])  # the same name in both graphs
    onnx.save(helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 18)]), str(path))


def test_large_float_tensors_of_two_graphs_go_to_the_shared_file_each_its_own(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    table = rng.normal(size=(600, 512)).astype(np.float32)  # 1.2 MB: above the inline limit
    weight = rng.normal(size=(512, 600)).astype(np.float32)
    _save(src / "embed_tokens.onnx", helper.make_node("Gather", ["W", "x"], ["y"]),
          helper.make_tensor_value_info("x", TensorProto.INT64, [3]), table)
    _save(src / "decoder_model_merged.onnx", helper.make_node("MatMul", ["x", "W"], ["y"]),
          helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 512]), weight)
    write_graphs(_KeepFloat(), src, out, 4, lambda m: None)
    assert (out / SHARED).stat().st_size >= table.nbytes + weight.nbytes
    assert (out / "decoder_model_merged.onnx").stat().st_size < 100_000  # the weights are not inline
    ids = np.array([0, 7, 599], dtype=np.int64)
    x = rng.normal(size=(2, 512)).astype(np.float32)
    emb = ort.InferenceSession(str(out / "embed_tokens.onnx"), providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(str(out / "decoder_model_merged.onnx"), providers=["CPUExecutionProvider"])
    assert np.array_equal(emb.run(None, {"x": ids})[0], table[ids])
    assert np.allclose(dec.run(None, {"x": x})[0], x @ weight, rtol=1e-4, atol=1e-4)
