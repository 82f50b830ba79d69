#!/usr/bin/env python3
"""llama-server under load with each cache type, the same load for each, in one run.

1. Load: --clients concurrent clients, each sending --requests requests (OpenAI
   completion and chat endpoints alternately, prompts cut from the handbook text,
   --n-predict tokens each) to a server with --np parallel slots. Requests served,
   tokens generated, errors, wall time, generation throughput, the KV size the
   server reports and its peak RSS.
2. Shift: one slot of --shift-ctx cells with --context-shift, --shift-predict
   sampled tokens (temperature 0.7, fixed seeds) from a handbook prompt. The
   continuation is scored by the same model with an unshifted f16 cache and the
   whole text in context (the bindings): its perplexity, and how repetitive it is
   (share of repeated 4-grams). A cache whose shifted generations degrade shows a
   higher perplexity or repetition than f16's.

    python scripts/server_load.py [--model M.gguf] [--cache f16,turbo3,q8_0/turbo3,turbo2] [-o STEM]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tq_gguf.bindings import load_first

load_first()
import numpy as np  # noqa: E402

from tq_gguf import assets, runtime  # noqa: E402
from tq_gguf.bench.caches import parse  # noqa: E402
from tq_gguf.server import Server  # noqa: E402


def load_run(s: Server, text: str, clients: int, requests: int, n_predict: int) -> dict:
    def client(i):
        out = []
        for j in range(requests):
            off = (i * requests + j) * 997 % (len(text) - 2000)
            chunk = text[off:off + 600]
            if j % 2 == 0:
                path, body = "/v1/completions", {"prompt": chunk, "max_tokens": n_predict, "temperature": 0.8,
                                                 "seed": i * 100 + j, "ignore_eos": True}
            else:
                path, body = "/v1/chat/completions", {"messages": [{"role": "user", "content": "Summarise: " + chunk}],
                                                      "max_tokens": n_predict, "seed": i * 100 + j, "ignore_eos": True}
            try:
                st, res = s.post(path, body, timeout=900)
            except OSError as e:
                st, res = 0, str(e)
            ok = st == 200 and isinstance(res, dict)
            out.append({"ok": ok, "status": st, "tokens": res["usage"]["completion_tokens"] if ok else 0,
                        "error": None if ok else str(res)[:200]})
        return out

    t0 = time.time()
    with ThreadPoolExecutor(clients) as ex:
        rs = [r for part in ex.map(client, range(clients)) for r in part]
    wall = time.time() - t0
    tokens = sum(r["tokens"] for r in rs)
    return {"requests": len(rs), "served": sum(r["ok"] for r in rs), "errors": sum(not r["ok"] for r in rs),
            "error_samples": [r["error"] for r in rs if not r["ok"]][:3], "tokens": tokens,
            "wall_s": round(wall, 1), "tok_per_s": round(tokens / wall, 1)}


def repeated_4grams(toks: list[int]) -> float:
    grams = [tuple(toks[i:i + 4]) for i in range(len(toks) - 3)]
    return 1 - len(set(grams)) / max(1, len(grams))


def score(model: runtime.Model, toks: list[int], start: int) -> float:
    """Perplexity of toks[start:] given everything before, f16 cache, whole text in context."""
    s = runtime.Session(model, n_ctx=len(toks) + 16, n_batch=512, type_k="f16", type_v="f16")
    nll, n = 0.0, 0
    try:
        for p in range(0, len(toks) - 1, 512):
            lg = np.asarray(s.decode(toks[p:p + 512], p, all_logits=True), np.float64)
            lp = runtime.log_softmax(lg)
            for i in range(len(lg)):
                t = p + i + 1
                if start <= t < len(toks):
                    nll -= lp[i, toks[t]]
                    n += 1
    finally:
        s.close()
    return math.exp(nll / n)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="default: the demo's SmolLM2-135M")
    ap.add_argument("--text", type=Path, default=None, help="default: the demo's held-out handbook text")
    ap.add_argument("--cache", default="f16,turbo3,q8_0/turbo3,turbo2")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=4, help="requests per client")
    ap.add_argument("--n-predict", type=int, default=128)
    ap.add_argument("--np", type=int, default=4)
    ap.add_argument("--ctx", type=int, default=8192, help="server -c (all slots)")
    ap.add_argument("--shift-ctx", type=int, default=512)
    ap.add_argument("--shift-predict", type=int, default=2048)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--shift-temp", type=float, default=1.0)
    ap.add_argument("--no-shift", action="store_true", help="the load only (scripts/shift_quality.py measures "
                    "the shift without sampling noise)")
    ap.add_argument("--ngl", type=int, default=0)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-o", "--out", type=Path, default=Path("tq-gguf-results/server-load"))
    a = ap.parse_args()
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    model = a.model or assets.smollm2(log)
    text = (a.text or assets.handbook_text(log)["test"]).read_text()
    work = Path(tempfile.mkdtemp(prefix="tq-server-load-"))
    gpu = ["-ngl", str(a.ngl)] if a.ngl else []
    rows = []
    for c in parse(a.cache):
        ckv = ["-fa", "on", "-ctk", c.k, "-ctv", c.v, *gpu]
        log(f"{c.name}: load ({a.clients} clients x {a.requests} requests, {a.n_predict} tokens, -np {a.np})")
        with Server(model, "-np", a.np, "-c", a.ctx, *ckv, log=work / f"{c.name.replace('/', '-')}-load.log",
                    threads=a.threads) as s:
            r = load_run(s, text, a.clients, a.requests, a.n_predict)
            r["kv_mib"], r["rss_mib"] = s.kv_mib(), s.peak_rss_mib()
        if a.no_shift:
            rows.append((c, r))
            continue
        log(f"{c.name}: shift ({a.shift_predict} tokens through {a.shift_ctx} cells, and without shift; "
            f"{a.seeds} seeds)")
        r["gen"] = {}
        # the same prompt and seeds twice: through a slot that shifts, and one that holds everything
        for mode, ctx_args in (("shift", ["-c", a.shift_ctx, "--context-shift"]),
                               ("noshift", ["-c", a.shift_ctx + a.shift_predict + 64])):
            gens = []
            with Server(model, "-np", 1, *ctx_args, *ckv, log=work / f"{c.name.replace('/', '-')}-{mode}.log",
                        threads=a.threads) as s:
                prompt = s.ok("/tokenize", {"content": text[5000:6200], "add_special": True})["tokens"][
                    :a.shift_ctx // 2]
                for seed in range(a.seeds):
                    res = s.ok("/completion", {"prompt": prompt, "n_predict": a.shift_predict, "ignore_eos": True,
                                               "temperature": a.shift_temp, "seed": seed, "return_tokens": True},
                               timeout=3600)
                    gens.append((prompt, res["tokens"]))
                if mode == "shift":
                    r["shifts"] = s.log_text().count("slot context shift")
            r["gen"][mode] = gens
        rows.append((c, r))
    if not a.no_shift:
        log("scoring the generations with an f16 cache, whole text in context")
    m = runtime.Model(model)
    try:
        for c, r in rows:
            for mode, gens in r.pop("gen", {}).items():
                # only what was generated past the point where the shifting slot first shifted
                ppl = [score(m, p + g, a.shift_ctx) for p, g in gens]
                rep = [repeated_4grams((p + g)[a.shift_ctx:]) for p, g in gens]
                r[f"{mode}_ppl"], r[f"{mode}_rep4"] = round(float(np.mean(ppl)), 3), round(float(np.mean(rep)), 4)
                r[f"{mode}_ppl_each"] = [round(x, 3) for x in ppl]
                r[f"{mode}_rep4_each"] = [round(x, 4) for x in rep]
            if "shift_ppl" in r:
                r["shift_ppl_ratio"] = round(r["shift_ppl"] / r["noshift_ppl"], 3)
    finally:
        m.close()
    lines = [f"model {model.name}; load: {a.clients} clients x {a.requests} requests x {a.n_predict} tokens, "
             f"-np {a.np}, -c {a.ctx}; shift: -c {a.shift_ctx}, {a.shift_predict} tokens x {a.seeds} seeds at "
             f"temperature {a.shift_temp}", "",
             "| cache K/V | served | errors | tokens | wall s | tok/s | KV MiB | peak RSS MiB | shifts | "
             "PPL (f16 judge) shifted | unshifted | shifted/unshifted | repeated 4-grams shifted / unshifted |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    if a.no_shift:
        lines[0] = lines[0].split("; shift:")[0]
        lines[-2:] = ["| cache K/V | served | errors | tokens | wall s | tok/s | KV MiB | peak RSS MiB |",
                      "|---|---|---|---|---|---|---|---|"]
    for c, r in rows:
        line = (f"| {c.name} | {r['served']}/{r['requests']} | {r['errors']} | {r['tokens']} | {r['wall_s']} | "
                f"{r['tok_per_s']} | {r['kv_mib']:.2f} | {r['rss_mib']:.0f} |")
        if not a.no_shift:
            line += (f" {r['shifts']} | {r['shift_ppl']:.2f} | {r['noshift_ppl']:.2f} | {r['shift_ppl_ratio']:.2f} | "
                     f"{r['shift_rep4']:.3f} / {r['noshift_rep4']:.3f} |")
        lines.append(line)
    md = "\n".join(lines)
    print(md)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".md").write_text(md + "\n")
    a.out.with_suffix(".json").write_text(json.dumps(
        {"model": str(model), "settings": {k: v for k, v in vars(a).items() if k not in ("out", "model")},
         "results": {c.name: r for c, r in rows}}, indent=1, default=str))
    return 1 if any(r["errors"] for _, r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
