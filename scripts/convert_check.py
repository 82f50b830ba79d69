#!/usr/bin/env python3
"""`tq-gguf convert` on a tiny random checkpoint of every supported architecture: conversion
time, logits against transformers (f32 and f16 GGUF, f32 KV cache), HF-space capture against
the runtime's, and the calibration's stored held-out turbo3 KLD. Prints a Markdown table.

    python scripts/convert_check.py [--archs llama,qwen2,...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tq_gguf.bindings import load_first

load_first()
import numpy as np  # noqa: E402


def convert(hf: Path, out: Path, *args) -> float:
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "tq_gguf", "convert", str(hf), "-o", str(out), *map(str, args)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(r.stderr[-3000:])
    return time.time() - t0


def logits_vs_hf(gguf_path: Path, hf: Path, toks: list[int]) -> tuple[float, float, float]:
    import torch
    import transformers
    from tq_gguf import runtime
    m = runtime.Model(gguf_path)
    s = runtime.Session(m, n_ctx=256, n_batch=256, type_k="f32", type_v="f32")
    got = np.array(s.decode(toks, 0, all_logits=True), np.float64)
    s.close()
    m.close()
    model = transformers.AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = model(torch.tensor([toks])).logits[0].double().numpy()[:, :got.shape[1]]
    return runtime.kld(ref, got), float(np.abs(got - ref).max() / ref.std()), float((got.argmax(1) == ref.argmax(1)).mean())


def main() -> int:
    from tq_gguf import convert as conv
    from tq_gguf import runtime
    from tq_gguf.calib.capture import Capture
    from tq_gguf.calib.hfcapture import capture_hf
    from tq_gguf.calib.schema import read
    from tq_gguf.hftiny import ARCHS, write_tiny_hf
    from tq_gguf.tinymodel import sample_text
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default=",".join(ARCHS))
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tq-convert-check-"))
    text = work / "calib.txt"
    text.write_text(sample_text(60_000, seed=3))
    rows = []
    for arch in a.archs.split(","):
        hf = write_tiny_hf(work / arch, arch)
        cfg = __import__("json").loads((hf / "config.json").read_text())
        info = conv.ARCHS[cfg["architectures"][0]]
        t16 = convert(hf, work / f"{arch}.f16.gguf", "--outtype", "f16")
        convert(hf, work / f"{arch}.f32.gguf", "--outtype", "f32")
        m = runtime.Model(work / f"{arch}.f32.gguf")
        stream = m.tokenize(sample_text(20_000, seed=5), add_bos=False)
        toks = [m.bos] + stream[:199]
        seqs = [[m.bos] + stream[i * 127:(i + 1) * 127] for i in range(3)]
        cap = Capture(m, n_ctx=128)
        ref = cap.run(seqs)
        cap.close()
        m.close()
        got = capture_hf(hf, seqs, info.interleave, info.q_prescaled)
        worst = max(float(np.abs(p - q).max() / np.abs(p).max())
                    for il in ref for p, q in ((ref[il].k_mean(), got[il].k_mean()), (ref[il].k_cov(), got[il].k_cov()),
                                               (ref[il].q_second(), got[il].q_second()),
                                               (ref[il].v_cov(), got[il].v_cov())))
        l32 = logits_vs_hf(work / f"{arch}.f32.gguf", hf, toks)
        l16 = logits_vs_hf(work / f"{arch}.f16.gguf", hf, toks)
        tc = convert(hf, work / f"{arch}.tq.gguf", "--outtype", "q8_0", "--calibrate", "--calib-text", text,
                     "--calib-tokens", 2048, "--calib-ctx", 256, "--val-chunks", 2, "--types", "turbo3")
        v = read(work / f"{arch}.tq.gguf").validation
        rows.append((arch, cfg["architectures"][0], t16, l32, l16, worst, tc, v["kld"]["default"]["turbo3"],
                     v["kld"][v["chosen"]]["turbo3"], v["chosen"]))
        print(f"{arch}: done", file=sys.stderr, flush=True)
    print("| arch | convert f16 s | KLD f32 GGUF | KLD f16 GGUF | max diff/s.d. f16 | top-1 f16 | HF capture | "
          "convert --calibrate s | turbo3 KLD default → calibrated (chosen) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for arch, hfa, t16, l32, l16, worst, tc, d, c, ch in rows:
        print(f"| {arch} (`{hfa}`) | {t16:.1f} | {l32[0]:.1e} | {l16[0]:.1e} | {l16[1]:.1e} | {l16[2] * 100:.1f}% | "
              f"{worst:.1e} | {tc:.0f} | {d:.4f} → {c:.4f} ({ch}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
