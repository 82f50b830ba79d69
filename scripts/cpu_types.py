#!/usr/bin/env python3
"""Quality and speed of the KV-cache types on CPU, through the patched llama.cpp tools.

For each model: llama-perplexity with an f16 cache saves the reference logits of
the held-out handbook text; every cache config is then scored against it
(--kl-divergence: mean KLD, PPL ratio, same-top-token rate, 99th percentile).
KV bytes per token and layer come from the KV buffer the run allocated.
llama-bench measures decode at a depth (same run for every config).

    python scripts/cpu_types.py [--models smollm2,gemma3] [--ctx 2048] [--chunks 8]
        [--depth 4096] [--no-speed] [-o docs/results/cpu-types]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tq_gguf import assets, tools  # noqa: E402
from tq_gguf.perplexity import kl_divergence, save_kld_base  # noqa: E402

# (label, K type, V type, env) - q4_0 twice: upstream's Hadamard rotation on and off
CONFIGS = [
    ("q8_0", "q8_0", "q8_0", {}),
    ("q4_0 (rotation on)", "q4_0", "q4_0", {}),
    ("q4_0 (rotation off)", "q4_0", "q4_0", {"LLAMA_ATTN_ROT_DISABLE": "1"}),
    ("turbo3", "turbo3", "turbo3", {}),
    ("q8_0-K / turbo3-V", "q8_0", "turbo3", {}),
    ("turbo3-K / q8_0-V", "turbo3", "q8_0", {}),
    ("turbo2", "turbo2", "turbo2", {}),
]
BPV = {"f16": 16.0, "q8_0": 8.5, "q4_0": 4.5, "turbo3": 3.25, "turbo2": 2.25}
SPEED = [("f16", "f16"), ("q8_0", "q8_0"), ("q4_0", "q4_0"), ("turbo3", "turbo3"), ("q8_0", "turbo3"),
         ("turbo2", "turbo2")]


def speed(model: Path, depth: int, threads: int, reps: int) -> dict:
    rows = {}
    for k, v in SPEED:
        r = tools.run_tool("llama-bench", "-m", model, "-fa", "1", "-ctk", k, "-ctv", v, "-d", str(depth),
                           "-p", "0", "-n", "32", "-r", str(reps), "-t", str(threads), "-o", "json",
                           timeout=3600)
        if r.returncode != 0:
            raise RuntimeError(f"llama-bench {k}/{v} failed:\n{r.stderr[-1500:]}")
        row = json.loads(r.stdout)[0]
        rows[f"{k}/{v}"] = {"tg_ts": row["avg_ts"], "tg_sd": row["stddev_ts"]}
        print(f"  speed {k}/{v} @d{depth}: {row['avg_ts']:.2f} ± {row['stddev_ts']:.2f} tok/s", flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="smollm2,gemma3")
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--depth", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-speed", action="store_true")
    ap.add_argument("--configs", default=None,
                    help="comma-separated labels to run (default: all): " + ", ".join(c[0] for c in CONFIGS))
    ap.add_argument("-t", "--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("-o", "--out", default="docs/results/cpu-types")
    a = ap.parse_args()

    text = assets.handbook_text()["test"]
    getters = {"smollm2": assets.smollm2, "gemma3": assets.gemma3}
    result = {"command": " ".join(["python", "scripts/cpu_types.py", *sys.argv[1:]]), "ctx": a.ctx, "chunks": a.chunks, "text": text.name, "threads": a.threads,
              "series": tools.tool_version("llama-perplexity"), "models": {}}
    for name in a.models.split(","):
        model = getters[name]()
        print(f"{name}: {model.name}", flush=True)
        res = {"file": model.name, "quality": {}, "speed": {}}
        with tempfile.TemporaryDirectory() as tmp:
            base = Path(tmp) / "f16.kld"
            t0 = time.monotonic()
            save_kld_base(model, text, base, a.ctx, a.chunks, a.threads)
            print(f"  f16 reference logits ({time.monotonic() - t0:.0f}s)", flush=True)
            wanted = set(a.configs.split(",")) if a.configs else None
            for label, k, v, env in CONFIGS:
                if wanted is not None and label not in wanted:
                    continue
                t0 = time.monotonic()
                r = kl_divergence(model, base, a.ctx, a.chunks, k, v, a.threads,
                                  env={**os.environ, **env})
                res["quality"][label] = {"k": k, "v": v, **r.__dict__, "bpv": (BPV[k] + BPV[v]) / 2}
                print(f"  {label:<22} KLD {r.kld:.5f} ± {r.kld_err:.5f}  PPL ratio {r.ppl_ratio:.4f}  "
                      f"top {r.same_top:.2f}%  ({time.monotonic() - t0:.0f}s)", flush=True)
        if not a.no_speed:
            res["speed"] = speed(model, a.depth, a.threads, a.reps)
        result["models"][name] = res
        write({**result, "models": {name: res}}, Path(f"{a.out}-{name}"), a)
    return 0


def write(result: dict, out: Path, a) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# KV-cache types on CPU: quality and decode speed\n",
             f"Held-out Debian handbook text, ctx {a.ctx}, {a.chunks} chunks, KLD against an f16 cache "
             f"of the same build (series `{result['series']}`), {a.threads} threads.\n",
             "Produced by `python scripts/cpu_types.py` (command line in the JSON beside this file).\n"]
    for name, res in result["models"].items():
        lines.append(f"\n## {res['file']}\n")
        lines.append("| cache K/V | bits/value | KV bytes/token/layer | mean KLD | 99% KLD | PPL ratio | same top |")
        lines.append("|---|---|---|---|---|---|---|")
        for label, q in res["quality"].items():
            kvb = f"{q['kv_bytes_per_token_layer']:.0f}" if q["kv_bytes_per_token_layer"] else "?"
            lines.append(f"| {label} | {q['bpv']:.2f} | {kvb} | {q['kld']:.4f} ± {q['kld_err']:.4f} | "
                         f"{q['kld_p99']:.3f} | {q['ppl_ratio']:.4f} ± {q['ppl_ratio_err']:.4f} | "
                         f"{q['same_top']:.2f} % |")
        if res["speed"]:
            sp = res["speed"]
            q8, q4 = sp["q8_0/q8_0"]["tg_ts"], sp["q4_0/q4_0"]["tg_ts"]
            lines.append(f"\nDecode at depth {a.depth} (llama-bench tg32, -fa 1, same run):\n")
            lines.append("| cache K/V | tok/s | vs q8_0 | vs q4_0 |")
            lines.append("|---|---|---|---|")
            for kv, s in sp.items():
                lines.append(f"| {kv} | {s['tg_ts']:.2f} ± {s['tg_sd']:.2f} | {s['tg_ts'] / q8:.2f}× | "
                             f"{s['tg_ts'] / q4:.2f}× |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(out.with_suffix(".md").read_text(), flush=True)


if __name__ == "__main__":
    sys.exit(main())
