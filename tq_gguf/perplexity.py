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
