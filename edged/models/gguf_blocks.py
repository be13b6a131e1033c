"""GGUF's quantized blocks in the forms ONNX Runtime's fast kernels read, value for value.

A GGUF weight of N rows of K values (ggml's shape [K, N]) is kept as the file quantized it,
never re-rounded: each block type maps onto MatMulNBits (and, for an embedding table, onto
GatherBlockQuantized) with the same integers and the same scales. Measured on the 270M's
tensors and on synthetic ones of every type (tests/test_gguf_blocks.py): `dequantize(form)`
equals gguf-py's dequantization bit for bit.

| GGUF | form |
|---|---|
| Q8_0 | 8 bits, block 32: stored q+128, scale d |
| Q5_0 | 8 bits, block 32: stored q+112 (q in 0..31, value q-16), scale d |
| Q4_0 | 4 bits, block 32: stored q (value q-8, MatMulNBits' own zero point), scale d |
| Q6_K | 8 bits, block 16: stored q+96 (q in 0..63, value q-32), scale d·sc |
| Q4_K | 4 bits, block 32: stored q, zero point 0, scale d·sc, minus dmin·m per block |
| Q5_K | 8 bits, block 32: stored q, zero point 0, scale d·sc, minus dmin·m per block |

The "minus dmin·m" of the K-quants with mins is what no MatMulNBits zero point can carry
exactly (an integer zero point would round it, a float one takes a slow path): it is applied
as `block sums of the input · offset`, a small extra MatMul (gguf_carry.py). Other types
(Q2_K, Q3_K, IQ*, …) have no exact form here: `to_form` returns None and the caller falls back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

QK_K = 256
Q8_0, Q4_0, Q5_0, Q4_K, Q5_K, Q6_K = "Q8_0", "Q4_0", "Q5_0", "Q4_K", "Q5_K", "Q6_K"
FLOATS = ("F32", "F16", "BF16")


@dataclass
class NBitsForm:
    """A [N, K] weight as MatMulNBits reads it (B is [N, k_blocks, block*bits/8])."""

    bits: int
    block: int
    packed: np.ndarray  # uint8 [N, k_blocks, block * bits // 8]
    scales: np.ndarray  # float32 [N, k_blocks]
    zero_points: Optional[np.ndarray] = None  # uint8: [N, k_blocks] (8 bits) or [N, ceil(k_blocks/2)] (4 bits)
    offsets: Optional[np.ndarray] = None  # float32 [N, k_blocks]: subtracted per block (dmin·m)

    @property
    def shape(self) -> tuple[int, int]:
        n, k_blocks, _ = self.packed.shape
        return n, k_blocks * self.block


def _f16(raw: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(raw).view(np.float16).astype(np.float32)


def pack4(q: np.ndarray) -> np.ndarray:
    """uint8 values 0..15, [..., 2m] -> [..., m] with the even element in the low nibble."""
    return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)


def _unpack4(packed: np.ndarray) -> np.ndarray:
    out = np.empty(packed.shape[:-1] + (packed.shape[-1] * 2,), dtype=np.uint8)
    out[..., 0::2] = packed & 0x0F
    out[..., 1::2] = packed >> 4
    return out


def _k_scale_min(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 6-bit scales and mins of the 8 sub-blocks of a Q4_K/Q5_K super-block (12 bytes)."""
    s = scales.reshape(-1, 3, 4)
    d, m, md = s[:, 0], s[:, 1], s[:, 2]
    sc = np.concatenate([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], axis=-1)
    mn = np.concatenate([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], axis=-1)
    return sc, mn


def _rows(data: np.ndarray, n: int, k: int, block_bytes: int, block_values: int) -> np.ndarray:
    """GGUF's row-major blocks as [N, blocks per row, bytes per block]."""
    return np.ascontiguousarray(data).reshape(n, k // block_values, block_bytes)


def to_form(kind: str, data: np.ndarray, n: int, k: int) -> Optional[NBitsForm]:
    """The MatMulNBits form of one GGUF tensor (`data`: its raw bytes as GGUFReader gives them)."""
    if kind == Q8_0:
        b = _rows(data, n, k, 34, 32)
        q = b[..., 2:].view(np.int8).astype(np.int16) + 128
        return NBitsForm(8, 32, q.astype(np.uint8), _f16(b[..., :2]).reshape(n, -1))
    if kind == Q5_0:
        b = _rows(data, n, k, 22, 32)
        qh = np.ascontiguousarray(b[..., 2:6]).view(np.uint32).reshape(n, -1, 1)
        high = ((qh >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8)
        qs = b[..., 6:]
        low = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)
        q5 = low | (high << 4)
        return NBitsForm(8, 32, (q5 + 112).astype(np.uint8), _f16(b[..., :2]).reshape(n, -1))
    if kind == Q4_0:
        b = _rows(data, n, k, 18, 32)
        qs = b[..., 2:]
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)
        return NBitsForm(4, 32, pack4(q), _f16(b[..., :2]).reshape(n, -1))
    if kind == Q6_K:
        b = _rows(data, n, k, 210, QK_K)
        ql, qh, sc, d = b[..., :128], b[..., 128:192], b[..., 192:208], b[..., 208:210]
        ql = ql.reshape(n, -1, 2, 1, 64)  # two halves of 128 values, each from 64 bytes
        low = np.concatenate([ql & 0x0F, ql >> 4], axis=-2).reshape(n, -1, 2, 128)
        qh = qh.reshape(n, -1, 2, 1, 32)
        high = np.concatenate([(qh >> s) & 3 for s in (0, 2, 4, 6)], axis=-2).reshape(n, -1, 2, 128)
        q6 = (low | (high << 4)).reshape(n, -1, 16, 16)
        scales = _f16(d).reshape(n, -1, 1) * sc.view(np.int8).astype(np.float32).reshape(n, -1, 16)
        return NBitsForm(8, 16, (q6 + 96).astype(np.uint8).reshape(n, -1, 16), scales.reshape(n, -1))
    if kind in (Q4_K, Q5_K):
        size = 144 if kind == Q4_K else 176
        b = _rows(data, n, k, size, QK_K)
        d, dmin = _f16(b[..., 0:2]), _f16(b[..., 2:4])
        sc, mn = _k_scale_min(b[..., 4:16].reshape(-1, 12))
        scales = (d.reshape(-1, 1) * sc.astype(np.float32)).reshape(n, -1)
        offsets = (dmin.reshape(-1, 1) * mn.astype(np.float32)).reshape(n, -1)
        if kind == Q4_K:
            qs = b[..., 16:].reshape(n, -1, 4, 1, 32)  # four pairs of sub-blocks, 32 bytes each
            q = np.concatenate([qs & 0x0F, qs >> 4], axis=-2).reshape(n, -1, 32)
            zero = np.zeros((n, (q.shape[1] + 1) // 2), dtype=np.uint8)
            return NBitsForm(4, 32, pack4(q), scales, zero, offsets)
        hb = b[..., 16:48].reshape(n, -1, 1, 32)
        high = np.concatenate([(hb >> s) & 1 for s in range(8)], axis=-2).reshape(n, -1, 8, 32)
        qs = b[..., 48:].reshape(n, -1, 4, 1, 32)
        low = np.concatenate([qs & 0x0F, qs >> 4], axis=-2).reshape(n, -1, 8, 32)
        q5 = (low | (high << 4)).reshape(n, -1, 32)
        return NBitsForm(8, 32, q5.astype(np.uint8), scales, np.zeros((n, q5.shape[1]), dtype=np.uint8), offsets)
    return None


def dequantize(form: NBitsForm) -> np.ndarray:
    """[N, K] float32, computed as the kernels define it: (q - zero point) · scale - offset."""
    n, k = form.shape
    q = _unpack4(form.packed) if form.bits == 4 else form.packed
    q = q.reshape(n, -1, form.block).astype(np.float32)
    if form.zero_points is None:
        zp = np.float32(2 ** (form.bits - 1))
    else:
        zps = _unpack4(form.zero_points)[:, : q.shape[1]] if form.bits == 4 else form.zero_points
        zp = zps.astype(np.float32).reshape(n, -1, 1)
    w = form.scales.reshape(n, -1, 1) * (q - zp)
    if form.offsets is not None:
        w = w - form.offsets.reshape(n, -1, 1)
    return w.reshape(n, k)


def float_weight(kind: str, data: np.ndarray, n: int, k: int) -> np.ndarray:
    """An F32/F16/BF16 tensor as float32 [N, K] (exact)."""
    if kind == "F32":
        return np.ascontiguousarray(data).view(np.float32).reshape(n, k)
    if kind == "F16":
        return np.ascontiguousarray(data).view(np.float16).astype(np.float32).reshape(n, k)
    bits = np.ascontiguousarray(data).view(np.uint16).astype(np.uint32) << 16
    return bits.view(np.float32).reshape(n, k)
