#!/usr/bin/env python3
"""Would a codebook fitted to a model's transformed keys beat the pinned one? Captures K on
held-out text, applies a calibrated file's transforms, fits Lloyd-Max levels to the
block-normalised coordinates and prints the quantisation MSE of both (reference codec).

    python scripts/calib_codebook.py MODEL CALIBRATED.gguf --text FILE [--tokens 2048] [--ctx 1024]
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tq_gguf import bindings  # noqa: E402

bindings.load_first()

import numpy as np  # noqa: E402

from tq_gguf import runtime, turbo  # noqa: E402
from tq_gguf.calib import capture  # noqa: E402
from tq_gguf.calib.calibrate import windows  # noqa: E402
from tq_gguf.calib.schema import read  # noqa: E402


class KeyCapture(capture.Capture):
    """Capture that also keeps every counted key [tokens, heads, d] per layer."""

    def __init__(self, *a, **kw):
        self.raw: dict[int, list] = {}
        super().__init__(*a, **kw)

    def _on_eval(self, t, ask, user):
        m = capture._NAME.match(self._lib.ggml_get_name(t).decode())
        if m and not ask and m.group(1) == "k":
            self.raw.setdefault(int(m.group(2)), []).append(self._read(t)[self._keep])
        return super()._on_eval(t, ask, user)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("calibrated", type=Path)
    ap.add_argument("--text", type=Path, required=True)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--ctx", type=int, default=1024)
    a = ap.parse_args()
    cal = read(a.calibrated)
    m = runtime.Model(a.model)
    seqs = windows(m, m.tokenize(a.text.read_text(errors="replace"), add_bos=False), a.tokens, a.ctx, str(a.text))
    c = KeyCapture(m, n_ctx=a.ctx)
    c.run(seqs)
    c.close()
    m.close()
    ys = []
    for il, xs in c.raw.items():
        x = np.concatenate(xs)
        lt = cal.layers[il]
        ys.append(np.einsum("hij,thj->thi", lt.k_fwd, x - lt.k_off[None]).reshape(-1, 64))
    y = np.concatenate(ys).astype(np.float32)
    for t in ("turbo3", "turbo2"):
        pinned = np.mean((turbo.roundtrip(y, t) - y) ** 2) / np.mean(y ** 2)
        n = np.linalg.norm(y, axis=1, keepdims=True)
        u = (y * 8 / np.maximum(n, 1e-30)).ravel()
        cb = turbo.codebook(t).astype(np.float64).copy()
        for _ in range(200):  # Lloyd-Max on the samples
            idx = np.searchsorted((cb[:-1] + cb[1:]) / 2, u)
            cb = np.array([u[idx == k].mean() for k in range(len(cb))])
        cv = cb[np.searchsorted((cb[:-1] + cb[1:]) / 2, u).reshape(y.shape)]
        fitted = np.mean((cv * n / np.linalg.norm(cv, axis=1, keepdims=True) - y) ** 2) / np.mean(y ** 2)
        print(f"{t}: relative MSE pinned {pinned:.5f}, fitted {fitted:.5f} ({100 * (1 - fitted / pinned):.1f} % lower); "
              f"fitted levels {np.round(cb, 3).tolist()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
