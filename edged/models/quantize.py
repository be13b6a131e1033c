"""Float conversions of exported graphs, and where the output layer is.

fp16: every float tensor converted, inputs and outputs kept fp32 so callers see one interface.
The block-quantized kinds (gguf, int4, int8) are written by blockwrite.py.
"""

from __future__ import annotations

from pathlib import Path

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
