"""Per-layer, per-KV-head transforms fitted from captured moments.

Every transform ends in the default randomized Hadamard R (rotation.py), so the
turbo codebooks see the coordinate distribution they were derived for; what
calibration adds sits in front of R:

K kinds (A_k, c_k)        -- Q' = A_k^-T q keeps q.k up to a per-query constant
    rotate   R, 0                         the uncalibrated default
    mean     R, E[k]                      removes the constant part of the keys
    scale    R diag(s), E[k]              s_i = (E[q_i^2] / Var k_i)^alpha; alpha = 1/4 balances
                                          the error a channel gets with how much queries read
                                          it (smaller alpha: part of the way, often better)
    whiten   R G^(2 alpha), E[k]          G = Cov(k)^-1 # E[q q^T] (matrix geometric mean):
                                          the full-matrix form of `scale`; it makes the
                                          transformed key covariance equal the transformed
                                          query second moment, which minimises
                                          E[(q.e)^2] for an isotropic quantisation error e
V kinds (A_v, m_v)
    rotate   R, 0
    mean     R, E[v]                      out = R^T out' + m_v is exact (weights sum to 1)

With ``sink=True`` (when position 0 holds the same key and value in every
sequence, as it does for sequences that start with BOS: position 0 attends only
to itself) a Householder reflection H is put between R and the rest, chosen so
that A (k_0 - c_k) becomes a vector of equal-magnitude coordinates. Both turbo
codebooks (and q8_0) store such a vector exactly, up to the fp16 block scale:
the attention sink, which nearly every query reads, is then cached without
quantization error. H is orthogonal, so other keys are rotated, not distorted.

With ``pos=True`` (the positional key offset, `turbo.layer.N.k.pos_mean`) the key
transform is fitted on k - RoPE(pos, m), m the pre-RoPE key mean: the runtime
stores that and adds q.RoPE(pos_j, m) back to the logits. A constant c_k cannot
remove m's part in the fast-turning channel pairs; this removes it at every
position.

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


# position 0's vectors may differ a little between sequences (models without BOS start
# with text); aligning their mean still makes the sink nearly exact. Larger spread: no sink.
SINK_TOL = 0.5


def sink_vector(samples: list, tol: float | None = None) -> np.ndarray | None:
    """Position 0's mean [h, d] when it is about the same in every captured sequence (at least two), else None."""
    tol = SINK_TOL if tol is None else tol
    if len(samples) < 2:
        return None
    s = np.stack(samples)
    m = s.mean(0)
    if np.abs(s - m).max() > tol * max(np.abs(m).max(), 1e-30):
        return None
    return m


def sink_reflection(a: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Orthogonal H with r @ H @ a a vector of equal-magnitude coordinates (signs of r @ a)."""
    d = a.shape[0]
    n = np.linalg.norm(a)
    if n == 0:
        return np.eye(d)
    s = np.sign(r @ a)
    s[s == 0] = 1.0
    b = r.T @ (n * s / np.sqrt(d))
    u = a - b
    nu = np.linalg.norm(u)
    if nu < 1e-12 * n:
        return np.eye(d)
    u /= nu
    return np.eye(d) - 2.0 * np.outer(u, u)


def _sink_exact(a: np.ndarray, x: np.ndarray) -> bool:
    """Does every turbo type store a @ x exactly (to its fp16 block scale)? Checked with the reference codec."""
    from .. import turbo
    y = (a @ x).astype(np.float32)
    return all(np.abs(turbo.roundtrip(y, t) - y).max() <= 2e-3 * np.abs(y).max() for t in ("turbo3", "turbo2"))


def whiten_matrix(p: np.ndarray, q: np.ndarray, alpha: float, ridge: float = 1e-3) -> np.ndarray:
    """The `whiten` kind's B = G^(2 alpha), G = P^-1 # Q = P^-1/2 (P^1/2 Q P^1/2)^1/2 P^-1/2
    (P the key covariance, Q the query second moment, both ridged); alpha = 1/4 is the full
    balance, as for `scale`."""
    p, q = _ridge(p, ridge), _ridge(q, ridge)
    ph, pmh = _sym_pow(p, 0.5), _sym_pow(p, -0.5)
    g = pmh @ _sym_pow(ph @ q @ ph, 0.5) @ pmh
    return _sym_pow(g, 2 * alpha)


def pos_moments(st: LayerStats) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(m, mean, cov) per KV head: the pre-RoPE key mean m [h, d] and the mean [h, d] and
    covariance [h, d, d] of k - RoPE(pos, m) over the captured keys, from the position moments.

    Each channel j of u = RoPE(pos, m) is a_j cos(theta_f pos) + b_j sin(theta_f pos) for its
    pair's frequency f (a constant for channels RoPE leaves alone), so E[u], E[k u^T] and
    E[u u^T] are linear in the moments captured."""
    if st.rope is None or st.kc is None:
        raise ValueError("the capture kept no position moments (no RoPE given)")
    n, h, d = st.n_k, st.n_head_kv, st.d_k
    i0, i1 = st.rope.pairs()
    nf = len(i0)
    # an extra frequency nf with cos 1, sin 0 for the channels RoPE does not rotate
    kc = np.concatenate([st.kc, st.k1[:, :, None]], axis=2)
    ks = np.concatenate([st.ks, np.zeros((h, d, 1))], axis=2)
    pc, ps = np.append(st.pc, n), np.append(st.ps, 0.0)
    pcc = np.zeros((nf + 1, nf + 1)); pcs = np.zeros_like(pcc); pss = np.zeros_like(pcc)
    pcc[:nf, :nf], pcs[:nf, :nf], pss[:nf, :nf] = st.pcc, st.pcs, st.pss
    pcc[nf, :nf] = pcc[:nf, nf] = st.pc
    pcc[nf, nf] = n
    pcs[nf, :nf] = st.ps  # sum 1 * sin_g; sum cos_f * 0 stays 0
    fj = np.full(d, nf)
    fj[i0] = np.arange(nf)
    fj[i1] = np.arange(nf)
    ar = np.arange(nf)

    # m = E[RoPE(-pos, k)]: (c k0 + s k1, -s k0 + c k1) per pair
    m = st.k1 / n
    m[:, i0] = (kc[:, i0, ar] + ks[:, i1, ar]) / n
    m[:, i1] = (-ks[:, i0, ar] + kc[:, i1, ar]) / n
    # u_j = a_j cos_f + b_j sin_f: (m0 c - m1 s, m0 s + m1 c) per pair, m_j for the others
    a = m.copy()
    b = np.zeros_like(m)
    b[:, i0] = -m[:, i1]
    b[:, i1] = m[:, i0]

    eu = (a * pc[fj] + b * ps[fj]) / n                                        # [h, d]
    eku = (a[:, None, :] * kc[:, :, fj] + b[:, None, :] * ks[:, :, fj]) / n  # [h, i, j]
    cc, cs, ss = pcc[np.ix_(fj, fj)], pcs[np.ix_(fj, fj)], pss[np.ix_(fj, fj)]
    euu = (a[:, :, None] * a[:, None, :] * cc + a[:, :, None] * b[:, None, :] * cs
           + b[:, :, None] * a[:, None, :] * cs.T + b[:, :, None] * b[:, None, :] * ss) / n
    mean = st.k_mean() - eu
    second = st.k2 / n - eku - eku.transpose(0, 2, 1) + euu
    return m, mean, second - mean[:, :, None] * mean[:, None, :]


def fit_layer(st: LayerStats, k_kind: str, v_kind: str, offsets: bool = True, ridge: float = 1e-3,
              sink: bool = False, alpha: float = 0.25, pos: bool = False) -> LayerTransform:
    if k_kind not in K_KINDS or v_kind not in V_KINDS:
        raise ValueError(f"unknown transform kind {k_kind!r}/{v_kind!r}; K: {K_KINDS}, V: {V_KINDS}")
    if st.n_k == 0 or st.n_q == 0:
        raise ValueError("no captured tokens for this layer")
    h, dk, dv = st.n_head_kv, st.d_k, st.d_v
    rk, rv = rotation.rotation_matrix(dk), rotation.rotation_matrix(dv)
    k0 = sink_vector(st.sink_k) if sink else None
    v0 = sink_vector(st.sink_v) if sink else None
    a_k = np.empty((h, dk, dk))
    c_k = np.zeros((h, dk))
    q2 = st.q_second()
    k_pos = None
    if pos:
        k_pos, k_mean, kc = pos_moments(st)
        if k0 is not None:
            k0 = k0 - k_pos  # position 0: RoPE(0, m) = m
    else:
        k_mean, kc = st.k_mean(), st.k_cov()
    for j in range(h):
        if k_kind == "rotate":
            a = np.eye(dk)
        elif k_kind == "mean":
            a = np.eye(dk)
        elif k_kind == "scale":
            var = np.clip(np.diag(kc[j]), 1e-12, None)
            qq = np.clip(np.diag(q2[j]), 1e-12, None)
            s = (qq / var) ** alpha
            a = np.diag(s)
        else:
            a = whiten_matrix(kc[j], q2[j], alpha, ridge)
        a = _unit_gain(a)
        if k_kind != "rotate" and offsets:
            c_k[j] = k_mean[j]
        a_k[j] = rk @ a
        if k0 is not None:
            cand = rk @ sink_reflection(a @ (k0[j] - c_k[j]), rk) @ a
            if _sink_exact(cand, k0[j] - c_k[j]):
                a_k[j] = cand
    a_v = np.broadcast_to(rv, (h, dv, dv)).copy()
    m_v = st.v_mean() if v_kind == "mean" else np.zeros((h, dv))
    if v0 is not None:
        for j in range(h):
            cand = rv @ sink_reflection(v0[j] - m_v[j], rv)
            if _sink_exact(cand, v0[j] - m_v[j]):
                a_v[j] = cand
    return LayerTransform.build(a_k, c_k, a_v, m_v, k_pos)


def fit(stats: dict[int, LayerStats], n_layer: int, k_kind: str, v_kind: str,
        offsets: bool = True, sink: bool = False, alpha: float = 0.25, pos: bool = False) -> list[LayerTransform | None]:
    return [fit_layer(stats[il], k_kind, v_kind, offsets, sink=sink, alpha=alpha, pos=pos) if il in stats else None
            for il in range(n_layer)]


def default_layers(n_layer: int, n_head_kv: int, d: int) -> list[LayerTransform]:
    """The uncalibrated default written as a calibration (A = R, no offsets): for timing the
    transforms' cost and for tests; its quality equals the default's up to rounding."""
    r = np.broadcast_to(rotation.rotation_matrix(d), (n_head_kv, d, d)).copy()
    z = np.zeros((n_head_kv, d))
    return [LayerTransform.build(r, z, r, z) for _ in range(n_layer)]
