"""Per-layer, per-KV-head transforms fitted from captured moments.

Every transform ends in the default randomized Hadamard R (rotation.py), so the
turbo codebooks see the coordinate distribution they were derived for; what
calibration adds sits in front of R:

K kinds (A_k, c_k)        -- Q' = A_k^-T q keeps q.k up to a per-query constant
    rotate   R, 0                         the uncalibrated default
    mean     R, E[k]                      removes the constant part of the keys
    scale    R diag(s), E[k]              s_i = (E[q_i^2] / Var k_i)^(1/4): balances the
                                          error a channel gets with how much queries read it
    whiten   R G^(1/2), E[k]              G = Cov(k)^-1 # E[q q^T] (matrix geometric mean):
                                          the full-matrix form of `scale`; it makes the
                                          transformed key covariance equal the transformed
                                          query second moment, which minimises
                                          E[(q.e)^2] for an isotropic quantisation error e
V kinds (A_v, m_v)
    rotate   R, 0
    mean     R, E[v]                      out = R^T out' + m_v is exact (weights sum to 1)

Transforms are scaled to unit geometric mean gain so an f16/q8_0 layer of a
mixed policy stores values of the usual magnitude.
"""

from __future__ import annotations

import numpy as np

from .. import rotation
from .capture import LayerStats
from .schema import LayerTransform

K_KINDS = ("rotate", "mean", "scale", "whiten")
V_KINDS = ("rotate", "mean")


def _sym_pow(m: np.ndarray, p: float) -> np.ndarray:
    w, u = np.linalg.eigh((m + m.T) / 2)
    return (u * np.clip(w, 1e-30, None) ** p) @ u.T


def _unit_gain(a: np.ndarray) -> np.ndarray:
    _, logdet = np.linalg.slogdet(a)
    return a / np.exp(logdet / a.shape[0])


def _ridge(c: np.ndarray, rel: float) -> np.ndarray:
    return c + rel * (np.trace(c) / c.shape[0] + 1e-30) * np.eye(c.shape[0])


def fit_layer(st: LayerStats, k_kind: str, v_kind: str, offsets: bool = True, ridge: float = 1e-3) -> LayerTransform:
    if k_kind not in K_KINDS or v_kind not in V_KINDS:
        raise ValueError(f"unknown transform kind {k_kind!r}/{v_kind!r}; K: {K_KINDS}, V: {V_KINDS}")
    if st.n_k == 0 or st.n_q == 0:
        raise ValueError("no captured tokens for this layer")
    h, dk, dv = st.n_head_kv, st.d_k, st.d_v
    rk, rv = rotation.rotation_matrix(dk), rotation.rotation_matrix(dv)
    a_k = np.empty((h, dk, dk))
    c_k = np.zeros((h, dk))
    kc, q2 = st.k_cov(), st.q_second()
    for j in range(h):
        if k_kind == "rotate":
            a = np.eye(dk)
        elif k_kind == "mean":
            a = np.eye(dk)
        elif k_kind == "scale":
            var = np.clip(np.diag(kc[j]), 1e-12, None)
            qq = np.clip(np.diag(q2[j]), 1e-12, None)
            s = (qq / var) ** 0.25
            a = np.diag(s)
        else:  # whiten: G = P^-1 # Q = P^-1/2 (P^1/2 Q P^1/2)^1/2 P^-1/2
            p = _ridge(kc[j], ridge)
            q = _ridge(q2[j], ridge)
            ph, pmh = _sym_pow(p, 0.5), _sym_pow(p, -0.5)
            g = pmh @ _sym_pow(ph @ q @ ph, 0.5) @ pmh
            a = _sym_pow(g, 0.5)
        a_k[j] = rk @ _unit_gain(a)
        if k_kind != "rotate" and offsets:
            c_k[j] = st.k_mean()[j]
    a_v = np.broadcast_to(rv, (h, dv, dv)).copy()
    m_v = st.v_mean() if v_kind == "mean" else np.zeros((h, dv))
    return LayerTransform.build(a_k, c_k, a_v, m_v)


def fit(stats: dict[int, LayerStats], n_layer: int, k_kind: str, v_kind: str,
        offsets: bool = True) -> list[LayerTransform | None]:
    return [fit_layer(stats[il], k_kind, v_kind, offsets) if il in stats else None for il in range(n_layer)]
