"""Synthetic llama-architecture GGUF files of real model shapes, for speed runs.

Weights are random Q4_0 blocks (a fixed fp16 scale per block, random nibbles), so a
file of any size is written in seconds and no download is needed. Speed depends on the
shapes and types only; the outputs are meaningless. Written with gguf-py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

QK4_0, Q4_0_BYTES = 32, 18


@dataclass(frozen=True)
class Shape:
    name: str
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_vocab: int
    n_ctx_train: int = 131072
    rope_base: float = 500000.0

    @property
    def n_embd(self) -> int:
        return self.n_head * self.head_dim

    def n_params(self) -> int:
        d, hd = self.n_embd, self.head_dim
        per_layer = d * d * 2 + 2 * d * self.n_head_kv * hd + 3 * d * self.n_ff
        return self.n_layer * per_layer + 2 * self.n_vocab * d

    def kv_bytes_per_token_f16(self) -> int:
        return self.n_layer * 2 * self.n_head_kv * self.head_dim * 2


# named shapes (public configs of the models they are named after)
SHAPES: dict[str, Shape] = {s.name: s for s in [
    Shape("llama-8b", n_layer=32, n_head=32, n_head_kv=8, head_dim=128, n_ff=14336, n_vocab=128256),
    Shape("llama-3b", n_layer=28, n_head=24, n_head_kv=8, head_dim=128, n_ff=8192, n_vocab=128256),
    Shape("llama-1b", n_layer=16, n_head=32, n_head_kv=8, head_dim=64, n_ff=8192, n_vocab=128256),
    Shape("gemma-like-256", n_layer=18, n_head=8, n_head_kv=4, head_dim=256, n_ff=8192, n_vocab=32000),
    Shape("tiny", n_layer=2, n_head=4, n_head_kv=2, head_dim=64, n_ff=256, n_vocab=512, n_ctx_train=4096),
]}


def shape(name: str) -> Shape:
    try:
        return SHAPES[name]
    except KeyError:
        raise ValueError(f"unknown model shape {name!r}; known: {', '.join(SHAPES)}") from None


class _Q4Source:
    """Random Q4_0 bytes from one pool (speed runs need sizes, not distinct weights)."""

    def __init__(self, rng: np.random.Generator, pool_blocks: int = 1 << 20):
        self.pool = rng.integers(0, 256, size=(pool_blocks, Q4_0_BYTES), dtype=np.uint8)

    def matrix(self, rows: int, cols: int) -> np.ndarray:
        if cols % QK4_0:
            raise ValueError(f"Q4_0 rows need a multiple of {QK4_0} columns, got {cols}")
        nblk = rows * cols // QK4_0
        reps = -(-nblk // len(self.pool))
        blocks = np.tile(self.pool, (reps, 1))[:nblk] if reps > 1 else self.pool[:nblk].copy()
        # nibbles uniform in 0..15 -> (q - 8) * d has std ~4.6 d; aim at std 1/sqrt(cols)
        d = np.float16(1.0 / (4.6 * np.sqrt(cols)))
        blocks[:, :2] = np.frombuffer(d.tobytes(), dtype=np.uint8)
        return blocks.reshape(rows, cols // QK4_0 * Q4_0_BYTES)


def write_synthetic_llama(path: Path, shp: Shape, seed: int = 0, progress=None) -> Path:
    """Write a llama GGUF of shape ``shp`` with random Q4_0 weights to ``path``."""
    import gguf

    rng = np.random.default_rng(seed)
    src = _Q4Source(rng)
    d, hd = shp.n_embd, shp.head_dim
    Q4 = gguf.GGMLQuantizationType.Q4_0

    from .tinymodel import llama_writer
    w = llama_writer(path, f"tq-gguf synthetic {shp.name} (random Q4_0 weights)", shp, n_vocab=shp.n_vocab,
                     rope_base=shp.rope_base, file_type=gguf.LlamaFileType.MOSTLY_Q4_0)

    def q4(name, rows, cols):
        w.add_tensor(name, src.matrix(rows, cols), raw_dtype=Q4)

    def norm(name, n):
        w.add_tensor(name, np.ones(n, dtype=np.float32))

    q4("token_embd.weight", shp.n_vocab, d)
    norm("output_norm.weight", d)
    q4("output.weight", shp.n_vocab, d)
    for i in range(shp.n_layer):
        p = f"blk.{i}."
        norm(p + "attn_norm.weight", d)
        q4(p + "attn_q.weight", shp.n_head * hd, d)
        q4(p + "attn_k.weight", shp.n_head_kv * hd, d)
        q4(p + "attn_v.weight", shp.n_head_kv * hd, d)
        q4(p + "attn_output.weight", d, shp.n_head * hd)
        norm(p + "ffn_norm.weight", d)
        q4(p + "ffn_gate.weight", shp.n_ff, d)
        q4(p + "ffn_up.weight", shp.n_ff, d)
        q4(p + "ffn_down.weight", d, shp.n_ff)
        if progress:
            progress(i + 1, shp.n_layer)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path)
