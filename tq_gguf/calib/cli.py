"""`tq-gguf calibrate` and `tq-gguf inspect`."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UsageError
from . import DEFAULT_CTX, DEFAULT_TOKENS


def _calibrate(a) -> int:
    from .. import bindings
    bindings.load_first()
    from .calibrate import Settings, run
    from .schema import SINK_CELLS_MAX, CalibError
    types = tuple(t.strip() for t in a.types.split(",") if t.strip())
    st = Settings(text=a.text, tokens=a.tokens, types=types, budget_bpv=a.budget_bpv, heldout=a.heldout,
                  ctx=a.ctx, val_chunks=a.val_chunks, threads=a.threads, seed=a.seed, sink_cells=a.sink_cells,
                  pos_offset=a.pos_offset)
    if a.sink_cells is not None and not 0 <= a.sink_cells <= SINK_CELLS_MAX:
        raise UsageError(f"--sink-cells {a.sink_cells}: give 0 (off) to {SINK_CELLS_MAX}")
    if a.tokens < a.ctx:
        raise UsageError(f"--tokens {a.tokens} is less than one sequence (--ctx {a.ctx})")
    try:
        run(a.model, a.output, st)
    except CalibError as e:
        raise UsageError(str(e)) from None
    return 0


def describe(path: Path) -> str:
    """What calibration a GGUF carries, as text."""
    import json
    from .schema import CalibError, read
    try:
        cal = read(path)
    except CalibError as e:
        raise UsageError(f"{path}: {e}") from None
    except Exception as e:
        raise UsageError(f"{path}: not a readable GGUF file ({e})") from None
    if cal is None:
        return f"{path}: no turbo calibration (the turbo types use the default randomized Hadamard)"
    lines = [f"{path}: turbo calibration v1 for {cal.arch}, {cal.n_layer} layers"]
    lt = next((x for x in cal.layers if x is not None), None)
    n_cal = sum(x is not None for x in cal.layers)
    if lt is not None:
        lines.append(f"  transforms: {n_cal} layers, {lt.k_fwd.shape[0]} KV heads, head {lt.k_fwd.shape[1]}/{lt.v_fwd.shape[1]}; "
                     f"chosen {cal.validation.get('chosen', '?')}")
        n_pos = sum(x is not None and x.k_pos is not None for x in cal.layers)
        lines.append(f"  positional key offset: {n_pos} layers" if n_pos else "  positional key offset: none")
    if cal.codebooks:
        lines.append(f"  codebooks: {', '.join(sorted(cal.codebooks))} (pinned)")
    lines.append(f"  budget: {cal.budget_bpv} bits/value" if cal.budget_bpv is not None else "  budget: none")
    lines.append(f"  sink cells: {cal.sink_cells} per sequence kept exact" if cal.sink_cells is not None
                 else "  sink cells: the runtime's default (LLAMA_TURBO_SINKS, else 4)")
    if cal.policy:
        from ..bench.caches import BITS_PER_VALUE
        for typ, kv in sorted(cal.policy.items()):
            ks, vs = kv.get("k", []), kv.get("v", [])
            bpv = (sum(BITS_PER_VALUE[t] for t in ks) + sum(BITS_PER_VALUE[t] for t in vs)) / max(1, len(ks) + len(vs))
            other = [f"{s}{i}:{t}" for s, lst in (("k", ks), ("v", vs)) for i, t in enumerate(lst) if t != typ]
            lines.append(f"  policy {typ}: {bpv:.3f} bits/value (equal head sizes); "
                         f"{', '.join(other) if other else f'all layers {typ}'}")
    else:
        lines.append("  policy: none (every layer gets the requested type)")
    if cal.info:
        src = cal.info.get("source", {})
        lines.append(f"  calibrated on: {src.get('text', '?')}, {cal.info.get('tokens', '?')} tokens, "
                     f"ctx {cal.info.get('ctx', '?')}, statistics from {cal.info.get('capture', 'gguf')}, "
                     f"tq-gguf {cal.info.get('tq_gguf', '?')}")
    v = cal.validation
    if v:
        lines.append(f"  validation ({v.get('heldout')}, ctx {v.get('ctx')}, {v.get('chunks')} chunks), KLD vs f16:")
        for name, row in v.get("kld", {}).items():
            mark = "  <- chosen" if name == v.get("chosen") else ""
            lines.append(f"    {name:14s} " + "  ".join(f"{c} {x:.5f}" for c, x in row.items()) + mark)
        for typ, p in v.get("policy", {}).items():
            lines.append(f"    policy {typ}: " + json.dumps({k: x for k, x in p.items() if k != 'sweep_delta'}))
    return "\n".join(lines)


def _inspect(a) -> int:
    for p in a.models:
        if not p.is_file():
            raise UsageError(f"{p}: no such file")
        print(describe(p))
    return 0


def add_parsers(sub) -> None:
    c = sub.add_parser("calibrate", help="fit the turbo cache calibration and write it into a copy of the GGUF",
                       description="Capture Q/K/V through the patched runtime, fit per-layer transforms, "
                                   "validate on held-out text (KLD vs an f16 cache) and write MODEL's copy "
                                   "with turbo.* metadata. Refuses to write a calibration that is worse "
                                   "than the uncalibrated default.")
    c.add_argument("model", type=Path)
    c.add_argument("-o", "--output", type=Path, required=True)
    c.add_argument("--text", type=Path, default=None,
                   help="calibration text (default: text the model generates itself)")
    c.add_argument("--heldout", type=Path, default=None,
                   help="validation text (default: generated from other prompts)")
    c.add_argument("--tokens", type=int, default=DEFAULT_TOKENS, help=f"calibration tokens (default {DEFAULT_TOKENS})")
    c.add_argument("--types", default="turbo3,turbo2", help="turbo types to validate; the first decides")
    c.add_argument("--budget-bpv", type=float, default=None,
                   help="choose a per-layer type policy within this many bits per value (e.g. 3.5)")
    c.add_argument("--ctx", type=int, default=DEFAULT_CTX,
                   help=f"window length for capture and validation (default {DEFAULT_CTX}); "
                        "key statistics depend on the positions seen, so match it to the context you serve at")
    c.add_argument("--sink-cells", type=int, default=None, metavar="N",
                   help="write turbo.sink_cells: the runtime keeps each sequence's first N positions exact "
                        "(default: not written; the runtime keeps 4)")
    c.add_argument("--pos-offset", action="store_true",
                   help="also try the positional key offset (turbo.layer.N.k.pos_mean): lower KLD, but its "
                        "logit correction (a per-head attention mask) costs 12-20%% of decode speed, and "
                        "GPU backends other than this build's CUDA turbo kernels run that attention on the CPU "
                        "(docs/calibration.md)")
    c.add_argument("--val-chunks", type=int, default=4)
    c.add_argument("--seed", type=int, default=1234)
    c.add_argument("-t", "--threads", type=int, default=os.cpu_count() or 2)
    c.set_defaults(func=_calibrate)

    i = sub.add_parser("inspect", help="show the turbo calibration a GGUF carries")
    i.add_argument("models", type=Path, nargs="+")
    i.set_defaults(func=_inspect)
