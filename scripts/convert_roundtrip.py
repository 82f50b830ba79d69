#!/usr/bin/env python3
"""`tq-gguf convert` on trained weights, offline: a real llama GGUF (default: the demo's
SmolLM2-135M) is written back as a Hugging Face folder (weights dequantized to f32, Q/K rows
un-permuted, config from the metadata, tokenizer.json rebuilt from the GGUF vocabulary with
`tokenizers`), then converted again with `tq-gguf convert`. Prints:

- whether the converter recognised the rebuilt tokenizer (its pre-tokenizer hash) and whether
  both GGUFs tokenize the text identically;
- logits of the converted f32 GGUF against transformers on the same weights (KLD, top-1);
- HF-space capture (mapped to llama.cpp's channel order) against the runtime's own capture.

    python scripts/convert_roundtrip.py [--model M.gguf] [--text T.txt] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tq_gguf.bindings import load_first

load_first()
import numpy as np  # noqa: E402

HF_NAMES = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
            "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
            "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
            "ffn_down": "mlp.down_proj"}


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of the converter's Q/K row permutation (rope pairs (2i, 2i+1) -> (i, i + d/2))."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_to_hf(src: Path, out: Path) -> dict:
    import gguf
    import torch
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    r = gguf.GGUFReader(str(src))
    f = r.fields
    arch = f["general.architecture"].contents()
    if arch != "llama" or f["tokenizer.ggml.model"].contents() != "gpt2":
        sys.exit(f"{src}: this script rebuilds llama models with a BPE (gpt2) vocabulary only")

    def kv(k):
        return f[f"{arch}.{k}"].contents()

    n_head, n_kv = int(kv("attention.head_count")), int(kv("attention.head_count_kv"))
    tensors, tied = {}, True
    for t in r.tensors:
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        name = t.name.removesuffix(".weight")
        if name == "token_embd":
            key = "model.embed_tokens"
        elif name == "output_norm":
            key = "model.norm"
        elif name == "output":
            key, tied = "lm_head", False
        else:
            _, il, part = name.split(".", 2)
            key = f"model.layers.{il}.{HF_NAMES[part]}"
            if part == "attn_q":
                w = unpermute(w, n_head)
            elif part == "attn_k":
                w = unpermute(w, n_kv)
        tensors[key + ".weight"] = torch.from_numpy(np.ascontiguousarray(w))
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    n_embd = int(kv("embedding_length"))
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": n_embd,
           "intermediate_size": int(kv("feed_forward_length")), "num_hidden_layers": int(kv("block_count")),
           "num_attention_heads": n_head, "num_key_value_heads": n_kv, "head_dim": n_embd // n_head,
           "rope_theta": float(kv("rope.freq_base")), "rms_norm_eps": float(kv("attention.layer_norm_rms_epsilon")),
           "max_position_embeddings": int(kv("context_length")), "vocab_size": len(f["tokenizer.ggml.tokens"].data),
           "tie_word_embeddings": tied, "hidden_act": "silu", "torch_dtype": "float32",
           "bos_token_id": int(f["tokenizer.ggml.bos_token_id"].contents()),
           "eos_token_id": int(f["tokenizer.ggml.eos_token_id"].contents())}
    (out / "config.json").write_text(json.dumps(cfg, indent=1))

    tokens = f["tokenizer.ggml.tokens"].contents()
    types = f["tokenizer.ggml.token_type"].contents()
    merges = [tuple(m.split(" ", 1)) for m in f["tokenizer.ggml.merges"].contents()]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    from tokenizers import AddedToken
    tok.add_special_tokens([AddedToken(t, special=True) for t, ty in zip(tokens, types)
                            if ty == int(gguf.TokenType.CONTROL)])
    tok.save(str(out / "tokenizer.json"))
    bos, eos = tokens[cfg["bos_token_id"]], tokens[cfg["eos_token_id"]]
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "GPT2Tokenizer", "bos_token": bos, "eos_token": eos, "add_bos_token": False,
         "model_max_length": cfg["max_position_embeddings"]}, indent=1))
    return cfg


def main() -> int:
    from tq_gguf import assets, runtime
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--text", type=Path, default=None)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--keep", type=Path, default=None, help="keep the HF folder and converted GGUF here")
    a = ap.parse_args()
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    src = a.model or assets.smollm2(log)
    text = (a.text or assets.handbook_text(log)["test"]).read_text()
    work = a.keep or Path(tempfile.mkdtemp(prefix="tq-roundtrip-"))
    hf, conv = work / "hf", work / "converted.f32.gguf"
    t0 = time.time()
    cfg = gguf_to_hf(src, hf)
    print(f"HF folder from {src.name}: {cfg['num_hidden_layers']} layers, {cfg['num_attention_heads']}/"
          f"{cfg['num_key_value_heads']} heads ({time.time() - t0:.0f} s)")
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "tq_gguf", "convert", str(hf), "-o", str(conv), "--outtype", "f32"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        print(r.stderr[-3000:])
        return 1
    print(f"tq-gguf convert --outtype f32: {time.time() - t0:.0f} s")
    import gguf
    print(f"  tokenizer.ggml.pre = {gguf.GGUFReader(str(conv)).fields['tokenizer.ggml.pre'].contents()!r} "
          f"(original {gguf.GGUFReader(str(src)).fields['tokenizer.ggml.pre'].contents()!r})")

    m0, m1 = runtime.Model(src), runtime.Model(conv)
    t_src, t_conv = m0.tokenize(text[:200_000], add_bos=False), m1.tokenize(text[:200_000], add_bos=False)
    print(f"  tokenization of {len(t_src)} tokens identical: {t_src == t_conv}")
    m0.close()
    toks = t_conv[:a.tokens]
    s = runtime.Session(m1, n_ctx=a.tokens, n_batch=a.tokens, type_k="f32", type_v="f32")
    got = np.array(s.decode(toks, 0, all_logits=True), np.float64)
    s.close()
    import torch
    import transformers
    model = transformers.AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = model(torch.tensor([toks])).logits[0].double().numpy()
    kld = runtime.kld(ref, got)
    print(f"logits, converted f32 GGUF vs transformers ({len(toks)} tokens): KLD {kld:.2e}, "
          f"max |diff| / s.d. {np.abs(got - ref).max() / ref.std():.2e}, "
          f"same top-1 {(got.argmax(1) == ref.argmax(1)).mean() * 100:.1f}%")

    from tq_gguf.calib.capture import Capture
    from tq_gguf.calib.hfcapture import capture_hf
    seqs = [t_conv[i * 256:(i + 1) * 256] for i in range(4)]
    cap = Capture(m1, n_ctx=256)
    a_st = cap.run(seqs)
    cap.close()
    m1.close()
    b_st = capture_hf(hf, seqs, interleave=True, q_prescaled=False)
    worst = {n: 0.0 for n in ("K mean", "K cov", "E[qq']", "V cov")}
    raw = capture_hf(hf, seqs[:1], interleave=False, q_prescaled=False)
    for il in a_st:
        x, y = a_st[il], b_st[il]
        for n, p, q in (("K mean", x.k_mean(), y.k_mean()), ("K cov", x.k_cov(), y.k_cov()),
                        ("E[qq']", x.q_second(), y.q_second()), ("V cov", x.v_cov(), y.v_cov())):
            worst[n] = max(worst[n], float(np.abs(p - q).max() / np.abs(p).max()))
    unmapped = float(np.abs(a_st[0].k_cov() - raw[0].k_cov()).max() / np.abs(a_st[0].k_cov()).max())
    print(f"HF-space capture vs runtime capture, {len(a_st)} layers, worst max-relative difference: "
          + ", ".join(f"{n} {v:.1e}" for n, v in worst.items()) + f" (without the channel map: K cov {unmapped:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
