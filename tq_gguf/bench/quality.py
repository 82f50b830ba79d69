"""`tq-gguf ppl`: perplexity and KL divergence of cache types against an f16 cache.

The text is cut into chunks of ``ctx`` tokens (the first made BOS when the
vocabulary adds one) and the second half of each chunk is scored, as
llama-perplexity does. One context per cache type, all fed the same batches
in lock step: the f16 reference runs once and its log-probabilities are
compared with every other cache while they are in memory, a block of at most
``max_floats`` logits at a time, so memory does not grow with the text or the
vocabulary.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from .caches import Cache
from .progress import bar
from .stats import KldStats, RefBlock
from .. import runtime
from ..runtime import log_softmax


def _block_rows(n_vocab: int, n_batch: int, max_floats: int) -> int:
    return max(1, min(n_batch, max_floats // n_vocab))


def run_ppl(model_path: Path, text: str, caches: list[Cache], ctx: int = 2048, chunks: int | None = None,
            threads: int = 2, n_gpu_layers: int = 0, n_batch: int = 512, max_floats: int = 1 << 23,
            tamper: Callable | None = None, show_progress: bool = True) -> dict:
    """Returns {'settings', 'reference', 'results': [per cache]} (bench schema, kind 'ppl').

    ``tamper(session, chunk_tokens, first)`` (tests only) may alter a
    non-reference cache after the unscored half is decoded.
    """
    if ctx < 16 or ctx % 2:
        raise ValueError(f"--ctx must be an even number ≥ 16, got {ctx}")
    model = runtime.Model(model_path, n_gpu_layers=n_gpu_layers)
    try:
        tokens = np.array(model.tokenize(text, add_bos=True), dtype=np.int32)
        n_max = len(tokens) // ctx
        if len(tokens) < 2 * ctx:
            raise ValueError(f"the text has {len(tokens)} tokens; at least {2 * ctx} are needed for ctx {ctx} "
                             "(as llama-perplexity asks): give a longer text or a smaller --ctx")
        n_chunk = n_max if not chunks else min(chunks, n_max)
        n_batch = min(n_batch, ctx)
        first = ctx // 2
        rows = _block_rows(model.n_vocab, n_batch, max_floats)
        # the reference is its own context; an f16 entry in ``caches`` is measured
        # against it like any other (KLD 0 unless the runtime is non-deterministic)
        others = list(caches)
        sessions: dict = {}
        try:
            for key, k, v in [("ref", "f16", "f16"), *((c, c.k, c.v) for c in others)]:
                with runtime.environ(dict(key.env) if key != "ref" else {}):
                    sessions[key] = runtime.Session(model, n_ctx=ctx, type_k=k, type_v=v, flash_attn=True,
                                                    n_threads=threads, n_batch=n_batch)
            stats = {c: KldStats() for c in others}
            secs = {c: 0.0 for c in sessions}
            with bar(n_chunk * len(sessions), "ppl", unit="pass", enabled=show_progress) as pb:
                for ci in range(n_chunk):
                    toks = tokens[ci * ctx:(ci + 1) * ctx].copy()
                    if model.add_bos:
                        toks[0] = model.bos
                    for c, s in sessions.items():
                        t0 = time.perf_counter()
                        s.clear()
                        for p in range(0, first, n_batch):
                            s.eval(toks[p:min(p + n_batch, first)], p, outputs=np.zeros(n_batch, bool))
                        if tamper is not None and c != "ref":
                            tamper(s, toks, first)
                        secs[c] += time.perf_counter() - t0
                    # scored half: logits of positions first..ctx-2 predict tokens first+1..ctx-1
                    for p in range(first, ctx - 1, rows):
                        q = min(p + rows, ctx - 1)
                        want = np.ones(q - p, bool)
                        targets = toks[p + 1:q + 1]
                        t0 = time.perf_counter()
                        ref = RefBlock(log_softmax(sessions["ref"].eval(toks[p:q], p, outputs=want)), targets)
                        secs["ref"] += time.perf_counter() - t0
                        for c in others:
                            t0 = time.perf_counter()
                            logits = sessions[c].eval(toks[p:q], p, outputs=want)
                            secs[c] += time.perf_counter() - t0
                            stats[c].add(ref, log_softmax(logits))
                    pb.update(len(sessions))
            kv = {c: s.kv for c, s in sessions.items()}
        finally:
            for s in sessions.values():
                s.close()
        base = stats[others[0]].result()  # every cache saw the same reference tokens
        results = []
        for c in others:
            r = stats[c].result()
            r.update(cache=c.name, type_k=c.k, type_v=c.v, bpv=c.bpv, seconds=round(secs[c], 3),
                     kv_mib=kv[c].mib if kv[c] else None,
                     kv_bytes_per_token_layer=kv[c].bytes_per_token_layer if kv[c] else None)
            results.append(r)
        return {
            "settings": {"ctx": ctx, "chunks": n_chunk, "scored_per_chunk": ctx - 1 - first,
                         "n_batch": n_batch, "threads": threads, "n_gpu_layers": n_gpu_layers,
                         "flash_attn": True, "text_tokens": int(len(tokens))},
            "reference": {"cache": "f16", "ppl": base["ppl_base"], "ppl_err": base["ppl_base_err"],
                          "seconds": round(secs["ref"], 3)},
            "results": results,
        }
    finally:
        model.close()
