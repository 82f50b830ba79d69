"""RoPE as llama.cpp applies it, for the positional key offset.

A key's constant pre-RoPE part m becomes RoPE(pos, m) after RoPE; the offset
(`turbo.layer.N.k.pos_mean`, patch 0011) stores k - RoPE(pos, m) and the runtime
adds q.RoPE(pos_j, m) back to the logits with the model's own RoPE. Calibration
needs the same rotation to fit m and the statistics of what is left: this module
gives each layer's angles per position and the channel pairs they rotate.

Only plain RoPE is modelled (norm or neox layout, a base per layer, linear
scaling); anything else (YaRN, frequency-factor tensors, M-RoPE) returns None with
the reason, and calibrate leaves the offset out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# llama.cpp's RoPE layout per architecture (llama_model_rope_type): "norm" rotates the
# channel pairs (2i, 2i+1), "neox" the pairs (i, i + n_rot/2)
ROPE_LAYOUT = {"llama": "norm", "mistral3": "norm", "granite": "norm",
               "qwen2": "neox", "qwen3": "neox", "olmo2": "neox", "phi3": "neox", "gemma3": "neox"}


@dataclass(frozen=True)
class RopeLayer:
    layout: str          # "norm" | "neox"
    n_rot: int           # rotated channels (the first n_rot; the rest are not rotated)
    theta: np.ndarray    # [n_rot/2] angle per position of pair i

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """Channel indices (x0, x1) of the rotated pairs, pair i turning by theta[i] per position."""
        if self.layout == "norm":
            return np.arange(0, self.n_rot, 2), np.arange(1, self.n_rot, 2)
        h = self.n_rot // 2
        return np.arange(h), np.arange(h, self.n_rot)

    def apply(self, x: np.ndarray, pos: np.ndarray, inverse: bool = False) -> np.ndarray:
        """RoPE of x [T, ..., d] at positions pos [T] (inverse: rotate back)."""
        i0, i1 = self.pairs()
        ang = np.asarray(pos, np.float64)[:, None] * self.theta[None, :]
        ang = ang.reshape(ang.shape[:1] + (1,) * (x.ndim - 2) + ang.shape[1:])
        c, s = np.cos(ang), np.sin(ang) * (-1.0 if inverse else 1.0)
        out = np.array(x, dtype=np.float64, copy=True)
        out[..., i0] = x[..., i0] * c - x[..., i1] * s
        out[..., i1] = x[..., i0] * s + x[..., i1] * c
        return out


def rope_theta(n_rot: int, base: float, freq_scale: float = 1.0) -> np.ndarray:
    """Angle per position of each rotated pair, as llama.cpp's RoPE computes it."""
    return freq_scale * base ** (-np.arange(n_rot // 2) * 2.0 / n_rot)


def from_gguf(path, n_layer: int, d_k: int) -> tuple[list[RopeLayer] | None, str]:
    """Every layer's RoPE, or (None, why not) when it is not plain RoPE."""
    import gguf
    r = gguf.GGUFReader(str(path))
    f = r.fields
    arch = f["general.architecture"].contents()

    def get(key, default=None):
        fld = f.get(f"{arch}.{key}")
        return fld.contents() if fld is not None else default

    layout = ROPE_LAYOUT.get(arch)
    if layout is None:
        return None, f"no RoPE layout known for '{arch}'"
    if any(t.name.startswith("rope_freqs") for t in r.tensors):
        return None, "the model scales RoPE frequencies with a tensor (rope_freqs)"
    kind = get("rope.scaling.type", "none")
    factor = float(get("rope.scaling.factor", 1.0) or 1.0)
    if kind not in ("none", "linear") and factor != 1.0:
        return None, f"RoPE scaling '{kind}' is not modelled"
    freq_scale = 1.0 / factor if kind == "linear" else 1.0
    n_rot = int(get("rope.dimension_count", d_k))
    if n_rot % 2 or n_rot > d_k:
        return None, f"rope.dimension_count {n_rot} does not fit head size {d_k}"
    base = float(get("rope.freq_base", 10000.0))
    glob = RopeLayer(layout, n_rot, rope_theta(n_rot, base, freq_scale))
    if arch == "gemma3" and get("attention.sliding_window"):
        # llama.cpp: every 6th layer global, the others local with base 10000 and no scaling
        pattern = int(get("attention.sliding_window_pattern", 6))
        local = RopeLayer(layout, n_rot, rope_theta(n_rot, float(get("rope.freq_base_swa", 10000.0)), 1.0))
        return [local if il % pattern < pattern - 1 else glob for il in range(n_layer)], ""
    return [glob] * n_layer, ""
