"""`tq-gguf speed`: prefill and decode tokens/s at depth through the bindings.

Per cache type one context of depth + max(prompt, gen) cells. Each depth is
filled once with random tokens (untimed); every repetition then times
``prompt`` tokens of prefill or ``gen`` single-token decodes on top of it and
removes what it added (llama_memory_seq_rm), so the depth is not refilled per
repetition. Random tokens and a warm-up pass, as llama-bench does.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from .caches import Cache
from .progress import bar
from .. import runtime


def add_ratios(rows: list[dict]) -> None:
    """vs_f16 / vs_q8_0 from rows of the same run (same engine, test, depth)."""
    idx = {(r["engine"], r["cache"], r["test"], r["depth"]): r for r in rows}
    for r in rows:
        for base, key in (("f16", "vs_f16"), ("q8_0", "vs_q8_0")):
            b = idx.get((r["engine"], base, r["test"], r["depth"]))
            r[key] = r["tok_s"] / b["tok_s"] if b and b["tok_s"] > 0 else None


def _fill(s: runtime.Session, toks: np.ndarray, pos0: int) -> None:
    for p in range(0, len(toks), s.n_batch):
        s.eval(toks[p:p + s.n_batch], pos0 + p)


def run_speed(model_path: Path, caches: list[Cache], depths: list[int], prompt: int = 2048, gen: int = 128,
              reps: int = 3, threads: int = 2, n_gpu_layers: int = 0, n_batch: int = 2048, n_ubatch: int = 512,
              seed: int = 1234) -> dict:
    if reps < 1 or prompt < 1 or gen < 1 or any(d < 0 for d in depths):
        raise ValueError("reps, prompt and gen must be ≥ 1 and depths ≥ 0")
    model = runtime.Model(model_path, n_gpu_layers=n_gpu_layers)
    rng = np.random.default_rng(seed)
    n_ctx = max(depths) + max(prompt, gen)
    n_ctx = (n_ctx + 255) // 256 * 256
    rows: list[dict] = []
    memory = []
    try:
        work = len(caches) * len(depths) * reps * 2
        with bar(work, "speed", unit="run") as pb:
            for c in caches:
                s = runtime.Session(model, n_ctx=n_ctx, type_k=c.k, type_v=c.v, flash_attn=True,
                                    n_threads=threads, n_batch=min(n_batch, n_ctx), n_ubatch=n_ubatch)
                try:
                    memory.append({"cache": c.name, "n_ctx": s.n_ctx, "kv_mib": s.kv.mib if s.kv else None,
                                   "kv_bytes_per_token_layer": s.kv.bytes_per_token_layer if s.kv else None})
                    # warm-up: one small prefill and one decode
                    s.eval(rng.integers(0, model.n_vocab, min(prompt, 32)), 0)
                    s.eval(rng.integers(0, model.n_vocab, 1), min(prompt, 32))
                    s.synchronize()
                    for d in sorted(depths):
                        s.clear()
                        _fill(s, rng.integers(0, model.n_vocab, d), 0)
                        s.synchronize()
                        for test, n in ((f"pp{prompt}", prompt), (f"tg{gen}", gen)):
                            ts = []
                            for _ in range(reps):
                                toks = rng.integers(0, model.n_vocab, n)
                                t0 = time.perf_counter()
                                if test.startswith("pp"):
                                    _fill(s, toks, d)
                                else:
                                    for i in range(n):
                                        s.eval(toks[i:i + 1], d + i)
                                s.synchronize()
                                ts.append(n / (time.perf_counter() - t0))
                                s.seq_rm(0, d, -1)
                                pb.update(1)
                            rows.append({"engine": "bindings", "cache": c.name, "type_k": c.k, "type_v": c.v,
                                         "bpv": c.bpv, "test": test, "n": n, "depth": d,
                                         "tok_s": statistics.fmean(ts),
                                         "tok_s_sd": statistics.stdev(ts) if len(ts) > 1 else 0.0,
                                         "samples": ts})
                finally:
                    s.close()
    finally:
        model.close()
    add_ratios(rows)
    return {"settings": {"depths": sorted(depths), "prompt": prompt, "gen": gen, "reps": reps,
                         "threads": threads, "n_gpu_layers": n_gpu_layers, "n_batch": n_batch,
                         "n_ubatch": n_ubatch, "flash_attn": True, "n_ctx": n_ctx},
            "memory": memory, "results": rows}
