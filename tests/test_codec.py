"""The turbo2/turbo3 reference codec, its rotation, and the attention simulator."""

import math

import numpy as np
import pytest

from tq_gguf import attnsim, codebook as cb, rotation, turbo

TURBO = ("turbo3", "turbo2")
LEVELS = {"turbo3": 8, "turbo2": 4}
# Lloyd-Max for N(0, 1): what the codebooks would be without the sphere correction
GAUSS_LM = {
    "turbo3": np.array([-2.1520, -1.3440, -0.7560, -0.2451, 0.2451, 0.7560, 1.3440, 2.1520]),
    "turbo2": np.array([-1.5104, -0.4528, 0.4528, 1.5104]),
}


def _gauss(shape, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


# --- scalar reference, written straight from the spec (one block at a time) ----------


def _spec_quantize_block(x, name):
    c = [float(v) for v in cb.codebook(name)]
    t = [(c[k] + c[k + 1]) / 2 for k in range(len(c) - 1)]
    L = len(c)
    ss = 0.0
    for v in x:
        ss += float(v) * float(v)
    if not ss > 0:
        return [L // 2] * 64, np.float16(0.0)
    n = math.sqrt(ss)
    inv = 8.0 / n
    idx = []
    for v in x:
        y = float(v) * inv
        idx.append(sum(1 for tk in t if y > tk))
    rr = 0.0
    xc = 0.0
    for v, i in zip(x, idx):
        rr += c[i] * c[i]
        xc += float(v) * c[i]
    sn = n / math.sqrt(rr)
    s = min(ss / xc, 1.25 * sn) if ss < math.inf else sn
    with np.errstate(over="ignore"):  # float32(s) may be inf: clamped next
        sf = np.float32(s)
    if sf > 65504:
        sf = np.float32(65504)
    return idx, sf.astype(np.float16)


def _spec_pack_block(idx, d, name):
    qs = [0] * 16
    qh = [0] * 8
    for j, i in enumerate(idx):
        if name == "turbo3":
            qs[j % 16] |= (i & 3) << (2 * (j // 16))
            qh[j % 8] |= (i >> 2) << (j // 8)
        else:
            qs[j % 16] |= i << (2 * (j // 16))
    out = np.float16(d).tobytes() + bytes(qs)
    return out + bytes(qh) if name == "turbo3" else out


# --- codebooks -----------------------------------------------------------------------


@pytest.mark.parametrize("name", TURBO)
def test_codebook_matches_fresh_derivation(name):
    fresh = cb.derive_lloyd_max(LEVELS[name])
    table = np.array(cb.CODEBOOKS[name], dtype=np.float64)
    assert table.shape == (LEVELS[name],)
    np.testing.assert_allclose(table, fresh, rtol=0, atol=1e-6)
    # the literals are float32-representable: the C table copies them exactly
    assert all(float(np.float32(v)) == v for v in cb.CODEBOOKS[name])


@pytest.mark.parametrize("name", TURBO)
def test_codebook_symmetric_ascending(name):
    c = cb.codebook(name)
    assert c.dtype == np.float32
    assert np.all(np.diff(c) > 0)
    np.testing.assert_array_equal(c, -c[::-1])
    t = cb.thresholds(name)
    assert t.dtype == np.float64 and t.shape == (LEVELS[name] - 1,)
    assert t[LEVELS[name] // 2 - 1] == 0.0
    np.testing.assert_array_equal(t, (c[:-1].astype(np.float64) + c[1:]) / 2)


def test_codebook_pinned_literals():
    assert cb.CODEBOOKS["turbo3"][7] == 2.111311435699463
    assert cb.CODEBOOKS["turbo3"][4] == 0.24375343322753906
    assert cb.CODEBOOKS["turbo2"][3] == 1.4999748468399048
    assert cb.CODEBOOKS["turbo2"][2] == 0.45211896300315857


def test_derivation_gaussian_limit():
    # with a huge dim the sphere coordinate is N(0,1): the Gaussian table comes back
    np.testing.assert_allclose(cb.derive_lloyd_max(8, dim=1 << 20), GAUSS_LM["turbo3"], atol=2e-4)
    np.testing.assert_allclose(cb.derive_lloyd_max(4, dim=1 << 20), GAUSS_LM["turbo2"], atol=2e-4)


@pytest.mark.parametrize("name", TURBO)
def test_derived_codebook_beats_gaussian_on_sphere(name):
    g = np.random.default_rng(0).standard_normal((32768, 64))
    u = (8.0 * g / np.linalg.norm(g, axis=1, keepdims=True)).ravel()

    def mse(c):
        i = np.searchsorted((c[:-1] + c[1:]) / 2, u)
        return np.mean((c[i] - u) ** 2)

    assert mse(cb.codebook(name).astype(np.float64)) < mse(GAUSS_LM[name])


def test_unknown_codebook():
    with pytest.raises(ValueError, match="unknown"):
        cb.codebook("turbo5")


# --- layouts -------------------------------------------------------------------------


def test_bits_per_value_and_row_bytes():
    assert turbo.TYPES["turbo3"].bits_per_value == 3.25
    assert turbo.TYPES["turbo2"].bits_per_value == 2.25
    assert turbo.BLOCK_TURBO3.itemsize == 26 and turbo.BLOCK_TURBO2.itemsize == 18
    for n, b3, b2 in ((64, 26, 18), (128, 52, 36), (256, 104, 72)):
        assert turbo.bytes_per_row("turbo3", n) == b3
        assert turbo.bytes_per_row("turbo2", n) == b2


@pytest.mark.parametrize("bad", [0, 32, 96, 100])
def test_bad_row_length(bad):
    with pytest.raises(ValueError, match="multiple of 64"):
        turbo.bytes_per_row("turbo3", bad)
    if bad:
        with pytest.raises(ValueError, match="multiple of 64"):
            turbo.quantize_rows(np.ones(bad, np.float32), "turbo2")


def test_unknown_type():
    with pytest.raises(ValueError, match="unknown turbo type"):
        turbo.quantize_rows(np.ones(64, np.float32), "q4_0")
    with pytest.raises(ValueError, match="unknown turbo type"):
        turbo.bytes_per_row("turbo4", 64)


@pytest.mark.parametrize("name", TURBO)
def test_pack_unpack_roundtrip(name):
    rng = np.random.default_rng(1)
    idx = rng.integers(0, LEVELS[name], size=(3, 5, 256), dtype=np.uint8)
    d = rng.standard_normal((3, 5, 4)).astype(np.float16)
    data = turbo.pack_indices(idx, d, name)
    assert data.shape == (3, 5, turbo.bytes_per_row(name, 256)) and data.dtype == np.uint8
    idx2, d2 = turbo.unpack_indices(data, name)
    np.testing.assert_array_equal(idx2, idx)
    np.testing.assert_array_equal(d2.view(np.uint16), d.view(np.uint16))
    # and the same bytes as the spec's per-value bit formulas
    ref = b"".join(_spec_pack_block(list(idx[0, 0, 64 * b:64 * (b + 1)]), d[0, 0, b], name)
                   for b in range(4))
    assert data[0, 0].tobytes() == ref


def test_layout_turbo3_by_hand():
    idx = np.arange(64) % 8
    data = turbo.pack_indices(idx, np.float16(1.0), "turbo3")
    # d = fp16 1.0 = 0x3C00; qs[i] = (i & 3) * 0b01010101; qh[i] = 0xFF for i >= 4
    assert data.tobytes() == (b"\x00\x3c" + bytes([0x00, 0x55, 0xAA, 0xFF] * 4)
                              + bytes([0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF]))
    idx = np.zeros(64, np.uint8)
    idx[17], idx[9], idx[63] = 1, 4, 7
    data = turbo.pack_indices(idx, np.float16(-2.0), "turbo3")
    qs = [0] * 16
    qh = [0] * 8
    qs[1] = 0x04            # j=17: 1 << 2*(17//16)
    qh[1] = 0x02            # j=9:  (4>>2) << (9//8)
    qs[15] = 0xC0           # j=63: 3 << 6
    qh[7] = 0x80            # j=63: 1 << 7
    assert data.tobytes() == b"\x00\xc0" + bytes(qs) + bytes(qh)


def test_layout_turbo2_by_hand():
    idx = np.arange(64) % 4
    data = turbo.pack_indices(idx, np.float16(1.0), "turbo2")
    assert data.tobytes() == b"\x00\x3c" + bytes([0x00, 0x55, 0xAA, 0xFF] * 4)
    idx = np.zeros(64, np.uint8)
    idx[5], idx[20], idx[47] = 3, 2, 1
    qs = [0] * 16
    qs[5], qs[4], qs[15] = 0x03, 0x08, 0x10
    assert turbo.pack_indices(idx, np.float16(0.5), "turbo2").tobytes() == b"\x00\x38" + bytes(qs)


def test_pack_rejects_out_of_range():
    with pytest.raises(ValueError):
        turbo.pack_indices(np.full(64, 4), np.float16(1), "turbo2")


# --- quantize / dequantize -----------------------------------------------------------


def _adversarial_blocks():
    rng = np.random.default_rng(7)
    blocks = [
        np.zeros(64),
        np.eye(64)[3] * 1e4,
        -np.eye(64)[60] * 3.0,
        np.full(64, 1e30),
        rng.standard_normal(64) * 1e30,
        np.full(64, 1e-42),
        rng.standard_normal(64) * 1e-42,
        np.full(64, 3e38),
        np.full(64, 0.5),
        rng.standard_normal(64) * 1e-3,
        np.r_[np.zeros(32), rng.standard_normal(32)],
        rng.standard_normal(64) * 7e4,  # scale just above the fp16 max: would round to inf
        np.r_[np.nan, np.ones(63)],     # NaN norm: an empty block
        np.r_[np.ones(60), -np.inf, np.zeros(3)],  # inf norm: y = inf * 0 = NaN -> idx 0
    ]
    return np.array(blocks, dtype=np.float32)


@pytest.mark.parametrize("name", TURBO)
def test_matches_spec_scalar_reference(name):
    x = np.concatenate([_gauss((16, 64), seed=3) * np.logspace(-4, 4, 16, dtype=np.float32)[:, None],
                        _adversarial_blocks()])
    data = turbo.quantize_rows(x.reshape(1, -1), name)[0]
    ref = b"".join(_spec_pack_block(*_spec_quantize_block(b, name), name) for b in x)
    assert data.tobytes() == ref


# Blocks whose scale s (float64) rounds to a different fp16 directly than via
# float32 (s lies just off an fp16 midpoint that float32(s) hits exactly). The
# spec says float64 -> float32 -> fp16; found by scanning N(0,1) blocks.
DOUBLE_ROUNDING = {
    "turbo3": ("a48ab9bf255bd43f3714963f0fc3783e39fe90bf8e7eefbd1a30633f6677503fed1bf8bf"
               "5ac289bfaf75aebfa5e0d7bc565fc33fb0cd9f3f171b1dbec62a2f3f29f309bf07c04e40"
               "fa7ab8bea0e304c0d539523f60d3453f41ca06bfca79063fe15e343e7588363efc04763f"
               "cb37f33f73003c3e20abfb3ffc890a3fd05256bf260f3fbe8bd835bfb8122b3d349e3d3f"
               "0f98b73f401357bf9f3cae3ea2fa5bbfba41ad3f2b689a3cef11c2bb6277753f70b13a3f"
               "fd1204bf3374cb3f09cd533ef88fb43f6f6e37beac9d873f19b4f9be161b7ebe493d5b3f"
               "ffb963bf131613bfc2f6bd3ec04c52be6dcebe3fbd42f13f834d07c0df9ba4bf0fa252bd"
               "c34278be", 0x3C50),  # s = 1.0786133021245665; direct fp16 would be 0x3C51
    "turbo2": ("a0306d3f2fedcb3e60276ebfbd352a3f1b1a8a3fb4b81ebf1af6bd3f5b4ebf3fd61e83bf"
               "92dd8bbfa1a283bd75f1313e304319bfa6b9b63e6813ddbf0a1ad93e34ef973e5da2653f"
               "b3048e3fd394b2befb301c3fdc7713406228babf5d24403f9a7c6abb7dd638bd396c62bf"
               "578115bd7057f33e8abd023fe5d8c13ff49ab2bff2c539bffd4c1fbf8c5e983b02ac763e"
               "e47f303f9e988bbf73523f3f8296bfbfa4b7e63e0d7d3abc37c2473f2f96334056af173f"
               "063c04401545ccbd3b7507bf79af383f30f6bc3ef5d74c3ebe4d9ebfdda8ce3e1a5b44be"
               "ecba6f3f0064a3bf27ae2cbfa311d4bfcb8bf33eeffba43ff999fe3e2d56373eea0fa63f"
               "da137b3f", 0x3C80),  # s = 1.1245116873549705; direct fp16 would be 0x3C7F
}


@pytest.mark.parametrize("name", TURBO)
def test_scale_rounds_through_float32(name):
    hexbytes, want = DOUBLE_ROUNDING[name]
    x = np.frombuffer(bytes.fromhex(hexbytes), dtype="<f4").astype(np.float32)
    data = turbo.quantize_rows(x, name)
    assert int(data[:2].view("<u2")[0]) == want
    assert data.tobytes() == _spec_pack_block(*_spec_quantize_block(x, name), name)


@pytest.mark.parametrize("name", TURBO)
def test_dequantize_formula(name):
    x = _gauss((4, 256), seed=4)
    data = turbo.quantize_rows(x, name)
    idx, d = turbo.unpack_indices(data, name)
    want = np.repeat(d.astype(np.float32), 64, axis=-1) * cb.codebook(name)[idx]
    y = turbo.dequantize_rows(data, name, 256)
    assert y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_array_equal(y, want)


@pytest.mark.parametrize("name", TURBO)
def test_block_unbiased_along_itself(name):
    """<y, x> = |x|^2 per block: the reconstruction keeps the input's own component whole."""
    scales = np.logspace(-3, 3, 64, dtype=np.float32)[:, None, None]
    x = _gauss((64, 8, 64), seed=5) * scales
    y = turbo.roundtrip(x.reshape(64, -1), name).reshape(x.shape)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    np.testing.assert_allclose((x64 * y64).sum(-1), (x64 * x64).sum(-1), rtol=1e-3)
    # and so the decoded block is longer than the input by about 1/sqrt(1 - D)
    ratio = np.linalg.norm(y64, axis=-1) / np.linalg.norm(x64, axis=-1)
    assert 1.0 < ratio.mean() < (1.03 if name == "turbo3" else 1.1)


@pytest.mark.parametrize("name", TURBO)
def test_equal_magnitude_block_is_exact(name):
    """The sink alignment (calib/fit.py) relies on this: +-a in every coordinate decodes to itself."""
    s = np.where(np.random.default_rng(8).random(64) < 0.5, -1.0, 1.0)
    for a in (1e-3, 0.37, 250.0):
        x = (a * s).astype(np.float32)
        y = turbo.roundtrip(x[None], name)[0]
        assert np.abs(y - x).max() <= 1e-3 * a


# measured on 4096 x 128 rotated N(0,1) values: turbo3 0.0336, turbo2 0.1275 (the unbiased
# scale costs MSE: 0.0328 and 0.1166 with the norm rule, 0.0326 and 0.1133 least-squares)
@pytest.mark.parametrize("name,lo,hi", [("turbo3", 0.031, 0.037), ("turbo2", 0.120, 0.136)])
def test_relative_mse_gaussian(name, lo, hi):
    x = rotation.rotate(_gauss((4096, 128), seed=6)).astype(np.float32)
    y = turbo.roundtrip(x, name)
    rel = np.mean((y.astype(np.float64) - x) ** 2) / np.mean(x.astype(np.float64) ** 2)
    assert lo < rel < hi, rel


@pytest.mark.parametrize("name", TURBO)
def test_adversarial_blocks(name):
    x = _adversarial_blocks()
    with np.errstate(all="raise"):  # no overflow/invalid warnings escape either
        data = turbo.quantize_rows(x, name)
        y = turbo.dequantize_rows(data, name, 64)
    assert np.all(np.isfinite(y))
    idx, d = turbo.unpack_indices(data, name)
    # zero block: d = 0, mid index, decodes to zeros
    assert d[0, 0] == 0 and np.all(idx[0] == LEVELS[name] // 2) and np.all(y[0] == 0)
    # spike: the spike is the largest decoded value; far from Gaussian, so the scale is
    # capped at 1.25x the norm rule (the decoded block is 1.25x the input's length)
    assert np.argmax(y[1]) == 3 and np.argmin(y[2]) == 60
    np.testing.assert_allclose(np.linalg.norm(y[1]), turbo.SCALE_CAP * 1e4, rtol=1e-3)
    # huge norms clamp the scale to the fp16 max
    for b in (3, 4, 7, 11):
        assert d[b, 0] == np.float16(65504.0)
    assert d[12, 0] == 0 and np.all(y[12] == 0)
    assert d[13, 0] == np.float16(65504.0) and idx[13, 60] == 0
    # denormal inputs: no NaN; the scale underflows to (at most) a tiny fp16
    assert np.all(np.abs(y[5:7]) < 1e-6)


@pytest.mark.parametrize("name", TURBO)
def test_nan_and_inf_do_not_crash(name):
    x = _gauss((3, 64), seed=8)
    x[0, 5] = np.nan
    x[1, 9] = np.inf
    x[2, :] = -np.inf
    with np.errstate(all="raise"):
        y = turbo.roundtrip(x, name)
    assert np.all(y[0] == 0)  # NaN norm: treated as an empty block
    assert np.all(np.isfinite(y))


@pytest.mark.parametrize("name", TURBO)
def test_deterministic_and_batch_independent(name):
    x = _gauss((32, 512), seed=9)
    a = turbo.quantize_rows(x, name)
    b = turbo.quantize_rows(x.copy(), name)
    np.testing.assert_array_equal(a, b)
    rows = np.stack([turbo.quantize_rows(r, name) for r in x[:4]])
    np.testing.assert_array_equal(rows, a[:4])
    blocks = turbo.quantize_rows(x.reshape(-1, 64), name).reshape(a.shape)
    np.testing.assert_array_equal(blocks, a)


def test_large_matrix_is_fast():
    import time

    x = _gauss((4096, 512), seed=10)
    t0 = time.perf_counter()
    data = turbo.quantize_rows(x, "turbo3")
    turbo.dequantize_rows(data, "turbo3", 512)
    assert time.perf_counter() - t0 < 3.0  # ~0.1 s; generous for a loaded 2-core box


# --- rotation ------------------------------------------------------------------------


def test_splitmix64_reference_vector():
    # first outputs of splitmix64 seeded with 0 (Vigna's reference implementation)
    assert rotation.splitmix64(0, 2) == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4]


def test_signs_pinned():
    s = rotation.signs(64)
    assert s[:8].tolist() == [-1, -1, 1, 1, 1, 1, 1, 1]
    assert set(np.unique(s)) == {-1.0, 1.0}
    np.testing.assert_array_equal(rotation.signs(128)[:64], s)  # a prefix of one stream
    assert not np.array_equal(rotation.signs(64, seed=1), s)


@pytest.mark.parametrize("d", [2, 64, 128, 256])
def test_rotation_orthogonal_and_fast_path(d):
    r = rotation.rotation_matrix(d)
    np.testing.assert_allclose(r @ r.T, np.eye(d), rtol=0, atol=1e-12)
    h = rotation.hadamard(d)
    np.testing.assert_array_equal(h, h.T)
    x = np.random.default_rng(d).standard_normal((3, 2, d))
    np.testing.assert_allclose(rotation.rotate(x), x @ r.T, rtol=0, atol=1e-6)
    np.testing.assert_allclose(rotation.unrotate(x), x @ r, rtol=0, atol=1e-6)
    np.testing.assert_allclose(rotation.unrotate(rotation.rotate(x)), x, rtol=0, atol=1e-12)
    np.testing.assert_allclose(r, r.T, rtol=0, atol=0)          # symmetric: the runtime
    np.testing.assert_allclose(r @ r, np.eye(d), rtol=0, atol=1e-12)  # undoes it with itself


def test_hadamard_sylvester_order():
    np.testing.assert_array_equal(rotation.hadamard(4), [[1, 1, 1, 1], [1, -1, 1, -1],
                                                         [1, 1, -1, -1], [1, -1, -1, 1]])


@pytest.mark.parametrize("d", [0, 1, 3, 96])
def test_rotation_rejects_bad_size(d):
    with pytest.raises(ValueError, match="power of two"):
        rotation.rotation_matrix(d)


def test_dot_product_invariant():
    rng = np.random.default_rng(11)
    q, k = rng.standard_normal((2, 10, 128))
    np.testing.assert_allclose(np.sum(rotation.rotate(q) * rotation.rotate(k), -1),
                               np.sum(q * k, -1), rtol=1e-12, atol=1e-12)


# --- attention simulator -------------------------------------------------------------


def _qkv(n_q=8, n_kv=96, n_head=4, n_head_kv=2, d=64, seed=12):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((n_q, n_head, d)).astype(np.float32)
    k = rng.standard_normal((n_kv, n_head_kv, d)).astype(np.float32)
    v = rng.standard_normal((n_kv, n_head_kv, d)).astype(np.float32)
    return q, k, v


def test_f32_is_exact_softmax():
    q, k, v = _qkv()
    r = attnsim.attention(q, k, v, "f32", "f32")
    n_q, n_head, d = q.shape
    n_kv = k.shape[0]
    for h in range(n_head):
        for i in range(n_q):
            pos = n_kv - n_q + i
            s = k[: pos + 1, h // 2].astype(np.float64) @ q[i, h].astype(np.float64) / math.sqrt(d)
            p = np.exp(s - s.max())
            p /= p.sum()
            np.testing.assert_allclose(r.probs[h, i, : pos + 1], p, rtol=1e-12, atol=1e-15)
            assert np.all(r.probs[h, i, pos + 1:] == 0)
            assert np.all(np.isneginf(r.scores[h, i, pos + 1:]))
            np.testing.assert_allclose(r.out[i, h], p @ v[: pos + 1, h // 2], rtol=1e-9, atol=1e-12)


def test_gqa_and_shapes():
    q, k, v = _qkv(n_q=5, n_kv=40, n_head=8, n_head_kv=2)
    r = attnsim.attention(q, k, v, "turbo3", "q8_0")
    assert r.scores.shape == r.probs.shape == (8, 5, 40)
    assert r.out.shape == (5, 8, 64)
    # the same as giving every query head its own copy of its kv head
    full = attnsim.attention(q, np.repeat(k, 4, axis=1), np.repeat(v, 4, axis=1), "turbo3", "q8_0")
    np.testing.assert_allclose(r.probs, full.probs, rtol=1e-12)
    np.testing.assert_allclose(r.out, full.out, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError):
        attnsim.attention(q, k[:, :1].repeat(3, axis=1), v[:, :1].repeat(3, axis=1))
    nc = attnsim.attention(q, k, v, "f32", "f32", causal=False)
    assert np.all(np.isfinite(nc.scores))
    off = attnsim.attention(q, k, v, "f32", "f32", kv_offset=0)
    assert np.all(off.probs[:, 0, 1:] == 0) and np.allclose(off.probs[:, 0, 0], 1)


def test_turbo3_beats_turbo2_with_outlier_channels():
    q, k, v = _qkv(n_q=16, n_kv=256, seed=13)
    k[:, :, [3, 17, 40]] *= np.array([6.0, 4.0, 5.0], dtype=np.float32)
    ref = attnsim.attention(q, k, v, "f32", "f32")
    kl = {t: attnsim.kl_divergence(ref.probs, attnsim.attention(q, k, v, t, t).probs)
          for t in ("q8_0", "turbo3", "turbo2")}
    assert kl["q8_0"] < kl["turbo3"] < kl["turbo2"]


def test_rotation_helps_turbo3_on_outlier_channel():
    q, k, v = _qkv(n_q=16, n_kv=256, seed=14)
    k[:, :, 5] = 20.0 + k[:, :, 5]  # a strong, mostly constant channel (as after RoPE)
    v[:, :, 9] *= 12.0
    ref = attnsim.attention(q, k, v, "f32", "f32")
    # K side (measured KL 0.096 rotated vs 0.79 raw)
    rot = attnsim.attention(q, k, v, "turbo3", "f32", rotate=True)
    raw = attnsim.attention(q, k, v, "turbo3", "f32", rotate=False)
    assert attnsim.kl_divergence(ref.probs, rot.probs) < 0.25 * attnsim.kl_divergence(ref.probs, raw.probs)
    # V side: the output is rotated back (measured relative error 0.036 rotated vs 0.35 raw)
    rot = attnsim.attention(q, k, v, "f32", "turbo3", rotate=True)
    raw = attnsim.attention(q, k, v, "f32", "turbo3", rotate=False)
    np.testing.assert_array_equal(rot.probs, ref.probs)
    e_ref = np.mean(ref.out ** 2)
    assert np.mean((rot.out - ref.out) ** 2) / e_ref < 0.06
    assert np.mean((rot.out - ref.out) ** 2) < 0.25 * np.mean((raw.out - ref.out) ** 2)


def test_kl_divergence_helper():
    p = np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    assert attnsim.kl_divergence(p, p) == 0.0
    q = np.array([[0.25, 0.75, 0.0], [0.5, 0.5, 0.0]])
    want = (0.5 * math.log(2) + 0.5 * math.log(0.5 / 0.75) + math.log(2)) / 2
    assert attnsim.kl_divergence(p, q) == pytest.approx(want, rel=1e-12)
    assert np.isfinite(attnsim.kl_divergence(p, np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])))
