"""Quantization recipes for float sources: forms the kernels read as meant, and the recipe's choices."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edged.models.gguf_blocks import dequantize
from edged.models.recipe import Recipe, RecipeSource, quantize4

CASES = [("rtn", False), ("rtn", True), ("k_quant", False), ("hqq", False)]


def _matmul(form, x: np.ndarray) -> np.ndarray:
    n, k = form.shape
    inits = [numpy_helper.from_array(form.packed, "B"), numpy_helper.from_array(form.scales, "S")]
    inputs = ["x", "B", "S"]
    if form.zero_points is not None:
        inits.append(numpy_helper.from_array(form.zero_points, "Z"))
        inputs.append("Z")
    node = helper.make_node("MatMulNBits", inputs, ["y"], domain="com.microsoft", K=k, N=n, bits=form.bits,
                            block_size=form.block, accuracy_level=1)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [x.shape[0], n])], inits)
    model = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid("com.microsoft", 1)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


@pytest.mark.parametrize(("algorithm", "symmetric"), CASES)
@pytest.mark.parametrize("k", [96, 256])  # 3 blocks (odd: the packed zero points need a pad nibble) and 8
def test_matmulnbits_computes_with_the_weights_the_form_holds(algorithm: str, symmetric: bool, k: int) -> None:
    if algorithm == "hqq":
        pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    w = (rng.normal(size=(48, k)) * 0.05).astype(np.float32)
    w[:, :32] += 0.03  # a block that is far from centred: zero points matter
    w[0, :32] = 0.0  # a constant block
    form = quantize4(w, 32, algorithm, symmetric)
    assert form.bits == 4 and form.shape == w.shape
    assert (form.zero_points is None) == symmetric
    got = dequantize(form)
    scale = np.repeat(form.scales, 32, axis=1)
    # RTN rounds to nearest over the block's range: within half a step. k-quant and HQQ search
    # scale and zero point for a lower mean error and may give up a little of the worst case.
    assert np.all(np.abs(got - w) <= scale * (0.51 if algorithm == "rtn" else 1.5) + 1e-7)
    assert np.mean(np.abs(got - w)) < 0.3 * np.mean(scale)
    x = rng.normal(size=(4, k)).astype(np.float32)
    assert np.allclose(_matmul(form, x), x @ got.T, rtol=1e-4, atol=1e-5)


def test_the_recipe_puts_the_head_patterns_and_body_at_their_bits() -> None:
    rng = np.random.default_rng(5)
    recipe = Recipe(algorithm="rtn", block=64, int8=("*/v_proj/*",), head=frozenset({"/lm_head/MatMul"}))
    src = RecipeSource(recipe)
    table = rng.normal(size=(128, 64)).astype(np.float32)
    head = src.matmul("/lm_head/MatMul", table)
    emb = src.gather("/embed_tokens/Gather", table)
    assert head is not None and emb is not None and head.form is not None and emb.form is not None
    assert head.form.bits == emb.form.bits == 8 and head.name == emb.name  # tied: one stored copy
    v = src.matmul("/layers.3/self_attn/v_proj/MatMul", rng.normal(size=(32, 128)).astype(np.float32))
    q = src.matmul("/layers.3/self_attn/q_proj/MatMul", rng.normal(size=(32, 128)).astype(np.float32))
    assert v is not None and v.form is not None and v.form.bits == 8
    assert q is not None and q.form is not None and (q.form.bits, q.form.block) == (4, 64) and q.kind == "int4 rtn b64"
    assert not src.notes


def test_a_width_the_block_does_not_divide_takes_a_smaller_block_and_says_so() -> None:
    src = RecipeSource(Recipe(block=128))
    found = src.matmul("/layers.0/mlp/up_proj/MatMul", np.ones((8, 96), np.float32))
    assert found is not None and found.form is not None and found.form.block == 32
    assert src.notes and "96" in src.notes[0]
    assert src.matmul("/x/MatMul", np.ones((8, 20), np.float32)) is None  # no block divides 20: stays float
