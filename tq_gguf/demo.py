"""`tq-gguf demo`: the main job on the embedded default model and text.

Today: build the patched llama.cpp, fetch SmolLM2-135M and the handbook
text, and run llama-perplexity on the held-out text with f16, q8_0, q4_0 and
the turbo caches (uncalibrated: default randomized-Hadamard transform).
It grows into the benchmark harness's table (KLD vs f16, speed).
"""

from __future__ import annotations

import sys
import time

from . import assets, tools
from .perplexity import perplexity

CACHES = (("f16", "f16"), ("q8_0", "q8_0"), ("q4_0", "q4_0"), ("turbo3", "turbo3"),
          ("q8_0", "turbo3"), ("turbo2", "turbo2"))


def run(ctx: int = 512, chunks: int = 4, skip_build: bool = False) -> int:
    if not skip_build:
        from .build import BuildConfig, run as build
        build(BuildConfig())
    log = lambda m: print(f"demo: {m}", file=sys.stderr, flush=True)  # noqa: E731
    model = assets.smollm2(log)
    text = assets.handbook_text(log)["test"]
    log(f"model {model.name}; text {text.name}; series {tools.tool_version('llama-perplexity')}")
    rows = []
    for k, v in CACHES:
        t0 = time.monotonic()
        log(f"llama-perplexity -ctk {k} -ctv {v} -c {ctx} --chunks {chunks} ...")
        r = perplexity(model, text, ctx=ctx, chunks=chunks, ctk=k, ctv=v, flash_attn="on")
        rows.append((f"{k}/{v}", r, time.monotonic() - t0))
    print(f"\nSmolLM2-135M-Instruct Q4_1, handbook held-out text, ctx {ctx}, {chunks} chunks\n")
    print(f"{'cache K/V':<12} {'PPL':>10} {'± err':>8} {'KV MiB':>8} {'time':>7}")
    for name, r, dt in rows:
        kv = f"{r.kv_mib:.2f}" if r.kv_mib is not None else "?"
        print(f"{name:<12} {r.ppl:>10.4f} {r.err:>8.4f} {kv:>8} {dt:>6.1f}s")
    ok = all(r.finite for _, r, _ in rows)
    if not ok:
        print("error: a perplexity is not finite", file=sys.stderr)
    return 0 if ok else 1
