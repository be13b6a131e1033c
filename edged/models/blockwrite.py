"""Weights in blocks written into the exported graphs: the rewrite every quantized export shares.

The export traces fp32 graphs; a form source (the GGUF's own blocks, gguf_carry.py, or a
quantization recipe, recipe.py) says for each weight which kernel form it takes. This module
does the graph surgery: a MatMul becomes MatMulNBits, the embedding Gather becomes
GatherBlockQuantized, and all their tensors go to one `weights.data` that both graphs point
into, so the tied embedding/output layer is stored once.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional, Protocol

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edged.models.gguf_blocks import NBitsForm
from edged.models.graphs import IR_VERSION

SHARED = "weights.data"
MS = "com.microsoft"
GRAPHS = ("embed_tokens.onnx", "decoder_model_merged.onnx", "decoder_fused.onnx")  # the last when built
_INLINE_MAX = 1 << 20  # larger float tensors left by a source go to the shared file too (protobuf's 2 GB)


class Found(NamedTuple):
    """What a form source decided for one weight."""

    name: str  # stable name of the tensor: the same weight (tied embedding/head) gets the same name
    kind: str  # what the manifest counts (a GGUF type, "int4 k_quant b32", …)
    form: Optional[NBitsForm]  # None: a float weight, `values` as they are
    values: Optional[np.ndarray] = None  # [N, K] float32, when form is None


class FormSource(Protocol):
    notes: list[str]  # one line per weight it could not give an exact or chosen form

    def matmul(self, node: str, weight: np.ndarray) -> Optional[Found]:
        """The form of x @ weight.T (`weight` as [N, K]); None leaves the node as it is."""
        ...

    def gather(self, node: str, table: np.ndarray) -> Optional[Found]:
        """The form of an embedding table [V, H]; None leaves it float."""
        ...


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
            self.fh.write(b"\0" * ((-self.fh.tell()) % 64))  # aligned for mmap-friendly loading
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
    def __init__(self, source: FormSource, shared: _SharedData, accuracy_level: int) -> None:
        self.source = source
        self.shared = shared
        self.accuracy_level = accuracy_level
        self.types: Counter[str] = Counter()

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
        found = self.source.matmul(node.name, weight.T)
        if found is None:
            return None
        self.types[found.kind] += 1
        if found.form is None:
            assert found.values is not None  # a float Found carries its values
            w = np.ascontiguousarray(found.values.T)
            name = self._put(graph, f"{found.name}.float", w, f"{found.name}/T")
            return [helper.make_node("MatMul", [node.input[0], name], list(node.output), name=node.name)]
        return self._nbits(graph, node, found.name, found.form)

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
            shape = self._const(graph, f"blockwrite.blocks_of_{form.block}",
                                 np.array([0, 0, -1, form.block], dtype=np.int64))
            axes = self._const(graph, "blockwrite.last_axis", np.array([-1], dtype=np.int64))
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
        found = self.source.gather(node.name, table)
        if found is None or found.form is None or found.form.offsets is not None:
            if found is not None:
                self.source.notes.append(f"{found.name}: {found.kind} cannot be gathered block-wise; kept as float32")
            return None
        self.types[f"{found.kind} (embedding)"] += 1
        form, tname = found.form, found.name
        v, _ = form.shape
        q = form.packed.reshape(v, -1)  # [V, H] bytes (8 bits) or [V, H/2] (4 bits): the same bytes
        inputs = [self._put(graph, f"{tname}.q", q, f"{tname}/q"), node.input[1],
                  self._put(graph, f"{tname}.scales", form.scales, f"{tname}/scales")]
        if form.zero_points is not None:
            inputs.append(self._put(graph, f"{tname}.zp", form.zero_points, f"{tname}/zp"))
        return [helper.make_node("GatherBlockQuantized", inputs, list(node.output), name=node.name, domain=MS,
                                 gather_axis=0, quantize_axis=1, block_size=form.block, bits=form.bits)]

    def rewrite(self, model: onnx.ModelProto) -> None:
        """Replace every weight the source gives a form for."""
        graph = model.graph
        inits = {t.name: t for t in graph.initializer}
        used: Counter[str] = Counter(i for n in graph.node for i in n.input)
        new_nodes: list[Any] = []
        for node in graph.node:
            replaced = None
            if node.op_type == "MatMul" and node.input[1] in inits and len(inits[node.input[1]].dims) == 2:
                replaced = self.matmul(graph, node, numpy_helper.to_array(inits[node.input[1]]))
            elif node.op_type == "Gather" and node.input[0] in inits and len(inits[node.input[0]].dims) == 2:
                replaced = self.gather(graph, node, numpy_helper.to_array(inits[node.input[0]]))
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
        self._externalize_large(graph)
        if not any(op.domain == MS for op in model.opset_import):
            model.opset_import.append(helper.make_opsetid(MS, 1))
        model.ir_version = IR_VERSION

    def _externalize_large(self, graph: onnx.GraphProto) -> None:
        for i, t in enumerate(graph.initializer):
            if t.data_location != TensorProto.EXTERNAL and len(t.raw_data) > _INLINE_MAX:
                # Keyed by content: two graphs may name different tensors alike.
                key = "float/" + hashlib.sha1(t.raw_data).hexdigest()
                graph.initializer[i].CopyFrom(self.shared.tensor(t.name, numpy_helper.to_array(t), key))


def rtn8(values: np.ndarray, block: int = 32) -> NBitsForm:
    """Symmetric round-to-nearest 8-bit blocks of a [N, K] float weight (Q8_0's own rule)."""
    n, k = values.shape
    b = values.reshape(n, k // block, block).astype(np.float32)
    scales = np.abs(b).max(axis=-1) / 127.0
    safe = np.where(scales > 0, scales, 1.0)[..., None]
    q = np.clip(np.rint(b / safe), -127, 127).astype(np.int16) + 128
    return NBitsForm(8, block, q.astype(np.uint8), scales.astype(np.float32))


def write_graphs(source: FormSource, src: Path, out: Path, accuracy_level: int,
                 progress: Callable[[str], None]) -> Counter[str]:
    """out/{embed_tokens,decoder_model_merged}.onnx from the fp32 graphs in `src`, weights in the
    forms `source` gives; returns how many weights took each kind."""
    shared = _SharedData(out / SHARED)
    rw = _Rewriter(source, shared, accuracy_level)
    try:
        for name in GRAPHS:
            if not (src / name).is_file():
                continue
            progress(f"writing the weights of {name} in blocks")
            model = onnx.load(str(src / name), load_external_data=True)
            rw.rewrite(model)
            onnx.save(model, str(out / name))
    finally:
        shared.close()
    return rw.types
