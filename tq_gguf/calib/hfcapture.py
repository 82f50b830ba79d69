"""Q, K and V statistics captured through transformers, mapped to llama.cpp's layout.

The same moments as capture.py, taken from the Hugging Face checkpoint instead
of the GGUF (full-precision weights; any device torch has). An attention
function registered with transformers sees Q/K post-norm and post-RoPE and V,
exactly where the runtime names them ``tq_q/tq_k/tq_v``. Two things differ
from llama.cpp and are mapped here (the table in convert.ARCHS says which):

- channel order: for rope-"normal" architectures (llama, mistral) the converter
  permutes Q/K rows so that HF's rotate-half pairs (i, i + d/2) become llama.cpp's
  adjacent pairs (2i, 2i + 1); the captured vectors are permuted the same way;
- Q scale: some architectures (gemma3) scale Q in the graph before attention,
  where HF passes the scale to the attention function instead.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from .capture import LayerStats

IMPL = "tq_capture"


@functools.lru_cache(maxsize=None)
def rope_interleave(d: int) -> np.ndarray:
    """Index map P with x_llama = x_hf[P]: llama.cpp channel 2i + j is HF channel j*d/2 + i."""
    half = d // 2
    return np.array([j * half + i for i in range(half) for j in (0, 1)])


def capture_hf(hf_dir: Path, seqs: list[list[int]], interleave: bool, q_prescaled: bool, skip: int = 1,
               device: str = "cpu", progress=None) -> dict[int, LayerStats]:
    """Run ``seqs`` (token ids, one forward pass each) through the HF model and accumulate
    per-layer LayerStats in llama.cpp's channel order and Q scale."""
    import torch
    import transformers
    from transformers import AttentionInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    layers: dict[int, LayerStats] = {}
    state = {"keep": None}
    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]

    def take(x, perm):  # [1, heads, t, d] -> [t, heads, d] float64
        a = x[0].transpose(0, 1).to(torch.float64).cpu().numpy()
        return a[..., perm] if perm is not None else a

    def attention(module, query, key, value, attention_mask, scaling=None, **kw):
        il = module.layer_idx
        d = key.shape[-1]
        perm = rope_interleave(d) if interleave else None
        k, v, q = take(key, perm), take(value, None), take(query, perm)
        if q_prescaled:
            q = q * (scaling if scaling is not None else d ** -0.5)
        st = layers.get(il)
        if st is None:
            st = layers[il] = LayerStats(k.shape[1], k.shape[2], v.shape[2])
        keep = state["keep"]
        st.add("q", q, keep, True)
        st.add("k", k, keep, True)
        st.add("v", v, keep, True)
        return sdpa(module, query, key, value, attention_mask, scaling=scaling, **kw)

    AttentionInterface.register(IMPL, attention)
    try:
        from transformers import AttentionMaskInterface
        from transformers.masking_utils import sdpa_mask
        AttentionMaskInterface.register(IMPL, sdpa_mask)
    except ImportError:  # older transformers build masks by name
        pass
    model = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32,
                                                              attn_implementation=IMPL).to(device).eval()
    try:
        with torch.no_grad():
            for toks in seqs:
                state["keep"] = np.arange(len(toks)) >= skip
                model.model(torch.tensor([toks], device=device), use_cache=False)
                if progress:
                    progress(len(toks))
    finally:
        del model
    if not layers:
        raise RuntimeError(f"{hf_dir}: the model never called its attention function")
    return layers
