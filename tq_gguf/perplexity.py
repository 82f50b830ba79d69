"""Run the patched llama-perplexity and parse its result."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from . import tools

_FINAL = re.compile(r"Final estimate: PPL = ([0-9.eE+-]+|nan|inf) \+/- ([0-9.eE+-]+|nan|inf)")
_KV = re.compile(r"KV buffer size\s*=\s*([0-9.]+) MiB")


@dataclass
class PplResult:
    ppl: float
    err: float
    kv_mib: float | None
    log: str

    @property
    def finite(self) -> bool:
        return math.isfinite(self.ppl) and math.isfinite(self.err)


def perplexity(model: Path, text: Path, ctx: int = 512, chunks: int = 4, ctk: str = "f16",
               ctv: str = "f16", flash_attn: str = "auto", threads: int | None = None,
               extra: tuple[str, ...] = (), timeout: float = 1800, env=None) -> PplResult:
    args = ["-m", str(model), "-f", str(text), "-c", str(ctx), "--chunks", str(chunks),
            "-ctk", ctk, "-ctv", ctv, "-fa", flash_attn, "-t", str(threads or os.cpu_count() or 2),
            "-ngl", "0", "-lv", "4", *extra]
    r = tools.run_tool("llama-perplexity", *args, timeout=timeout, env=env)
    out = r.stdout + r.stderr
    m = _FINAL.search(out)
    if r.returncode != 0 or not m:
        tail = "\n".join(out.splitlines()[-15:])
        raise RuntimeError(f"llama-perplexity failed (exit {r.returncode}):\n{tail}")
    kv = _KV.search(out)
    return PplResult(float(m.group(1)), float(m.group(2)), float(kv.group(1)) if kv else None, out)


_KLD_FIELDS = {
    "kld": r"Mean\s+KLD:\s+([-0-9.eE+]+) ±\s*([-0-9.eE+]+)",
    "ppl_ratio": r"Mean PPL\(Q\)/PPL\(base\)\s+:\s+([-0-9.eE+]+) ±\s*([-0-9.eE+]+)",
    "ppl": r"Mean PPL\(Q\)\s+:\s+([-0-9.eE+]+) ±\s*([-0-9.eE+]+)",
    "same_top": r"Same top p:\s+([-0-9.eE+]+) ±\s*([-0-9.eE+]+) %",
    "kld_p99": r"99\.0%\s+KLD:\s+([-0-9.eE+]+)()",
}
_KV_SIZE = re.compile(r"llama_kv_cache: size = +([0-9.]+) MiB \( *(\d+) cells, +(\d+) layers, +\d+/(\d+) seqs\), "
                      r"K \((\w+)\): +([0-9.]+) MiB, V \((\w+)\): +([0-9.]+) MiB")


@dataclass
class KvCacheSize:
    """The first KV cache a run allocated (llama_kv_cache's log line)."""
    mib: float
    cells: int   # per stream x streams
    layers: int
    k_type: str
    k_mib: float
    v_type: str
    v_mib: float

    @property
    def bytes_per_token_layer(self) -> float:
        return self.mib * 2**20 / (self.cells * self.layers)


def kv_cache_size(log: str) -> KvCacheSize | None:
    m = _KV_SIZE.search(log)
    if not m:
        return None
    return KvCacheSize(float(m.group(1)), int(m.group(2)) * int(m.group(4)), int(m.group(3)),
                       m.group(5), float(m.group(6)), m.group(7), float(m.group(8)))


@dataclass
class KldResult:
    kld: float
    kld_err: float
    ppl: float
    ppl_err: float
    ppl_ratio: float
    ppl_ratio_err: float
    same_top: float
    same_top_err: float
    kld_p99: float
    kv_bytes_per_token_layer: float | None


def kl_divergence(model: Path, base: Path, ctx: int, chunks: int, ctk: str, ctv: str,
                  threads: int | None = None, env=None, timeout: float = 3600) -> KldResult:
    """llama-perplexity --kl-divergence against logits saved with --kl-divergence-base."""
    args = ["-m", str(model), "--kl-divergence-base", str(base), "--kl-divergence",
            "-c", str(ctx), "--chunks", str(chunks), "-ctk", ctk, "-ctv", ctv, "-fa", "on",
            "-t", str(threads or os.cpu_count() or 2), "-ngl", "0", "-lv", "4"]
    r = tools.run_tool("llama-perplexity", *args, timeout=timeout, env=env)
    out = r.stdout + r.stderr
    vals = {}
    for k, pat in _KLD_FIELDS.items():
        m = re.search(pat, out)
        if r.returncode != 0 or not m:
            tail = "\n".join(out.splitlines()[-15:])
            raise RuntimeError(f"llama-perplexity --kl-divergence failed (exit {r.returncode}, no {k}):\n{tail}")
        vals[k] = float(m.group(1))
        vals[k + "_err"] = float(m.group(2)) if m.group(2) else float("nan")
    kv = kv_cache_size(out)
    per = kv.bytes_per_token_layer if kv else None
    return KldResult(vals["kld"], vals["kld_err"], vals["ppl"], vals["ppl_err"], vals["ppl_ratio"],
                     vals["ppl_ratio_err"], vals["same_top"], vals["same_top_err"], vals["kld_p99"], per)


def save_kld_base(model: Path, text: Path, base: Path, ctx: int, chunks: int,
                  threads: int | None = None, timeout: float = 3600) -> PplResult:
    """f16-cache logits of ``text`` for later --kl-divergence runs."""
    return perplexity(model, text, ctx=ctx, chunks=chunks, ctk="f16", ctv="f16", flash_attn="on",
                      threads=threads, extra=("--kl-divergence-base", str(base)), timeout=timeout)
