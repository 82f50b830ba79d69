"""The tensor-core decode kernel's fragment decoding (cuda/turbo-frag.h), built for the host,
against the Python reference: packed blocks from tq_gguf/turbo.py must become exactly the f16
codebook values, in the register layout the mma instructions take.

The kernel runs this same source on the GPU (PRMT for the byte permutes); the GPU run of the
whole kernel is covered by test-backend-ops (docs/results/cuda.md).
"""

import ctypes

import numpy as np
import pytest

from tq_gguf import codebook, turbo


HARNESS = r"""
#include "turbo-frag.h"

template <bool hi>
static void slabs(uint32_t X, uint32_t H, const tq_cb16 & t, uint32_t * o) {
    tq_lookup4(tq_idx<hi, 0>(X, H), t, o[0], o[1]);
    tq_lookup4(tq_idx<hi, 1>(X, H), t, o[2], o[3]);
    tq_lookup4(tq_idx<hi, 2>(X, H), t, o[4], o[5]);
    tq_lookup4(tq_idx<hi, 3>(X, H), t, o[6], o[7]);
}

// the same from tq_slabs4 (all slabs at once, the long-context instance)
template <bool hi>
static void slabs_c(uint32_t X, uint32_t Hc, const tq_cb16 & t, uint32_t * o) {
    uint32_t r[4][2];
    tq_slabs4<hi>(X, Hc, t, r);
    for (int s = 0; s < 4; ++s) {
        o[2*s] = r[s][0];
        o[2*s + 1] = r[s][1];
    }
}

// out[block][u][slab][2]: the K fragment registers of lane u (c: through tq_k_words_c, tq_slabs4)
extern "C" void tq_frag_k(const uint8_t * blocks, long n, int levels, const uint16_t * cb, uint32_t * out, int c) {
    const int bs = levels == 8 ? 26 : 18;
    const tq_cb16 t = tq_cb16_pack(cb, levels);
    for (long i = 0; i < n; ++i) {
        for (int u = 0; u < 4; ++u) {
            uint32_t X, H;
            uint32_t * o = out + (i*4 + u)*8;
            if (c) {
                if (levels == 8) { tq_k_words_c<true >(blocks + i*bs, u, X, H); slabs_c<true >(X, H, t, o); }
                else             { tq_k_words_c<false>(blocks + i*bs, u, X, H); slabs_c<false>(X, H, t, o); }
            } else {
                if (levels == 8) { tq_k_words<true >(blocks + i*bs, u, X, H); slabs<true >(X, H, t, o); }
                else             { tq_k_words<false>(blocks + i*bs, u, X, H); slabs<false>(X, H, t, o); }
            }
        }
    }
}

// blocks 2p, 2p+1 as rows p0, p1: out[p][g][slab][2], the V fragment registers of lane g
extern "C" void tq_frag_v(const uint8_t * blocks, long npairs, int levels, const uint16_t * cb, uint32_t * out, int c) {
    const int bs = levels == 8 ? 26 : 18;
    const tq_cb16 t = tq_cb16_pack(cb, levels);
    for (long p = 0; p < npairs; ++p) {
        for (int g = 0; g < 8; ++g) {
            uint32_t X, H;
            uint32_t * o = out + (p*8 + g)*8;
            const uint8_t * b0 = blocks + (2*p)*bs;
            const uint8_t * b1 = blocks + (2*p + 1)*bs;
            if (c) {
                if (levels == 8) { tq_v_words_c<true >(b0, b1, g, X, H); slabs_c<true >(X, H, t, o); }
                else             { tq_v_words_c<false>(b0, b1, g, X, H); slabs_c<false>(X, H, t, o); }
            } else {
                if (levels == 8) { tq_v_words<true >(b0, b1, g, X, H); slabs<true >(X, H, t, o); }
                else             { tq_v_words<false>(b0, b1, g, X, H); slabs<false>(X, H, t, o); }
            }
        }
    }
}
"""


@pytest.fixture(scope="module")
def frag(host_lib):
    so = host_lib(HARNESS, "tqf", "-Wall", "-Werror")
    for f in (so.tq_frag_k, so.tq_frag_v):
        f.argtypes = [ctypes.c_void_p, ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
    return so


def packed(t: str, n: int, seed: int):
    """n random blocks of type t: their indices and packed bytes (the reference's layout)."""
    info = turbo.type_info(t)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, info.levels, size=(n, 64)).astype(np.uint8)
    d = rng.uniform(0.1, 4.0, size=n).astype(np.float16)
    data = np.ascontiguousarray(turbo.pack_indices(idx, d, t), dtype=np.uint8)
    assert data.size == n * info.type_size
    got_idx, _ = turbo.unpack_indices(data, t)
    assert np.array_equal(np.asarray(got_idx).reshape(n, 64), idx)
    cb16 = np.ascontiguousarray(np.asarray(codebook.codebook(t), dtype=np.float32).astype(np.float16).view(np.uint16))
    return info, idx, data, cb16


def halves(regs: np.ndarray) -> np.ndarray:
    """uint32 registers -> (..., 2) f16 bit patterns, the low half first (element k, then k+1)."""
    regs = regs.astype(np.uint32)
    return np.stack([regs & 0xFFFF, regs >> 16], axis=-1).astype(np.uint16)


@pytest.mark.parametrize("c", [0, 1], ids=["lookup4", "slabs4"])
@pytest.mark.parametrize("t", ["turbo3", "turbo2"])
def test_k_fragments_match_reference(frag, t, c):
    n = 96
    info, idx, data, cb16 = packed(t, n, seed=1)
    out = np.zeros((n, 4, 4, 2), dtype=np.uint32)
    frag.tq_frag_k(data.ctypes.data, n, info.levels, cb16.ctypes.data, out.ctypes.data, c)
    want = np.zeros((n, 4, 4, 2, 2), dtype=np.uint16)
    for u in range(4):
        for s in range(4):
            j = 16 * s + 2 * u
            want[:, u, s, 0] = cb16[idx[:, [j, j + 1]]]          # b0: values j, j+1
            want[:, u, s, 1] = cb16[idx[:, [j + 8, j + 9]]]      # b1: values j+8, j+9
    got = halves(out)
    bad = np.argwhere(got != want)
    assert bad.size == 0, f"{len(bad)} mismatches, first (block, u, slab, reg, half): {bad[0].tolist()}"


@pytest.mark.parametrize("c", [0, 1], ids=["lookup4", "slabs4"])
@pytest.mark.parametrize("t", ["turbo3", "turbo2"])
def test_v_fragments_match_reference(frag, t, c):
    n = 96
    info, idx, data, cb16 = packed(t, n, seed=2)
    out = np.zeros((n // 2, 8, 4, 2), dtype=np.uint32)
    frag.tq_frag_v(data.ctypes.data, n // 2, info.levels, cb16.ctypes.data, out.ctypes.data, c)
    r0, r1 = idx[0::2], idx[1::2]
    want = np.zeros((n // 2, 8, 4, 2, 2), dtype=np.uint16)
    for g in range(8):
        for s in range(4):
            j = 16 * s + 2 * g
            want[:, g, s, 0] = cb16[np.stack([r0[:, j], r1[:, j]], axis=-1)]              # a: value j of p0, p1
            want[:, g, s, 1] = cb16[np.stack([r0[:, j + 1], r1[:, j + 1]], axis=-1)]      # value j+1 of p0, p1
    got = halves(out)
    bad = np.argwhere(got != want)
    assert bad.size == 0, f"{len(bad)} mismatches, first (pair, g, slab, reg, half): {bad[0].tolist()}"


def test_fragments_see_every_index(frag):
    # the comparison above can fail: every index value occurs at every fragment position
    _, idx, _, _ = packed("turbo3", 96, seed=1)
    assert all(len(np.unique(idx[:, j])) == 8 for j in range(64))
