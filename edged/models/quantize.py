"""Weight quantization of exported graphs with ONNX Runtime's own tools.

int4/int8: MatMul -> MatMulNBits (weights in blocks along the input axis, one scale per
block), and optionally the embedding Gather -> GatherBlockQuantized. fp16: every float
tensor converted, inputs and outputs kept fp32 so callers see one interface.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import onnx

from edged.models.graphs import IR_VERSION

WEIGHTS = ("gguf", "int4", "int8", "fp16", "fp32")  # gguf: a GGUF source's own blocks (gguf_carry.py)


def _save(model: onnx.ModelProto, out: Path) -> None:
    model.ir_version = IR_VERSION
    big = model.ByteSize() > 1_800_000_000
    data = out.parent / (out.name + ".data")
    if data.exists():
        data.unlink()
    onnx.save(model, str(out), save_as_external_data=big, all_tensors_to_one_file=True, location=data.name)


def quantize_nbits(src: Path, out: Path, bits: int = 4, block_size: int = 32, symmetric: bool = True,
                   accuracy_level: Optional[int] = 4, gather: bool = False,
                   exclude: Sequence[str] = ()) -> None:
    """MatMul (and with `gather`, Gather) weights to `bits`-bit blocks."""
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    ops = ("MatMul", "Gather") if gather else ("MatMul",)
    cfg = DefaultWeightOnlyQuantConfig(
        block_size=block_size, is_symmetric=symmetric, accuracy_level=accuracy_level,
        quant_format=QuantFormat.QOperator, op_types_to_quantize=ops,
        quant_axes=(("MatMul", 0), ("Gather", 1)), bits=bits,
    )
    model = onnx.load(str(src), load_external_data=True)
    q = MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, is_symmetric=symmetric,
                             accuracy_level=accuracy_level, nodes_to_exclude=list(exclude),
                             op_types_to_quantize=ops, quant_axes=(("MatMul", 0), ("Gather", 1)),
                             algo_config=cfg)
    with np.errstate(divide="ignore", invalid="ignore"):  # all-zero blocks: scale 0, handled by the quantizer
        q.process()
    _save(q.model.model, out)


def quantize_head_qgemm(src: Path, out: Path, nodes: Sequence[str]) -> None:
    """The output layer as MatMulInteger: uint8 per-channel weights, activations quantized per call.

    Measured on a 2-core AVX2 box for Gemma 3's 640 x 262144 head: MatMulNBits int8 takes
    10.2 ms for one row and 36 ms for eight; this takes 8.7 and 17.1 ms. uint8 weights (u8u8)
    and not int8: without AVX-VNNI, MLAS's u8s8 kernel saturates in 16-bit sums (34 % error
    in that test, against 3 % for u8u8).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "head.onnx"
        quantize_dynamic(str(src), str(staged), per_channel=True, weight_type=QuantType.QUInt8,
                         nodes_to_quantize=list(nodes), op_types_to_quantize=["MatMul"],
                         use_external_data_format=True)
        _save(onnx.load(str(staged), load_external_data=True), out)


def to_fp16(src: Path, out: Path) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src), load_external_data=True)
    model = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True)
    _save(model, out)


def lm_head_nodes(model_path: Path) -> list[str]:
    """Names of the MatMul nodes that produce the logits (the tied 262k-row output layer)."""
    model = onnx.load(str(model_path), load_external_data=False)
    producers = {o: n for n in model.graph.node for o in n.output}
    node = producers.get("logits")
    names = []
    seen = 0
    while node is not None and seen < 8:
        if node.op_type == "MatMul":
            names.append(node.name)
            break
        node = producers.get(node.input[0])
        seen += 1
    return names
