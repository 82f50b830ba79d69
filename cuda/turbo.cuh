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
#include "turbo-quant-warp.cuh"

#include <algorithm>
#include <cstdlib>

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

// The randomized Hadamard R = D·H·D/sqrt(N) by a warp, on each N-value chunk of a row of D values
// (N <= D; llama rotates K by head-size chunks and V by 64-value chunks); lane holds values
// i*32 + lane; signs: R's first row (D up to a global sign). The arithmetic of fwht.cu's kernel, so
// the fused paths (turbo-fuse.cu) give the same floats as the rotation node.
// (sv: the signs' values at i*32 + lane, mod N, loaded by the caller: tq_fwht_regs loads them)
template <int D, int N = D>
static __device__ __forceinline__ void tq_fwht_regs_sv(float (&reg)[D/32], const float (&sv)[D/32], const float scale, const int lane) {
    static_assert(N >= 64 && D % N == 0, "rotation size");
    constexpr int el = D/32;
    float sgn[el];
#pragma unroll
    for (int i = 0; i < el; ++i) {
        reg[i] *= scale;
        sgn[i] = sv[i] < 0.0f ? -1.0f : 1.0f;
        reg[i] *= sgn[i];
    }
#pragma unroll
    for (int h = 1; h < 32; h *= 2) {
#pragma unroll
        for (int j = 0; j < el; ++j) {
            const float val  = reg[j];
            const float val2 = __shfl_xor_sync(0xFFFFFFFF, val, h, 32);
            reg[j] = (lane & h) == 0 ? val + val2 : val2 - val;
        }
    }
#pragma unroll
    for (int h = 32; h < N; h *= 2) {
        const int step = h/32;
#pragma unroll
        for (int j = 0; j < el; j += 2*step) {
#pragma unroll
            for (int k = 0; k < step; ++k) {
                const float x = reg[j + k];
                const float y = reg[j + k + step];
                reg[j + k]        = x + y;
                reg[j + k + step] = x - y;
            }
        }
    }
#pragma unroll
    for (int i = 0; i < el; ++i) {
        reg[i] *= sgn[i];
    }
}

template <int D, int N = D>
static __device__ __forceinline__ void tq_fwht_regs(float (&reg)[D/32], const float * __restrict__ signs, const float scale, const int lane) {
    float sv[D/32];
#pragma unroll
    for (int i = 0; i < D/32; ++i) {
        sv[i] = signs[(i*32 + lane) % N];
    }
    tq_fwht_regs_sv<D, N>(reg, sv, scale, lane);
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

// turbo -> f16 of a contiguous range: the conversion before the tensor-core FlashAttention kernel
// (prefill), which reads the whole cache once per layer and ubatch. 8 values per thread (qs bytes
// 8(k%2).. for shift 2(k/2), qh bit k), one 16-byte store; the same values as dequantize_turbo3/2.
template <int levels>
static __global__ void tq_turbo_to_f16_cont(const uint16_t * __restrict__ x, half * __restrict__ y, const int64_t nblk) {
    constexpr int U = levels == 8 ? 13 : 9;   // 16-bit units per block
    const int64_t i  = (int64_t) blockIdx.x*blockDim.x + threadIdx.x;
    const int64_t ib = i / 8;
    const int     k  = (int) (i % 8);
    if (ib >= nblk) {
        return;
    }
    const uint16_t * b = x + ib*U;
    const float d = __half2float(__ushort_as_half(b[0]));
    const uint32_t q0 = b[1 + 4*(k%2)] | (uint32_t(b[2 + 4*(k%2)]) << 16);
    const uint32_t q1 = b[3 + 4*(k%2)] | (uint32_t(b[4 + 4*(k%2)]) << 16);
    uint32_t h0 = 0;
    uint32_t h1 = 0;
    if (levels == 8) {
        h0 = b[9]  | (uint32_t(b[10]) << 16);
        h1 = b[11] | (uint32_t(b[12]) << 16);
    }
    const float * cb = levels == 8 ? kvalues_turbo3 : kvalues_turbo2;
    const int sh = 2*(k/2);
    half2 out[4];
#pragma unroll
    for (int j = 0; j < 8; j += 2) {
        float v[2];
#pragma unroll
        for (int jj = 0; jj < 2; ++jj) {
            const int t = j + jj;
            int q = ((t < 4 ? q0 >> 8*t : q1 >> 8*(t - 4)) >> sh) & 3;
            if (levels == 8) {
                q |= (((t < 4 ? h0 >> 8*t : h1 >> 8*(t - 4)) >> k) & 1) << 2;
            }
            v[jj] = d*cb[q];
        }
        out[j/2] = __halves2half2(__float2half(v[0]), __float2half(v[1]));
    }
    *(uint4 *) (y + ib*QK_TURBO + 8*k) = *(const uint4 *) out;
}

// The same conversion by warps, one chunk of 32 blocks per warp (832 B of turbo3, 576 B of turbo2,
// 16-byte aligned when the source is): the chunk comes in with 16-byte loads through shared memory,
// then 8 rounds of 4 blocks, lane = (block, 8-value part) as above, each round one 512-byte store per
// warp; the codebook is read from shared memory. Up to two tensors per launch (K and V before
// prefill attention: turbo-fuse.cu), blockIdx.y picks the job. Same values as tq_turbo_to_f16_cont.
#define TQ_CONV_WARPS 8
struct tq_f16_job {
    const char * x;       // turbo blocks, 16-byte aligned
    half       * y;       // f16 out, 16-byte aligned
    int64_t      nblk;    // 64-value blocks
    int          levels;  // 8 (turbo3) or 4 (turbo2)
};
struct tq_f16_jobs {
    tq_f16_job j[2];
};

template <int levels>
static __device__ __forceinline__ void tq_turbo_to_f16_chunk(const tq_f16_job & job, const int64_t c, uint16_t * sm,
                                                             const float * cbs, const int lane) {
    constexpr int U   = levels == 8 ? 13 : 9;   // 16-bit units per block
    constexpr int W16 = 32*U*2/16;              // 16-byte words per full chunk: 52 or 36
    const int64_t b0 = c*32;
    const int nb = (int) min((int64_t) 32, job.nblk - b0);
    const char * src = job.x + b0*(2*U);
    if (nb == 32) {
#pragma unroll
        for (int w = lane; w < W16; w += 32) {
            ((uint4 *) sm)[w] = __ldcs((const uint4 *) src + w);
        }
    } else {
        for (int u = lane; u < nb*U; u += 32) {
            sm[u] = ((const uint16_t *) src)[u];
        }
    }
    __syncwarp();
    const int k  = lane % 8;
    const int sh = 2*(k/2);
#pragma unroll
    for (int s = 0; s < 8; ++s) {
        const int b = 4*s + lane/8;
        if (b >= nb) {
            break;
        }
        const uint16_t * blk = sm + b*U;
        const float d = __half2float(__ushort_as_half(blk[0]));
        const uint32_t q0 = blk[1 + 4*(k%2)] | (uint32_t(blk[2 + 4*(k%2)]) << 16);
        const uint32_t q1 = blk[3 + 4*(k%2)] | (uint32_t(blk[4 + 4*(k%2)]) << 16);
        uint32_t h0 = 0;
        uint32_t h1 = 0;
        if (levels == 8) {
            h0 = blk[9]  | (uint32_t(blk[10]) << 16);
            h1 = blk[11] | (uint32_t(blk[12]) << 16);
        }
        half2 out[4];
#pragma unroll
        for (int j = 0; j < 8; j += 2) {
            float v[2];
#pragma unroll
            for (int jj = 0; jj < 2; ++jj) {
                const int t = j + jj;
                int q = ((t < 4 ? q0 >> 8*t : q1 >> 8*(t - 4)) >> sh) & 3;
                if (levels == 8) {
                    q |= (((t < 4 ? h0 >> 8*t : h1 >> 8*(t - 4)) >> k) & 1) << 2;
                }
                v[jj] = d*cbs[q];
            }
            out[j/2] = __halves2half2(__float2half(v[0]), __float2half(v[1]));
        }
        *(uint4 *) (job.y + (b0 + b)*QK_TURBO + 8*k) = *(const uint4 *) out;
    }
}

static __global__ void __launch_bounds__(32*TQ_CONV_WARPS) tq_turbo_to_f16_warp(const tq_f16_jobs jobs) {
    __shared__ __align__(16) uint16_t sm[TQ_CONV_WARPS][32*13];
    __shared__ float cbs[8];
    const bool second = blockIdx.y != 0;   // (selected field by field: no local copy of the parameters)
    const tq_f16_job job = {second ? jobs.j[1].x : jobs.j[0].x, second ? jobs.j[1].y : jobs.j[0].y,
                            second ? jobs.j[1].nblk : jobs.j[0].nblk, second ? jobs.j[1].levels : jobs.j[0].levels};
    if (threadIdx.x < 8) {
        cbs[threadIdx.x] = job.levels == 8 ? kvalues_turbo3[threadIdx.x] : kvalues_turbo2[threadIdx.x % 4];
    }
    __syncthreads();
    const int w = threadIdx.x / 32;
    const int64_t c = (int64_t) blockIdx.x*TQ_CONV_WARPS + w;
    if (c*32 >= job.nblk) {
        return;
    }
    if (job.levels == 8) {
        tq_turbo_to_f16_chunk<8>(job, c, sm[w], cbs, threadIdx.x % 32);
    } else {
        tq_turbo_to_f16_chunk<4>(job, c, sm[w], cbs, threadIdx.x % 32);
    }
}

// TQ_FA_TURBO_OFF bit 4 (measurements only): the thread-per-8-values converter above instead
#define TQ_OFF_CONV_WARP 4
static bool tq_conv_thread_only() {
    static const bool v = [] {
        const char * e = getenv("TQ_FA_TURBO_OFF");
        return e && (atoi(e) & TQ_OFF_CONV_WARP);
    }();
    return v;
}

static bool tq_f16_job_ok(const void * x, const void * y) {
    return ((uintptr_t) x % 16) == 0 && ((uintptr_t) y % 16) == 0;
}

// one or two conversions in one launch (n = 1 or 2); each job must pass tq_f16_job_ok
static void tq_turbo_to_f16_jobs_cuda(const tq_f16_jobs & jobs, const int n, cudaStream_t stream) {
    int64_t nchunk = 0;
    for (int i = 0; i < n; ++i) {
        nchunk = std::max(nchunk, (jobs.j[i].nblk + 31)/32);
    }
    if (nchunk == 0) {
        return;
    }
    const dim3 grid((unsigned) ((nchunk + TQ_CONV_WARPS - 1)/TQ_CONV_WARPS), (unsigned) n, 1);
    tq_turbo_to_f16_warp<<<grid, 32*TQ_CONV_WARPS, 0, stream>>>(jobs);
    CUDA_CHECK(cudaGetLastError());
}

template <int levels>
static void tq_turbo_to_f16_cont_cuda(const void * vx, half * y, const int64_t k, cudaStream_t stream) {
    const int64_t nblk = k / QK_TURBO;
    if (!tq_conv_thread_only() && tq_f16_job_ok(vx, y)) {
        tq_f16_jobs jobs = {};
        jobs.j[0] = {(const char *) vx, y, nblk, levels};
        tq_turbo_to_f16_jobs_cuda(jobs, 1, stream);
        return;
    }
    const int64_t nthr = nblk*8;
    tq_turbo_to_f16_cont<levels><<<(unsigned) ((nthr + 255)/256), 256, 0, stream>>>((const uint16_t *) vx, y, nblk);
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
