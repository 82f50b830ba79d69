// tq-gguf: turbo2/turbo3 KV-cache codec on CUDA.
//
// Block layouts and the arithmetic are those of tq_gguf/turbo.py (the reference) and
// quantize_block_turbo() in ggml-quants.c; the quantizer is in turbo-quant.h.
//
//   turbo3 (26 B / 64 values): fp16 d, qs[16] low 2 bits, qh[8] high bit
//   turbo2 (18 B / 64 values): fp16 d, qs[16] 2-bit index
//   value j: qs[j%16] >> 2*(j/16) & 3  |  (qh[j%8] >> (j/8) & 1) << 2
#pragma once

#include "common.cuh"
#include "turbo-quant.h"

// The cache write: one thread per 64-value block (a few blocks per token and layer),
// with the quantizer of turbo-quant.h, which tests also build for the host.
static __device__ void quantize_f32_turbo3_block(const float * __restrict__ x, block_turbo3 * __restrict__ y) {
    tq_quantize_block<8>(x, kvalues_turbo3, (uint8_t *) y);
}

static __device__ void quantize_f32_turbo2_block(const float * __restrict__ x, block_turbo2 * __restrict__ y) {
    tq_quantize_block<4>(x, kvalues_turbo2, (uint8_t *) y);
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
