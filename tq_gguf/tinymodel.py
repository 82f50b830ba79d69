"""Tiny random-weight llama GGUF files for tests (written with gguf-py).

No download: the vocabulary is SentencePiece-style byte fallback (259 tokens),
so any UTF-8 text tokenizes, one token per byte.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class TinyShape:
    n_layer: int = 2
    n_head: int = 4
    n_head_kv: int = 2
    head_dim: int = 64
    n_ff: int = 256
    n_ctx_train: int = 4096

    @property
    def n_embd(self) -> int:
        return self.n_head * self.head_dim


def byte_vocab() -> tuple[list[str], list[float], list[int]]:
    from gguf import TokenType
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    scores = [0.0] * len(tokens)
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL] + [TokenType.BYTE] * 256
    return tokens, scores, [int(t) for t in types]


def llama_writer(path, name: str, shape, *, n_vocab: int, rope_base: float, file_type):
    """A GGUFWriter with the llama hyper-parameters of ``shape`` (n_layer, n_head, n_head_kv,
    head_dim, n_ff, n_ctx_train, n_embd) and the byte-fallback vocabulary, padded with
    unused pieces up to ``n_vocab``. The caller adds the tensors."""
    import gguf

    tokens, scores, types = byte_vocab()
    extra = n_vocab - len(tokens)
    if extra < 0:
        raise ValueError(f"n_vocab must be at least {len(tokens)}")
    tokens = tokens + [f"<unused{i}>" for i in range(extra)]
    scores = scores + [0.0] * extra
    types = types + [int(gguf.TokenType.UNUSED)] * extra

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(name)
    w.add_context_length(shape.n_ctx_train)
    w.add_embedding_length(shape.n_embd)
    w.add_block_count(shape.n_layer)
    w.add_feed_forward_length(shape.n_ff)
    w.add_head_count(shape.n_head)
    w.add_head_count_kv(shape.n_head_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(shape.head_dim)
    w.add_rope_freq_base(rope_base)
    w.add_vocab_size(n_vocab)
    w.add_file_type(file_type)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    return w


def write_tiny_llama(path: Path, shape: TinyShape = TinyShape(), seed: int = 0,
                     dtype=np.float16) -> Path:
    """Write a llama-architecture GGUF with random weights to ``path``."""
    import gguf

    rng = np.random.default_rng(seed)
    n_vocab, d, hd = len(byte_vocab()[0]), shape.n_embd, shape.head_dim

    w = llama_writer(path, "tq-gguf tiny random llama", shape, n_vocab=n_vocab, rope_base=10000.0,
                     file_type=gguf.LlamaFileType.MOSTLY_F16 if dtype == np.float16 else gguf.LlamaFileType.ALL_F32)

    def mat(rows, cols, scale=None):
        s = scale if scale is not None else 1.0 / np.sqrt(cols)
        return (rng.standard_normal((rows, cols)) * s).astype(dtype)

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    w.add_tensor("token_embd.weight", mat(n_vocab, d, 1.0))
    w.add_tensor("output_norm.weight", norm(d))
    w.add_tensor("output.weight", mat(n_vocab, d))
    for i in range(shape.n_layer):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", norm(d))
        w.add_tensor(p + "attn_q.weight", mat(shape.n_head * hd, d))
        w.add_tensor(p + "attn_k.weight", mat(shape.n_head_kv * hd, d))
        w.add_tensor(p + "attn_v.weight", mat(shape.n_head_kv * hd, d))
        w.add_tensor(p + "attn_output.weight", mat(d, shape.n_head * hd))
        w.add_tensor(p + "ffn_norm.weight", norm(d))
        w.add_tensor(p + "ffn_gate.weight", mat(shape.n_ff, d))
        w.add_tensor(p + "ffn_up.weight", mat(shape.n_ff, d))
        w.add_tensor(p + "ffn_down.weight", mat(d, shape.n_ff))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path)


def sample_text(n_bytes: int, seed: int = 0) -> str:
    """Deterministic English-like filler text of at least ``n_bytes`` bytes."""
    words = ("the cache keeps keys and values of every token so that attention can read them "
             "again when the next token is decoded a smaller cache means longer contexts fit "
             "in memory and decoding reads fewer bytes per step").split()
    rng = np.random.default_rng(seed)
    out, size = [], 0
    while size < n_bytes:
        sent = " ".join(words[j] for j in rng.integers(0, len(words), rng.integers(6, 16)))
        sent = sent.capitalize() + ". "
        out.append(sent)
        size += len(sent)
    return "".join(out)
