"""Quantization recipes for float sources (Hugging Face weights): which bits, blocks and rounding
each weight of the exported graphs gets.

The default was chosen by measurement on the 270M's fp32 export as the stand-in source
(bench/recipes.py; the figures go into the manifest of an export with it, and README.md): the
body in 4-bit blocks, the layers named by `int8` patterns and the tied output layer/embedding
table in 8-bit blocks (Q8_0's rule), all as MatMulNBits/GatherBlockQuantized forms with
integer zero points (ONNX Runtime's fast kernels on CPU and CUDA; float zero points take a
slow path). The rounding itself is ONNX Runtime's own: RTN, k-quant (llama.cpp's search for
scale and min) or HQQ.
"""

from __future__ import annotations

import fnmatch
import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import numpy as np

from edged.models.blockwrite import Found, rtn8
from edged.models.gguf_blocks import NBitsForm, pack4

ALGORITHMS = ("rtn", "k_quant", "hqq")


# Chosen by measurement (bench/recipes.py on the 270M's fp32 export; README, "Weights"): every
# 4-bit variant of the whole body (RTN, k-quant, HQQ; blocks of 16 to 128; with and without
# zero points) measured perplexity 1.24-1.93x the fp32's. Kept at 8 bits in order of measured
# gain per MB (v, k, down, up, o, gate), the ratio fell to 1.0169: the first set under 1.03.
MEASURED_INT8 = tuple(f"*/{kind}/*" for kind in ("v_proj", "k_proj", "down_proj", "up_proj", "o_proj", "gate_proj"))
MEASURED = {"on": "gemma-3-270m, fp32 export of its Q4_K_M GGUF as the source", "ppl_ratio": 1.0169,
            "size_mb": 296.8, "same_top_pct": 92.12,
            "command": "python bench/recipes.py --reference FP32_EXPORT --sensitivity rtn:32"}


@dataclass(frozen=True)
class Recipe:
    bits: int = 4  # the body: 4 or 8
    algorithm: str = "rtn"
    block: int = 32
    symmetric: bool = False  # rtn only; k_quant and hqq are asymmetric by construction
    int8: tuple[str, ...] = MEASURED_INT8  # fnmatch patterns of MatMul node names kept at 8 bits
    head_bits: int = 8  # the output layer and the embedding table (tied: one copy)
    head: frozenset[str] = field(default=frozenset(), compare=False)  # names of the output layer's MatMul

    def describe(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("head")
        out["int8"] = list(self.int8)
        if self == DEFAULT_RECIPE:
            out["measured"] = MEASURED
        return out


DEFAULT_RECIPE = Recipe()


def _rtn4(b: np.ndarray, symmetric: bool) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    from onnxruntime.quantization.neural_compressor.weight_only import quant_tensor

    rows, block = b.shape
    if symmetric:
        q, scale, _ = quant_tensor(b, 4, block, "sym", "int")
        return (q + 8).astype(np.uint8), scale.astype(np.float32), None
    q, scale, zp = quant_tensor(b, 4, block, "asym", "uint")
    return q.astype(np.uint8), scale.astype(np.float32), zp.astype(np.uint8)


def _k_quant4(b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from onnxruntime.quantization.neural_compressor.weight_only import quant_tensor_k_quant_cpu

    with np.errstate(divide="ignore", invalid="ignore"):  # constant blocks: handled by its masks
        q, scale, zp = quant_tensor_k_quant_cpu(b, 4, b.shape[1])
    return q.astype(np.uint8), scale.astype(np.float32), zp.astype(np.uint8)


def _hqq4(b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import torch
    from onnxruntime.quantization.matmul_nbits_quantizer import HQQWeightOnlyQuantConfig, HQQWeightOnlyQuantizer

    quantizer = HQQWeightOnlyQuantizer(HQQWeightOnlyQuantConfig(block_size=b.shape[1], bits=4))
    q, scale, zero = quantizer.quantize_internal(torch.from_numpy(b), bits=4, group_size=b.shape[1])
    # round_zero (its default) makes the zero points whole numbers: stored as uint8 they stay exact
    # and keep MatMulNBits on its fast kernels.
    zp = np.clip(np.rint(zero.numpy()), 0, 15).astype(np.uint8)
    return q.numpy().astype(np.uint8), scale.numpy().astype(np.float32), zp


def quantize4(values: np.ndarray, block: int, algorithm: str, symmetric: bool = False) -> NBitsForm:
    """A [N, K] float weight as 4-bit MatMulNBits blocks along K."""
    n, k = values.shape
    b = np.ascontiguousarray(values, dtype=np.float32).reshape(-1, block)
    if algorithm == "rtn":
        q, scale, zp = _rtn4(b, symmetric)
    elif algorithm == "k_quant":
        q, scale, zp = _k_quant4(b)
    elif algorithm == "hqq":
        q, scale, zp = _hqq4(b)
    else:
        raise ValueError(f"unknown algorithm {algorithm!r}: choose one of {', '.join(ALGORITHMS)}")
    kb = k // block
    packed_zp = None
    if zp is not None:
        z = zp.reshape(n, kb)
        if kb % 2:
            z = np.concatenate([z, np.zeros((n, 1), dtype=np.uint8)], axis=1)
        packed_zp = pack4(z)
    return NBitsForm(4, block, pack4(q.reshape(n, kb, block)), scale.reshape(n, kb), packed_zp)


def _block_for(k: int, wanted: int) -> Optional[int]:
    for block in (wanted, 128, 64, 32, 16):
        if block <= wanted and k % block == 0:
            return block
    return None


class RecipeSource:
    """Forms for the weights of fp32 graphs, as a recipe says (the form source of blockwrite.py)."""

    def __init__(self, recipe: Recipe) -> None:
        self.recipe = recipe
        self.notes: list[str] = []

    @staticmethod
    def _name(values: np.ndarray) -> str:
        # By value: the tied embedding and output layer get one name, so one stored copy.
        return "w." + hashlib.sha1(np.ascontiguousarray(values, dtype=np.float32).tobytes()).hexdigest()[:16]

    def _form(self, node: str, values: np.ndarray, bits: int, algorithm: str, block: int,
              symmetric: bool) -> Optional[Found]:
        b = _block_for(values.shape[1], block)
        if b is None:
            self.notes.append(f"{node}: K={values.shape[1]} has no block size that divides it; left float32")
            return None
        if b != block:
            self.notes.append(f"{node}: K={values.shape[1]} is not a multiple of {block}; blocks of {b}")
        if bits == 8:
            return Found(self._name(values), f"int8 b{b}", rtn8(values, b))
        kind = f"int4 {algorithm}{' sym' if symmetric and algorithm == 'rtn' else ''} b{b}"
        return Found(self._name(values), kind, quantize4(values, b, algorithm, symmetric))

    def matmul(self, node: str, weight: np.ndarray) -> Optional[Found]:
        r = self.recipe
        if node in r.head:
            return self._form(node, weight, r.head_bits, "rtn", 32, True)
        eight = r.bits == 8 or any(fnmatch.fnmatchcase(node, p) for p in r.int8)
        return self._form(node, weight, 8 if eight else 4, r.algorithm, r.block, r.symmetric)

    def gather(self, node: str, table: np.ndarray) -> Optional[Found]:
        # Same rule as the output layer: for a tied model the two are one tensor.
        return self._form(node, table, self.recipe.head_bits, "rtn", 32, True)
