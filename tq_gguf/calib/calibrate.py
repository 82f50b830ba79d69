"""`tq-gguf calibrate`: capture, fit, choose, validate, write.

1. Calibration tokens: ``text`` (user data) or, by default, text the model
   writes itself from short neutral prompts (no dataset needed).
2. Capture Q/K/V moments through the patched runtime (capture.py), or from the
   Hugging Face checkpoint through transformers (hfcapture.py, `convert --capture hf`).
3. Fit each transform kind (fit.py), write each as a side-car calibration and
   measure held-out KLD against an f16 cache through the real runtime
   (LLAMA_TURBO_CALIB=side-car); the uncalibrated default is measured the same
   way (LLAMA_TURBO_CALIB=off). Keep the best; refuse when it is not better.
4. With a bits-per-value budget, a per-layer type policy: the measured KLD
   gain of giving each layer's K or V q8_0 (LLAMA_TURBO_POLICY, one context
   each), chosen greedily by gain per bit, kept only if the whole policy
   measures better than the uniform type.
5. Copy the model with the turbo.* keys (schema.py).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import runtime
from ..bench.caches import BITS_PER_VALUE, Cache
from ..bench.progress import bar
from ..bench.report import file_sha256 as _sha256
from ..codebook import CODEBOOKS
from . import DEFAULT_CTX, DEFAULT_TOKENS
from . import fit as fitmod
from . import ropepos
from .capture import Capture
from .schema import CalibError, Calibration, write_model, write_sidecar

# architectures whose attention the runtime transforms exactly (no soft-capping or
# learned sinks); others are refused rather than silently miscalibrated
SUPPORTED_ARCHS = ("llama", "qwen2", "qwen3", "gemma3", "mistral3", "granite", "olmo2", "phi3")

PROMPTS = (
    "The history of the city begins", "Here is a short guide to", "Once upon a time, in a small village,",
    "The main reasons for this are", "In the following section we describe", "Dear team,\n\nI wanted to",
    "A recipe for a simple dinner:", "The weather report for the coming week", "Chapter 1\n\n",
    "How does a computer store numbers?", "The committee met on Tuesday to discuss", "def parse_config(path):\n",
)
@dataclass(frozen=True)
class Candidate:
    k: str                # fit.K_KINDS
    v: str                # fit.V_KINDS
    alpha: float = 0.25   # exponent of the `scale` kind
    sink: bool = True     # make position 0's K/V exactly representable
    pos: bool = False     # positional key offset (turbo.layer.N.k.pos_mean)

    @property
    def name(self) -> str:
        k = f"{self.k}{self.alpha:g}" if self.k in ("scale", "whiten") else self.k
        return f"{k}/{self.v}" + ("+sink" if self.sink else "") + ("+pos" if self.pos else "")


# measured on SmolLM2 and Gemma-3 (docs/calibration.md, results/calib/ctx2048): alpha 1/8 or
# 3/16 won; alpha 1/4, `scale` and a value mean were not chosen. The positional key offset
# (tried with --pos-offset) cut SmolLM2's turbo3 KLD by 30 %. The no-sink candidates show
# what the sink alignment adds.
CANDIDATES = (Candidate("whiten", "rotate", 0.125, pos=True), Candidate("whiten", "rotate", 0.1875, pos=True),
              Candidate("whiten", "rotate", 0.125, sink=False, pos=True),
              Candidate("whiten", "rotate", 0.125), Candidate("whiten", "rotate", 0.1875),
              Candidate("whiten", "rotate", 0.125, sink=False))


@dataclass
class Settings:
    text: Path | None = None          # calibration text (default: generated)
    tokens: int = DEFAULT_TOKENS      # calibration tokens
    types: tuple[str, ...] = ("turbo3", "turbo2")
    budget_bpv: float | None = None   # per-layer policy budget
    heldout: Path | None = None       # validation text (default: generated with other prompts)
    ctx: int = DEFAULT_CTX            # capture window and validation context
    val_chunks: int = 4
    sweep_chunks: int = 2
    threads: int = os.cpu_count() or 2
    seed: int = 1234
    kinds: tuple[Candidate, ...] = CANDIDATES
    hf_dir: Path | None = None        # take the statistics from this HF checkpoint (transformers)
    hf_arch: object = None            # its convert.Arch (channel order, Q scale)
    sink_cells: int | None = None     # turbo.sink_cells to write (validated with it); None: runtime default
    pos_offset: bool = False          # also try the positional key offset (candidates with pos=True)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def model_info(path: Path) -> dict:
    """Architecture, layer count and head sizes from the GGUF, with clear refusals."""
    import gguf
    try:
        r = gguf.GGUFReader(str(path))
    except Exception as e:
        raise CalibError(f"{path}: not a readable GGUF file ({e})") from None
    f = r.fields
    arch = f["general.architecture"].contents() if "general.architecture" in f else None
    if arch not in SUPPORTED_ARCHS:
        raise CalibError(f"{path}: architecture '{arch}' is not supported by tq-gguf calibrate "
                         f"(supported: {', '.join(SUPPORTED_ARCHS)})")

    def get(key, default=None):
        fld = f.get(f"{arch}.{key}")
        if fld is None:
            return default
        v = fld.contents()
        return v

    n_layer = int(get("block_count"))
    n_embd, n_head = int(get("embedding_length")), get("attention.head_count")
    n_head = int(n_head if not isinstance(n_head, list) else max(n_head))
    d_k = int(get("attention.key_length", n_embd // n_head))
    d_v = int(get("attention.value_length", n_embd // n_head))
    if d_k % 64 or d_v % 64:
        raise CalibError(f"{path}: head size {d_k}/{d_v} is not a multiple of 64; the turbo types need 64, 128, 256, ...")
    if get("attn_logit_softcapping") is not None:
        raise CalibError(f"{path}: attention logit soft-capping breaks the key offset; not supported")
    return {"arch": arch, "n_layer": n_layer, "d_k": d_k, "d_v": d_v}


GEN_LEN = 512  # tokens the model writes per prompt


def generate(model: runtime.Model, n_tokens: int, prompts, seed: int, threads: int, desc: str) -> list[int]:
    """A token stream the model writes itself (temperature 0.8, top-k 40), GEN_LEN tokens per prompt."""
    rng = np.random.default_rng(seed)
    stream: list[int] = []
    nl = model.tokenize("\n", add_bos=False)[-1]
    s = runtime.Session(model, n_ctx=GEN_LEN, n_threads=threads, n_batch=GEN_LEN)
    try:
        with bar(n_tokens, desc, unit="tok") as pb:
            i = 0
            while len(stream) < n_tokens:
                toks = model.tokenize(prompts[i % len(prompts)], add_bos=True)[:GEN_LEN // 4]
                i += 1
                s.clear()
                logits = s.decode(toks, 0)
                n0 = len(toks)
                while len(toks) < GEN_LEN and len(stream) + len(toks) - n0 < n_tokens:
                    z = logits.astype(np.float64) / 0.8
                    top = np.argpartition(z, -40)[-40:]
                    p = np.exp(z[top] - z[top].max())
                    t = int(top[rng.choice(len(top), p=p / p.sum())])
                    if model.is_eog(t):  # keep writing: a newline instead of the end
                        t = nl
                    toks.append(t)
                    logits = s.decode([t], len(toks) - 1)
                    pb.update(1)
                stream += [t for t in toks if t != model.bos] + [nl]
    finally:
        s.close()
    return stream


def windows(model: runtime.Model, stream: list[int], n_tokens: int, ctx: int, what: str) -> list[list[int]]:
    """Windows of ctx tokens read as llama-perplexity reads text: position 0 is BOS when the
    model adds one, otherwise whatever token falls there (the attention sink either way)."""
    if len(stream) < 2 * ctx:
        raise CalibError(f"{what}: {len(stream)} tokens; at least {2 * ctx} are needed for --ctx {ctx}")
    out = []
    for i in range(min(len(stream) // ctx, max(2, n_tokens // ctx))):
        w = list(stream[i * ctx:(i + 1) * ctx])
        if model.add_bos:
            w[0] = model.bos
        out.append(w)
    return out


def _detok(model: runtime.Model, stream: list[int]) -> str:
    return "".join(model.piece(t) for t in stream)


class Evaluator:
    """Held-out KLD against an f16 cache, through the real runtime, for a side-car calibration."""

    def __init__(self, model_path: Path, text: str, ctx: int, chunks: int, threads: int, workdir: Path):
        self.model_path, self.text, self.ctx, self.chunks, self.threads = model_path, text, ctx, chunks, threads
        self.workdir = workdir
        self.n = 0

    def run(self, calib: Calibration | None, caches: list[Cache], chunks: int | None = None) -> dict[str, dict]:
        from ..bench.quality import run_ppl
        if calib is None:
            env = "off"
        else:
            self.n += 1
            env = str(write_sidecar(self.workdir / f"candidate-{self.n}.gguf", calib))
        with runtime.environ({"LLAMA_TURBO_CALIB": env}):
            doc = run_ppl(self.model_path, self.text, caches, ctx=self.ctx, chunks=chunks or self.chunks,
                          threads=self.threads, show_progress=False)
        return {r["cache"]: r for r in doc["results"]}


# the types a layer may take, per requested type and side: every K/V pair they make is in
# the CUDA build's default FlashAttention list (patches/0006), so no layer falls back to the CPU
POLICY_OPTIONS = {
    "turbo3": {"k": ("turbo3", "q8_0"), "v": ("turbo3", "turbo2")},
    "turbo2": {"k": ("turbo2", "turbo3", "q8_0"), "v": ("turbo2",)},
}


def _policy_sweep(ev: Evaluator, calib: Calibration, typ: str, budget: float,
                  layer_vals: dict[int, int]) -> tuple[dict[str, list[str]] | None, dict]:
    """A per-layer K/V type policy for requests of ``typ`` within ``budget`` bits per value.

    Measures, one context each (LLAMA_TURBO_POLICY), the KLD change of giving one
    layer's K or V each other option, paired against the uniform type on the same
    tokens; then every layer side independently takes the option minimising
    dKLD + lambda * bits, with lambda the smallest that fits the budget.
    None when no mix beats the uniform type's bits within the budget.
    """
    opts = POLICY_OPTIONS[typ]
    total = 2 * sum(layer_vals.values())
    items = [(side, il, o) for il in sorted(layer_vals) for side in ("k", "v") for o in opts[side] if o != typ]
    group = 8
    delta: dict[tuple[str, int, str], float] = {}
    with bar(len(items), f"policy {typ}: sensitivity", unit="ctx") as pb:
        for g0 in range(0, len(items), group):
            part = items[g0:g0 + group]
            # the uniform type in every group: changes are paired differences on the same tokens
            base = Cache(typ, typ, label="uniform", env=(("LLAMA_TURBO_POLICY", "off"),))
            caches = [Cache(typ, typ, label=f"{s}{il}={o}", env=(("LLAMA_TURBO_POLICY", f"{s}{il}={o}"),))
                      for s, il, o in part]
            res = ev.run(calib, [base, *caches], chunks=ev.sweep_chunks)
            for key, c in zip(part, caches):
                delta[key] = res[c.name]["kld"] - res["uniform"]["kld"]
            pb.update(len(part))

    def choose(lam: float) -> tuple[dict[tuple[str, int], str], float]:
        pick, bits = {}, 0.0
        for il, n in layer_vals.items():
            for side in ("k", "v"):
                cost = {o: (delta[(side, il, o)] if o != typ else 0.0) + lam * BITS_PER_VALUE[o] * n
                        for o in opts[side]}
                o = min(cost, key=cost.get)
                pick[(side, il)] = o
                bits += BITS_PER_VALUE[o] * n
        return pick, bits / total

    lo, hi = 0.0, 1.0
    while choose(hi)[1] > budget and hi < 1e6:
        hi *= 2
    if choose(hi)[1] > budget:
        return None, {"reason": f"no mix fits {budget} bits per value"}
    for _ in range(50):  # smallest lambda within budget: the most quality the bits buy
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if choose(mid)[1] <= budget else (mid, hi)
    pick, bpv = choose(hi)
    if all(o == typ for o in pick.values()):
        return None, {"reason": "no layer's change measured a gain within the budget"}
    n_layer = calib.n_layer
    pol = {"k": [typ] * n_layer, "v": [typ] * n_layer}
    for (side, il), o in pick.items():
        pol[side][il] = o
    changes = {f"{s}{il}": o for (s, il), o in sorted(pick.items(), key=lambda x: (x[0][1], x[0][0])) if o != typ}
    return pol, {"changes": changes, "bpv": round(bpv, 4),
                 "sweep_delta": {f"{s}{il}={o}": round(d, 6) for (s, il, o), d in delta.items()}}


def run(model_path: Path, out: Path, st: Settings) -> Calibration:
    t0 = time.time()
    model_path, out = Path(model_path), Path(out)
    if not model_path.is_file():
        raise CalibError(f"{model_path}: no such file")
    if out.exists() and out.resolve() == model_path.resolve():
        raise CalibError("the output must not be the input model")
    for t in st.types:
        if t not in ("turbo3", "turbo2"):
            raise CalibError(f"--types: {t!r} is not a turbo type (turbo3, turbo2)")
    info = model_info(model_path)
    _log(f"calibrate: {model_path.name} ({info['arch']}, {info['n_layer']} layers, head {info['d_k']})")
    kinds, rope = st.kinds, None
    if st.pos_offset:
        rope, why = (None, "the transformers capture keeps no position moments") if st.hf_dir is not None \
            else ropepos.from_gguf(model_path, info["n_layer"], info["d_k"])
        if rope is None:
            _log(f"calibrate: no positional key offset: {why}")
    if rope is None:
        kinds = tuple(c for c in kinds if not c.pos)

    model = runtime.Model(model_path)
    try:
        if st.text:
            stream = model.tokenize(Path(st.text).read_text(errors="replace"), add_bos=False)
            source = {"text": str(st.text), "sha256": _sha256(Path(st.text))}
        else:
            stream = generate(model, st.tokens, PROMPTS[:6], st.seed, st.threads, "calibration text")
            source = {"text": "generated", "prompts": list(PROMPTS[:6]), "seed": st.seed}
        seqs = windows(model, stream, st.tokens, st.ctx, str(st.text or "generated text"))
        if st.heldout:
            val_text = Path(st.heldout).read_text(errors="replace")
        else:
            val_text = _detok(model, generate(model, (st.val_chunks + 1) * st.ctx, PROMPTS[6:], st.seed + 1,
                                              st.threads, "held-out text"))
        if st.hf_dir is not None:
            from .hfcapture import capture_hf
            with bar(sum(map(len, seqs)), "capture Q/K/V (transformers)", unit="tok") as pb:
                stats = capture_hf(st.hf_dir, seqs, st.hf_arch.interleave, st.hf_arch.q_prescaled,
                                   progress=pb.update)
        else:
            cap = Capture(model, n_ctx=st.ctx, threads=st.threads, rope=rope)
            try:
                with bar(sum(map(len, seqs)), "capture Q/K/V", unit="tok") as pb:
                    stats = cap.run(seqs, progress=pb.update)
            finally:
                cap.close()
    finally:
        model.close()

    sinks_env = {"LLAMA_TURBO_SINKS": st.sink_cells} if st.sink_cells is not None else {}
    with tempfile.TemporaryDirectory(prefix="tq-calib-") as wd, runtime.environ(sinks_env):
        ev = Evaluator(model_path, val_text, st.ctx, st.val_chunks, st.threads, Path(wd))
        ev.sweep_chunks = st.sweep_chunks
        caches = [Cache(t, t) for t in st.types]
        primary = caches[0].name
        with bar(len(kinds) + 1, "fit + validate", unit="run") as pb:
            default = ev.run(None, caches)
            pb.update(1)
            trials = []
            for cand in kinds:
                layers = fitmod.fit(stats, info["n_layer"], cand.k, cand.v, sink=cand.sink, alpha=cand.alpha,
                                    pos=cand.pos)
                cal = Calibration(info["arch"], info["n_layer"], layers,
                                  codebooks={t: list(CODEBOOKS[t]) for t in ("turbo3", "turbo2")})
                trials.append((cand, cal, ev.run(cal, caches)))
                pb.update(1)
        table = {"default": {c: round(r["kld"], 6) for c, r in default.items()}}
        for cand, _, res in trials:
            table[cand.name] = {c: round(r["kld"], 6) for c, r in res.items()}
        for name, row in table.items():
            _log(f"  {name:24s} " + "  ".join(f"{c} KLD {v:.5f}" for c, v in row.items()))
        chosen, best, res = min(trials, key=lambda t: t[2][primary]["kld"])
        if res[primary]["kld"] >= default[primary]["kld"]:
            raise CalibError(f"no calibration beat the uncalibrated default on held-out text "
                             f"({primary} KLD {res[primary]['kld']:.5f} vs default {default[primary]['kld']:.5f}); "
                             "nothing written. Try more --tokens or your own --text.")
        policy_info = {}
        if st.budget_bpv is not None:
            layer_vals = {il: lt.k_off.size for il, lt in enumerate(best.layers) if lt is not None}
            for c in caches:
                pol, pinfo = _policy_sweep(ev, best, c.k, st.budget_bpv, layer_vals)
                if pol is not None:
                    trial = Calibration(best.arch, best.n_layer, best.layers, {c.k: pol}, best.codebooks)
                    got = ev.run(trial, [c])[c.name]
                    pinfo["kld"] = round(got["kld"], 6)
                    if got["kld"] < res[c.name]["kld"]:
                        best.policy[c.k] = pol
                        pinfo["kept"] = True
                    else:
                        pinfo["kept"] = False
                        pinfo["reason"] = "the policy did not measure better than the uniform type"
                policy_info[c.k] = pinfo
                _log(f"  policy {c.k}: " + json.dumps({k: v for k, v in pinfo.items() if k != 'sweep_delta'}))
            best.budget_bpv = st.budget_bpv
    best.sink_cells = st.sink_cells

    best.info = {"tq_gguf": __import__("tq_gguf").__version__, "k_transform": chosen.k, "v_transform": chosen.v,
                 "alpha": chosen.alpha, "sink": chosen.sink, "pos": chosen.pos,
                 "source": source, "capture": "transformers" if st.hf_dir is not None else "gguf",
                 "tokens": int(sum(map(len, seqs))), "ctx": st.ctx,
                 "model_sha256": _sha256(model_path), "seconds": round(time.time() - t0, 1)}
    best.validation = {"heldout": str(st.heldout) if st.heldout else "generated", "ctx": st.ctx,
                       "chunks": st.val_chunks, "kld": table, "chosen": chosen.name,
                       "ppl_ratio": {c: round(r["ppl_ratio"], 5) for c, r in res.items()},
                       "policy": policy_info}
    size = model_path.stat().st_size
    with bar(size, f"write {out.name}", unit="B") as pb:
        write_model(model_path, out, best, progress=pb.update)
    _log(f"wrote {out} ({chosen.name}; {primary} KLD {res[primary]['kld']:.5f} vs default "
         f"{default[primary]['kld']:.5f}) in {time.time() - t0:.0f} s")
    return best
