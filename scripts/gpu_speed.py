#!/usr/bin/env python3
"""Prefill and decode speed of the KV-cache types on an NVIDIA GPU (llama-bench, one run).

Builds the patched llama.cpp with CUDA unless --no-build (offline GPU machines: pass
--src-pack from `tq-gguf build --pack-src`), writes a synthetic model of a named shape
with random Q4_0 weights (speed depends on shapes only), then runs llama-bench with
flash attention on, all layers on the GPU, batch 1 decode, for every cache config at
every depth, and prints pp/tg tokens per second with ratios against f16 and q8_0
measured in this same run. Writes Markdown and JSON next to --out.

    python scripts/gpu_speed.py [--shape llama-8b] [--depths 0,8192,32768]
        [--prompt 2048] [--gen 128] [--reps 3] [--caches f16,q8_0,q4_0,turbo3,turbo2,q8_0/turbo3]
        [--cuda-arch ARCH] [--src-pack PACK] [--no-build] [-o docs/results/gpu-speed]
        [--sinks | --vector | --unfused] [--calibrated]

--sinks, --vector and --unfused add rows measured in A B B A order against the default ones
(sink store off; the vector decode kernel instead of the tensor-core one; the turbo rotation
run as the graph's own nodes instead of fused) and a ratio table.

The build targets the GPU's own compute capability and compiles a FlashAttention
vector kernel for every K/V pair asked for (on top of the series' default list).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tq_gguf import paths, tools  # noqa: E402
from tq_gguf.bench.caches import BITS_PER_VALUE as BPV  # noqa: E402

DEFAULT_CACHES = "f16,q8_0,q4_0,turbo3,turbo2,q8_0/turbo3"


def gpu_info() -> dict:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.memory",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30).stdout
        name, mem, drv, mclk = [x.strip() for x in out.splitlines()[0].split(",")]
        return {"name": name, "memory": mem, "driver": drv, "max_mem_clock": mclk}
    except (OSError, IndexError, ValueError, subprocess.SubprocessError):
        return {"name": "unknown GPU"}


def import_gguf():
    try:
        import gguf  # noqa: F401
    except ImportError:  # the pinned source tree carries gguf-py
        sys.path.insert(0, str(paths.src_dir() / "vendor" / "llama.cpp" / "gguf-py"))
        import gguf  # noqa: F401


# the series' default GGML_CUDA_FA_QUANTS (patches/0006); pairs the run asks for are added to it
DEFAULT_FA = ["q4_0-q4_0", "q8_0-q8_0", "f16-f16", "bf16-bf16", "turbo3-turbo3", "turbo2-turbo2",
              "turbo3-turbo2", "turbo2-turbo3", "q8_0-turbo3", "q8_0-turbo2", "turbo3-q8_0", "turbo2-q8_0",
              "f16-turbo3"]


# same-run A/B options: extra rows 'K/V<suffix>' run with env, in A B B A order against the
# default rows; which caches get them; the JSON key and the Markdown heading of the ratio table
AB = {
    "sinks":  {"suffix": "-nosink", "env": {"LLAMA_TURBO_SINKS": "0"}, "key": "sink_on_over_off",
               "help": "also run every turbo cache without its sink store",
               "ratio": "on / off", "for": lambda k, v: "turbo" in k or "turbo" in v,
               "title": "Sink store cost: tok/s with the store over tok/s without it, same run:",
               "note": "Turbo rows keep each sequence's first cells exact (the default sink store); `-nosink` rows "
                       "run with `LLAMA_TURBO_SINKS=0`. Both are the mean of two runs in A B B A order."},
    "vector": {"suffix": "-vec", "env": {"TQ_FA_TURBO_MMA": "0"}, "key": "mma_over_vector",
               "help": "also run every turbo K + turbo V cache with the vector decode kernel",
               "ratio": "tensor-core / vector", "for": lambda k, v: "turbo" in k and "turbo" in v,
               "title": "Decode kernel: tok/s with the tensor-core kernel over tok/s with the vector kernel, same run:",
               "note": "`-vec` rows decode turbo K + turbo V with the vector kernel (`TQ_FA_TURBO_MMA=0`); the other "
                       "turbo rows with the tensor-core kernel. Both are the mean of two runs in A B B A order."},
    "unfused": {"suffix": "-unfused", "env": {"TQ_CUDA_FUSE": "0"}, "key": "fused_over_unfused",
                "help": "also run every turbo cache with the rotation as the graph's own nodes",
                "ratio": "fused / unfused", "for": lambda k, v: "turbo" in k or "turbo" in v,
                "title": "Rotation fusion: tok/s with the fused graph over tok/s with the graph as built, same run:",
                "note": "`-unfused` rows run the turbo rotation as the graph's own nodes and the one-thread-per-block "
                        "cache write (`TQ_CUDA_FUSE=0`); the other turbo rows fuse them into the cache write and the "
                        "decode kernel (patch 0010). Both are the mean of two runs in A B B A order."},
}


def base_type(v: str) -> str:
    """The cache type of a table column ('turbo3+cal', 'turbo3-nosink', 'turbo3-vec' -> 'turbo3')."""
    for suffix in ["+cal"] + [o["suffix"] for o in AB.values()]:
        v = v.removesuffix(suffix)
    return v


def fa_quants(caches: list[list[str]]) -> str:
    """GGML_CUDA_FA_QUANTS that compiles a vector kernel for every K/V pair of the run."""
    pairs = list(DEFAULT_FA)
    for k, v in caches:
        if f"{k}-{v}" not in pairs:
            pairs.append(f"{k}-{v}")
    return ";".join(pairs)


def detect_cuda_arch(smi_output: str | None = None) -> str:
    """CMAKE_CUDA_ARCHITECTURES of the first GPU ('9.0' -> '90'), or '90' if unknown."""
    if smi_output is None:
        try:
            smi_output = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
                                        capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            smi_output = ""
    first = smi_output.strip().splitlines()[0].strip() if smi_output.strip() else ""
    major, _, minor = first.partition(".")
    return f"{major}{minor}" if major.isdigit() and minor.isdigit() else "90"


def build(args, caches) -> None:
    cmd = [sys.executable, "-m", "tq_gguf", "build", "--cuda", "--cuda-arch", args.cuda_arch or detect_cuda_arch(),
           "-j", str(args.jobs), "--no-bindings", "--fa-quants", fa_quants(caches)]
    if args.src_pack:
        cmd += ["--src-pack", args.src_pack]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def bench(model: Path, k: str, v: str, args, env: dict | None = None) -> list[dict]:
    from tq_gguf.bench.caches import Cache
    from tq_gguf.bench.llamabench import run_llama_bench
    t0 = time.time()
    c = Cache(k, v, env=tuple((env or {}).items()))
    rows = run_llama_bench(model, [c], [int(d) for d in args.depths.split(",")], args.prompt, args.gen,
                           args.reps, os.cpu_count() or 4, 99, timeout=3600)
    print(f"  {k}/{v}: {len(rows)} results in {time.time() - t0:.0f} s", flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="llama-8b")
    ap.add_argument("--depths", default="0,8192,32768")
    ap.add_argument("--prompt", type=int, default=2048)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--caches", default=DEFAULT_CACHES, help="comma list of K/V or one type for both")
    ap.add_argument("--cuda-arch", default=None, help="default: the GPU's compute capability (nvidia-smi)")
    ap.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 4)
    ap.add_argument("--src-pack", help="offline source pack (tq-gguf build --pack-src)")
    ap.add_argument("--no-build", action="store_true", help="use the active build as it is")
    ap.add_argument("--model", type=Path, help="the synthetic GGUF to use (written there if missing)")
    ap.add_argument("--allow-cpu", action="store_true", help="run on a CPU build too (tests of this script)")
    ap.add_argument("--calibrated", action="store_true",
                    help="also time every turbo cache with a calibration (per-layer transforms in the graph; "
                         "rows 'K/V+cal')")
    for name, o in AB.items():
        ap.add_argument(f"--{name}", action="store_true", help=f"{o['help']}; A B B A against the default rows, "
                        f"rows 'K/V{o['suffix']}' and a ratio table ({' '.join(f'{k}={v}' for k, v in o['env'].items())})")
    ap.add_argument("-o", "--out", default=str(ROOT / "docs" / "results" / "gpu-speed"))
    args = ap.parse_args()

    from tq_gguf import synthmodel
    try:
        shp = synthmodel.shape(args.shape)
    except ValueError as e:
        ap.error(str(e))
    ab = [name for name in AB if getattr(args, name)]
    if len(ab) > 1:
        ap.error(f"{', '.join('--' + n for n in AB)} each compare against the default rows: use one per run")
    caches = [(c.split("/") + c.split("/"))[:2] for c in args.caches.split(",")]
    for k, v in caches:
        for t in (k, v):
            if t not in BPV:
                ap.error(f"unknown cache type {t!r}; known: {', '.join(BPV)}")

    if not args.no_build:
        build(args, caches)
    if "cuda" not in (tools.active().get("variant") or "") and not args.allow_cpu:
        print("error: the active build has no CUDA (run without --no-build)", file=sys.stderr)
        return 2
    gpu = gpu_info() if "cuda" in (tools.active().get("variant") or "") else {"name": "CPU"}
    print(f"GPU: {gpu['name']}; build {tools.active().get('tq_version')}", flush=True)

    model = args.model or paths.home() / "models" / f"synthetic-{shp.name}-q4_0.gguf"
    if not model.exists():
        import_gguf()
        model.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        tmp = model.with_suffix(".part")
        synthmodel.write_synthetic_llama(
            tmp, shp, progress=lambda i, n: print(f"\r  writing {shp.name}: layer {i}/{n}", end="", flush=True))
        tmp.rename(model)
        print(f"\n  wrote {model} ({model.stat().st_size / 2**30:.2f} GiB) in {time.time() - t0:.0f} s")

    results = {}
    for k, v in caches:
        for row in bench(model, k, v, args):
            results[(f"{k}/{v}", row["test"], row["depth"])] = (row["tok_s"], row["tok_s_sd"])
    for name in ab:
        # default (A) vs the option (B), A B B A: the first A is the run above
        o = AB[name]
        for k, v in [c for c in caches if o["for"](*c)]:
            alt = f"{k}/{v}{o['suffix']}"
            runs = {f"{k}/{v}": [{key[1:]: val for key, val in results.items() if key[0] == f"{k}/{v}"}], alt: []}
            for key, env in ((alt, o["env"]), (alt, o["env"]), (f"{k}/{v}", None)):
                runs[key].append({(row["test"], row["depth"]): (row["tok_s"], row["tok_s_sd"])
                                  for row in bench(model, k, v, args, env=env)})
            for key, rs in runs.items():
                for td in rs[0]:
                    vals = [r[td] for r in rs if td in r]
                    results[(key, *td)] = (sum(x[0] for x in vals) / len(vals), sum(x[1] for x in vals) / len(vals))
            caches.append([k, v + o["suffix"]])
    if args.calibrated:
        # speed depends on shapes only: the default rotation written as a calibration
        from tq_gguf.calib import fit, schema
        side = model.with_suffix(".calib.gguf")
        schema.write_sidecar(side, schema.Calibration("llama", shp.n_layer, fit.default_layers(
            shp.n_layer, shp.n_head_kv, shp.head_dim)))
        for k, v in [c for c in caches if ("turbo" in c[0] or "turbo" in c[1]) and base_type(c[1]) == c[1]]:
            for row in bench(model, k, v, args, env={"LLAMA_TURBO_CALIB": str(side)}):
                results[(f"{k}/{v}+cal", row["test"], row["depth"])] = (row["tok_s"], row["tok_s_sd"])
            caches.append([k, v + "+cal"])

    depths = [int(d) for d in args.depths.split(",")]
    tests = [f"pp{args.prompt}", f"tg{args.gen}"]
    lines = [f"# Speed of the KV-cache types on {gpu['name']}", "",
             f"Model: synthetic `{shp.name}` (n_layer {shp.n_layer}, n_head {shp.n_head}, n_head_kv {shp.n_head_kv}, "
             f"head {shp.head_dim}, n_ff {shp.n_ff}, vocab {shp.n_vocab}), random Q4_0 weights. "
             f"llama-bench, `-ngl 99 -fa 1`, {args.reps} repetitions, build `{tools.active().get('tq_version')}`.",
             "", f"Command: `python scripts/gpu_speed.py --shape {args.shape} --depths {args.depths} "
             f"--prompt {args.prompt} --gen {args.gen} --reps {args.reps} --caches {args.caches}"
             f"{''.join(f' --{name}' for name in ab)}{' --calibrated' if args.calibrated else ''}`", ""]
    for name in ab:
        lines += [AB[name]["note"], ""]
    lines += ["| cache K/V | bits | test | depth | tok/s | vs f16 | vs q8_0 |", "|---|---|---|---|---|---|---|"]
    out_rows = []
    for test in tests:
        for d in depths:
            base_f16 = results.get(("f16/f16", test, d))
            base_q8 = results.get(("q8_0/q8_0", test, d))
            for k, v in caches:
                key = f"{k}/{v}"
                ts, sd = results.get((key, test, d), (float("nan"), float("nan")))
                r16 = ts / base_f16[0] if base_f16 else float("nan")
                r8 = ts / base_q8[0] if base_q8 else float("nan")
                bits = (BPV[k] + BPV[base_type(v)]) / 2
                lines.append(f"| {key} | {bits:g} | {test} | {d} | {ts:.1f} ± {sd:.1f} | {r16:.2f} | {r8:.2f} |")
                out_rows.append({"cache": key, "bits": bits, "test": test, "depth": d, "ts": ts, "sd": sd,
                                 "vs_f16": r16, "vs_q8_0": r8})
    for name in ab:
        o = AB[name]
        lines += ["", o["title"], "", f"| cache K/V | test | depth | {o['ratio']} |", "|---|---|---|---|"]
        for k, v in [c for c in caches if c[1].endswith(o["suffix"])]:
            key = f"{k}/{base_type(v)}"
            for test in tests:
                for d in depths:
                    on, off = results.get((key, test, d)), results.get((f"{key}{o['suffix']}", test, d))
                    if on and off:
                        lines.append(f"| {key} | {test} | {d} | {on[0] / off[0]:.3f} |")
                        out_rows.append({"cache": key, "test": test, "depth": d, o["key"]: on[0] / off[0]})
    # bandwidth view of decode at the deepest depth: cache bytes read per token / time per token
    dmax = max(depths)
    lines += ["", f"Decode at depth {dmax}: KV-cache bytes read per token (all layers) and the rate "
              "that implies if the whole token time were spent on them (an upper bound on what the "
              "attention kernel reads):", "", "| cache K/V | KV MiB/token | tok/s | GB/s (bound) |", "|---|---|---|---|"]
    f16_bytes = shp.kv_bytes_per_token_f16() * dmax
    for k, v in caches:
        key = f"{k}/{v}"
        ts = results.get((key, f"tg{args.gen}", dmax), (float("nan"),))[0]
        nbytes = f16_bytes * (BPV[k] + BPV[base_type(v)]) / 2 / 16
        lines.append(f"| {key} | {nbytes / 2**20:.0f} | {ts:.1f} | {nbytes * ts / 1e9:.0f} |")
    md = "\n".join(lines) + "\n"
    print("\n" + md)
    out = Path(args.out)
    stem = out.name + "-" + gpu["name"].lower().replace("nvidia ", "").replace(" ", "-")
    out.parent.mkdir(parents=True, exist_ok=True)
    (out.parent / f"{stem}.md").write_text(md)
    (out.parent / f"{stem}.json").write_text(json.dumps(
        {"schema": 1, "gpu": gpu, "shape": shp.__dict__, "build": tools.active().get("tq_version"),
         "args": {k: v for k, v in vars(args).items() if k != "model"}, "rows": out_rows}, indent=1, default=str))
    print(f"wrote {out.parent / stem}.md/.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
