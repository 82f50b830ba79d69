"""Issue 10: attention-sink cells kept exact beside a turbo cache.

Op level (CPU backend through ctypes): FLASH_ATTN_EXT with a sink store equals
attention over an f16 cache holding the reference codec's values everywhere but
the sink cells, which hold the exact rows; and it differs from plain turbo.
Model level (tiny llama through llama-perplexity / the bindings): the runtime
keeps and reports the store, and it survives multiple sequences, shifts and
state save/restore.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from tq_gguf import ggmlc, turbo

PAIRS = [("turbo3", "turbo3"), ("turbo2", "turbo2"), ("q8_0", "turbo3"), ("turbo3", "q8_0"), ("f16", "turbo3")]


def _rows(t: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(bytes of x in cache type t, the values the cache holds) for rows of x."""
    if t == "f32":
        x = np.ascontiguousarray(x, dtype=np.float32)
        return x.view(np.uint8).reshape(x.shape[0], -1), x
    if t == "f16":
        h = x.astype(np.float16)
        return h.view(np.uint8).reshape(x.shape[0], -1), h.astype(np.float32)
    if t in ("turbo3", "turbo2"):
        data = turbo.quantize_rows(x, t)
        return data, turbo.dequantize_rows(data, t, x.shape[1])
    data = ggmlc.quantize(x, t)
    return data, ggmlc.dequantize(data, t, x.shape[1])


def _attention(tk, tv, q, k, v, mask, side=None):
    """ggml_flash_attn_ext on the CPU backend. q [nq, H, D], k/v [n_kv, Hkv, D] float32;
    side = (cells, k_rows, v_rows) with rows [n_slot, Hkv, D] float32."""
    n_tok, n_head, d = q.shape
    n_kv, n_head_kv, _ = k.shape
    g = ggmlc.OpGraph()
    # ggml order: q [D, n_tok, H, 1], k/v [D, n_kv, Hkv, 1] (head-major), mask [n_kv, n_tok]
    kb, _ = _rows(tk, k.transpose(1, 0, 2).reshape(-1, d))
    vb, _ = _rows(tv, v.transpose(1, 0, 2).reshape(-1, d))
    tq = g.tensor4("f32", (d, n_tok, n_head, 1), q.transpose(1, 0, 2).astype(np.float32))
    tk_ = g.tensor4(tk, (d, n_kv, n_head_kv, 1), kb)
    tv_ = g.tensor4(tv, (d, n_kv, n_head_kv, 1), vb)
    tm = g.tensor4("f16", (n_kv, n_tok, 1, 1), mask.astype(np.float16))
    out = g.base.ggml_flash_attn_ext(g.ctx, tq, tk_, tv_, tm, 1.0 / np.sqrt(d), 0.0, 0.0)
    if side is not None:
        cells, ks, vs = side
        n_slot = len(cells)
        sk = g.tensor4("f16", (d, n_slot, n_head_kv, 1), ks.transpose(1, 0, 2).astype(np.float16))
        sv = g.tensor4("f16", (d, n_slot, n_head_kv, 1), vs.transpose(1, 0, 2).astype(np.float16))
        sc = g.tensor4("i32", (n_slot, 1, 1, 1), np.asarray(cells, dtype=np.int32))
        g.base.ggml_flash_attn_ext_set_side(out, sk, sv, sc)
    res = g.read(g.compute(out), np.float32).reshape(n_tok, n_head, d).copy()  # [D, H, n_tok] permuted
    g.close()
    return res


def _problem(seed=0, n_kv=48, n_tok=3, n_head=4, n_head_kv=2, d=64):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((n_tok, n_head, d)).astype(np.float32)
    k = rng.standard_normal((n_kv, n_head_kv, d)).astype(np.float32)
    v = rng.standard_normal((n_kv, n_head_kv, d)).astype(np.float32)
    # an attention sink: cell 0's key is large along the queries' mean direction
    g = n_head // n_head_kv
    for j in range(n_head_kv):
        u = q[:, j*g:(j + 1)*g].mean(axis=(0, 1))
        k[0, j] = 2.0 * np.sqrt(d) * u / np.linalg.norm(u)
    v[0] *= 0.2
    mask = np.zeros((n_tok, n_kv), dtype=np.float32)
    for i in range(n_tok):  # causal tail, and query 1 does not see cell 5
        mask[i, n_kv - n_tok + i + 1:] = -np.inf
    mask[1, 5] = -np.inf
    return q, k, v, mask


@pytest.mark.parametrize("tk,tv", PAIRS)
def test_side_rows_equal_a_cache_holding_them(built, tk, tv):
    q, k, v, mask = _problem()
    cells = [0, 5, 17, -1]
    used = [c for c in cells if c >= 0]
    # reference: an f32 cache holding the codec's values, and the store's (f16) rows at its cells
    _, kq = _rows(tk, k.reshape(-1, k.shape[-1]))
    _, vq = _rows(tv, v.reshape(-1, v.shape[-1]))
    kq, vq = kq.reshape(k.shape), vq.reshape(v.shape)
    kq[used] = k[used].astype(np.float16).astype(np.float32)
    vq[used] = v[used].astype(np.float16).astype(np.float32)
    want = _attention("f32", "f32", q, kq, vq, mask)

    ks = np.zeros((len(cells), k.shape[1], k.shape[2]), np.float32)
    vs = np.zeros_like(ks)
    for j, c in enumerate(cells):
        if c >= 0:
            ks[j], vs[j] = k[c], v[c]
    got = _attention(tk, tv, q, k, v, mask, side=(cells, ks, vs))
    plain = _attention(tk, tv, q, k, v, mask)

    scale = np.abs(want).max()
    err = np.abs(got - want).max() / scale
    err_plain = np.abs(plain - want).max() / scale
    # the kernel's dot product quantizes Q to K's vec_dot_type: q8_0 (8-bit noise) for a q8_0 K,
    # f16 (one f16 step, 2^-11 relative, ~1e-4 on these outputs) for an f16 K, none for turbo (f32)
    bound = {"q8_0": 1e-2, "f16": 5e-4}.get(tk, 1e-5)
    assert err < bound, (tk, tv, err)
    assert err_plain > 10 * max(err, 1e-4), (tk, tv, err, err_plain)  # the store changes the result


def test_masked_side_cell_stays_unseen(built):
    q, k, v, mask = _problem(seed=3)
    mask[:, 0] = -np.inf  # the sink cell itself is masked for every query
    cells = [0, -1]
    ks = np.stack([k[0], np.zeros_like(k[0])]) * 50.0  # a huge side row: visible if the mask were ignored
    vs = np.stack([v[0], np.zeros_like(v[0])]) * 50.0
    got = _attention("turbo3", "turbo3", q, k, v, mask, side=(cells, ks, vs))
    plain = _attention("turbo3", "turbo3", q, k, v, mask)
    np.testing.assert_allclose(got, plain, rtol=1e-5, atol=1e-6)


# --- the runtime: a tiny llama through the bindings -------------------------------------

from tq_gguf import runtime  # noqa: E402
from tq_gguf.runtime import Model, Session, environ, kld  # noqa: E402
from tq_gguf.tinymodel import TinyShape  # noqa: E402

N_CTX = 64


@pytest.fixture(scope="module")
def model(built, tiny_model):
    m = Model(tiny_model)
    yield m
    m.close()


@pytest.fixture(scope="module")
def toks(model, tiny_text):
    t = model.tokenize(tiny_text.read_text()[:600])
    assert len(t) >= 60
    return t[:60]


def _session(model, tk, tv, sinks=None, **kw):
    with environ({"LLAMA_TURBO_SINKS": sinks} if sinks is not None else {}):
        mark = runtime._Log.mark()
        s = Session(model, kw.pop("n_ctx", N_CTX), tk, tv, **kw)
        s.log = runtime._Log.since(mark)
    return s


def test_store_is_logged_sized_and_switched_off(model):
    s = _session(model, "turbo3", "turbo3")
    m = re.search(r"turbo sink cells: the first (\d+) positions of each sequence kept exact \(f16, (\d+) rows per "
                  r"stream\): +([\d.]+) MiB", s.log)
    assert m, s.log[-1500:]
    n, rows, mib = int(m.group(1)), int(m.group(2)), float(m.group(3))
    assert n == 4 and rows == 4
    shp = TinyShape()
    assert mib == pytest.approx(shp.n_layer * rows * shp.n_head_kv * shp.head_dim * 2 * 2 / 2**20, abs=0.006)  # K, V f16
    s.close()
    for sinks, tk in (("0", "turbo3"), (None, "f16"), (None, "q8_0")):
        s = _session(model, tk, tk, sinks)
        assert "turbo sink cells" not in s.log
        s.close()
    with pytest.raises(RuntimeError, match="LLAMA_TURBO_SINKS: 'two' is not a cell count"):
        _session(model, "turbo3", "turbo3", "two")


def _kld_vs_f16(model, toks, ops, tk="turbo3", tv="turbo3", sinks=None, **kw):
    """Run ``ops`` (a function of a session returning logits) on f16 and on (tk, tv)."""
    ref = ops(_session(model, "f16", "f16", **kw))
    got = ops(_session(model, tk, tv, sinks, **kw))
    return kld(ref, got)


def _prefill_decode(toks):
    def ops(s):
        s.decode(toks[:40], 0)
        out = s.decode(toks[40:50], 40, all_logits=True)
        s.close()
        return out
    return ops


def _shifted(toks):
    # keep 4, drop 10, shift the rest back (what llama-server's context shift does), continue
    def ops(s):
        s.decode(toks[:40], 0)
        assert s.seq_rm(0, 4, 14)
        s.seq_add(0, 14, 40, -10)
        out = s.decode(toks[40:52], 30, all_logits=True)
        s.close()
        return out
    return ops


def _two_sequences(toks):
    # seq 1 starts at position 7, seq 0 at 0; then seq 1 is copied to seq 2 and seq 1 removed
    def ops(s):
        s.decode(toks[:30], 0, seq=0)
        s.decode(toks[30:50], 7, seq=1)
        s.seq_cp(1, 2)
        assert s.seq_rm(1, -1, -1)
        a = s.decode(toks[50:56], 30, seq=0, all_logits=True)
        b = s.decode(toks[50:56], 27, seq=2, all_logits=True)
        s.close()
        return np.concatenate([a, b])
    return ops


@pytest.mark.parametrize("case", ["prefill", "shift", "sequences"])
@pytest.mark.parametrize("tk,tv", [("turbo3", "turbo3"), ("turbo2", "turbo2"), ("q8_0", "turbo3")])
def test_every_cell_kept_is_an_f16_cache(model, toks, case, tk, tv):
    """With LLAMA_TURBO_SINKS >= the context every cell is exact: the cache must act as f16
    through prefill, K-shift (the store's keys move with their cells) and several sequences
    (streams, a sequence starting at 7, a cross-stream copy), while the plain cache must not."""
    ops = {"prefill": _prefill_decode, "shift": _shifted, "sequences": _two_sequences}[case](toks)
    kw = {"n_seq_max": 3} if case == "sequences" else {}
    kept = _kld_vs_f16(model, toks, ops, tk, tv, str(N_CTX), **kw)
    plain = _kld_vs_f16(model, toks, ops, tk, tv, "0", **kw)
    print(f"\n{case} {tk}/{tv}: KLD vs f16 with every cell kept {kept:.2e}, without {plain:.2e}")
    assert kept < 2e-4, (case, kept)
    assert plain > 20 * kept, (case, kept, plain)


@pytest.mark.parametrize("tk,tv", [("turbo3", "turbo3"), ("q8_0", "turbo3")])
def test_state_save_restore_keeps_the_store(model, toks, tk, tv):
    a = _session(model, tk, tv)
    a.decode(toks[:40], 0)
    st = a.state()
    la = a.decode([toks[40]], 40)
    b = _session(model, tk, tv)
    b.set_state(st)
    assert b.state() == st  # the sink section round-trips byte for byte
    lb = b.decode([toks[40]], 40)
    np.testing.assert_array_equal(la, lb)
    # a context without the store reads the state (its sink rows are skipped) and differs
    c = _session(model, tk, tv, "0")
    c.set_state(st)
    lc = c.decode([toks[40]], 40)
    assert np.isfinite(lc).all() and not np.array_equal(la, lc)
    # ... and its state (no sink rows) restores into a context with the store, which then agrees with it
    d = _session(model, tk, tv)
    c2 = _session(model, tk, tv, "0")
    c2.set_state(st)
    st_c = c2.state()
    d.set_state(st_c)
    np.testing.assert_array_equal(d.decode([toks[40]], 40), c2.decode([toks[40]], 40))
    c2.close()
    for s in (a, b, c, d):
        s.close()


def test_calibration_sets_the_count_and_the_environment_overrides_it(built, tiny_model, tmp_path):
    from tq_gguf.calib import fit, schema
    shp = TinyShape()
    side = schema.write_sidecar(tmp_path / "side.gguf", schema.Calibration(
        "llama", shp.n_layer, fit.default_layers(shp.n_layer, shp.n_head_kv, shp.head_dim), sink_cells=2))
    with environ({"LLAMA_TURBO_CALIB": side}):  # read at model load
        m = Model(tiny_model)
    try:
        for env, want in ((None, 2), ("1", 1), ("0", None)):
            s = _session(m, "turbo3", "turbo3", env)
            got = re.search(r"turbo sink cells: the first (\d+) positions", s.log)
            assert (int(got.group(1)) if got else None) == want, (env, s.log[-800:])
            s.close()
    finally:
        m.close()
