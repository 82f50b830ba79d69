"""Running statistics of a quantized run against a reference, as llama-perplexity
--kl-divergence computes and reports them (same estimators, same errors)."""

from __future__ import annotations

import math

import numpy as np

PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)


def mean_and_uncertainty(s: float, s2: float, n: int) -> tuple[float, float]:
    if n < 1:
        return 0.0, 0.0
    f = s / n
    df = s2 / n - f * f
    return f, (math.sqrt(df / (n - 1)) if df > 0 and n > 10 else 0.0)


def covariance(sa: float, sb: float, sab: float, n: int) -> float:
    if n < 10:
        return 0.0
    return (sab / n - (sa / n) * (sb / n)) / (n - 1)


class RefBlock:
    """The reference's side of one block, computed once and shared by every cache."""

    def __init__(self, lp: np.ndarray, targets: np.ndarray):
        self.lp, self.targets = lp, targets
        self.p = np.exp(lp)
        self.top = lp.argmax(-1)
        self.nll = -lp[np.arange(len(targets)), targets]


class KldStats:
    """Accumulates per-token NLL, KLD, top-token agreement and Δp against the reference."""

    def __init__(self):
        self.nll = self.nll2 = self.nll_b = self.nll_b2 = self.nll_nll_b = 0.0
        self.kld = self.kld2 = self.dp = self.dp2 = 0.0
        self.same_top = 0
        self.n = 0
        self._klds: list[np.ndarray] = []

    def add(self, ref: RefBlock, lp: np.ndarray) -> None:
        """lp: [n, vocab] log-probabilities of the cache under test for ref's tokens."""
        nll = -lp[np.arange(len(ref.targets)), ref.targets]
        nll_b = ref.nll
        kld = np.einsum("ij,ij->i", ref.p, ref.lp - lp)
        dp = np.exp(-nll) - np.exp(-nll_b)
        self.nll += nll.sum(); self.nll2 += (nll * nll).sum()
        self.nll_b += nll_b.sum(); self.nll_b2 += (nll_b * nll_b).sum()
        self.nll_nll_b += (nll * nll_b).sum()
        self.kld += kld.sum(); self.kld2 += (kld * kld).sum()
        self.dp += dp.sum(); self.dp2 += (dp * dp).sum()
        self.same_top += int(np.sum(lp.argmax(-1) == ref.top))
        self.n += len(ref.targets)
        self._klds.append(kld.astype(np.float32))

    def result(self) -> dict:
        n = self.n
        lq = mean_and_uncertainty(self.nll, self.nll2, n)
        lb = mean_and_uncertainty(self.nll_b, self.nll_b2, n)
        cov = covariance(self.nll, self.nll_b, self.nll_nll_b, n)
        lr = lq[0] - lb[0]
        lr_err = math.sqrt(max(lq[1] ** 2 + lb[1] ** 2 - 2.0 * cov, 0.0))
        kl = mean_and_uncertainty(self.kld, self.kld2, n)
        ppl, ppl_b = math.exp(lq[0]), math.exp(lb[0])
        top = self.same_top / n if n else 0.0
        klds = np.concatenate(self._klds) if self._klds else np.zeros(1, np.float32)
        pct = np.percentile(klds.astype(np.float64), PERCENTILES)
        return {
            "tokens": n,
            "kld": kl[0], "kld_err": kl[1],
            "kld_percentiles": {f"p{p:g}": float(v) for p, v in zip(PERCENTILES, pct)},
            "kld_max": float(klds.max()),
            "ppl": ppl, "ppl_err": ppl * lq[1],
            "ppl_base": ppl_b, "ppl_base_err": ppl_b * lb[1],
            "ln_ppl_ratio": lr, "ln_ppl_ratio_err": lr_err,
            "ppl_ratio": math.exp(lr), "ppl_ratio_err": math.exp(lr) * lr_err,
            "same_top": top, "same_top_err": math.sqrt(top * (1 - top) / (n - 1)) if n > 1 else 0.0,
            "dp_rms": math.sqrt(self.dp2 / n) if n else 0.0,
        }
