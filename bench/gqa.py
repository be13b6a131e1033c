#!/usr/bin/env python3
"""ONNX Runtime's CPU GroupQueryAttention alone: what one decode step's attention costs, and why.

Usage: python bench/gqa.py [--threads 2] [--calls 200] [--head-dim 256]

One GQA node as the fused decoder uses it (past and present sharing a buffer, rotary in the
op), timed per call for a decode step (one query per row) at several depths: with 4 query
heads on 1 KV head (the 270M's grouping) against 1 query head, and a windowed layer
(`local_window_size` 512, `sliding_window_cache`). If the kernel read each KV head once for
its whole group, 4 heads would cost about what 1 does. Also timed: the heads folded by hand
into plain MatMul/Softmax over a Slice of the cache (the way round the kernel that ONNX
Runtime's own ops allow). The last line is key=value, microseconds a call.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

MS = "com.microsoft"
F = TensorProto.FLOAT


def _session(nodes: list, inputs: list, outputs: list, threads: int, inits: tuple = ()) -> ort.InferenceSession:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)])
    model.ir_version = 9
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _vi(name: str, shape: list, kind: int = F) -> object:
    return helper.make_tensor_value_info(name, kind, shape)


def _timed(run, calls: int) -> float:
    for _ in range(10):
        run()
    t0 = time.perf_counter()
    for _ in range(calls):
        run()
    return (time.perf_counter() - t0) / calls * 1e6


def gqa_us(heads: int, rows: int, depth: int, hd: int, threads: int, calls: int, window: int = 0) -> float:
    attrs = {"num_heads": heads, "kv_num_heads": 1, "scale": hd ** -0.5, "do_rotary": 1, "rotary_interleaved": 0}
    cap = max(depth + 8, 64)
    if window:
        attrs.update(local_window_size=window, sliding_window_cache=1)
        cap = window + 15
    node = helper.make_node("GroupQueryAttention", ["q", "k", "v", "pk", "pv", "sl", "tl", "cos", "sin"],
                            ["o", "prk", "prv"], domain=MS, **attrs)
    s = _session([node], [_vi("q", ["b", 1, heads * hd]), _vi("k", ["b", 1, hd]), _vi("v", ["b", 1, hd]),
                          _vi("pk", ["b", 1, "c", hd]), _vi("pv", ["b", 1, "c", hd]),
                          _vi("sl", ["b"], TensorProto.INT32), _vi("tl", [], TensorProto.INT32),
                          _vi("cos", ["p", hd // 2]), _vi("sin", ["p", hd // 2])],
                 [_vi("o", ["b", 1, heads * hd]), _vi("prk", ["b", 1, "c", hd]), _vi("prv", ["b", 1, "c", hd])],
                 threads)
    rng = np.random.default_rng(0)
    kv = [ort.OrtValue.ortvalue_from_numpy((rng.standard_normal((rows, 1, cap, hd)) * 0.1).astype(np.float32))
          for _ in range(2)]
    io = s.io_binding()
    io.bind_cpu_input("q", rng.standard_normal((rows, 1, heads * hd)).astype(np.float32))
    io.bind_cpu_input("k", rng.standard_normal((rows, 1, hd)).astype(np.float32))
    io.bind_cpu_input("v", rng.standard_normal((rows, 1, hd)).astype(np.float32))
    for name, value in zip(("pk", "pv"), kv, strict=True):
        io.bind_ortvalue_input(name, value)
        io.bind_ortvalue_output("pr" + name[1], value)
    io.bind_cpu_input("sl", np.full(rows, depth - 1, np.int32))
    io.bind_cpu_input("tl", np.array(depth, np.int32))
    positions = max(depth, cap) + 8
    io.bind_cpu_input("cos", np.ones((positions, hd // 2), np.float32))
    io.bind_cpu_input("sin", np.zeros((positions, hd // 2), np.float32))
    io.bind_output("o")
    return _timed(lambda: s.run_with_iobinding(io), calls)


def folded_us(depth: int, hd: int, threads: int, calls: int, heads: int = 4) -> float:
    """The group's heads as rows of one MatMul over the cache's first `depth` positions."""
    cap = depth + 64
    nodes = [helper.make_node("Slice", ["K", "zero", "t", "axis"], ["Ks"]),
             helper.make_node("Slice", ["V", "zero", "t", "axis"], ["Vs"]),
             helper.make_node("FusedMatMul", ["q", "Ks"], ["s"], domain=MS, transB=1, alpha=hd ** -0.5),
             helper.make_node("Softmax", ["s"], ["p"], axis=-1), helper.make_node("MatMul", ["p", "Vs"], ["o"])]
    s = _session(nodes, [_vi("q", [1, 1, heads, hd]), _vi("K", [1, 1, cap, hd]), _vi("V", [1, 1, cap, hd]),
                         _vi("t", [1], TensorProto.INT64)], [_vi("o", [1, 1, heads, hd])], threads,
                 (numpy_helper.from_array(np.array([0], np.int64), "zero"),
                  numpy_helper.from_array(np.array([2], np.int64), "axis")))
    rng = np.random.default_rng(0)
    io = s.io_binding()
    for name in ("K", "V"):
        io.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(
            rng.standard_normal((1, 1, cap, hd)).astype(np.float32)))
    io.bind_cpu_input("q", rng.standard_normal((1, 1, heads, hd)).astype(np.float32))
    io.bind_cpu_input("t", np.array([depth], np.int64))
    io.bind_output("o")
    return _timed(lambda: s.run_with_iobinding(io), calls)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--head-dim", type=int, default=256)
    args = ap.parse_args()
    t, n, hd = args.threads, args.calls, args.head_dim
    out = {}
    for rows, depth in ((1, 16), (1, 1024), (1, 4096), (8, 512)):
        h4, h1 = gqa_us(4, rows, depth, hd, t, n), gqa_us(1, rows, depth, hd, t, n)
        line = f"batch {rows}, {depth:5d} keys: 4 query heads {h4:6.0f} us, 1 query head {h1:5.0f} us ({h4 / h1:.1f}x)"
        out[f"b{rows}_d{depth}_h4"], out[f"b{rows}_d{depth}_h1"] = h4, h1
        if depth >= 512:
            win = gqa_us(4, rows, min(depth, 527), hd, t, n, window=512)
            out[f"b{rows}_d{depth}_window"] = win
            line += f"; windowed layer {win:5.0f} us"
        print(line, flush=True)
    for depth in (1024, 4096):
        out[f"fold_d{depth}"] = folded_us(depth, hd, t, n)
        print(f"4 heads folded into MatMul/Softmax over a Slice, {depth} keys: {out[f'fold_d{depth}']:.0f} us")
    print(f"onnxruntime={ort.__version__} " + " ".join(f"{k}_us={v:.0f}" for k, v in out.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
