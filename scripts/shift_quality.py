#!/usr/bin/env python3
"""What context shift costs each cache type, without sampling noise: held-out text is fed
(teacher forcing) through a --ctx-cell context that shifts as llama-server's does (when
full, drop the oldest half: seq_rm + seq_add, n_keep 0), and every next-token
distribution past the first shift is compared with an f16 cache that holds the whole
text. The same cache without shifting (whole text in context) separates the cache's own
error from what the shift adds. Through the bindings, the calls the server makes.

    python scripts/shift_quality.py [--model M.gguf] [--cache f16,turbo3,q8_0/turbo3,turbo2] [--ctx 512] [--tokens 2048]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tq_gguf.bindings import load_first

load_first()
import numpy as np  # noqa: E402

from tq_gguf import assets, runtime  # noqa: E402
from tq_gguf.bench.caches import parse  # noqa: E402

CHUNK = 32


def run(model: runtime.Model, toks: list[int], cache, ctx: int | None) -> list[np.ndarray]:
    """Logits for every position, decoding CHUNK tokens at a time; with ``ctx``, shift like the server."""
    n_ctx = ctx or len(toks) + CHUNK
    s = runtime.Session(model, n_ctx=n_ctx, n_batch=CHUNK, type_k=cache.k, type_v=cache.v, flash_attn=True)
    out, n_past, shifts = [], 0, 0
    try:
        for p in range(0, len(toks), CHUNK):
            chunk = toks[p:p + CHUNK]
            if ctx and n_past + len(chunk) > ctx:
                n_discard = (n_past - 1) // 2  # server: n_left = n_past - n_keep - 1, n_discard = n_left / 2
                s.seq_rm(0, 0, n_discard)
                s.seq_add(0, n_discard, n_past, -n_discard)
                n_past -= n_discard
                shifts += 1
            out.append(np.array(s.decode(chunk, n_past, all_logits=True), np.float32))
            n_past += len(chunk)
    finally:
        s.close()
    return out, shifts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--text", type=Path, default=None)
    ap.add_argument("--cache", default="f16,turbo3,q8_0/turbo3,turbo2")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--offsets", default="0,60000,120000", help="where in the text the passages start (chars)")
    a = ap.parse_args()
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    path = a.model or assets.smollm2(log)
    text = (a.text or assets.handbook_text(log)["test"]).read_text()
    m = runtime.Model(path)
    rows = {c.name: {"shift": [], "noshift": []} for c in parse(a.cache)}
    n_shifts = 0
    try:
        for off in map(int, a.offsets.split(",")):
            toks = m.tokenize(text[off:off + 8 * a.tokens], add_bos=True)[:a.tokens]
            log(f"passage at {off}: {len(toks)} tokens; reference f16, whole text in context")
            ref, _ = run(m, toks, parse("f16")[0], None)
            for c in parse(a.cache):
                for mode, ctx in (("shift", a.ctx), ("noshift", None)):
                    got, sh = run(m, toks, c, ctx)
                    n_shifts = max(n_shifts, sh)
                    k = np.concatenate([runtime.kld_rows(r, g) for r, g in zip(ref, got)])
                    rows[c.name][mode].append(k[a.ctx:])  # positions past the first shift
                log(f"  {c.name}: KLD shifted {np.mean(rows[c.name]['shift'][-1]):.4f}, "
                    f"unshifted {np.mean(rows[c.name]['noshift'][-1]):.4f}")
    finally:
        m.close()
    print(f"{path.name}, {a.tokens} tokens x {len(a.offsets.split(','))} passages of held-out text, context "
          f"{a.ctx} cells shifting {n_shifts} times per passage (server policy, n_keep 0); KLD against f16 with the "
          f"whole text in context, positions past the first shift\n")
    print("| cache K/V | KLD, shifting context | KLD, whole text in context | added by the shift |")
    print("|---|---|---|---|")
    for name, r in rows.items():
        ks, kn = np.concatenate(r["shift"]), np.concatenate(r["noshift"])
        se = np.std(ks - kn) / np.sqrt(len(ks))
        print(f"| {name} | {ks.mean():.4f} | {kn.mean():.4f} | {ks.mean() - kn.mean():.4f} ± {se:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
