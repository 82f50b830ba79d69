#!/usr/bin/env python3
"""`tq-gguf ppl` (bindings) against llama-perplexity --kl-divergence on one model and text.

Prints, per cache type, PPL and mean KLD from both with their errors and the
difference in units of the combined error. Default: the demo's SmolLM2-135M
and held-out handbook text.

    python scripts/ppl_agreement.py --ctx 512 --chunks 8 --caches q8_0,q4_0,turbo3,turbo2
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tq_gguf.bindings import load_first  # noqa: E402

load_first()
from tq_gguf import assets, perplexity  # noqa: E402
from tq_gguf.bench import caches, quality  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--text", type=Path, default=None)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--caches", default="q8_0,q4_0,turbo3,turbo2")
    a = ap.parse_args()
    model = a.model or assets.smollm2()
    text = a.text or assets.handbook_text()["test"]
    cs = caches.parse(a.caches)
    ours = quality.run_ppl(model, text.read_text(), [caches.F16, *cs], ctx=a.ctx, chunks=a.chunks,
                           threads=os.cpu_count() or 2)
    rows = {r["cache"]: r for r in ours["results"]}
    with tempfile.TemporaryDirectory() as d:
        base = Path(d) / "base.kld"
        b = perplexity.save_kld_base(model, text, base, ctx=a.ctx, chunks=a.chunks)
        print(f"{model.name}, {text.name}, ctx {a.ctx}, {a.chunks} chunks")
        print(f"f16 PPL: tq-gguf ppl {ours['reference']['ppl']:.4f} ± {ours['reference']['ppl_err']:.4f}, "
              f"llama-perplexity {b.ppl:.4f} ± {b.err:.4f}\n")
        print("| cache | PPL tq-gguf | PPL llama-perplexity | KLD tq-gguf | KLD llama-perplexity | ΔKLD / σ |")
        print("|---|---|---|---|---|---|")
        worst = 0.0
        for c in cs:
            t = perplexity.kl_divergence(model, base, a.ctx, a.chunks, c.k, c.v)
            o = rows[c.name]
            sigma = math.hypot(o["kld_err"], t.kld_err) or 1e-12
            z = (o["kld"] - t.kld) / sigma
            worst = max(worst, abs(z))
            print(f"| {c.name} | {o['ppl']:.4f} ± {o['ppl_err']:.4f} | {t.ppl:.4f} ± {t.ppl_err:.4f} | "
                  f"{o['kld']:.5f} ± {o['kld_err']:.5f} | {t.kld:.5f} ± {t.kld_err:.5f} | {z:+.2f} |")
    print(f"\nlargest KLD difference: {worst:.2f} combined standard errors")
    return 0 if worst < 2 else 1


if __name__ == "__main__":
    sys.exit(main())
