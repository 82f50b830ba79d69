// tq-gguf: FlashAttention decode kernel for caches with a turbo2/turbo3 side.
//
// Why a kernel of its own: at batch 1, decode reads the whole cache once per token. The
// upstream vector kernel runs one block per Q head, so with GQA every K/V row is read and
// decoded gqa_ratio times, and it quantizes Q to q8_1 for int8 dot products, which
// have no counterpart for a codebook. Here one block serves G Q heads that share a
// K/V head: each K/V value is loaded and decoded once and used G times, with f32 math.
// The codebook lives in shared memory (8 floats), indices are unpacked four at a time.
//
// Layout of the work (128 threads, 4 warps, 128 KV positions per iteration; each warp owns
// 32 positions and keeps its own softmax state until the final combine, like upstream):
//   K: TK = D/16 lanes per row, 16 values per lane = 4 qs bytes of one 64-block, i.e.
//      values {i + 16g : i0 <= i < i0+4, g < 4}; Q is held in registers in that order.
//   V: the same lane mapping, so a lane accumulates 16 output dims per Q head; the
//      TK-lane groups of a warp (different rows) are summed once at the end.
//   Loads are unconditional (rows past the end are clamped, their weights are 0) and
//   issued in batches, so each warp has several rows in flight.
// Output and dst_meta follow the upstream vector kernel, so launch_fattn's
// parallel-block combine is reused unchanged.
// Sink store (fattn-turbo-side.cuh): the replaced cells score -inf in the main loop; in the
// first parallel block, warp w takes side rows w, w+4, ... into its softmax state. The rows
// of its first slot are loaded before the main loop, so their latency hides behind it.
#pragma once

#include "common.cuh"
#include "fattn-common.cuh"
#include "turbo.cuh"
#include "fattn-mma-turbo.cuh"

static __device__ __forceinline__ uint32_t tq_ld_u32_a2(const uint8_t * p) {
    // 2-byte aligned 32-bit load (turbo blocks are 26/18 bytes, so only 2-byte alignment holds)
    const uint16_t * p16 = (const uint16_t *) p;
    return uint32_t(p16[0]) | (uint32_t(p16[1]) << 16);
}

// Raw bytes of the 16 K or V values a lane owns in one row (dims b*64 + 16*g + i0 + ii):
// for turbo types one 2-bit plane word, one high-bit word and the scale. Loading is split from decoding so that a warp
// issues the loads of several rows before it needs any of them (memory-level
// parallelism is what a bandwidth-bound decode kernel lives on).
template <ggml_type type> struct tq_k16;

template <> struct tq_k16<GGML_TYPE_TURBO3> {
    uint32_t qs, qh; half d;
    __device__ __forceinline__ void load(const char * row, const int b, const int i0) {
        const block_turbo3 * x = (const block_turbo3 *) row + b;
        qs = tq_ld_u32_a2(x->qs + i0);
        qh = tq_ld_u32_a2(x->qh + (i0 & 7));
        d  = x->d;
    }
    // v[4*g + ii] = centroid of value (i0 + ii + 16*g); returns the block scale
    __device__ __forceinline__ float decode(const int i0, const float * tbl, float * v) const {
        const int hb = i0 >> 3;
#pragma unroll
        for (int g = 0; g < 4; ++g) {
            const uint32_t q = ((qs >> (2*g)) & 0x03030303u) | (((qh >> (hb + 2*g)) & 0x01010101u) << 2);
#pragma unroll
            for (int ii = 0; ii < 4; ++ii) {
                v[4*g + ii] = tbl[(q >> (8*ii)) & 0xFF];
            }
        }
        return __half2float(d);
    }
};

template <> struct tq_k16<GGML_TYPE_TURBO2> {
    uint32_t qs; half d;
    __device__ __forceinline__ void load(const char * row, const int b, const int i0) {
        const block_turbo2 * x = (const block_turbo2 *) row + b;
        qs = tq_ld_u32_a2(x->qs + i0);
        d  = x->d;
    }
    __device__ __forceinline__ float decode(const int i0, const float * tbl, float * v) const {
#pragma unroll
        for (int g = 0; g < 4; ++g) {
            const uint32_t q = (qs >> (2*g)) & 0x03030303u;
#pragma unroll
            for (int ii = 0; ii < 4; ++ii) {
                v[4*g + ii] = tbl[(q >> (8*ii)) & 0xFF];
            }
        }
        return __half2float(d);
        GGML_UNUSED(i0);
    }
};

template <> struct tq_k16<GGML_TYPE_Q8_0> {
    uint32_t q[4]; half d[2];
    __device__ __forceinline__ void load(const char * row, const int b, const int i0) {
        const block_q8_0 * x = (const block_q8_0 *) row + 2*b;   // values 16g..16g+15 of the 64: blocks 2b, 2b+1
#pragma unroll
        for (int g = 0; g < 4; ++g) {
            q[g] = tq_ld_u32_a2((const uint8_t *) x[g/2].qs + 16*(g % 2) + i0);
        }
        d[0] = x[0].d;
        d[1] = x[1].d;
    }
    __device__ __forceinline__ float decode(const int i0, const float * tbl, float * v) const {
#pragma unroll
        for (int g = 0; g < 4; ++g) {
            const float dg = __half2float(d[g/2]);
#pragma unroll
            for (int ii = 0; ii < 4; ++ii) {
                v[4*g + ii] = dg * float(int8_t((q[g] >> (8*ii)) & 0xFF));
            }
        }
        return 1.0f;
        GGML_UNUSED(i0); GGML_UNUSED(tbl);
    }
};

template <> struct tq_k16<GGML_TYPE_F16> {
    uint2 h[4];
    __device__ __forceinline__ void load(const char * row, const int b, const int i0) {
#pragma unroll
        for (int g = 0; g < 4; ++g) {
            ggml_cuda_memcpy_1<8>(&h[g], (const half *) row + b*64 + 16*g + i0);
        }
    }
    __device__ __forceinline__ float decode(const int i0, const float * tbl, float * v) const {
#pragma unroll
        for (int g = 0; g < 4; ++g) {
            const float2 f0 = __half22float2(*(const half2 *) &h[g].x);
            const float2 f1 = __half22float2(*(const half2 *) &h[g].y);
            v[4*g + 0] = f0.x; v[4*g + 1] = f0.y; v[4*g + 2] = f1.x; v[4*g + 3] = f1.y;
        }
        return 1.0f;
        GGML_UNUSED(i0); GGML_UNUSED(tbl);
    }
};

static constexpr __host__ __device__ bool tq_is_turbo(ggml_type t) {
    return t == GGML_TYPE_TURBO3 || t == GGML_TYPE_TURBO2;
}

template <ggml_type type>
static __device__ __forceinline__ void tq_load_table(float * tbl) {
    if constexpr (type == GGML_TYPE_TURBO3) {
        if (threadIdx.y == 0 && threadIdx.x < 8) {
            tbl[threadIdx.x] = kvalues_turbo3[threadIdx.x];
        }
    } else if constexpr (type == GGML_TYPE_TURBO2) {
        if (threadIdx.y == 0 && threadIdx.x < 4) {
            tbl[threadIdx.x] = kvalues_turbo2[threadIdx.x];
        }
    }
    GGML_UNUSED(tbl);
}

template <int D, int G, ggml_type type_K, ggml_type type_V> // D: head size, G: Q heads per block
__launch_bounds__(128, 2)
static __global__ void flash_attn_ext_vec_turbo(
        const char * Q_ptr,
        const char * K_ptr,
        const char * V_ptr,
        const char * mask_ptr,
        const char * sinks_ptr,
        const int  * KV_max_ptr,
        float      * dst_ptr,
        float2     * dst_meta_ptr,
        const float scale,
        const float max_bias,
        const float m0,
        const float m1,
        const uint32_t n_head_log2,
        const float logit_softcap,
        const int32_t ne00, const uint3   ne01, const int32_t ne02, const int32_t ne03,
                            const int32_t nb01, const int32_t nb02, const int32_t nb03,
        const int32_t ne10, const int32_t ne11, const int32_t ne12, const int32_t ne13,
                            const int32_t nb11, const int32_t nb12, const int64_t nb13,
                            const int32_t nb21, const int32_t nb22, const int64_t nb23,
                            const int32_t ne31, const int32_t ne32, const int32_t ne33,
                            const int32_t nb31, const int32_t nb32, const int64_t nb33,
        const tq_fattn_side side) {
    ggml_cuda_pdl_lc();
#ifdef FLASH_ATTN_AVAILABLE
    constexpr int nthreads = 128;
    constexpr int nwarps   = nthreads / WARP_SIZE;
    constexpr int TK = D/16;                 // lanes per K row
    constexpr int RV = WARP_SIZE/TK;         // rows per warp step (K and V)
    static_assert(D % 64 == 0 && D <= 256, "head size");
    static_assert(WARP_SIZE % TK == 0, "TK");
    constexpr int KB = tq_is_turbo(type_K) ? (TK < 8 ? TK : 8) : 4;   // K rows loaded per batch
    constexpr int VB = RV >= 4 ? 4 : 8;                                // V steps loaded per batch

    const int lane = threadIdx.x;
    const int warp = threadIdx.y;

    __shared__ float tblK[8];
    __shared__ float tblV[8];
    __shared__ __align__(16) float KQs[nthreads][G];   // softmax weights, heads contiguous
    __shared__ float VKQs[nwarps][G][D];
    __shared__ float2 meta_s[nwarps][G];
    __shared__ int side_cells[TQ_FATTN_SIDE_MAX];

    tq_load_table<type_K>(tblK);
    tq_load_table<type_V>(tblV);

    const int ic0       = blockIdx.x;                    // Q column (token)
    const int gqa_ratio = ne02 / ne12;
    const int ntiles_z  = (gqa_ratio + G - 1) / G;
    const int zt        = blockIdx.z % ntiles_z;
    const int kv_head   = (blockIdx.z / ntiles_z) % ne12;
    const int sequence  = blockIdx.z / (ntiles_z*ne12);
    const int head0     = kv_head*gqa_ratio + zt*G;
    const int nh        = min(G, gqa_ratio - zt*G);      // valid heads in this block

    const char * K = K_ptr + nb13*sequence + nb12*kv_head;
    const char * V = V_ptr + nb23*sequence + nb22*kv_head;
    const half * maskh = mask_ptr ? (const half *) (mask_ptr + nb33*(sequence % ne33) + nb31*ic0) : nullptr;
    // a mask per Q head (ne32 == ne02: the positional key offset's logit correction): head g's row is
    // mhs*(head0 + g) halfs from maskh; 0: one row for all heads
    const int64_t mhs = maskh && ne32 > 1 ? nb32/int(sizeof(half)) : 0;
    auto mask_at = [&](const int g, const int k) { return __half2float(maskh[mhs*(head0 + min(g, nh - 1)) + k]); };

    float slope[G];
#pragma unroll
    for (int g = 0; g < G; ++g) {
        slope[g] = get_alibi_slope(max_bias, head0 + g, n_head_log2, m0, m1);
    }

    // Q in registers, in the K-lane order described above, pre-multiplied by scale.
    const int kl = lane % TK;
    const int kb = kl / 4;
    const int ki = (kl % 4) * 4;
    float Qr[G][16];
    ggml_cuda_pdl_sync();
#pragma unroll
    for (int g = 0; g < G; ++g) {
        const float * Qg = (const float *) (Q_ptr + nb03*sequence + nb02*(head0 + g) + nb01*ic0);
#pragma unroll
        for (int t = 0; t < 16; ++t) {
            Qr[g][t] = g < nh ? Qg[kb*64 + 16*(t/4) + ki + (t%4)] * scale : 0.0f;
        }
    }

    // sink store: the stream's replaced cells into shared memory (the sync below covers it)
    const int n_side = side.k ? side.n_slot : 0;
    for (int j = warp*WARP_SIZE + lane; j < n_side; j += nthreads) {
        side_cells[j] = side.cells[sequence*n_side + j];
    }
    __syncthreads(); // tables, side cells

    float KQ_max[G];
    float KQ_sum[G];
    float VKQ[G][16];
#pragma unroll
    for (int g = 0; g < G; ++g) {
        KQ_max[g] = -FLT_MAX/2.0f;
        KQ_sum[g] = 0.0f;
#pragma unroll
        for (int t = 0; t < 16; ++t) {
            VKQ[g][t] = 0.0f;
        }
    }

    const int k_max = KV_max_ptr ? min(KV_max_ptr[sequence*gridDim.x + blockIdx.x], ne11) : ne11;

    // range of the replaced cells (uniform per block), and this warp's first side row, loaded now
    int side_lo = 0x7fffffff;
    int side_hi = -1;
    for (int j = 0; j < n_side; ++j) {
        const int c = side_cells[j];
        if (c >= 0) {
            side_lo = min(side_lo, c);
            side_hi = max(side_hi, c);
        }
    }
    const bool side_mine = n_side > 0 && blockIdx.y == 0;
    tq_k16<GGML_TYPE_F16> side_rk;
    tq_k16<GGML_TYPE_F16> side_rv;
    float side_m = -INFINITY;   // the side row's mask value (head 0's; per head at use when mhs != 0)
    int side_c = -1;            // its cell
    if (side_mine && warp < n_side && side_cells[warp] >= 0 && side_cells[warp] < k_max) {
        side_c = side_cells[warp];
        side_m = maskh ? mask_at(0, side_c) : 0.0f;
        side_rk.load(side.k + sequence*side.nbk3 + kv_head*side.nbk2 + int64_t(warp)*side.nbk1, kb, ki);
        side_rv.load(side.v + sequence*side.nbv3 + kv_head*side.nbv2 + int64_t(warp)*side.nbv1, kb, ki);
    }

    for (int k0 = blockIdx.y*nthreads; k0 < k_max; k0 += gridDim.y*nthreads) {
        // ---- KQ: lane ends with the scores of position k0 + warp*32 + lane
        float KQ_reg[G];
        float KQ_max_new[G];
#pragma unroll
        for (int g = 0; g < G; ++g) {
            KQ_max_new[g] = KQ_max[g];
            KQ_reg[g] = -FLT_MAX/2.0f;
        }
        // K rows of this lane group: warp*32 + (lane & ~(TK-1)) + p; loads in batches of KB
        // rows, clamped to the last valid row so they need no branch (scores masked below)
#pragma unroll
        for (int p0 = 0; p0 < TK; p0 += KB) {
            tq_k16<type_K> raw[KB];
#pragma unroll
            for (int p = 0; p < KB; ++p) {
                const int k = min(k0 + warp*WARP_SIZE + (lane & ~(TK - 1)) + p0 + p, k_max - 1);
                raw[p].load(K + int64_t(k)*nb11, kb, ki);
            }
#pragma unroll
            for (int p = 0; p < KB; ++p) {
                const int k = k0 + warp*WARP_SIZE + (lane & ~(TK - 1)) + p0 + p;
                float kv[16];
                const float dk = raw[p].decode(ki, tblK, kv);
                float sum[G];
#pragma unroll
                for (int g = 0; g < G; ++g) {
                    sum[g] = 0.0f;
#pragma unroll
                    for (int t = 0; t < 16; ++t) {
                        sum[g] = fmaf(Qr[g][t], kv[t], sum[g]);
                    }
                    sum[g] = warp_reduce_sum<TK>(sum[g] * dk);
                }
                if (k < k_max) {
#pragma unroll
                    for (int g = 0; g < G; ++g) {
                        float sc = sum[g];
                        if (logit_softcap != 0.0f) {
                            sc = logit_softcap*tanhf(sc);
                        }
                        if (maskh) {
                            sc += slope[g]*mask_at(g, k);
                        }
                        KQ_max_new[g] = fmaxf(KQ_max_new[g], sc + FATTN_KQ_MAX_OFFSET);
                        if ((lane & (TK - 1)) == p0 + p) {
                            KQ_reg[g] = sc;
                        }
                    }
                }
            }
        }

        if (n_side > 0 && k0 + nthreads > side_lo && k0 <= side_hi) {
            const int kp = k0 + warp*WARP_SIZE + lane;
            bool replaced = false;
            for (int j = 0; j < n_side; ++j) {
                replaced = replaced || side_cells[j] == kp;
            }
            if (replaced) {
#pragma unroll
                for (int g = 0; g < G; ++g) {
                    KQ_reg[g] = -FLT_MAX/2.0f;
                }
            }
        }

#pragma unroll
        for (int g = 0; g < G; ++g) {
#pragma unroll
            for (int offset = TK; offset < WARP_SIZE; offset <<= 1) {
                KQ_max_new[g] = fmaxf(KQ_max_new[g], __shfl_xor_sync(0xFFFFFFFF, KQ_max_new[g], offset, WARP_SIZE));
            }
            const float KQ_max_scale = expf(KQ_max[g] - KQ_max_new[g]);
            KQ_max[g] = KQ_max_new[g];
            const float pk = k0 + warp*WARP_SIZE + lane < k_max ? expf(KQ_reg[g] - KQ_max[g]) : 0.0f;
            KQ_sum[g] = KQ_sum[g]*KQ_max_scale + pk;
            KQs[warp*WARP_SIZE + lane][g] = pk;
#pragma unroll
            for (int t = 0; t < 16; ++t) {
                VKQ[g][t] *= KQ_max_scale;
            }
        }
        __syncwarp();

        // ---- VKQ over this warp's 32 positions: RV rows per step, loads in batches of VB steps
#pragma unroll
        for (int s0 = 0; s0 < WARP_SIZE/RV; s0 += VB) {
            tq_k16<type_V> raw[VB];
#pragma unroll
            for (int st = 0; st < VB; ++st) {
                const int k = min(k0 + warp*WARP_SIZE + (s0 + st)*RV + lane / TK, k_max - 1);
                raw[st].load(V + int64_t(k)*nb21, kb, ki);
            }
#pragma unroll
            for (int st = 0; st < VB; ++st) {
                const int r = warp*WARP_SIZE + (s0 + st)*RV + lane / TK;   // weight 0 past k_max
                float vv[16];
                const float dv = raw[st].decode(ki, tblV, vv);
                float w[G];
                if constexpr (G == 4) {
                    const float4 w4 = *(const float4 *) KQs[r];
                    w[0] = w4.x; w[1] = w4.y; w[2] = w4.z; w[3] = w4.w;
                } else if constexpr (G == 2) {
                    const float2 w2 = *(const float2 *) KQs[r];
                    w[0] = w2.x; w[1] = w2.y;
                } else {
                    w[0] = KQs[r][0];
                }
#pragma unroll
                for (int g = 0; g < G; ++g) {
                    const float wg = w[g] * dv;
#pragma unroll
                    for (int t = 0; t < 16; ++t) {
                        VKQ[g][t] = fmaf(wg, vv[t], VKQ[g][t]);
                    }
                }
            }
        }
        __syncwarp();
    }

    // sink store: side rows warp, warp + nwarps, ... of the first parallel block, exact
    if (side_mine) {
        for (int j = warp; j < n_side; j += nwarps) {
            if (j != warp) {
                const int c = side_cells[j];
                side_c = c;
                side_m = c >= 0 && c < k_max ? (maskh ? mask_at(0, c) : 0.0f) : -INFINITY;
                if (side_m != -INFINITY || (mhs != 0 && c >= 0 && c < k_max)) {
                    side_rk.load(side.k + sequence*side.nbk3 + kv_head*side.nbk2 + int64_t(j)*side.nbk1, kb, ki);
                    side_rv.load(side.v + sequence*side.nbv3 + kv_head*side.nbv2 + int64_t(j)*side.nbv1, kb, ki);
                }
            }
            if (side_c < 0 || side_c >= k_max || (side_m == -INFINITY && mhs == 0)) {
                continue;   // (per-head masks: a head whose value is -inf gets p = 0 below)
            }
            float kv[16];
            float vv[16];
            side_rk.decode(ki, nullptr, kv);
            side_rv.decode(ki, nullptr, vv);
#pragma unroll
            for (int g = 0; g < G; ++g) {
                float sc = 0.0f;
#pragma unroll
                for (int t = 0; t < 16; ++t) {
                    sc = fmaf(Qr[g][t], kv[t], sc);
                }
                sc = warp_reduce_sum<TK>(sc);
                if (logit_softcap != 0.0f) {
                    sc = logit_softcap*tanhf(sc);
                }
                sc += slope[g]*(mhs != 0 ? mask_at(g, side_c) : side_m);
                const float kqmax_new = fmaxf(KQ_max[g], sc);
                const float KQ_max_scale = expf(KQ_max[g] - kqmax_new);
                KQ_max[g] = kqmax_new;
                const float p = expf(sc - kqmax_new);
                KQ_sum[g] = KQ_sum[g]*KQ_max_scale + (lane == 0 ? p : 0.0f);
#pragma unroll
                for (int t = 0; t < 16; ++t) {
                    VKQ[g][t] = VKQ[g][t]*KQ_max_scale + (lane < TK ? p*vv[t] : 0.0f);
                }
            }
        }
    }

    // attention sinks: one warp takes them into its softmax state (as upstream)
    if (sinks_ptr && blockIdx.y == 0 && warp == 0) {
#pragma unroll
        for (int g = 0; g < G; ++g) {
            if (g < nh) {
                const float sink = ((const float *) sinks_ptr)[head0 + g];
                const float kqmax_new = fmaxf(sink, KQ_max[g]);
                const float KQ_max_scale = expf(KQ_max[g] - kqmax_new);
                KQ_max[g] = kqmax_new;
                KQ_sum[g] = KQ_sum[g]*KQ_max_scale + (lane == 0 ? expf(sink - KQ_max[g]) : 0.0f);
#pragma unroll
                for (int t = 0; t < 16; ++t) {
                    VKQ[g][t] *= KQ_max_scale;
                }
            }
        }
    }

    // ---- combine the warps
#pragma unroll
    for (int g = 0; g < G; ++g) {
        KQ_sum[g] = warp_reduce_sum(KQ_sum[g]);
#pragma unroll
        for (int t = 0; t < 16; ++t) {
#pragma unroll
            for (int offset = TK; offset < WARP_SIZE; offset <<= 1) {
                VKQ[g][t] += __shfl_xor_sync(0xFFFFFFFF, VKQ[g][t], offset, WARP_SIZE);
            }
        }
        if (lane < TK) {
#pragma unroll
            for (int t = 0; t < 16; ++t) {
                VKQs[warp][g][kb*64 + 16*(t/4) + ki + t%4] = VKQ[g][t];
            }
        }
        if (lane == 0) {
            meta_s[warp][g] = make_float2(KQ_max[g], KQ_sum[g]);
        }
    }
    __syncthreads();

    const int tid = warp*WARP_SIZE + lane;
#pragma unroll
    for (int g = 0; g < G; ++g) {
        if (g >= nh) {
            break;
        }
        float kqmax = meta_s[0][g].x;
#pragma unroll
        for (int w = 1; w < nwarps; ++w) {
            kqmax = fmaxf(kqmax, meta_s[w][g].x);
        }
        float wsc[nwarps];
        float kqsum = 0.0f;
#pragma unroll
        for (int w = 0; w < nwarps; ++w) {
            wsc[w] = expf(meta_s[w][g].x - kqmax);
            kqsum += wsc[w]*meta_s[w][g].y;
        }
        const int head = head0 + g;
        const int64_t j_dst = (int64_t(sequence)*int(ne01.z) + ic0)*ne02 + head;
#pragma unroll
        for (int i0 = 0; i0 < D; i0 += nthreads) {
            const int i = i0 + tid;
            if (i0 + nthreads <= D || i < D) {
                float val = 0.0f;
#pragma unroll
                for (int w = 0; w < nwarps; ++w) {
                    val += wsc[w]*VKQs[w][g][i];
                }
                if (gridDim.y == 1) {
                    val /= kqsum;
                }
                dst_ptr[(j_dst*gridDim.y + blockIdx.y)*D + i] = val;
            }
        }
        if (gridDim.y != 1 && tid == 0) {
            dst_meta_ptr[j_dst*gridDim.y + blockIdx.y] = make_float2(kqmax, kqsum);
        }
    }
#else
    GGML_UNUSED_VARS(Q_ptr, K_ptr, V_ptr, mask_ptr, sinks_ptr, KV_max_ptr, dst_ptr, dst_meta_ptr, scale, side,
        max_bias, m0, m1, n_head_log2, logit_softcap,
        ne00, ne01, ne02, ne03,
              nb01, nb02, nb03,
        ne10, ne11, ne12, ne13,
              nb11, nb12, nb13,
              nb21, nb22, nb23,
              ne31, ne32, ne33,
              nb31, nb32, nb33);
    NO_DEVICE_CODE;
#endif // FLASH_ATTN_AVAILABLE
}

template <int D, int G, ggml_type type_K, ggml_type type_V>
static void ggml_cuda_flash_attn_ext_vec_turbo_impl(ggml_backend_cuda_context & ctx, ggml_tensor * dst) {
    constexpr int nwarps = 4;
    GGML_ASSERT((!dst->src[5] || dst->src[5]->ne[1] <= TQ_FATTN_SIDE_MAX) && "sink store larger than the decode kernel takes");
    tq_fattn_kernel_t kernel = flash_attn_ext_vec_turbo<D, G, type_K, type_V>;
    launch_fattn<D, 1, G>(ctx, dst, nullptr, nwarps, 0, 128, false, false, false, false, WARP_SIZE, kernel);
}

// G = largest of 4, 2, 1 that divides the GQA ratio (register budget caps it at 4);
// TQ_FA_TURBO_GMAX=1|2 lowers the cap (fewer registers, more blocks; for tuning).
static int tq_fattn_turbo_gmax() {
    static const int gmax = [] {
        const char * e = getenv("TQ_FA_TURBO_GMAX");
        return e ? atoi(e) : 4;
    }();
    return gmax;
}

template <int D, ggml_type type_K, ggml_type type_V>
void ggml_cuda_flash_attn_ext_vec_turbo_case(ggml_backend_cuda_context & ctx, ggml_tensor * dst) {
    if constexpr (tq_is_turbo(type_K) && tq_is_turbo(type_V)) {
        const int cc = ggml_cuda_info().devices[ggml_cuda_get_device()].cc;
        if (tq_fattn_mma_applies(cc, type_K, type_V)) {
            ggml_cuda_flash_attn_ext_mma_turbo<D, type_K, type_V>(ctx, dst);
            return;
        }
    }
    {
        const tq_fattn_side side = tq_fattn_side_get(dst);
        GGML_ASSERT(!side.q_rot && !side.o_rot && "rotation fused into a kernel that does not rotate");
    }
    const int gqa_ratio = dst->src[0]->ne[2] / dst->src[1]->ne[2];
    const int gmax = tq_fattn_turbo_gmax();
    if (gqa_ratio % 4 == 0 && gmax >= 4) {
        ggml_cuda_flash_attn_ext_vec_turbo_impl<D, 4, type_K, type_V>(ctx, dst);
    } else if (gqa_ratio % 2 == 0 && gmax >= 2) {
        ggml_cuda_flash_attn_ext_vec_turbo_impl<D, 2, type_K, type_V>(ctx, dst);
    } else {
        ggml_cuda_flash_attn_ext_vec_turbo_impl<D, 1, type_K, type_V>(ctx, dst);
    }
}

#define DECL_FATTN_VEC_TURBO_CASE(D, type_K, type_V)                        \
    template void ggml_cuda_flash_attn_ext_vec_turbo_case                   \
    <D, type_K, type_V>(ggml_backend_cuda_context & ctx, ggml_tensor * dst) \

#define DECL_FATTN_VEC_TURBO_CASES(type_K, type_V)  \
    DECL_FATTN_VEC_TURBO_CASE( 64, type_K, type_V); \
    DECL_FATTN_VEC_TURBO_CASE(128, type_K, type_V); \
    DECL_FATTN_VEC_TURBO_CASE(256, type_K, type_V)

#define EXTERN_DECL_FATTN_VEC_TURBO_CASES(type_K, type_V) \
    extern DECL_FATTN_VEC_TURBO_CASE( 64, type_K, type_V); \
    extern DECL_FATTN_VEC_TURBO_CASE(128, type_K, type_V); \
    extern DECL_FATTN_VEC_TURBO_CASE(256, type_K, type_V);

EXTERN_DECL_FATTN_VEC_TURBO_CASES(GGML_TYPE_TURBO3, GGML_TYPE_TURBO3)
EXTERN_DECL_FATTN_VEC_TURBO_CASES(GGML_TYPE_TURBO3, GGML_TYPE_TURBO2)
EXTERN_DECL_FATTN_VEC_TURBO_CASES(GGML_TYPE_TURBO3, GGML_TYPE_Q8_0)
EXTERN_DECL_FATTN_VEC_TURBO_CASES(GGML_TYPE_TURBO3, GGML_TYPE_F16)
EXTERN_DECL_FATTN_VEC_TURBO_CASES(GGML_TYPE_TURBO2, GGML_TYPE_TURBO3)
EXTERN_DECL_FATTN_VEC_TURBO_CASES(GGML_TYPE_TURBO2, GGML_TYPE_TURBO2)
EXTERN_DECL_FATTN_VEC_TURBO_CASES(GGML_TYPE_TURBO2, GGML_TYPE_Q8_0)
EXTERN_DECL_FATTN_VEC_TURBO_CASES(GGML_TYPE_TURBO2, GGML_TYPE_F16)
EXTERN_DECL_FATTN_VEC_TURBO_CASES(GGML_TYPE_Q8_0,   GGML_TYPE_TURBO3)
EXTERN_DECL_FATTN_VEC_TURBO_CASES(GGML_TYPE_Q8_0,   GGML_TYPE_TURBO2)
EXTERN_DECL_FATTN_VEC_TURBO_CASES(GGML_TYPE_F16,    GGML_TYPE_TURBO3)
EXTERN_DECL_FATTN_VEC_TURBO_CASES(GGML_TYPE_F16,    GGML_TYPE_TURBO2)
