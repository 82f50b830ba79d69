"""Reference codec for the turbo2 / turbo3 KV-cache types (numpy only).

This module is the single source of truth that the C and CUDA kernels are
tested against byte for byte, so the arithmetic below follows a fixed order:
float64 accumulation in index order (``np.cumsum`` is sequential; ``np.sum``
is pairwise and would round differently), strict ``>`` against the float64
thresholds, and float64 -> float32 -> fp16 (round-to-nearest-even) for the
scale.

Block layouts (little-endian, packed, QK = 64 values per block):

    turbo3, 26 bytes = 3.25 bits/value        turbo2, 18 bytes = 2.25 bits/value
        uint16 d       fp16 scale                 uint16 d       fp16 scale
        uint8  qs[16]  low 2 bits of idx          uint8  qs[16]  2-bit idx
        uint8  qh[8]   high bit of idx

    value j:  qs[j % 16] |= (idx & 3) << (2 * (j // 16))
              qh[j % 8]  |= (idx >> 2) << (j // 8)          (turbo3 only)

Decoding is y[j] = f32(d) * c[idx[j]] in float32, c the pinned codebook.
The scale d makes the decoded block unbiased along the input: <y, x> = |x|^2
(up to fp16 rounding of d), i.e. d = |x|^2 / <c[idx], x>. Quantization error
shrinks a block's projection on itself (|y_ls| = sqrt(1 - D)|x| for the
least-squares scale); keys and values whose reconstruction keeps their own
component whole give attention logits and outputs without that shrinkage
(measured: docs/results/calib/scale/README.md). A block whose coordinates
all have the same magnitude is stored exactly, as with the norm rule
d = |x| / |c[idx]| it replaces. d is capped at SCALE_CAP times the norm rule,
which only binds for blocks far from Gaussian (one spike among zeros would
otherwise decode 2.6x longer at turbo2; Gaussian blocks stay under 1.19x).
Blocks with an infinite sum of squares keep the norm rule (clamped to the
fp16 maximum).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .codebook import QK, codebook, thresholds

FP16_MAX = 65504.0
SCALE_CAP = 1.25   # d <= SCALE_CAP * |x| / |c[idx]|

BLOCK_TURBO3 = np.dtype([("d", "<u2"), ("qs", "u1", (QK // 4,)), ("qh", "u1", (QK // 8,))])
BLOCK_TURBO2 = np.dtype([("d", "<u2"), ("qs", "u1", (QK // 4,))])


@dataclass(frozen=True)
class TypeInfo:
    name: str
    block_size: int
    type_size: int
    levels: int

    @property
    def bits_per_value(self) -> float:
        return self.type_size * 8 / self.block_size

    @property
    def dtype(self) -> np.dtype:
        return BLOCK_TURBO3 if self.levels == 8 else BLOCK_TURBO2


TYPES: dict[str, TypeInfo] = {
    "turbo3": TypeInfo("turbo3", block_size=QK, type_size=BLOCK_TURBO3.itemsize, levels=8),
    "turbo2": TypeInfo("turbo2", block_size=QK, type_size=BLOCK_TURBO2.itemsize, levels=4),
}
assert TYPES["turbo3"].type_size == 26 and TYPES["turbo2"].type_size == 18


def type_info(type_name: str) -> TypeInfo:
    try:
        return TYPES[type_name]
    except KeyError:
        raise ValueError(f"unknown turbo type {type_name!r}; known: {sorted(TYPES)}") from None


def _check_n(n: int) -> int:
    if n <= 0 or n % QK:
        raise ValueError(f"row length must be a positive multiple of {QK}, got {n}")
    return n // QK


def bytes_per_row(type_name: str, n: int) -> int:
    return _check_n(n) * type_info(type_name).type_size


# --- quantization (indices + scales) -------------------------------------------------


def quantize_blocks(x: np.ndarray, type_name: str) -> tuple[np.ndarray, np.ndarray]:
    """Quantize blocks x[..., 64] (float32) -> (idx uint8 [..., 64], d float16 [...])."""
    info = type_info(type_name)
    x = np.asarray(x, dtype=np.float32)
    if x.shape[-1:] != (QK,):
        raise ValueError(f"blocks must have {QK} values on the last axis, got shape {x.shape}")
    L = info.levels
    t = thresholds(type_name)                      # float64 [L-1]
    c = codebook(type_name).astype(np.float64)     # float32 table promoted

    x64 = x.astype(np.float64)
    with np.errstate(all="ignore"):
        # sequential float64 sum of squares (cumsum is sequential, sum is not)
        ss = np.cumsum(x64 * x64, axis=-1)[..., -1]
        ok = ss > 0                                 # False for zero blocks and NaN
        n = np.sqrt(np.where(ok, ss, 1.0))
        inv = 8.0 / n                               # sqrt(QK): coordinates ~ unit variance
        y = x64 * inv[..., None]
        idx = np.zeros(y.shape, dtype=np.uint8)
        for tk in t:                                # idx = #{k : y > t[k]}, strict
            idx += y > tk
        idx[~ok] = L // 2

        cv = c[idx]
        rr = np.cumsum(cv * cv, axis=-1)[..., -1]  # > 0 always: no zero centroid
        xc = np.cumsum(x64 * cv, axis=-1)[..., -1]  # > 0 for a finite nonzero block: sign(c[idx]) = sign(x)
        sn = n / np.sqrt(rr)                        # the norm rule
        sp = ss / np.where(xc > 0, xc, 1.0)
        cap = SCALE_CAP * sn
        s = np.where(ss < np.inf, np.where(sp < cap, sp, cap), sn)
        sf = s.astype(np.float32)
        sf = np.where(sf > FP16_MAX, np.float32(FP16_MAX), sf)  # also catches +inf
        sf = np.where(ok, sf, np.float32(0.0))
        d = sf.astype(np.float16)                   # round-to-nearest-even
    return idx, d


def dequantize_blocks(idx: np.ndarray, d: np.ndarray, type_name: str) -> np.ndarray:
    """y[..., j] = float32(d) * float32(c[idx[..., j]]), in float32."""
    c = codebook(type_name)
    d32 = np.asarray(d, dtype=np.float16).astype(np.float32)
    return d32[..., None] * c[np.asarray(idx)]


# --- byte layout ---------------------------------------------------------------------


def pack_indices(idx: np.ndarray, d: np.ndarray, type_name: str) -> np.ndarray:
    """Pack idx [..., n] (ints < levels) and d [..., n/64] (fp16 values) into bytes.

    Returns uint8 [..., n/64 * type_size].
    """
    info = type_info(type_name)
    idx = np.asarray(idx)
    nb = _check_n(idx.shape[-1])
    lead = idx.shape[:-1]
    if np.any(idx < 0) or np.any(idx >= info.levels):
        raise ValueError(f"{type_name} indices must be in [0, {info.levels})")
    idx = idx.astype(np.uint8).reshape(-1, nb, QK)
    d = np.asarray(d, dtype=np.float16).reshape(-1, nb)
    if d.shape[0] != idx.shape[0]:
        raise ValueError(f"d has shape {np.shape(d)}, expected {lead + (nb,)}")

    blk = np.zeros(idx.shape[:2], dtype=info.dtype)
    blk["d"] = d.view(np.uint16)
    # j = 16*g + i  ->  qs[i] |= (idx & 3) << 2g
    lo = (idx & 3).reshape(*idx.shape[:2], 4, 16)
    shifts = np.arange(4, dtype=np.uint8)[:, None] * 2
    blk["qs"] = np.bitwise_or.reduce(lo << shifts, axis=-2)
    if info.levels == 8:
        # j = 8*g + i  ->  qh[i] |= (idx >> 2) << g
        hi = (idx >> 2).reshape(*idx.shape[:2], 8, 8)
        blk["qh"] = np.bitwise_or.reduce(hi << np.arange(8, dtype=np.uint8)[:, None], axis=-2)
    return blk.view(np.uint8).reshape(*lead, nb * info.type_size)


def unpack_indices(data: np.ndarray, type_name: str) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of pack_indices: uint8 [..., nb*type_size] -> (idx uint8 [..., nb*64], d float16 [..., nb])."""
    info = type_info(type_name)
    data = np.ascontiguousarray(data, dtype=np.uint8)
    nbytes = data.shape[-1]
    if nbytes == 0 or nbytes % info.type_size:
        raise ValueError(f"{type_name} row of {nbytes} bytes is not a multiple of {info.type_size}")
    nb = nbytes // info.type_size
    lead = data.shape[:-1]
    blk = data.reshape(-1, nb * info.type_size).view(info.dtype)  # [rows, nb]
    d = blk["d"].view(np.float16)
    shifts = np.arange(4, dtype=np.uint8)[:, None] * 2
    idx = (blk["qs"][:, :, None, :] >> shifts) & 3                 # [rows, nb, 4, 16]
    idx = idx.reshape(*blk.shape, QK)
    if info.levels == 8:
        hi = (blk["qh"][:, :, None, :] >> np.arange(8, dtype=np.uint8)[:, None]) & 1
        idx = idx | (hi.reshape(*blk.shape, QK) << 2)
    return idx.reshape(*lead, nb * QK), d.reshape(*lead, nb)


# --- rows ----------------------------------------------------------------------------


def quantize_rows(x: np.ndarray, type_name: str) -> np.ndarray:
    """float32 [..., n] -> uint8 [..., n/64 * type_size]."""
    type_info(type_name)
    x = np.asarray(x, dtype=np.float32)
    nb = _check_n(x.shape[-1])
    idx, d = quantize_blocks(x.reshape(*x.shape[:-1], nb, QK), type_name)
    return pack_indices(idx.reshape(x.shape), d, type_name)


def dequantize_rows(data: np.ndarray, type_name: str, n: int) -> np.ndarray:
    """uint8 [..., n/64 * type_size] -> float32 [..., n]."""
    info = type_info(type_name)
    nb = _check_n(n)
    data = np.asarray(data, dtype=np.uint8)
    if data.shape[-1] != nb * info.type_size:
        raise ValueError(f"{type_name} row of n={n} needs {nb * info.type_size} bytes, "
                         f"got {data.shape[-1]}")
    idx, d = unpack_indices(data, type_name)
    y = dequantize_blocks(idx.reshape(*idx.shape[:-1], nb, QK), d, type_name)
    return y.reshape(*data.shape[:-1], n)


def roundtrip(x: np.ndarray, type_name: str) -> np.ndarray:
    """dequantize(quantize(x)) for float32 [..., n]."""
    x = np.asarray(x, dtype=np.float32)
    return dequantize_rows(quantize_rows(x, type_name), type_name, x.shape[-1])
