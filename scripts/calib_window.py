#!/usr/bin/env python3
"""Does the capture window matter? Self-generated calibration text captured in windows of
different lengths, each fitted the same way and scored through the runtime.

The model writes --tokens of text (calibrate's generator: its first six prompts, seed 1234);
for every "TOKENS@CTX" in --runs the first TOKENS are captured in windows of CTX, the
`whiten` key transform (--alpha, no sink alignment) is fitted, and turbo3 KLD against an
f16 cache is measured on --heldout at --eval-ctx (llama-perplexity's protocol), with the
runtime's default sink store.

    python scripts/calib_window.py MODEL.gguf --heldout TEST.txt [--runs 8192@1024,16384@2048,16384@1024]
        [--tokens 16384] [--alpha 0.125] [--eval-ctx 2048] [--chunks 4]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tq_gguf import runtime  # noqa: E402
from tq_gguf.bench.caches import Cache  # noqa: E402
from tq_gguf.calib import calibrate as cal  # noqa: E402
from tq_gguf.calib import fit as fitmod  # noqa: E402
from tq_gguf.calib.capture import Capture  # noqa: E402
from tq_gguf.calib.schema import Calibration  # noqa: E402
from tq_gguf.codebook import CODEBOOKS  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--heldout", type=Path, required=True)
    ap.add_argument("--runs", default="8192@1024,16384@2048,16384@1024")
    ap.add_argument("--tokens", type=int, default=16384, help="tokens the model writes (at least every run's)")
    ap.add_argument("--alpha", type=float, default=0.125)
    ap.add_argument("--eval-ctx", type=int, default=2048)
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    runs = [tuple(int(x) for x in r.split("@")) for r in a.runs.split(",")]
    if max(t for t, _ in runs) > a.tokens:
        ap.error("--tokens must cover every run")

    info = cal.model_info(a.model)
    model = runtime.Model(a.model)
    try:
        stream = cal.generate(model, a.tokens, cal.PROMPTS[:6], 1234, a.threads, "calibration text")
        stats = {}
        for tokens, ctx in runs:
            seqs = cal.windows(model, stream, tokens, ctx, "generated text")
            cap = Capture(model, n_ctx=ctx, threads=a.threads)
            try:
                stats[(tokens, ctx)] = cap.run(seqs)
            finally:
                cap.close()
    finally:
        model.close()
    cb = {t: list(CODEBOOKS[t]) for t in ("turbo3", "turbo2")}
    with tempfile.TemporaryDirectory(prefix="tq-window-") as wd:
        ev = cal.Evaluator(a.model, a.heldout.read_text(errors="replace"), a.eval_ctx, a.chunks, a.threads, Path(wd))
        q4 = ev.run(None, [Cache("q4_0", "q4_0")])["q4_0"]["kld"]
        print("| calibration text | capture window | turbo3 KLD | × q4_0 |\n|---|---|---|---|")
        for (tokens, ctx), st in stats.items():
            layers = fitmod.fit(st, info["n_layer"], "whiten", "rotate", sink=False, alpha=a.alpha)
            got = ev.run(Calibration(info["arch"], info["n_layer"], layers, codebooks=cb), [Cache("turbo3", "turbo3")])
            k = got["turbo3"]["kld"]
            print(f"| {tokens} generated tokens | {ctx} | {k:.5f} | {k / q4:.2f} |", flush=True)
        print(f"| q4_0 (rotated), same run | | {q4:.5f} | 1.00 |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
