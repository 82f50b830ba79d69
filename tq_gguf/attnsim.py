"""One-layer attention with a quantized K/V cache, for judging cache types.

The cache types go through their real codecs (gguf-py for q8_0/q4_0, this
package's reference codec for turbo2/turbo3); everything else is float64.
For turbo types with ``rotate=True`` the simulator does what the runtime does
by default: K and Q are rotated by the randomized Hadamard R (q·k unchanged
in exact arithmetic) before K is quantized, and V is rotated before it is
quantized and the output rotated back (attention weights are linear in V).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import rotation, turbo

CACHE_TYPES = ("f32", "f16", "q8_0", "q4_0", "turbo3", "turbo2")


@dataclass
class AttnResult:
    scores: np.ndarray  # [n_head, n_q, n_kv] pre-softmax (scaled), masked = -inf
    probs: np.ndarray   # [n_head, n_q, n_kv]
    out: np.ndarray     # [n_q, n_head, d]


def cache_roundtrip(x: np.ndarray, type_name: str) -> np.ndarray:
    """What a cache of ``type_name`` gives back for x [..., d] (rows along d), float32."""
    x = np.asarray(x, dtype=np.float32)
    if type_name == "f32":
        return x.copy()
    if type_name == "f16":
        return x.astype(np.float16).astype(np.float32)
    if type_name in ("q8_0", "q4_0"):
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize, quantize

        qt = GGMLQuantizationType.Q8_0 if type_name == "q8_0" else GGMLQuantizationType.Q4_0
        return dequantize(quantize(x, qt), qt).astype(np.float32)
    if type_name in turbo.TYPES:
        return turbo.roundtrip(x, type_name)
    raise ValueError(f"unknown cache type {type_name!r}; known: {CACHE_TYPES}")


def _softmax(s: np.ndarray) -> np.ndarray:
    m = np.max(s, axis=-1, keepdims=True)
    e = np.exp(s - m)
    return e / np.sum(e, axis=-1, keepdims=True)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, k_type: str = "f16",
              v_type: str = "f16", rotate: bool = True, causal: bool = True,
              kv_offset: int | None = None, scale: float | None = None,
              window: int | None = None) -> AttnResult:
    """Attention of q [n_q, n_head, d] over a k/v cache [n_kv, n_head_kv, d].

    GQA: query head h reads kv head h // (n_head // n_head_kv). Scale: ``scale``,
    default 1/sqrt(d). ``window``: llama.cpp's standard sliding window (a query
    does not see keys ``window`` or more positions back).
    Causal: query i sits at absolute position kv_offset + i (default
    n_kv - n_q, i.e. the queries are the last n_q tokens) and sees kv
    positions <= its own.
    """
    q = np.asarray(q, dtype=np.float32)
    k = np.asarray(k, dtype=np.float32)
    v = np.asarray(v, dtype=np.float32)
    if q.ndim != 3 or k.ndim != 3 or v.shape != k.shape:
        raise ValueError(f"want q [n_q, n_head, d], k = v [n_kv, n_head_kv, d]; "
                         f"got {q.shape}, {k.shape}, {v.shape}")
    n_q, n_head, d = q.shape
    n_kv, n_head_kv, dk = k.shape
    if dk != d or n_head % n_head_kv:
        raise ValueError(f"head size {d} vs {dk}, or n_head {n_head} not a multiple "
                         f"of n_head_kv {n_head_kv}")
    for t in (k_type, v_type):
        if t not in CACHE_TYPES:
            raise ValueError(f"unknown cache type {t!r}; known: {CACHE_TYPES}")

    rot_k = rotate and k_type in turbo.TYPES
    rot_v = rotate and v_type in turbo.TYPES
    qq = q.astype(np.float64)
    if rot_k:
        qq = rotation.rotate(qq)
        k = rotation.rotate(k).astype(np.float32)
    if rot_v:
        v = rotation.rotate(v).astype(np.float32)
    kh = cache_roundtrip(k, k_type).astype(np.float64)
    vh = cache_roundtrip(v, v_type).astype(np.float64)

    kv_head = np.arange(n_head) // (n_head // n_head_kv)
    kq = kh[:, kv_head, :]  # [n_kv, n_head, d]
    vq = vh[:, kv_head, :]
    scores = np.einsum("ihd,jhd->hij", qq, kq) * (1.0 / np.sqrt(d) if scale is None else scale)
    if causal:
        off = n_kv - n_q if kv_offset is None else int(kv_offset)
        if off < 0:
            raise ValueError(f"query 0 at position {off}: it would see no kv entries")
        pos_q = off + np.arange(n_q)
        mask = np.arange(n_kv)[None, :] > pos_q[:, None]  # [n_q, n_kv]
        if window:
            mask |= pos_q[:, None] - np.arange(n_kv)[None, :] >= window
        scores = np.where(mask[None], -np.inf, scores)
    probs = _softmax(scores)
    out = np.einsum("hij,jhd->ihd", probs, vq)
    if rot_v:
        out = rotation.unrotate(out)
    return AttnResult(scores=scores, probs=probs, out=out)


def kl_divergence(p_ref: np.ndarray, p: np.ndarray) -> float:
    """Mean over rows (all axes but the last) of KL(p_ref || p), natural log.

    Terms with p_ref == 0 contribute 0; p is floored at the smallest normal
    float64 so a zero where p_ref > 0 gives a large, finite penalty.
    """
    p_ref = np.asarray(p_ref, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    if p_ref.shape != p.shape:
        raise ValueError(f"shape mismatch: {p_ref.shape} vs {p.shape}")
    tiny = np.finfo(np.float64).tiny
    pos = p_ref > 0
    terms = np.where(pos, p_ref * (np.log(np.where(pos, p_ref, 1.0))
                                   - np.log(np.maximum(p, tiny))), 0.0)
    return float(np.mean(np.sum(terms, axis=-1)))
