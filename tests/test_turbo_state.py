"""Context shift and state save/restore with turbo caches, through the bindings."""

import numpy as np
import pytest

from tq_gguf.runtime import Model, Session, kld

N_CTX = 256


@pytest.fixture(scope="module")
def model(built, tiny_model):
    m = Model(tiny_model)
    yield m
    m.close()


@pytest.fixture(scope="module")
def toks(model, tiny_text):
    t = model.tokenize(tiny_text.read_text()[:400])
    assert len(t) >= 120
    return t[:120]


def shifted_vs_recomputed(model, toks, type_k, type_v, delta=20):
    """Decode 80 tokens at positions delta.., shift them to 0.. (K-shift), vs decoding at 0...

    RoPE is relative, so in exact arithmetic both caches give the same attention: the
    difference is what the shift itself adds (dequantize, un-rotate, RoPE, rotate, requantize).
    """
    s = Session(model, N_CTX, type_k, type_v)
    s.decode(toks[:80], delta)
    s.seq_add(0, delta, delta + 80, -delta)
    shifted = s.decode(toks[80:100], 80, all_logits=True)
    s.close()
    f = Session(model, N_CTX, type_k, type_v)
    f.decode(toks[:80], 0)
    fresh = f.decode(toks[80:100], 80, all_logits=True)
    f.close()
    return shifted, fresh


def test_k_shift_matches_recompute_within_quantization_noise(model, toks):
    shifted16, fresh16 = shifted_vs_recomputed(model, toks, "f16", "f16")
    res = {}
    for tk, tv in (("turbo3", "turbo3"), ("turbo2", "turbo2"), ("turbo3", "f16"), ("q4_0", "q4_0")):
        shifted, fresh = shifted_vs_recomputed(model, toks, tk, tv)
        assert np.isfinite(shifted).all()
        res[(tk, tv)] = (kld(fresh16, shifted), kld(fresh16, fresh))
    print("\nK-shift: KLD vs exact f16 of the shifted cache and of the recomputed one:",
          f"f16 {kld(fresh16, shifted16):.2e}", {f"{k}/{v}": (f"{a:.2e}", f"{b:.2e}") for (k, v), (a, b) in res.items()})
    assert kld(fresh16, shifted16) < 1e-5  # the shift itself is exact up to rounding
    for (tk, tv), (shift, quant) in res.items():
        # a shifted key has been quantized twice (written, then re-written after RoPE):
        # about twice the error of a key quantized once, and no different regime
        assert shift < 3 * quant + 1e-4, (tk, tv, shift, quant)


@pytest.mark.parametrize("tk,tv", [("turbo3", "turbo3"), ("q8_0", "turbo3"), ("turbo2", "turbo2")])
def test_state_save_restore_is_exact(model, toks, tk, tv):
    a = Session(model, N_CTX, tk, tv)
    a.decode(toks[:60], 0)
    st = a.state()
    la = a.decode([toks[60]], 60)
    b = Session(model, N_CTX, tk, tv)
    b.set_state(st)
    assert b.state() == st
    lb = b.decode([toks[60]], 60)
    np.testing.assert_array_equal(la, lb)
    # and restoring a different cache type is refused, not misread
    c = Session(model, N_CTX, "f16", "f16")
    with pytest.raises(RuntimeError):
        c.set_state(st)
    for s in (a, b, c):
        s.close()


def test_context_with_unservable_head_size_fails_cleanly(tmp_path):
    from tq_gguf.tinymodel import TinyShape, write_tiny_llama
    m = Model(write_tiny_llama(tmp_path / "h96.gguf", TinyShape(head_dim=96)))
    with pytest.raises(RuntimeError, match="could not create a context"):
        Session(m, N_CTX, "turbo3", "turbo3")
    s = Session(m, N_CTX, "f16", "f16")  # the model itself is fine
    assert np.isfinite(s.decode([1, 5, 6], 0)).all()
    s.close()
    m.close()
