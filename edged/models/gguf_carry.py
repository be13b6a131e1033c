"""A GGUF's weights carried into the exported graphs as they are, never re-quantized.

The export traces the model transformers built from the GGUF (every weight dequantized to
float32) into fp32 graphs. Each weight initializer of those graphs is then found in the GGUF
by its exact value (the dequantized bytes hash the same) and replaced by the GGUF's own
blocks in a kernel form (gguf_blocks.py): a MatMul becomes MatMulNBits, the embedding Gather
becomes GatherBlockQuantized. A weight whose type has no exact form, or that is not found,
is quantized the usual way, and the manifest says which and why.

The tied embedding and output layer are one tensor in the GGUF and stay one on disk: both
graphs read it from a shared `weights.data`.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edged.models.gguf_blocks import FLOATS, NBitsForm, float_weight, to_form
from edged.models.graphs import IR_VERSION

SHARED = "weights.data"
MS = "com.microsoft"


def _key(array: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(array, dtype=np.float32).tobytes()).hexdigest()


class _GgufIndex:
    """GGUF 2-D tensors by the hash of their float32 values (as transformers dequantized them)."""

    def __init__(self, path: Path) -> None:
        from gguf import GGUFReader
        from gguf.quants import dequantize

        self.tensors: dict[str, Any] = {}
        for t in GGUFReader(str(path)).tensors:
            if len(t.shape) != 2:
                continue
            n, k = int(t.shape[1]), int(t.shape[0])
            values = dequantize(t.data, t.tensor_type).reshape(n, k)
            self.tensors[_key(values)] = (t.name, t.tensor_type.name, t.data, n, k)

    def find(self, values: np.ndarray) -> Optional[tuple[str, str, np.ndarray, int, int]]:
        return self.tensors.get(_key(values))


class _SharedData:
    """One external-data file that both graphs point into; a tensor written twice is stored once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fh = open(path, "wb")  # closed by close()
        self.at: dict[str, tuple[int, int]] = {}

    def tensor(self, name: str, array: np.ndarray, key: str) -> TensorProto:
        if key not in self.at:
            offset = self.fh.tell()
            data = np.ascontiguousarray(array).tobytes()
            self.fh.write(data)
            pad = (-self.fh.tell()) % 64  # aligned for mmap-friendly loading
            self.fh.write(b"\0" * pad)
            self.at[key] = (offset, len(data))
        offset, length = self.at[key]
        proto = TensorProto()
        proto.name = name
        proto.data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
        proto.dims.extend(array.shape)
        proto.data_location = TensorProto.EXTERNAL
        for k, v in (("location", self.path.name), ("offset", str(offset)), ("length", str(length))):
            entry = proto.external_data.add()
            entry.key, entry.value = k, v
        return proto

    def close(self) -> None:
        self.fh.close()


class _Rewriter:
    def __init__(self, index: _GgufIndex, shared: _SharedData, accuracy_level: int) -> None:
        self.index = index
        self.shared = shared
        self.accuracy_level = accuracy_level
        self.types: Counter[str] = Counter()
        self.fallbacks: list[str] = []

    def _put(self, graph: onnx.GraphProto, name: str, array: np.ndarray, key: str) -> str:
        graph.initializer.append(self.shared.tensor(name, array, key))
        return name

    @staticmethod
    def _const(graph: onnx.GraphProto, name: str, array: np.ndarray) -> str:
        # Inline, not in the shared file: shape inference must read Reshape's shape and ReduceSum's axes.
        if not any(t.name == name for t in graph.initializer):
            graph.initializer.append(numpy_helper.from_array(array, name))
        return name

    def matmul(self, graph: onnx.GraphProto, node: onnx.NodeProto, weight: np.ndarray) -> Optional[list[Any]]:
        """The nodes that replace `node` (x @ weight), or None to leave it to the fallback."""
        found = self.index.find(weight.T)
        if found is None:
            self.fallbacks.append(f"{node.name}: not found in the GGUF")
            return None
        tname, kind, data, n, k = found
        form = None if kind in FLOATS else to_form(kind, data, n, k)
        if form is None and kind not in FLOATS:
            # No exact form (Q2_K, Q3_K, IQ*): the best there is, 8-bit blocks of its values.
            self.fallbacks.append(f"{tname}: {kind} has no exact kernel form; re-quantized to 8-bit blocks of 32")
            self.types[f"{kind} (as 8-bit)"] += 1
            return self._nbits(graph, node, tname, rtn8(weight.T))
        if form is None:
            self.types[kind] += 1
            w = float_weight(kind, data, n, k).T
            name = self._put(graph, f"{tname}.float", np.ascontiguousarray(w), f"{tname}/T")
            return [helper.make_node("MatMul", [node.input[0], name], list(node.output), name=node.name)]
        self.types[kind] += 1
        return self._nbits(graph, node, tname, form)

    def _nbits(self, graph: onnx.GraphProto, node: onnx.NodeProto, tname: str, form: NBitsForm) -> list[Any]:
        n, k = form.shape
        inputs = [node.input[0], self._put(graph, f"{tname}.q", form.packed, f"{tname}/q"),
                  self._put(graph, f"{tname}.scales", form.scales, f"{tname}/scales")]
        if form.zero_points is not None:
            inputs.append(self._put(graph, f"{tname}.zp", form.zero_points, f"{tname}/zp"))
        out = node.output[0]
        main = out if form.offsets is None else f"{out}.nbits"
        nodes = [helper.make_node("MatMulNBits", inputs, [main], name=node.name, domain=MS, K=k, N=n,
                                  bits=form.bits, block_size=form.block, accuracy_level=self.accuracy_level)]
        if form.offsets is not None:
            # y = Σ x·s·q − Σ_blocks (Σ_block x)·dmin·m: the mins, exactly, as one small MatMul.
            shape = self._const(graph, f"gguf.blocks_of_{form.block}", np.array([0, 0, -1, form.block], dtype=np.int64))
            axes = self._const(graph, "gguf.last_axis", np.array([-1], dtype=np.int64))
            offsets = self._put(graph, f"{tname}.offsets", np.ascontiguousarray(form.offsets.T), f"{tname}/off")
            nodes += [
                helper.make_node("Reshape", [node.input[0], shape], [f"{out}.xb"], name=f"{node.name}.xb"),
                helper.make_node("ReduceSum", [f"{out}.xb", axes], [f"{out}.sums"], name=f"{node.name}.sums",
                                 keepdims=0),
                helper.make_node("MatMul", [f"{out}.sums", offsets], [f"{out}.mins"], name=f"{node.name}.mins"),
                helper.make_node("Sub", [main, f"{out}.mins"], [out], name=f"{node.name}.sub"),
            ]
        return nodes

    def gather(self, graph: onnx.GraphProto, node: onnx.NodeProto, table: np.ndarray) -> Optional[list[Any]]:
        found = self.index.find(table)
        if found is None:
            self.fallbacks.append(f"{node.name}: embedding not found in the GGUF")
            return None
        tname, kind, data, n, k = found
        form = None if kind in FLOATS else to_form(kind, data, n, k)
        if form is None or form.offsets is not None:
            self.fallbacks.append(f"{tname}: {kind} cannot be gathered block-wise; kept as float32")
            return None
        self.types[f"{kind} (embedding)"] += 1
        v, h = form.shape
        q = form.packed.reshape(v, -1)  # [V, H] bytes (8 bits) or [V, H/2] (4 bits): the same bytes
        inputs = [self._put(graph, f"{tname}.q", q, f"{tname}/q"), node.input[1],
                  self._put(graph, f"{tname}.scales", form.scales, f"{tname}/scales")]
        if form.zero_points is not None:
            inputs.append(self._put(graph, f"{tname}.zp", form.zero_points, f"{tname}/zp"))
        return [helper.make_node("GatherBlockQuantized", inputs, list(node.output), name=node.name, domain=MS,
                                 gather_axis=0, quantize_axis=1, block_size=form.block, bits=form.bits)]


def rtn8(values: np.ndarray, block: int = 32) -> NBitsForm:
    """Symmetric round-to-nearest 8-bit blocks of a [N, K] float weight (the fallback)."""
    n, k = values.shape
    b = values.reshape(n, k // block, block).astype(np.float32)
    scales = np.abs(b).max(axis=-1) / 127.0
    safe = np.where(scales > 0, scales, 1.0)[..., None]
    q = np.clip(np.rint(b / safe), -127, 127).astype(np.int16) + 128
    return NBitsForm(8, block, q.astype(np.uint8), scales.astype(np.float32))


def _rewrite(model: onnx.ModelProto, rw: _Rewriter) -> None:
    """Replace every weight the GGUF holds with its blocks."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    used: Counter[str] = Counter(i for n in graph.node for i in n.input)
    new_nodes: list[Any] = []
    for node in graph.node:
        replaced = None
        if node.op_type == "MatMul" and node.input[1] in inits and len(inits[node.input[1]].dims) == 2:
            replaced = rw.matmul(graph, node, numpy_helper.to_array(inits[node.input[1]]))
        elif node.op_type == "Gather" and node.input[0] in inits and len(inits[node.input[0]].dims) == 2:
            replaced = rw.gather(graph, node, numpy_helper.to_array(inits[node.input[0]]))
        if replaced is None:
            new_nodes.append(node)
            continue
        new_nodes += replaced
        weight = node.input[1] if node.op_type == "MatMul" else node.input[0]
        used[weight] -= 1
        if used[weight] == 0:
            graph.initializer.remove(inits.pop(weight))
    del graph.node[:]
    graph.node.extend(new_nodes)
    if not any(op.domain == MS for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS, 1))
    model.ir_version = IR_VERSION


def carry(gguf_path: Path, src: Path, out: Path, accuracy_level: int = 4,
          progress: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Write out/{decoder_model_merged,embed_tokens}.onnx from the fp32 graphs in `src` with the
    GGUF's own weights; returns what the manifest records about it."""
    progress("indexing the GGUF's tensors")
    index = _GgufIndex(gguf_path)
    shared = _SharedData(out / SHARED)
    rw = _Rewriter(index, shared, accuracy_level)
    try:
        for name in ("embed_tokens.onnx", "decoder_model_merged.onnx"):
            progress(f"carrying the GGUF's blocks into {name}")
            model = onnx.load(str(src / name), load_external_data=True)
            _rewrite(model, rw)
            onnx.save(model, str(out / name))
    finally:
        shared.close()
    info = {"weights": "gguf", "source_types": dict(sorted(rw.types.items())),
            "kernels": "MatMulNBits (8-bit for Q8_0/Q5_0/Q6_K/Q5_K, 4-bit for Q4_0/Q4_K, exact), "
                       "GatherBlockQuantized for the embedding; K-quant mins as a block-sum MatMul",
            "accuracy_level": accuracy_level, "fallbacks": rw.fallbacks}
    return info
