"""The RoPE helpers of scripts/key_offset_sim.py: inverse, and the relative-position identity
the positional key offset rests on (q.RoPE(p, m) depends on q's and m's positions only
through their difference), for both channel layouts."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

spec = importlib.util.spec_from_file_location("key_offset_sim", Path(__file__).parent.parent / "scripts" / "key_offset_sim.py")
kos = importlib.util.module_from_spec(spec)
spec.loader.exec_module(kos)


@pytest.mark.parametrize("kind", ["norm", "neox"])
def test_rope_inverse_and_relative(kind):
    rng = np.random.default_rng(0)
    d, t = 64, 50
    x = rng.standard_normal((t, 3, d))
    pos = rng.integers(0, 4000, t).astype(np.float64)
    y = kos.rope(x, pos, 10000.0, kind)
    np.testing.assert_allclose(kos.rope(y, pos, 10000.0, kind, inverse=True), x, atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-12)
    # <RoPE(a, q), RoPE(b, m)> = <RoPE(a - b, q), m>
    q, m = rng.standard_normal((1, d)), rng.standard_normal((1, d))
    a, b = np.array([1234.0]), np.array([77.0])
    lhs = (kos.rope(q, a, 10000.0, kind) * kos.rope(m, b, 10000.0, kind)).sum()
    rhs = (kos.rope(q, a - b, 10000.0, kind) * m).sum()
    assert abs(lhs - rhs) < 1e-9 * np.abs(q).sum() * np.abs(m).sum()
    # a constant pre-RoPE vector is not constant after RoPE: the post-RoPE mean cannot remove it
    c = kos.rope(np.broadcast_to(m, (t, d)).copy(), pos, 10000.0, kind)
    assert np.abs(c - c.mean(0)).max() > 0.1 * np.abs(m).max()


def test_rope_pairs_match_llama_layouts():
    i0, i1 = kos.rope_pairs(8, "norm")
    assert list(i0) == [0, 2, 4, 6] and list(i1) == [1, 3, 5, 7]
    i0, i1 = kos.rope_pairs(8, "neox")
    assert list(i0) == [0, 1, 2, 3] and list(i1) == [4, 5, 6, 7]


def test_attnsim_window_and_scale():
    from tq_gguf import attnsim
    rng = np.random.default_rng(1)
    q, k, v = rng.standard_normal((6, 2, 64)), rng.standard_normal((6, 1, 64)), rng.standard_normal((6, 1, 64))
    # a window of 1: every query sees only its own key, so its output is its own value
    r = attnsim.attention(q, k, v, "f32", "f32", window=1)
    np.testing.assert_allclose(r.out[:, 0], v[:, 0], atol=1e-6)
    w2 = attnsim.attention(q, k, v, "f32", "f32", window=2)
    assert np.all(np.isinf(w2.scores[:, 3, :2])) and np.all(np.isfinite(w2.scores[:, 3, 2:4]))
    # the default scale is 1/sqrt(d); an explicit one scales the scores
    a = attnsim.attention(q, k, v, "f32", "f32")
    b = attnsim.attention(q, k, v, "f32", "f32", scale=0.5)
    fin = np.isfinite(a.scores)
    np.testing.assert_allclose(b.scores[fin], a.scores[fin] * 0.5 * 8.0, rtol=1e-6)
