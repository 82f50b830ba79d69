"""The fit's algebra in numpy (no build needed): exact inverses, the balance the
`scale` and `whiten` kinds promise, and the attention-sink alignment checked with
the reference codec."""

import numpy as np
import pytest

from tq_gguf import rotation, turbo
from tq_gguf.calib import fit
from tq_gguf.calib.capture import LayerStats


def stats(rng, h=2, d=64, n=4000, sink_seqs=3, sink_spread=0.0) -> LayerStats:
    st = LayerStats(h, d, d)
    scale = np.exp(rng.standard_normal(d))                 # uneven channel energy
    k = rng.standard_normal((n, h, d)) * scale + 3.0       # a constant component
    q = rng.standard_normal((n * 2, h, d)) / scale
    v = rng.standard_normal((n, h, d))
    st.n_k, st.n_q = n, 2 * n
    st.k1, st.k2 = k.sum(0), np.einsum("thi,thj->hij", k, k)
    st.q2 = np.einsum("thi,thj->hij", q, q)
    st.v1, st.v2 = v.sum(0), np.einsum("thi,thj->hij", v, v)
    k0, v0 = 20 * rng.standard_normal((h, d)), 0.1 * rng.standard_normal((h, d))
    st.sink_k = [k0 + sink_spread * rng.standard_normal((h, d)) for _ in range(sink_seqs)]
    st.sink_v = [v0 for _ in range(sink_seqs)]
    return st


@pytest.mark.parametrize("kind", fit.K_KINDS)
def test_inverses_and_offsets(kind):
    st = stats(np.random.default_rng(0))
    lt = fit.fit_layer(st, kind, "mean", sink=True)
    for j in range(2):
        np.testing.assert_allclose(lt.k_fwd[j] @ lt.k_bwd[j].T, np.eye(64), atol=1e-9)
        np.testing.assert_allclose(lt.v_fwd[j] @ lt.v_bwd[j], np.eye(64), atol=1e-9)
        assert abs(np.linalg.det(lt.k_fwd[j])) == pytest.approx(1.0, rel=1e-6)  # unit gain
    np.testing.assert_allclose(lt.k_off, st.k_mean() if kind != "rotate" else 0 * st.k_mean())
    np.testing.assert_allclose(lt.v_mean, st.v_mean())


def test_scale_balances_key_variance_against_query_energy():
    st = stats(np.random.default_rng(1))
    lt = fit.fit_layer(st, "scale", "rotate", sink=False, alpha=0.25)
    r = rotation.rotation_matrix(64)
    for j in range(2):
        s = np.diag(r.T @ lt.k_fwd[j])            # A = R diag(s)
        var, qq = np.diag(st.k_cov()[j]), np.diag(st.q_second()[j])
        # transformed key variance s^2 var == transformed query energy qq / s^2 (up to a constant)
        ratio = (s ** 2 * var) / (qq / s ** 2)
        assert ratio.std() / ratio.mean() < 1e-9


def test_whiten_makes_key_covariance_equal_query_moment():
    st = stats(np.random.default_rng(2))
    lt = fit.fit_layer(st, "whiten", "rotate", sink=False, alpha=0.25, ridge=0.0)
    for j in range(2):
        a = lt.k_fwd[j]
        kk = a @ st.k_cov()[j] @ a.T
        qq = lt.k_bwd[j] @ st.q_second()[j] @ lt.k_bwd[j].T
        c = np.trace(kk) / np.trace(qq)
        np.testing.assert_allclose(kk, c * qq, atol=1e-6 * np.abs(kk).max())


def test_sink_alignment_stores_position_0_exactly_and_changes_nothing_else():
    st = stats(np.random.default_rng(3))
    plain = fit.fit_layer(st, "scale", "mean", sink=False)
    lt = fit.fit_layer(st, "scale", "mean", sink=True)
    k0, v0 = st.sink_k[0], st.sink_v[0]
    for j in range(2):
        x = (lt.k_fwd[j] @ (k0[j] - lt.k_off[j])).astype(np.float32)
        y = (lt.v_fwd[j] @ (v0[j] - lt.v_mean[j])).astype(np.float32)
        for t in ("turbo3", "turbo2"):
            assert np.abs(turbo.roundtrip(x, t) - x).max() < 1e-3 * np.abs(x).max()
            assert np.abs(turbo.roundtrip(y, t) - y).max() < 1e-3 * np.abs(y).max()
        # without the alignment position 0 has the usual ~15-40 % error
        xp = (plain.k_fwd[j] @ (k0[j] - plain.k_off[j])).astype(np.float32)
        assert np.linalg.norm(turbo.roundtrip(xp, "turbo3") - xp) > 0.05 * np.linalg.norm(xp)
        # the reflection is orthogonal: same metric for every other key
        np.testing.assert_allclose(lt.k_fwd[j].T @ lt.k_fwd[j], plain.k_fwd[j].T @ plain.k_fwd[j], atol=1e-9)


def test_sink_alignment_needs_a_repeatable_position_0():
    rng = np.random.default_rng(4)
    assert fit.sink_vector(stats(rng, sink_seqs=1).sink_k) is None          # one sequence proves nothing
    assert fit.sink_vector(stats(rng, sink_spread=40.0).sink_k) is None     # a different token every time
    assert fit.sink_vector(stats(rng, sink_spread=0.0).sink_k) is not None


@pytest.mark.parametrize("layout,d,n_rot", [("norm", 64, 64), ("neox", 128, 96)])
def test_pos_moments_equal_the_direct_statistics(layout, d, n_rot):
    """The pre-RoPE mean m and the moments of k - RoPE(pos, m), from the position moments the
    capture keeps, equal those computed from the keys themselves (partial RoPE included)."""
    from tq_gguf.calib import ropepos
    rng = np.random.default_rng(7)
    rl = ropepos.RopeLayer(layout, n_rot, ropepos.rope_theta(n_rot, 10000.0))
    h = 2
    st = LayerStats(h, d, d, rope=rl)
    m_true = 3.0 * rng.standard_normal((h, d))
    keys, poss = [], []
    for _ in range(3):  # windows from position 0; position 0 is not counted
        pos = np.arange(300)
        pre = m_true + rng.standard_normal((len(pos), h, d)) * rng.uniform(0.2, 1.0, d)
        k = rl.apply(pre, pos)
        st.add("k", k, pos >= 1, True, pos)
        keys.append(k[1:])
        poss.append(pos[1:])
    k, pos = np.concatenate(keys), np.concatenate(poss)
    m, mean, cov = fit.pos_moments(st)
    m_direct = rl.apply(k, pos, inverse=True).mean(0)
    r = k - rl.apply(np.broadcast_to(m_direct, k.shape), pos)
    mean_direct = r.mean(0)
    cov_direct = np.einsum("thi,thj->hij", r - mean_direct, r - mean_direct) / len(r)
    np.testing.assert_allclose(m, m_direct, atol=1e-10)
    np.testing.assert_allclose(mean, mean_direct, atol=1e-10)
    np.testing.assert_allclose(cov, cov_direct, atol=1e-9)
    assert np.abs(m - m_true).max() < 0.2
    # what the offset is for: the post-RoPE covariance keeps most of m's energy, this does not
    assert np.trace(cov[0]) < 0.2 * np.trace(st.k_cov()[0])
    # the fitted transform carries m, and c_k is the mean of what is left
    lt = fit.fit_layer(_with_q(st, rng), "whiten", "rotate", pos=True)
    np.testing.assert_allclose(lt.k_pos, m)
    np.testing.assert_allclose(lt.k_off, mean)


def _with_q(st, rng):
    q = rng.standard_normal((1000, st.n_head_kv, st.d_k))
    st.n_q, st.q2 = len(q), np.einsum("thi,thj->hij", q, q)
    st.v1, st.v2 = np.zeros_like(st.v1), np.broadcast_to(np.eye(st.d_v), st.v2.shape).copy() * st.n_k
    return st
