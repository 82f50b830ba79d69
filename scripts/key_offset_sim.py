#!/usr/bin/env python3
"""What a positional key offset would do for turbo3 keys: a simulation on captured Q/K/V.

Softmax ignores a per-query constant, so calibration subtracts the post-RoPE key mean
c_k. A constant pre-RoPE mean m turns, after RoPE, into RoPE(pos, m): a vector that
rotates with the key's position, which c_k cannot remove in the fast-rotating channel
pairs. Subtracting RoPE(pos, m) before quantizing and adding q.RoPE(pos, m) back to the
logit (a per-head bias the runtime would have to compute) leaves less key energy for
the 3-bit quantizer.

This script captures post-RoPE Q/K/V through the patched runtime (the tq_q/tq_k/tq_v
tensors of patch 0007) on calibration windows and held-out windows, quantizes K only
(V and the first --sink-cells positions exact, as the sink store keeps them) with

    q4_0        upstream q4_0 after the Hadamard rotation (4.5 bits/value)
    whiten      turbo3 with calibrate's key transform (whiten, --alpha; offset c_k)
    whiten+pos  turbo3, the same transform fitted on k - RoPE(pos, m), RoPE(pos, m) added back

and prints, per layer and summed, the relative error of every head's attention output
(||o - o_hat||^2 / ||o||^2 over the second half of each window) and the mean KL divergence
of the attention weights. The output error is the proxy to trust: in the 2026-11-23
experiments (docs/calibration.md) it agreed in sign with llama.cpp's model KLD where the
attention-weight KL did not. It is a simulation; the runtime has the offset since patch 0011
(`tq-gguf calibrate --pos-offset`).

    python scripts/key_offset_sim.py MODEL.gguf --calib-text CALIB.txt --heldout TEST.txt
        [--ctx 1024] [--windows 3] [--alpha 0.125] [--layers 0,3,10] [--sink-cells 4]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tq_gguf import attnsim, rotation, runtime, turbo  # noqa: E402
from tq_gguf.calib import calibrate as cal  # noqa: E402
from tq_gguf.calib import capture as cap  # noqa: E402
from tq_gguf.calib import fit as fitmod  # noqa: E402
from tq_gguf.calib import ropepos  # noqa: E402

# llama.cpp's RoPE layout per architecture: the one table (calib/ropepos.py)
ROPE_TYPE = ropepos.ROPE_LAYOUT


def layer_attention(fields, arch: str, n_layer: int, d: int) -> list[tuple[float, float, int | None]]:
    """(RoPE base, kq scale, sliding window or None) of every layer, as llama.cpp builds them.
    gemma3: Q is scaled in the graph before attention (kq scale 1), and with a sliding window
    every `pattern`-th layer is global (rope.freq_base) and the others local (rope.freq_base_swa)."""
    def get(key, default=None):
        f = fields.get(f"{arch}.{key}")
        return f.contents() if f is not None else default
    base = float(get("rope.freq_base", 10000.0))
    scale = 1.0 if arch == "gemma3" else float(get("attention.scale", d ** -0.5))
    swa = int(get("attention.sliding_window", 0)) if arch == "gemma3" else 0
    if not swa:
        return [(base, scale, None)] * n_layer
    pattern = int(get("attention.sliding_window_pattern", 6))
    base_swa = float(get("rope.freq_base_swa", 10000.0))
    return [(base_swa, scale, swa) if il % pattern < pattern - 1 else (base, scale, None) for il in range(n_layer)]


def _layer(d: int, base: float, kind: str) -> ropepos.RopeLayer:
    return ropepos.RopeLayer(kind, d, ropepos.rope_theta(d, base))


def rope_pairs(d: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Channel indices (x0, x1) of the d/2 rotated pairs, pair i at frequency base^(-2i/d)."""
    return _layer(d, 10000.0, kind).pairs()


def rope(x: np.ndarray, pos: np.ndarray, base: float, kind: str, inverse: bool = False) -> np.ndarray:
    """RoPE of x [T, ..., d] at positions pos [T] (inverse: rotate back), the whole head rotated."""
    return _layer(x.shape[-1], base, kind).apply(x, pos, inverse)


class RawCapture(cap.Capture):
    """The captured tensors of one window, as float64 [tokens, heads, d] per (kind, layer)."""

    def _on_eval(self, t, ask, _user):
        try:
            m = cap._NAME.match(self._lib.ggml_get_name(t).decode())
            if not m:
                return not ask
            if ask:
                return True
            self.raw.setdefault((m.group(1), int(m.group(2))), []).append(self._read(t))
        except BaseException as e:  # never raise through C
            self.error = self.error or e
        return True

    def window(self, toks: list[int]) -> dict:
        self.raw = {}
        self.session.clear()
        nb = self.session.n_batch
        for p in range(0, len(toks), nb):
            chunk = toks[p:p + nb]
            self.session.eval(chunk, p, outputs=np.zeros(len(chunk), bool))
            if self.error:
                raise RuntimeError(f"capture failed: {self.error}") from self.error
        return {k: np.concatenate(v) for k, v in self.raw.items()}


def errors(q, k, kh, v, scale: float, window: int | None) -> tuple[float, float]:
    """Attention-output error (mean over query heads of ||o - o_hat||^2 / ||o||^2) and the
    attention-weight KL, over the second half of the window."""
    ref = attnsim.attention(q, k, v, "f32", "f32", scale=scale, window=window)
    got = attnsim.attention(q, kh, v, "f32", "f32", scale=scale, window=window)
    half = slice(q.shape[0] // 2, q.shape[0])
    o, oh = ref.out[half], got.out[half]
    oe = ((o - oh) ** 2).sum(axis=(0, 2)) / (o ** 2).sum(axis=(0, 2))
    return float(oe.mean()), attnsim.kl_divergence(ref.probs[:, half], got.probs[:, half])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--calib-text", type=Path, required=True)
    ap.add_argument("--heldout", type=Path, required=True)
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--windows", type=int, default=3, help="calibration windows and held-out windows, each")
    ap.add_argument("--alpha", type=float, default=0.125)
    ap.add_argument("--layers", default=None, help="comma-separated layers (default: all)")
    ap.add_argument("--sink-cells", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    import gguf
    info = cal.model_info(a.model)
    arch = info["arch"]
    if arch not in ROPE_TYPE:
        print(f"{arch}: not simulated here (its RoPE layout is not in ROPE_TYPE)", file=sys.stderr)
        return 2
    fields = gguf.GGUFReader(str(a.model)).fields
    per_layer = layer_attention(fields, arch, info["n_layer"], info["d_k"])
    kind = ROPE_TYPE[arch]

    model = runtime.Model(a.model)
    try:
        rc = RawCapture(model, n_ctx=a.ctx, threads=a.threads, n_batch=a.ctx, skip=0)
        try:
            wins = []
            for path in (a.calib_text, a.heldout):
                stream = model.tokenize(path.read_text(errors="replace"), add_bos=False)
                seqs = cal.windows(model, stream, a.windows * a.ctx, a.ctx, str(path))[:a.windows]
                wins.append([rc.window(s) for s in seqs])
                print(f"captured {len(seqs)} windows of {a.ctx} from {path.name}", file=sys.stderr)
        finally:
            rc.close()
    finally:
        model.close()
    calw, test = wins
    layers = [int(x) for x in a.layers.split(",")] if a.layers else range(info["n_layer"])
    ns = a.sink_cells
    pos = np.arange(a.ctx, dtype=np.float64)
    names = ("q4_0", "whiten", "whiten+pos")
    total = {n: np.zeros(2) for n in names}
    energy = np.zeros(3)  # E[(q.(k - offset))^2] on held-out windows: raw, post-RoPE mean, RoPE(pos, m)
    print("| layer | " + " | ".join(f"{n} out err | {n} attn KL" for n in names) + " |")
    print("|---|" + "---|---|" * len(names))
    for il in layers:
        base, scale, window = per_layer[il]
        ks = np.concatenate([w[("k", il)][ns:] for w in calw])
        qs = np.concatenate([w[("q", il)][ns:] for w in calw])
        h, d = ks.shape[1], ks.shape[2]
        g = qs.shape[1] // h
        qq = qs.reshape(len(qs), h, g, d)
        q2 = np.einsum("thgi,thgj->hij", qq, qq) / (len(qs) * g)
        m = np.mean([rope(w[("k", il)], pos, base, kind, inverse=True)[ns:] for w in calw], axis=(0, 1))  # [h, d]
        res = np.concatenate([(w[("k", il)] - rope(np.broadcast_to(m, w[("k", il)].shape).copy(), pos, base, kind))[ns:]
                              for w in calw])
        r = rotation.rotation_matrix(d)

        def fit(x):
            mu = x.mean(0)
            cov = np.einsum("thi,thj->hij", x - mu, x - mu) / len(x)
            return [(r @ fitmod._unit_gain(fitmod.whiten_matrix(cov[j], q2[j], a.alpha)), mu[j]) for j in range(h)]

        fits = {"whiten": (fit(ks), None), "whiten+pos": (fit(res), m)}
        acc = {n: np.zeros(2) for n in names}
        for w in test:
            q, k, v = w[("q", il)], w[("k", il)], w[("v", il)]
            cands = {"q4_0": np.stack([attnsim.cache_roundtrip(k[:, j] @ r.T, "q4_0") @ r for j in range(h)], 1)}
            qw = q[ns:].reshape(len(q) - ns, h, g, d)
            mq = np.einsum("thgi,thgj->hij", qw, qw) / (len(qw) * g)  # E[q q^T], any query with any key
            for i, (tr, mpre) in enumerate([(None, None)] + list(fits.values())):
                off = 0.0 if tr is None else np.stack([c for _, c in tr])
                if mpre is not None:
                    off = off + rope(np.broadcast_to(mpre, k.shape).copy(), pos, base, kind)[ns:]
                e = k[ns:] - off
                energy[i] += np.einsum("thi,hij,thj->", e, mq, e) / len(e)
            for name, (tr, mpre) in fits.items():
                off = rope(np.broadcast_to(mpre, k.shape).copy(), pos, base, kind) if mpre is not None else np.zeros_like(k)
                kh = []
                for j, (aj, cj) in enumerate(tr):
                    o = off[:, j] + cj
                    y = ((k[:, j] - o) @ aj.T).astype(np.float32)
                    kh.append(turbo.roundtrip(y, "turbo3") @ np.linalg.inv(aj).T + o)
                cands[name] = np.stack(kh, 1)
            for name, kh in cands.items():
                kh[:ns] = k[:ns]
                acc[name] += np.array(errors(q, k, kh, v, scale, window)) / len(test)
        for n in names:
            total[n] += acc[n]
        print(f"| {il} | " + " | ".join(f"{acc[n][0]:.4f} | {acc[n][1]:.4f}" for n in names) + " |", flush=True)
    print(f"| sum | " + " | ".join(f"{total[n][0]:.4f} | {total[n][1]:.4f}" for n in names) + " |")
    print(f"query-weighted key energy left for the quantizer: {energy[1] / energy[0]:.3f} of the raw keys' after "
          f"the post-RoPE mean, {energy[2] / energy[0]:.3f} after RoPE(pos, m) and the residual mean")
    b = total["q4_0"]
    for n in names:
        print(f"{n:11s} output error {total[n][0] / b[0]:.2f}x q4_0, attention KL {total[n][1] / b[1]:.2f}x q4_0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
