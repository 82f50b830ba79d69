"""Tiny random Hugging Face checkpoints (config.json, safetensors, SentencePiece
tokenizer) for tests and for the demo's HF path. Nothing is downloaded: the
tokenizer is trained here on the given text.

The key projections get a few outlier channels (and qwen2 a large key bias), as
trained models have, so a calibration has something real to remove.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

# architecture -> (transformers config class, model class, config overrides)
ARCHS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM",
              dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=64, rope_theta=10000.0)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM",  # q/k/v projections carry a bias
              dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, rope_theta=1000000.0, use_sliding_window=False)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM",  # per-head q/k RMS norm
              dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=64, rope_theta=1000000.0)),
    "mistral": ("MistralConfig", "MistralForCausalLM",
                dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=1, head_dim=64, rope_theta=10000.0, sliding_window=None)),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM",  # head 256, five sliding layers then a global one
               dict(hidden_size=128, intermediate_size=256, num_hidden_layers=6, num_attention_heads=2,
                    num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256, sliding_window=32,
                    layer_types=["sliding_attention"] * 5 + ["full_attention"], rope_theta=1000000.0,
                    rope_local_base_freq=10000.0, final_logit_softcapping=None, attn_logit_softcapping=None)),
}


def train_tokenizer(text: str, out_dir: Path, vocab_size: int = 384) -> Path:
    """A byte-fallback SentencePiece BPE model (tokenizer.model) trained on ``text``."""
    import sentencepiece as spm
    out_dir.mkdir(parents=True, exist_ok=True)
    src = out_dir / "_train.txt"
    src.write_text(re.sub(r"([.!?]) +", r"\1\n", text))  # the trainer reads lines
    spm.SentencePieceTrainer.train(
        input=str(src), model_prefix=str(out_dir / "tokenizer"), vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        num_threads=1, minloglevel=2, train_extremely_large_corpus=False)
    src.unlink()
    (out_dir / "tokenizer.vocab").unlink(missing_ok=True)
    return out_dir / "tokenizer.model"


def write_tiny_hf(out_dir: Path, arch: str = "llama", text: str | None = None, seed: int = 0,
                  vocab_size: int = 384, outliers: float = 6.0) -> Path:
    """Write a random ``arch`` checkpoint with its tokenizer into ``out_dir``."""
    import torch
    import transformers

    if arch not in ARCHS:
        raise ValueError(f"tiny HF models exist for {', '.join(ARCHS)}, not {arch!r}")
    from .tinymodel import sample_text
    out_dir = Path(out_dir)
    train_tokenizer(text or sample_text(200_000, seed), out_dir, vocab_size)
    cfg_cls, model_cls, over = ARCHS[arch]
    cfg = getattr(transformers, cfg_cls)(vocab_size=vocab_size, max_position_embeddings=4096, rms_norm_eps=1e-6,
                                         bos_token_id=1, eos_token_id=2, pad_token_id=None, initializer_range=0.08,
                                         tie_word_embeddings=arch == "gemma3", torch_dtype="float32", **over)
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for layer in model.model.layers:
            att = layer.self_attn
            w = att.k_proj.weight  # rows: KV heads x head_dim
            d = att.head_dim
            for h in range(w.shape[0] // d):
                ch = torch.randperm(d, generator=g)[:4] + h * d
                w[ch] *= outliers
            if att.k_proj.bias is not None:
                att.k_proj.bias.copy_(torch.randn(att.k_proj.bias.shape, generator=g) * 2.0)
            for m in (getattr(att, "q_norm", None), getattr(att, "k_norm", None)):
                if m is not None:
                    m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.3 + (0 if arch == "gemma3" else 1))
    model.save_pretrained(out_dir, safe_serialization=True)
    (out_dir / "tokenizer_config.json").write_text(json.dumps(
        {"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
         "unk_token": "<unk>", "model_max_length": 4096}, indent=1))
    (out_dir / "README.md").write_text(f"Random-weight tiny {arch} checkpoint written by tq-gguf (tests only).\n")
    return out_dir
