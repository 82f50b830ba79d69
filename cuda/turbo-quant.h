// tq-gguf: quantizer of one turbo2/turbo3 block, for the CUDA kernels and for a host build
// that tests compare byte for byte with tq_gguf/turbo.py (tests/test_cuda_quantizer.py).
//
// Bit-exact with the reference: float64 sums in index order with no FMA contraction
// (on the device the _rn intrinsics, on the host plain operators built with
// -ffp-contract=off), strict '>' against the float64 midpoints of the float32 codebook,
// scale rounded float64 -> float32 -> fp16 (nearest even), clamped to 65504.
// Fully unrolled, so values, indices and packed bytes stay in registers on the GPU.
//
// Output: the block's bytes (26 for turbo3, 18 for turbo2), little-endian, written as
// 16-bit units because blocks of 26/18 bytes are only 2-byte aligned:
//   uint16 d | qs[16]: value j at qs[j%16] bits 2*(j/16) | qh[8]: bit j/8 of qh[j%8] (turbo3)
#pragma once

#include <stdint.h>

#if defined(__CUDACC__)
#define TQ_QFN static __host__ __device__ __forceinline__
#else
#define TQ_QFN static inline
#endif

#if defined(__CUDA_ARCH__)
#define TQ_DADD(a, b) __dadd_rn((a), (b))
#define TQ_DMUL(a, b) __dmul_rn((a), (b))
#define TQ_DDIV(a, b) __ddiv_rn((a), (b))
#define TQ_DSQRT(a)   __dsqrt_rn((a))
#else
#include <math.h>
#include <string.h>
#define TQ_DADD(a, b) ((a) + (b))
#define TQ_DMUL(a, b) ((a) * (b))
#define TQ_DDIV(a, b) ((a) / (b))
#define TQ_DSQRT(a)   sqrt((a))
#endif

#define TQ_QK 64

TQ_QFN uint16_t tq_fp16_bits(const float f) {
#if defined(__CUDA_ARCH__)
    return __half_as_ushort(__float2half_rn(f));
#else
    const _Float16 h = (_Float16) f;   // round to nearest even
    uint16_t u;
    memcpy(&u, &h, sizeof(u));
    return u;
#endif
}

TQ_QFN void tq_store_u32(uint16_t * p, const uint32_t v) {
    p[0] = (uint16_t) (v & 0xFFFF);
    p[1] = (uint16_t) (v >> 16);
}

// the codebook in float64 and the midpoints between its levels (the index of a value is the
// number of midpoints it exceeds); shared with the warp quantizer of turbo.cuh
template <int levels>
TQ_QFN void tq_codebook_mids(const float * __restrict__ cb, double (&cbd)[levels], double (&mid)[levels - 1]) {
#pragma unroll
    for (int k = 0; k < levels; ++k) {
        cbd[k] = (double) cb[k];
    }
#pragma unroll
    for (int k = 0; k < levels - 1; ++k) {
        mid[k] = TQ_DMUL(TQ_DADD(cbd[k], cbd[k + 1]), 0.5);   // = /2 exactly, without a division
    }
}

// the index of a normalised value (the number of midpoints it exceeds; NaN: 0) and its level in c
template <int levels>
TQ_QFN uint32_t tq_level(const double y, const double (&cbd)[levels], const double (&mid)[levels - 1], double & c) {
    uint32_t q = 0;
    c = cbd[0];
#pragma unroll
    for (int k = 0; k < levels - 1; ++k) {
        const bool up = y > mid[k];   // mid is increasing: the last true k sets q
        q += up;
        c = up ? cbd[k + 1] : c;
    }
    return q;
}

// the block scale's fp16 bits from the block's sum of squares ss, its norm n, the chosen levels'
// sum of squares rr and their products with the values xc (all sums in index order):
// d = ss / xc (<decoded, x> = |x|^2), capped at 1.25 n / sqrt(rr) (the norm rule, which an
// infinite ss keeps); tq_gguf/turbo.py says why
TQ_QFN uint16_t tq_scale_bits(const double ss, const double n, const double rr, const double xc) {
    const double sn = TQ_DDIV(n, TQ_DSQRT(rr));
    double sd = sn;
    if (ss <= 1.7976931348623157e308) {   // finite (DBL_MAX)
        const double sp  = TQ_DDIV(ss, xc);
        const double cap = TQ_DMUL(1.25, sn);
        sd = sp < cap ? sp : cap;
    }
    float s = (float) sd;
    if (s > 65504.0f) {
        s = 65504.0f;
    }
    return tq_fp16_bits(s);
}

// levels: 8 (turbo3) or 4 (turbo2); cb: the float32 codebook, ascending
template <int levels>
TQ_QFN void tq_quantize_block(const float * __restrict__ x, const float * __restrict__ cb, uint8_t * __restrict__ y) {
    float xv[TQ_QK];
#pragma unroll
    for (int j = 0; j < TQ_QK; ++j) {
        xv[j] = x[j];
    }
    double ss = 0.0;
#pragma unroll
    for (int j = 0; j < TQ_QK; ++j) {
        ss = TQ_DADD(ss, TQ_DMUL((double) xv[j], (double) xv[j]));
    }
    uint32_t qs32[4] = {0, 0, 0, 0};
    uint32_t qh32[2] = {0, 0};
    uint16_t d;
    if (!(ss > 0.0)) {
        // zero (or NaN) block: middle index, d = 0 (as the CPU reference)
        const uint32_t q = levels/2;
#pragma unroll
        for (int j = 0; j < TQ_QK; ++j) {
            qs32[(j % 16)/4] |= (q & 3) << (8*(j % 4) + 2*(j / 16));
            if (levels == 8) {
                qh32[(j % 8)/4] |= (q >> 2) << (8*(j % 4) + j / 8);
            }
        }
        d = tq_fp16_bits(0.0f);
    } else {
        double cbd[levels];
        double mid[levels - 1];
        tq_codebook_mids<levels>(cb, cbd, mid);
        const double n   = TQ_DSQRT(ss);
        const double inv = TQ_DDIV(8.0, n);   // sqrt(QK): unit-variance coordinates
        double rr = 0.0;
        double xc = 0.0;
#pragma unroll
        for (int j = 0; j < TQ_QK; ++j) {
            double c;
            const uint32_t q = tq_level<levels>(TQ_DMUL((double) xv[j], inv), cbd, mid, c);
            qs32[(j % 16)/4] |= (q & 3) << (8*(j % 4) + 2*(j / 16));
            if (levels == 8) {
                qh32[(j % 8)/4] |= (q >> 2) << (8*(j % 4) + j / 8);
            }
            rr = TQ_DADD(rr, TQ_DMUL(c, c));
            xc = TQ_DADD(xc, TQ_DMUL((double) xv[j], c));
        }
        d = tq_scale_bits(ss, n, rr, xc);
    }
    uint16_t * y16 = (uint16_t *) y;
    y16[0] = d;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        tq_store_u32(y16 + 1 + 2*i, qs32[i]);
    }
    if (levels == 8) {
        tq_store_u32(y16 + 9,  qh32[0]);
        tq_store_u32(y16 + 11, qh32[1]);
    }
}
