// tq-gguf: turbo2/turbo3 KV-cache codec on CUDA.
//
// Block layouts and the arithmetic are those of tq_gguf/turbo.py (the reference) and
// quantize_block_turbo() in ggml-quants.c: the quantizer below is bit-exact with both
// (float64 sums in index order with no FMA contraction, strict '>' against the float64
// midpoints of the float32 codebook, scale rounded float64 -> float32 -> fp16).
//
//   turbo3 (26 B / 64 values): fp16 d, qs[16] low 2 bits, qh[8] high bit
//   turbo2 (18 B / 64 values): fp16 d, qs[16] 2-bit index
//   value j: qs[j%16] >> 2*(j/16) & 3  |  (qh[j%8] >> (j/8) & 1) << 2
#pragma once

#include "common.cuh"

// One 64-value block, one thread (the cache write: a few blocks per token and layer).
// Fully unrolled so that values, indices and packed bytes stay in registers; the two
// float64 sums are sequential chains as in the reference, so the block's latency is
// about 2*64 dependent double adds.
template <int levels>
static __device__ __forceinline__ void tq_quantize_block_turbo(const float * __restrict__ x, half & d, uint32_t * qs32, uint32_t * qh32) {
    const float * cb = levels == 8 ? kvalues_turbo3 : kvalues_turbo2;
    float xv[QK_TURBO];
#pragma unroll
    for (int j = 0; j < QK_TURBO; ++j) {
        xv[j] = x[j];
    }
    double ss = 0.0;
#pragma unroll
    for (int j = 0; j < QK_TURBO; ++j) {
        ss = __dadd_rn(ss, __dmul_rn((double) xv[j], (double) xv[j]));
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        qs32[i] = 0;
    }
    qh32[0] = qh32[1] = 0;
    if (!(ss > 0.0)) {
        // zero (or NaN) block: middle index, d = 0 (as the CPU reference)
        constexpr uint32_t q = levels/2;
#pragma unroll
        for (int j = 0; j < QK_TURBO; ++j) {
            qs32[(j % 16)/4] |= (q & 3) << (8*(j % 4) + 2*(j / 16));
            if (levels == 8) {
                qh32[(j % 8)/4] |= (q >> 2) << (8*(j % 4) + j / 8);
            }
        }
        d = __float2half_rn(0.0f);
        return;
    }
    double cbd[levels];
    double mid[levels - 1];
#pragma unroll
    for (int k = 0; k < levels; ++k) {
        cbd[k] = (double) cb[k];
    }
#pragma unroll
    for (int k = 0; k < levels - 1; ++k) {
        mid[k] = __ddiv_rn(__dadd_rn(cbd[k], cbd[k + 1]), 2.0);
    }
    const double n   = __dsqrt_rn(ss);
    const double inv = __ddiv_rn(8.0, n);
    double rr = 0.0;
#pragma unroll
    for (int j = 0; j < QK_TURBO; ++j) {
        const double y = __dmul_rn((double) xv[j], inv);
        uint32_t q = 0;
        double c = cbd[0];
#pragma unroll
        for (int k = 0; k < levels - 1; ++k) {
            const bool up = y > mid[k];   // mid is increasing: the last true k sets q
            q += up;
            c = up ? cbd[k + 1] : c;
        }
        qs32[(j % 16)/4] |= (q & 3) << (8*(j % 4) + 2*(j / 16));
        if (levels == 8) {
            qh32[(j % 8)/4] |= (q >> 2) << (8*(j % 4) + j / 8);
        }
        rr = __dadd_rn(rr, __dmul_rn(c, c));
    }
    float s = __double2float_rn(__ddiv_rn(n, __dsqrt_rn(rr)));
    if (s > 65504.0f) {
        s = 65504.0f;
    }
    d = __float2half_rn(s);
}

// blocks are 26/18 bytes: only 2-byte alignment holds, so store 16-bit halves of the words
static __device__ __forceinline__ void tq_st_u32_a2(uint8_t * p, const uint32_t v) {
    uint16_t * p16 = (uint16_t *) p;
    p16[0] = uint16_t(v & 0xFFFF);
    p16[1] = uint16_t(v >> 16);
}

static __device__ void quantize_f32_turbo3_block(const float * __restrict__ x, block_turbo3 * __restrict__ y) {
    half d;
    uint32_t qs[4], qh[2];
    tq_quantize_block_turbo<8>(x, d, qs, qh);
    y->d = d;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        tq_st_u32_a2(y->qs + 4*i, qs[i]);
    }
    tq_st_u32_a2(y->qh + 0, qh[0]);
    tq_st_u32_a2(y->qh + 4, qh[1]);
}

static __device__ void quantize_f32_turbo2_block(const float * __restrict__ x, block_turbo2 * __restrict__ y) {
    half d;
    uint32_t qs[4], qh[2];
    tq_quantize_block_turbo<4>(x, d, qs, qh);
    y->d = d;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        tq_st_u32_a2(y->qs + 4*i, qs[i]);
    }
}

static __device__ void cpy_blck_f32_turbo3(const char * cxi, char * cdsti) {
    quantize_f32_turbo3_block((const float *) cxi, (block_turbo3 *) cdsti);
}

static __device__ void cpy_blck_f32_turbo2(const char * cxi, char * cdsti) {
    quantize_f32_turbo2_block((const float *) cxi, (block_turbo2 *) cdsti);
}

// f16 sources (CPY, SET_ROWS from an f16 tensor): widen the block, then the same quantizer
template <typename block_t, void (*quantize)(const float *, block_t *)>
static __device__ void cpy_blck_f16_turbo(const char * cxi, char * cdsti) {
    float x[QK_TURBO];
#pragma unroll
    for (int j = 0; j < QK_TURBO; ++j) {
        x[j] = __half2float(((const half *) cxi)[j]);
    }
    quantize(x, (block_t *) cdsti);
}

static __device__ void cpy_blck_f16_turbo3(const char * cxi, char * cdsti) {
    cpy_blck_f16_turbo<block_turbo3, quantize_f32_turbo3_block>(cxi, cdsti);
}

static __device__ void cpy_blck_f16_turbo2(const char * cxi, char * cdsti) {
    cpy_blck_f16_turbo<block_turbo2, quantize_f32_turbo2_block>(cxi, cdsti);
}

// dequantize_kernel_t with qk = 64, qr = 2: v = (value iqs, value iqs + 32).
static __device__ __forceinline__ void dequantize_turbo3(const void * vx, const int64_t ib, const int iqs, float2 & v) {
    const block_turbo3 * x = (const block_turbo3 *) vx + ib;
    const float d = __half2float(x->d);
    const int j0 = iqs, j1 = iqs + 32;
    const int q0 = ((x->qs[j0 % 16] >> (2*(j0 / 16))) & 3) | (((x->qh[j0 % 8] >> (j0 / 8)) & 1) << 2);
    const int q1 = ((x->qs[j1 % 16] >> (2*(j1 / 16))) & 3) | (((x->qh[j1 % 8] >> (j1 / 8)) & 1) << 2);
    v.x = d * kvalues_turbo3[q0];
    v.y = d * kvalues_turbo3[q1];
}

static __device__ __forceinline__ void dequantize_turbo2(const void * vx, const int64_t ib, const int iqs, float2 & v) {
    const block_turbo2 * x = (const block_turbo2 *) vx + ib;
    const float d = __half2float(x->d);
    const int j0 = iqs, j1 = iqs + 32;
    v.x = d * kvalues_turbo2[(x->qs[j0 % 16] >> (2*(j0 / 16))) & 3];
    v.y = d * kvalues_turbo2[(x->qs[j1 % 16] >> (2*(j1 / 16))) & 3];
}

#define QR_TURBO 2

// CPY of one block to f16 (the CPU backend has the same op).
template <dequantize_kernel_t dequant>
static __device__ void cpy_blck_turbo_f16(const char * cxi, char * cdsti) {
    half * dst = (half *) cdsti;
#pragma unroll
    for (int j = 0; j < QK_TURBO/2; ++j) {
        float2 v;
        dequant(cxi, 0, j, v);
        dst[j]              = __float2half(v.x);
        dst[j + QK_TURBO/2] = __float2half(v.y);
    }
}
