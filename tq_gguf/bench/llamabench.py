"""The patched llama-bench, run and parsed: the same table from upstream's tool."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from .caches import Cache
from .. import tools


def run_llama_bench(model: Path, caches: list[Cache], depths: list[int], prompt: int, gen: int, reps: int,
                    threads: int, n_gpu_layers: int, timeout: float = 7200) -> list[dict]:
    rows = []
    for c in caches:
        args = ["-m", str(model), "-fa", "1", "-ctk", c.k, "-ctv", c.v, "-p", str(prompt), "-n", str(gen),
                "-d", ",".join(map(str, depths)), "-r", str(reps), "-t", str(threads),
                "-ngl", str(n_gpu_layers), "-o", "json"]
        try:
            env = {**__import__("os").environ, **dict(c.env)} if c.env else None
            r = tools.run_tool("llama-bench", *args, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"llama-bench {c.name} ran past {timeout:.0f} s") from None
        if r.returncode != 0:
            raise RuntimeError(f"llama-bench {c.name} failed (exit {r.returncode}):\n{r.stderr[-2000:]}")
        rows += parse(r.stdout, c)
    return rows


def parse(out: str, c: Cache) -> list[dict]:
    """llama-bench -o json rows -> our result rows."""
    try:
        data = json.loads(out)
    except json.JSONDecodeError as e:
        raise RuntimeError(f"llama-bench printed no JSON ({e}): {out[:300]!r}") from None
    rows = []
    for x in data:
        pp = int(x["n_prompt"])
        test, n = (f"pp{pp}", pp) if pp else (f"tg{x['n_gen']}", int(x["n_gen"]))
        samples = [float(s) for s in x.get("samples_ts", [])]
        rows.append({"engine": "llama-bench", "cache": c.name, "type_k": c.k, "type_v": c.v, "bpv": c.bpv,
                     "test": test, "n": n, "depth": int(x.get("n_depth", 0)),
                     "tok_s": float(x["avg_ts"]), "tok_s_sd": float(x["stddev_ts"]), "samples": samples})
    return rows
