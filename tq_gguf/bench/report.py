"""Bench documents: a versioned JSON envelope, terminal/Markdown tables, PNG plots."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

from .. import __version__, tools

from .schema import BENCH as SCHEMA


def file_sha256(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for b in iter(lambda: f.read(1 << 22), b""):
            h.update(b)
    return h.hexdigest()


def system_info(n_gpu_layers: int) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"os": platform.platform(), "python": platform.python_version(), "cpu": cpu,
            "cpu_count": os.cpu_count() or 0, "gpu": None}
    if n_gpu_layers:
        try:
            r = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                                "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
            if r.returncode == 0 and r.stdout.strip():
                name, mem, drv = [x.strip() for x in r.stdout.splitlines()[0].split(",")]
                info["gpu"] = {"name": name, "memory": mem, "driver": drv}
                head = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=20).stdout
                m = re.search(r"CUDA Version:\s*([0-9.]+)", head)
                info["cuda"] = m.group(1) if m else None
        except (OSError, subprocess.TimeoutExpired):
            pass
    return info


def envelope(kind: str, model: Path, body: dict, argv: list[str] | None = None, text: Path | None = None) -> dict:
    act = tools.active()
    doc = {
        "schema": SCHEMA, "kind": kind,
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "tq_gguf": {"version": __version__, "series": act.get("tq_version"), "variant": act.get("variant")},
        "command": "tq-gguf " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": {"file": model.name, "bytes": model.stat().st_size, "sha256": file_sha256(model)},
        "system": system_info(body["settings"].get("n_gpu_layers", 0)),
    }
    if text is not None:
        doc["text"] = {"file": text.name, "sha256": file_sha256(text)}
    doc.update(body)
    return doc


def _clean(x):
    """NaN/inf are not JSON: write null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_clean(v) for v in x]
    return x


def write_json(doc: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".part")
    tmp.write_text(json.dumps(_clean(doc), indent=1, allow_nan=False) + "\n")
    tmp.replace(path)


def validate(doc: dict) -> None:
    """Raises jsonschema.ValidationError when ``doc`` does not follow the bench schema."""
    import jsonschema
    from .schema import BENCH_SCHEMA
    jsonschema.validate(doc, BENCH_SCHEMA)


# ---- tables ---------------------------------------------------------------

def _table(head: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _f(x, fmt: str) -> str:
    return "–" if x is None else format(x, fmt)


def ppl_table(doc: dict) -> str:
    rows = []
    for r in doc["results"]:
        pc = r["kld_percentiles"]
        rows.append([r["cache"], f"{r['bpv']:g}", f"{r['kld']:.5f} ± {r['kld_err']:.5f}", f"{pc['p99']:.4f}",
                     f"{r['ppl']:.4f} ± {r['ppl_err']:.4f}", f"{r['ppl_ratio']:.4f} ± {r['ppl_ratio_err']:.4f}",
                     f"{100 * r['same_top']:.2f} ± {100 * r['same_top_err']:.2f}", _f(r["kv_mib"], ".2f")])
    return _table(["cache K/V", "bits/value", "KLD vs f16", "KLD p99", "PPL", "PPL ratio", "same top %",
                   "KV MiB"], rows)


def speed_table(doc: dict) -> str:
    rows = []
    for r in sorted(doc["results"], key=lambda r: (r["test"][:2] != "pp", r["depth"], r["engine"])):
        rows.append([r["engine"], r["cache"], f"{r['bpv']:g}", r["test"], str(r["depth"]),
                     f"{r['tok_s']:.1f} ± {r['tok_s_sd']:.1f}", _f(r.get("vs_f16"), ".2f"),
                     _f(r.get("vs_q8_0"), ".2f")])
    out = _table(["engine", "cache K/V", "bits", "test", "depth", "tok/s", "vs f16", "vs q8_0"], rows)
    if doc.get("memory"):  # the bindings path sees llama.cpp's allocation log
        out += "\n\nKV cache allocated (llama.cpp's log):\n\n" + _table(
            ["cache K/V", "cells", "KV MiB", "bytes/token/layer"],
            [[m["cache"], str(m["n_ctx"]), _f(m["kv_mib"], ".2f"), _f(m["kv_bytes_per_token_layer"], ".1f")]
             for m in doc["memory"]])
    return out


def niah_table(doc: dict) -> str:
    s = doc["settings"]
    head = ["cache K/V", "bits", "length"] + [f"depth {d:g}" for d in s["depths"]]
    rows = []
    for c in [x["cache"] for x in doc["summary"]]:
        for L in s["lengths"]:
            cells = {x["depth"]: x["accuracy"] for x in doc["results"] if x["cache"] == c and x["length"] == L}
            bpv = next(x["bpv"] for x in doc["results"] if x["cache"] == c)
            rows.append([c, f"{bpv:g}", str(L)] + [f"{cells[d]:.2f}" for d in s["depths"]])
    summ = ", ".join(f"{x['cache']} {x['accuracy']:.2f}" for x in doc["summary"])
    return _table(head, rows) + f"\n\nMean accuracy: {summ}"


TABLES = {"ppl": ppl_table, "speed": speed_table, "niah": niah_table}


def markdown(doc: dict) -> str:
    kind = doc["kind"]
    title = {"ppl": "Quality against an f16 cache", "speed": "Speed at depth", "niah": "Needle in a haystack"}[kind]
    s = doc["settings"]
    head = [f"# {title}: {doc['model']['file']}", "",
            f"`{doc['command']}`", "",
            f"tq-gguf {doc['tq_gguf']['version']}, build `{doc['tq_gguf']['series']}`; "
            f"CPU {doc['system']['cpu']}" + (f"; GPU {doc['system']['gpu']['name']}" if doc["system"]["gpu"] else "")
            + "; settings: " + ", ".join(f"{k} {v}" for k, v in s.items()), ""]
    return "\n".join(head) + "\n" + TABLES[kind](doc) + "\n"


# ---- plots ----------------------------------------------------------------

def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot(doc: dict, path: Path) -> Path:
    plt = _plt()
    kind = doc["kind"]
    if kind == "ppl":
        fig, ax = plt.subplots(figsize=(6, 4))
        pts = [r for r in doc["results"] if r["kld"] > 0]
        ax.errorbar([r["bpv"] for r in pts], [r["kld"] for r in pts], yerr=[r["kld_err"] for r in pts],
                    fmt="o", capsize=3)
        for r in pts:
            ax.annotate(r["cache"], (r["bpv"], r["kld"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_yscale("log")
        ax.set_xlabel("bits per cached value")
        ax.set_ylabel("mean KLD vs f16 cache (nats)")
        ax.set_title(f"quality vs bits: {doc['model']['file']}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    elif kind == "speed":
        tests = sorted({r["test"] for r in doc["results"]}, key=lambda t: t[:2] != "pp")
        fig, axes = plt.subplots(1, len(tests), figsize=(5 * len(tests), 4), squeeze=False)
        names = list(dict.fromkeys(r["cache"] for r in doc["results"]))
        for ax, t in zip(axes[0], tests):
            for (eng, c) in sorted({(r["engine"], r["cache"]) for r in doc["results"]}):
                rs = sorted((r for r in doc["results"] if r["test"] == t and r["cache"] == c and r["engine"] == eng),
                            key=lambda r: r["depth"])
                ax.errorbar([r["depth"] for r in rs], [r["tok_s"] for r in rs], yerr=[r["tok_s_sd"] for r in rs],
                            marker="o", capsize=3, linestyle="-" if eng == "bindings" else "--",
                            color=f"C{names.index(c) % 10}",
                            label=c if eng == "bindings" else f"{c} (llama-bench)")
            ax.set_xlabel("depth (tokens in the cache)")
            ax.set_ylabel("tokens/s")
            ax.set_title(t)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(f"speed vs depth: {doc['model']['file']}", fontsize=9)
    else:
        s = doc["settings"]
        caches = [x["cache"] for x in doc["summary"]]
        fig, axes = plt.subplots(1, len(caches), figsize=(3.2 * len(caches), 3.2), squeeze=False)
        for ax, c in zip(axes[0], caches):
            grid = [[next(x["accuracy"] for x in doc["results"]
                          if x["cache"] == c and x["length"] == L and x["depth"] == d) for L in s["lengths"]]
                    for d in s["depths"]]
            ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
            ax.set_xticks(range(len(s["lengths"])), [str(L) for L in s["lengths"]], fontsize=7)
            ax.set_yticks(range(len(s["depths"])), [f"{d:g}" for d in s["depths"]], fontsize=7)
            ax.set_xlabel("context length")
            ax.set_ylabel("needle depth")
            ax.set_title(c, fontsize=9)
        fig.suptitle(f"needle retrieval accuracy: {doc['model']['file']}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
