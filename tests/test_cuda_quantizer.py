"""The quantizer of the CUDA cache write (cuda/turbo-quant.h), built for the host, against
the Python reference byte for byte.

The kernels run this same source on the GPU with the _rn float64 intrinsics (no FMA
contraction, like -ffp-contract=off here), so a CPU-only CI checks its logic and rounding;
the GPU run of it is covered by test-backend-ops (docs/results/cuda.md).
"""

import ctypes

import numpy as np
import pytest

from tq_gguf import codebook, rotation, turbo


HARNESS = r"""
#include "turbo-quant.h"
extern "C" void tq_quantize_rows(const float * x, long nblocks, int levels, const float * cb, uint8_t * out) {
    const int bs = levels == 8 ? 26 : 18;
    for (long i = 0; i < nblocks; ++i) {
        if (levels == 8) tq_quantize_block<8>(x + i*TQ_QK, cb, out + i*bs);
        else             tq_quantize_block<4>(x + i*TQ_QK, cb, out + i*bs);
    }
}
"""


@pytest.fixture(scope="module")
def host_quantizer(host_lib):
    so = host_lib(HARNESS, "tqq", "-ffp-contract=off")
    so.tq_quantize_rows.argtypes = [ctypes.c_void_p, ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]

    def quantize(x: np.ndarray, t: str) -> np.ndarray:
        info = turbo.type_info(t)
        x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, 64)
        cb = np.ascontiguousarray(codebook.codebook(t), dtype=np.float32)
        out = np.zeros(len(x) * info.type_size, dtype=np.uint8)
        so.tq_quantize_rows(x.ctypes.data, len(x), info.levels, cb.ctypes.data, out.ctypes.data)
        return out
    return quantize


def blocks(seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = [rng.standard_normal((64, 64)),
            rotation.rotate(rng.standard_normal(256) * np.r_[np.ones(255), 40.0]).reshape(4, 64),
            rng.standard_normal((4, 64)) * 1e-3, rng.standard_normal((4, 64)) * 3e4]
    adv = np.zeros((9, 64))
    adv[1, 5] = 7.0                            # single spike
    adv[2] = 1e30 * rng.standard_normal(64)    # huge norm: the scale clamps to 65504
    adv[3] = 1e-42 * rng.standard_normal(64)   # float32 denormals
    adv[4] = np.linspace(-3, 3, 64)            # values near every threshold
    adv[5, ::2] = 1.0                          # half zeros
    adv[6] = -adv[1]
    adv[7] = rng.standard_normal(64) * 65504
    adv[8, 3] = np.nan                         # NaN block: middle index, d = 0
    rows.append(adv)
    return np.concatenate(rows).astype(np.float32)


@pytest.mark.parametrize("t", ["turbo3", "turbo2"])
def test_cuda_quantizer_matches_reference(host_quantizer, t):
    x = blocks()
    with np.errstate(all="ignore"):
        ref = turbo.quantize_rows(x.reshape(1, -1), t).reshape(-1)
    got = host_quantizer(x, t)
    assert got.shape == ref.shape
    bad = np.flatnonzero(got != ref)
    assert bad.size == 0, f"{bad.size} bytes differ, first in block {bad[0] // turbo.type_info(t).type_size}"


def test_cuda_quantizer_is_not_trivially_equal(host_quantizer):
    # the comparison can fail: turbo2 bytes for turbo3 input differ, and one flipped input changes bytes
    x = blocks(1)[:8]
    assert not np.array_equal(host_quantizer(x, "turbo3")[:18], host_quantizer(x, "turbo2")[:18])
    y = x.copy()
    y[0, 0] = -y[0, 0] + 1.0
    assert not np.array_equal(host_quantizer(x, "turbo3"), host_quantizer(y, "turbo3"))
