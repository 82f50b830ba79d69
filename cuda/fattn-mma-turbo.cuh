// tq-gguf: tensor-core FlashAttention decode for a turbo2/turbo3 K and a turbo2/turbo3 V (sm_80+).
//
// Why: the vector kernel (fattn-vec-turbo.cuh) spends per cache value one shared-memory
// codebook load, several bit extractions and G FMAs (G Q heads), and its 2-byte global loads
// of 26/18-byte blocks cost many L1 wavefronts. Here
//   - each warp stages its 32 rows of raw K and V blocks in shared memory with 16-byte
//     cp.async (double-buffered);
//   - indices become f16 values with byte permutes from a codebook held in registers
//     (4 PRMTs per 4 values, no shared-memory table);
//   - Q·K and P·V run on tensor cores (mma m16n8k16, f16 in, f32 accumulate), so the
//     G Q heads of a K/V head cost no extra instructions per value.
// Measured (H100, docs/results/cuda.md): at depth 32768 attention takes 0.91 ms per token
// against the vector kernel's 1.30 ms (decode +6.6 %); the loads alone (0.55 ms) and the math
// alone (0.63 ms) each take most of that: they overlap poorly. 2026-11-25 (2): the long-context
// instance (KT below, short staging path) executes 4.2 instructions per cached value instead of
// 7.4 (ncu, depth 32768: 34 µs per layer instead of 42). 2026-11-26: a timestamp trace of the real
// run (TQ_FA_TURBO_PROBE=trace) showed no idle SMs (ncu's "SM active" third was not seen outside ncu);
// source-level stall sampling showed the tile waiting for its instructions (25 % of the tile's
// samples): the long-context instance now holds one copy of the tile code, stages the mask with the
// rows and loads Q, the signs and the sink cells before the first tiles: 23 µs per launch.
//
// Layout (one block: one Q column, one K/V head, up to 8 of its Q heads; 4 warps, each owning
// 32 positions per iteration: S for 4 tiles of 8 positions, one softmax step, Oᵀ in 2 steps of 16):
//   S = Q·Kᵀ:  A = Q (16 rows = heads, 8 used), B = Kᵀ (16 dims × 8 positions),
//              C = S[head g][positions 2u, 2u+1]   (g = lane/4, u = lane%4)
//   Oᵀ += Vᵀ·Pᵀ: A = Vᵀ (16 dims × 16 positions), B = Pᵀ (16 positions × 8 heads);
//              the S fragment of two 8-position tiles is exactly the Pᵀ fragment.
//   Block scales: K's per-block scale multiplies S per 64-value block, V's multiplies Pᵀ.
// A fragment register holds values (j, j+1) of one row (K) or one dim of rows (p, p+1) (V);
// both come from one 32-bit word of four 3-bit indices (turbo-frag.h, tested on the host
// against the reference by tests/test_cuda_frag.py).
// Each warp keeps its own softmax state; the warps and the parallel blocks combine as in
// the vector kernel (same output layout). Sink store rows run through the same path from
// global memory, in the first parallel block. When turbo-fuse.cu skips the graph's rotation
// nodes, the kernel rotates Q (side.q_rot) and its output (side.o_rot) itself.
//
// Short context (docs/results/cuda.md, 2026-11-23 (3)): with at most one tile per warp the kernel
// runs each instruction once per layer, and a tile's code costs about twice as much the first time
// as the second (it is fetched from L2 or memory, the weights stream through L2 between layers):
// up to TQ_MMA_SHORT_KV positions the tile loops are rolled (ROLL). A tile whose 32 mask values are
// all -inf is skipped (exact: it would leave the softmax state unchanged). The prologue issues the
// first tile's loads before Q's rotation (its scratch is the last staging stage), loads the sink
// cells alongside Q and rotates only the group's valid heads; the sink rows go to the last warp.
#pragma once

#include "common.cuh"
#include "fattn-common.cuh"
#include "turbo.cuh"
#include "turbo-frag.h"

template <ggml_type type> struct tq_mma_blk;
template <> struct tq_mma_blk<GGML_TYPE_TURBO3> { static constexpr int bytes = 26; static constexpr bool hi = true;  };
template <> struct tq_mma_blk<GGML_TYPE_TURBO2> { static constexpr int bytes = 18; static constexpr bool hi = false; };

template <ggml_type type>
static __device__ __forceinline__ tq_cb16 tq_cb16_load() {
    constexpr int n = type == GGML_TYPE_TURBO3 ? 8 : 4;
    const float * cb = type == GGML_TYPE_TURBO3 ? kvalues_turbo3 : kvalues_turbo2;
    uint16_t h[n];
#pragma unroll
    for (int i = 0; i < n; ++i) {
        h[i] = __half_as_ushort(__float2half_rn(cb[i]));
    }
    return tq_cb16_pack(h, n);
}

static __device__ __forceinline__ uint32_t tq_pack_h2(const float a, const float b) {
    const half2 h = __floats2half2_rn(a, b);
    return *(const uint32_t *) &h;
}

static __device__ __forceinline__ void tq_mma_16816(float (&c)[4], const uint32_t a0, const uint32_t a1, const uint32_t a2, const uint32_t a3,
                                                    const uint32_t b0, const uint32_t b1) {
#if defined(AMPERE_MMA_AVAILABLE)
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#else
    GGML_UNUSED_VARS(c, a0, a1, a2, a3, b0, b1);
    NO_DEVICE_CODE;
#endif
}

static __device__ __forceinline__ void tq_cp_async_4(void * dst, const void * src) {
#if defined(CP_ASYNC_AVAILABLE)
    const unsigned int d = (unsigned int) __cvta_generic_to_shared(dst);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" : : "r"(d), "l"(src));
#else
    GGML_UNUSED_VARS(dst, src);
    NO_DEVICE_CODE;
#endif
}

template <int n>
static __device__ __forceinline__ void tq_cp_async_wait() {
#if defined(CP_ASYNC_AVAILABLE)
    asm volatile("cp.async.wait_group %0;" : : "n"(n));
#endif
}

static __device__ __forceinline__ void tq_cp_async_commit() {
#if defined(CP_ASYNC_AVAILABLE)
    asm volatile("cp.async.commit_group;");
#endif
}

static __device__ __forceinline__ void tq_cp_async_16(void * dst, const void * src) {
#if defined(CP_ASYNC_AVAILABLE)
    const unsigned int d = (unsigned int) __cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" : : "r"(d), "l"(src));
#else
    GGML_UNUSED_VARS(dst, src);
    NO_DEVICE_CODE;
#endif
}

// offset of a row's head slice within its 16-byte chunk (even: turbo blocks are 26/18 bytes)
static __device__ __forceinline__ int tq_row_off(const char * row) {
    return (int) ((uintptr_t) row & 15);
}

// 16-byte chunks staged per row for a head slice of n bytes (it may start up to 14 bytes into
// its first chunk), and the shared-memory row stride: an odd number of chunks, so that the
// 8 rows one K fragment reads fall into different banks
static constexpr __host__ __device__ int tq_chunks(const int n) { return (n + 14 + 15)/16; }
static constexpr __host__ __device__ int tq_stride(const int n) { return 16*(tq_chunks(n) + (tq_chunks(n) % 2 == 0)); }

// One warp copies ROWS rows (positions kbase.., clamped to k_max-1) of NBYTES bytes with 16-byte
// cp.async of the aligned chunks that hold them: lane -> (row lane/C, chunk lane%C). Cache rows
// are read whole from L2 (cg), a few bytes of the neighbouring heads included. The view's last
// row (k_last) is copied apart, in 4-byte words that overlap the slice, so nothing past the tensor
// is read (a loop of its own: unrolled with the rest it doubled the kernel's code).
// Short path (fast, uniform per warp: every row kbase.. is below k_max and k_last): each lane
// steps a pointer to its chunk through the rows and copies its chunk whether or not the slice
// reaches into it (the extra bytes are the neighbouring heads' or the next row's, inside the
// tensor since the row is not the last; they land in the row's padding), no clamps or per-row
// tests: the general path's address arithmetic cost ~30 instructions per chunk.
template <int ROWS, int NBYTES>
static __device__ __forceinline__ void tq_stage_rows(uint8_t * dst, const char * src, const int64_t nb, const int kbase,
                                                     const int k_max, const int k_last, const int lane, const bool fast) {
    constexpr int C   = tq_chunks(NBYTES);
    constexpr int S   = tq_stride(NBYTES);
    constexpr int RPP = WARP_SIZE / C;
    const int lr = lane / C;
    const int c  = lane % C;
    if (fast) {
        if (lr < RPP) {
            // (row + 16c) & ~15 is the aligned chunk c of the row
            uintptr_t p = (uintptr_t) (src + int64_t(kbase + lr)*nb) + 16*c;
            const uintptr_t step = (uintptr_t) (int64_t(RPP)*nb);
            uint8_t * d = dst + lr*S + 16*c;
#pragma unroll
            for (int r0 = 0; r0 < ROWS; r0 += RPP) {
                if (r0 + RPP <= ROWS || r0 + lr < ROWS) {
                    tq_cp_async_16(d + r0*S, (const void *) (p & ~(uintptr_t) 15));
                }
                p += step;
            }
        }
        return;
    }
    if (lr < RPP) {
#pragma unroll
        for (int r0 = 0; r0 < ROWS; r0 += RPP) {
            const int r = r0 + lr;
            const int k = min(kbase + r, k_max - 1);
            if (r < ROWS && k < k_last) {
                const char * row = src + int64_t(k)*nb;
                const int o = tq_row_off(row);
                if (16*c < o + NBYTES) {
                    tq_cp_async_16(dst + r*S + 16*c, row - o + 16*c);
                }
            }
        }
    }
    if (kbase + ROWS - 1 >= k_last) {
#pragma unroll 1
        for (int r = max(0, k_last - kbase); r < ROWS; ++r) {
            const int k = min(kbase + r, k_max - 1);
            if (k < k_last) {
                continue;
            }
            const char * row = src + int64_t(k)*nb;
            const int o = tq_row_off(row);
            for (int w = lane; w < 4*C; w += WARP_SIZE) {
                if (4*w + 4 > o && 4*w < o + NBYTES) {
                    tq_cp_async_4(dst + r*S + 4*w, row - o + 4*w);
                }
            }
        }
    }
}

static __device__ __forceinline__ unsigned long long tq_globaltimer() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

static __device__ __forceinline__ uint32_t tq_movmatrix_t(const uint32_t x) {
#if defined(AMPERE_MMA_AVAILABLE)
    uint32_t r;
    asm("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;" : "=r"(r) : "r"(x));
    return r;
#else
    GGML_UNUSED(x);
    NO_DEVICE_CODE;
    return 0;
#endif
}

// KT (the long-context instance, TQ_OFF_KT turns it off): scores as S^T = K·Q^T, A = 16 positions
// x 16 dims of K (two rows per lane: g and g+8, the same index words as the B fragment of the
// other layout), B = Q^T (the qa registers as they are). Half the K mma of S = Q·K^T (whose A has
// 8 of 16 rows unused) and no per-mma copies of Q and zeros into A's register quad; C holds the
// lane's scores for heads 2u, 2u+1 at positions g, g+8, so each lane keeps the softmax state of
// two heads (no shuffles to rescale O) and P reaches the Pᵀ fragment of Oᵀ += Vᵀ·Pᵀ through
// movmatrix (8x8 transpose of f16 pairs).
template <int D, ggml_type type_K, ggml_type type_V, int STAGES, int MINB, int MODE, bool ROLL, bool KT>
__launch_bounds__(128, MINB)
static __global__ void flash_attn_ext_mma_turbo(
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
#if defined(FLASH_ATTN_AVAILABLE) && defined(AMPERE_MMA_AVAILABLE) && defined(CP_ASYNC_AVAILABLE)
    if constexpr (MODE == 3) {
        return;   // probe: no work at all
    }
    constexpr int G      = 8;                 // Q heads per block (mma N)
    constexpr int nwarps = 4;
    constexpr int ROWS   = 32;                // positions per warp and iteration
    constexpr int NB     = D/64;              // 64-value blocks per head row
    constexpr int BK     = tq_mma_blk<type_K>::bytes;
    constexpr int BV     = tq_mma_blk<type_V>::bytes;
    constexpr bool HK    = tq_mma_blk<type_K>::hi;
    constexpr bool HV    = tq_mma_blk<type_V>::hi;
    constexpr int SK     = tq_stride(NB*BK);  // staged row strides (bytes)
    constexpr int SV     = tq_stride(NB*BV);
    constexpr int MASK_OFF    = ROWS*(SK + SV);   // KT: the tile's 32 mask values (staged, see mstaged)
    constexpr int STAGE_BYTES = MASK_OFF + (KT ? ROWS*int(sizeof(half)) : 0);
    static_assert(D % 64 == 0 && D <= 256, "head size");

    extern __shared__ __align__(16) uint8_t smem[];   // staging, then the warps' outputs (tq_mma_smem_bytes)
    __shared__ float2 meta_s[nwarps][G];
    __shared__ int side_cells[TQ_FATTN_SIDE_MAX];
    __shared__ int2 side_rng[nwarps];

    const int lane = threadIdx.x;
    const int warp = threadIdx.y;
    const int g    = lane / 4;                // head row of S / V dim row of Oᵀ
    const int u    = lane % 4;

    const int ic0       = blockIdx.x;
    const int gqa_ratio = ne02 / ne12;
    const int ntiles_z  = (gqa_ratio + G - 1) / G;
    const int zt        = blockIdx.z % ntiles_z;
    const int kv_head   = (blockIdx.z / ntiles_z) % ne12;
    const int sequence  = blockIdx.z / (ntiles_z*ne12);
    const int head0     = kv_head*gqa_ratio + zt*G;
    const int nh        = min(G, gqa_ratio - zt*G);

    const char * Kh = K_ptr + nb13*sequence + int64_t(nb12)*kv_head;
    const char * Vh = V_ptr + nb23*sequence + int64_t(nb22)*kv_head;
    const half * maskh = mask_ptr ? (const half *) (mask_ptr + nb33*(sequence % ne33) + int64_t(nb31)*ic0) : nullptr;
    // a mask per Q head (ne32 == ne02: the positional key offset's logit correction): the rows of
    // the lane's heads, g (KT: 2u, 2u + 1); all the same row otherwise
    const int64_t mhs   = maskh && ne32 > 1 ? nb32/int(sizeof(half)) : 0;
    const half * mask_g = maskh ? maskh + mhs*(head0 + min(g,         nh - 1)) : nullptr;
    const half * mask_a = maskh ? maskh + mhs*(head0 + min(2*u,       nh - 1)) : nullptr;
    const half * mask_b = maskh ? maskh + mhs*(head0 + min(2*u + 1,   nh - 1)) : nullptr;
    const float slope = g < nh ? get_alibi_slope(max_bias, head0 + g, n_head_log2, m0, m1) : 1.0f;
    // KT: the slopes of the lane's two heads 2u, 2u+1
    const float slope_a = KT && 2*u     < nh ? get_alibi_slope(max_bias, head0 + 2*u,     n_head_log2, m0, m1) : 1.0f;
    const float slope_b = KT && 2*u + 1 < nh ? get_alibi_slope(max_bias, head0 + 2*u + 1, n_head_log2, m0, m1) : 1.0f;

    const tq_cb16 tk = tq_cb16_load<type_K>();
    const tq_cb16 tv = tq_cb16_load<type_V>();
    // KT: the codebooks made opaque to the compiler (xor with blockDim.z - 1, zero at run time), so
    // that they stay in registers: as constants one word was rematerialized for every lookup
    tq_cb16 tkc = tk;
    tq_cb16 tvc = tv;
    if constexpr (KT) {
        const uint32_t z = blockDim.z - 1;
        tkc.l0 ^= z; tkc.l1 ^= z; tkc.h0 ^= z; tkc.h1 ^= z;
        tvc.l0 ^= z; tvc.l1 ^= z; tvc.h0 ^= z; tvc.h1 ^= z;
    }

    const int n_side = side.k ? side.n_slot : 0;
    const int side_w = nwarps - 1 - warp;     // sink rows 16*side_w.. (the last warp first: at short
                                              // context its own tile is the likeliest to be masked)

    ggml_cuda_pdl_sync();
    const int k_max = KV_max_ptr ? min(KV_max_ptr[sequence*gridDim.x + blockIdx.x], ne11) : ne11;
    unsigned long long tq_t0 = 0;   // MODE 6 (trace): timestamps of the block's phases
    if constexpr (MODE == 6) {
        tq_t0 = tq_globaltimer();
    }

    // ---- staging: STAGES-deep ring per warp: iteration i lives in stage i % STAGES; STAGES-1
    // iterations are in flight while one is computed (one commit group per iteration, empty past
    // the end). The first ones are issued before anything else, Q's rotation uses the last stage.
    static_assert(STAGES >= 2 && STAGE_BYTES >= (G/nwarps)*D*int(sizeof(float)), "Q rotation scratch");
    uint8_t * stage0 = smem + warp*STAGES*STAGE_BYTES;
    // the warp's tiles: 32 rows from position kb each; the warp's i-th tile starts at row
    // ((i*gridDim.y + blockIdx.y)*nwarps + warp)*ROWS
    const int kstep = gridDim.y*nwarps*ROWS;
    int kb_next = (blockIdx.y*nwarps + warp)*ROWS;
    auto next_kb = [&]() {
        const int kb = kb_next;
        kb_next += kstep;
        return kb;
    };
    const bool mask_al = maskh && mhs == 0 && ((uintptr_t) maskh & 15) == 0;
    auto fast_at = [&](const int kb) { return !(side.off & TQ_OFF_STAGE) && kb + ROWS <= min(k_max, ne11 - 1); };
    // KT: the tile's mask values staged with its rows (short staging path only): loaded before the
    // wait they cost a global-memory latency per tile (TQ_OFF_MSTAGE turns it off)
    auto mstaged = [&](const int kb) { return KT && !(side.off & TQ_OFF_MSTAGE) && mask_al && fast_at(kb); };
    auto issue = [&](const int kb, const int st) {
        if (MODE != 2 && kb < k_max) {
            uint8_t * sk = stage0 + st*STAGE_BYTES;
            const bool fast = fast_at(kb);
            tq_stage_rows<ROWS, NB*BK>(sk,           Kh, nb11, kb, k_max, ne11 - 1, lane, fast);
            tq_stage_rows<ROWS, NB*BV>(sk + ROWS*SK, Vh, nb21, kb, k_max, ne11 - 1, lane, fast);
            if (mstaged(kb) && lane < ROWS/8) {
                tq_cp_async_16(sk + MASK_OFF + 16*lane, maskh + kb + 8*lane);
            }
        }
        tq_cp_async_commit();
    };
    // the stream's replaced cells (sink store), loaded now, stored to shared memory below
    int cell_r[TQ_FATTN_SIDE_MAX/(nwarps*WARP_SIZE)];
    auto load_cells = [&]() {
#pragma unroll
        for (int i = 0; i < TQ_FATTN_SIDE_MAX/(nwarps*WARP_SIZE); ++i) {
            const int j = i*nwarps*WARP_SIZE + warp*WARP_SIZE + lane;
            cell_r[i] = j < n_side ? side.cells[sequence*n_side + j] : -1;
        }
    };
    // KT: the sink cells, the warp's first Q row to rotate and the rotation's signs are loaded
    // before the first tiles' copies: behind them (all blocks' first tiles, ~5 MB at depth 32768)
    // they waited ~2 µs, and the rotation with them
    float q_pre[D/32];
    float s_pre[D/32];
    auto q_head = [&](const int h) {
        return (const float *) (Q_ptr + nb03*sequence + int64_t(nb02)*(head0 + h) + int64_t(nb01)*ic0);
    };
    if constexpr (KT) {
        load_cells();
        if (side.q_rot && warp < nh) {
            const float * Qh = q_head(warp);
#pragma unroll
            for (int i = 0; i < D/32; ++i) {
                q_pre[i] = Qh[i*32 + lane];
                s_pre[i] = side.q_rot[i*32 + lane];
            }
        }
    }
    int kq[STAGES - 1];   // the tiles in flight, oldest first
#pragma unroll
    for (int i = 0; i < STAGES - 1; ++i) {
        kq[i] = next_kb();
        issue(kq[i], i);
    }
    if constexpr (!KT) {
        load_cells();
    }

    // Q of head g as A fragments: dims 16ks + 2u (+1) and 16ks + 2u + 8 (+9), times scale
    uint32_t qa[D/16][2];
    // Q rotation scratch: head h's row in the last stage of warp h % nwarps
    auto q_row = [&](const int h) {
        return (float *) (smem + ((h % nwarps)*STAGES + STAGES - 1)*STAGE_BYTES) + (h / nwarps)*D;
    };
    if (side.q_rot) {
        // Q unrotated (turbo-fuse.cu skipped the rotation node): warps rotate the heads' rows into
        // shared memory first, with the rotation kernel's arithmetic
#pragma unroll 1
        for (int h = warp; h < nh; h += nwarps) {
            const float * Qh = q_head(h);
            float reg[D/32];
            float sv[D/32];
#pragma unroll
            for (int i = 0; i < D/32; ++i) {
                reg[i] = KT && h == warp ? q_pre[i] : Qh[i*32 + lane];
                sv[i]  = KT && h == warp ? s_pre[i] : side.q_rot[i*32 + lane];
            }
            tq_fwht_regs_sv<D>(reg, sv, 1.0f/sqrtf((float) D), lane);
            float * qr = q_row(h);
#pragma unroll
            for (int i = 0; i < D/32; ++i) {
                qr[i*32 + lane] = reg[i];
            }
        }
    } else {
        const float * Qg = (const float *) (Q_ptr + nb03*sequence + int64_t(nb02)*(head0 + min(g, nh - 1)) + int64_t(nb01)*ic0);
#pragma unroll
        for (int ks = 0; ks < D/16; ++ks) {
            const int i = 16*ks + 2*u;
            qa[ks][0] = g < nh ? tq_pack_h2(Qg[i    ]*scale, Qg[i + 1]*scale) : 0u;
            qa[ks][1] = g < nh ? tq_pack_h2(Qg[i + 8]*scale, Qg[i + 9]*scale) : 0u;
        }
    }
    // and the range of the replaced cells (uniform per block): per warp from the registers
    int side_lo = 0x7fffffff;
    int side_hi = -1;
#pragma unroll
    for (int i = 0; i < TQ_FATTN_SIDE_MAX/(nwarps*WARP_SIZE); ++i) {
        const int j = i*nwarps*WARP_SIZE + warp*WARP_SIZE + lane;
        if (j < n_side) {
            side_cells[j] = cell_r[i];
        }
        if (cell_r[i] >= 0) {
            side_lo = min(side_lo, cell_r[i]);
            side_hi = max(side_hi, cell_r[i]);
        }
    }
    side_lo = __reduce_min_sync(0xFFFFFFFF, side_lo);
    side_hi = __reduce_max_sync(0xFFFFFFFF, side_hi);
    if (lane == 0) {
        side_rng[warp] = make_int2(side_lo, side_hi);
    }
    __syncthreads();
#pragma unroll
    for (int w = 0; w < nwarps; ++w) {
        side_lo = min(side_lo, side_rng[w].x);
        side_hi = max(side_hi, side_rng[w].y);
    }
    if (side.q_rot) {
        const float * qr = q_row(min(g, nh - 1));
#pragma unroll
        for (int ks = 0; ks < D/16; ++ks) {
            const int i = 16*ks + 2*u;
            qa[ks][0] = g < nh ? tq_pack_h2(qr[i    ]*scale, qr[i + 1]*scale) : 0u;
            qa[ks][1] = g < nh ? tq_pack_h2(qr[i + 8]*scale, qr[i + 9]*scale) : 0u;
        }
        __syncthreads();   // the scratch is a staging stage again
    }

    // each row's offset within its first chunk (computed, not branched on: a branch on the row
    // stride made the compiler keep two copies of the tile code, and at short context the kernel
    // is bound by fetching its instructions)
    // (in 32 bits: the low 4 bits of the address are those of its low word)
    const uint32_t kh_lo = (uint32_t) (uintptr_t) Kh;
    const uint32_t vh_lo = (uint32_t) (uintptr_t) Vh;
    auto k_off = [&](const int k) { return (int) ((kh_lo + uint32_t(min(k, k_max - 1))*uint32_t(nb11)) & 15); };
    auto v_off = [&](const int k) { return (int) ((vh_lo + uint32_t(min(k, k_max - 1))*uint32_t(nb21)) & 15); };
    // KT: al = std::true_type when both row strides are multiples of 16 (e.g. 8 heads of 52 bytes):
    // then every row's offset is the head's, and the tiles compute none
    auto k_off_kt = [&](auto al, const int k) { if constexpr (decltype(al)::value) { return int(kh_lo & 15); } else { return k_off(k); } };
    auto v_off_kt = [&](auto al, const int k) { if constexpr (decltype(al)::value) { return int(vh_lo & 15); } else { return v_off(k); } };

    static_assert(!(KT && ROLL), "KT: unrolled instance only");
    float M = -FLT_MAX/2.0f;   // running max of head g (same in the 4 lanes of g); KT: of head 2u
    float L = 0.0f;            // this lane's part of the running sum of head g; KT: of head 2u
    float M2 = -FLT_MAX/2.0f;  // KT: head 2u + 1
    float L2 = 0.0f;
    float O[D/16][4];          // Oᵀ: dims 16mt + 2g (+1) x heads 2u, 2u+1
#pragma unroll
    for (int mt = 0; mt < D/16; ++mt) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            O[mt][i] = 0.0f;
        }
    }

    // scores -> softmax state; sc becomes P of head g at the lane's N positions
    auto softmax = [&](auto & sc) {
        constexpr int N = sizeof(sc)/sizeof(sc[0]);
        float mt = sc[0];
#pragma unroll
        for (int i = 1; i < N; ++i) {
            mt = fmaxf(mt, sc[i]);
        }
        mt = fmaxf(mt, __shfl_xor_sync(0xFFFFFFFF, mt, 1, WARP_SIZE));
        mt = fmaxf(mt, __shfl_xor_sync(0xFFFFFFFF, mt, 2, WARP_SIZE));
        const float mnew = fmaxf(M, mt);
        const float scl  = expf(M - mnew);
        M = mnew;
        float ls = 0.0f;
#pragma unroll
        for (int i = 0; i < N; ++i) {
            sc[i] = expf(sc[i] - M);
            ls += sc[i];
        }
        L = L*scl + ls;
        const float sa = __shfl_sync(0xFFFFFFFF, scl, (2*u    )*4, WARP_SIZE);
        const float sb = __shfl_sync(0xFFFFFFFF, scl, (2*u + 1)*4, WARP_SIZE);
#pragma unroll
        for (int mt2 = 0; mt2 < D/16; ++mt2) {
            O[mt2][0] *= sa; O[mt2][1] *= sb; O[mt2][2] *= sa; O[mt2][3] *= sb;
        }
    };

    // softcap, mask value mk, bounds of position kp for head g
    auto finish_score = [&](const float s, const int kp, const float mk) {
        float x = s;
        if (logit_softcap != 0.0f) {
            x = logit_softcap*tanhf(x);
        }
        x += slope*mk;
        return kp < k_max ? x : -INFINITY;
    };

    // S of the 8 positions kp0 + 8nt.. (K sub-tile nt): this lane's two scores, before finish_score
    auto k_sub = [&](const uint8_t * sk, const int kp0, const int nt, float & s0, float & s1) {
        const uint8_t * rowb = sk + (8*nt + g)*SK + k_off(kp0 + 8*nt + g);
        const int kc = kp0 + 8*nt + 2*u;
        const uint8_t * rc0 = sk + (8*nt + 2*u    )*SK + k_off(kc);
        const uint8_t * rc1 = sk + (8*nt + 2*u + 1)*SK + k_off(kc + 1);
        s0 = 0.0f;
        s1 = 0.0f;
#pragma unroll
        for (int b = 0; b < NB; ++b) {
            const uint8_t * blk = rowb + b*BK;
            uint32_t X, H;
            tq_k_words<HK>(blk, u, X, H);
            float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            uint32_t b0, b1;
            tq_lookup4(tq_idx<HK, 0>(X, H), tk, b0, b1); tq_mma_16816(c, qa[4*b + 0][0], 0u, qa[4*b + 0][1], 0u, b0, b1);
            tq_lookup4(tq_idx<HK, 1>(X, H), tk, b0, b1); tq_mma_16816(c, qa[4*b + 1][0], 0u, qa[4*b + 1][1], 0u, b0, b1);
            tq_lookup4(tq_idx<HK, 2>(X, H), tk, b0, b1); tq_mma_16816(c, qa[4*b + 2][0], 0u, qa[4*b + 2][1], 0u, b0, b1);
            tq_lookup4(tq_idx<HK, 3>(X, H), tk, b0, b1); tq_mma_16816(c, qa[4*b + 3][0], 0u, qa[4*b + 3][1], 0u, b0, b1);
            s0 += __half2float(*(const half *) (rc0 + b*BK))*c[0];
            s1 += __half2float(*(const half *) (rc1 + b*BK))*c[1];
        }
    };

    // Oᵀ += Vᵀ Pᵀ over the 16 positions kp0 + 16t..; p: this lane's P at rows 2u, 2u+1 (pair A)
    // and 2u+8, 2u+9 (pair B) of them. Rows g and g+8 of m-tile mt are dims 16mt + 2g and
    // 16mt + 2g + 1 (a permutation of the dims, undone when the outputs are stored), so a row's
    // two dims sit in adjacent qs and qh bytes.
    auto v_step = [&](const uint8_t * sv, const int kp0, const int t, const float p0, const float p1, const float p2, const float p3) {
        const int kt = kp0 + 16*t;
        const int ra = 16*t + 2*u;
        const uint8_t * va0 = sv + (ra    )*SV + v_off(kt + 2*u);
        const uint8_t * va1 = sv + (ra + 1)*SV + v_off(kt + 2*u + 1);
        const uint8_t * vb0 = sv + (ra + 8)*SV + v_off(kt + 2*u + 8);
        const uint8_t * vb1 = sv + (ra + 9)*SV + v_off(kt + 2*u + 9);
#pragma unroll
        for (int b = 0; b < NB; ++b) {
            const int bo = b*BV;
            const uint32_t pb0 = tq_pack_h2(p0*__half2float(*(const half *) (va0 + bo)), p1*__half2float(*(const half *) (va1 + bo)));
            const uint32_t pb1 = tq_pack_h2(p2*__half2float(*(const half *) (vb0 + bo)), p3*__half2float(*(const half *) (vb1 + bo)));
            uint32_t XA, HA, XB, HB;
            tq_v_words<HV>(va0 + bo, va1 + bo, g, XA, HA);
            tq_v_words<HV>(vb0 + bo, vb1 + bo, g, XB, HB);
            uint32_t a0, a1, a2, a3;
            tq_lookup4(tq_idx<HV, 0>(XA, HA), tv, a0, a1); tq_lookup4(tq_idx<HV, 0>(XB, HB), tv, a2, a3); tq_mma_16816(O[4*b + 0], a0, a1, a2, a3, pb0, pb1);
            tq_lookup4(tq_idx<HV, 1>(XA, HA), tv, a0, a1); tq_lookup4(tq_idx<HV, 1>(XB, HB), tv, a2, a3); tq_mma_16816(O[4*b + 1], a0, a1, a2, a3, pb0, pb1);
            tq_lookup4(tq_idx<HV, 2>(XA, HA), tv, a0, a1); tq_lookup4(tq_idx<HV, 2>(XB, HB), tv, a2, a3); tq_mma_16816(O[4*b + 2], a0, a1, a2, a3, pb0, pb1);
            tq_lookup4(tq_idx<HV, 3>(XA, HA), tv, a0, a1); tq_lookup4(tq_idx<HV, 3>(XB, HB), tv, a2, a3); tq_mma_16816(O[4*b + 3], a0, a1, a2, a3, pb0, pb1);
        }
    };

    // KT: scores -> softmax state; sc[2i] of head 2u, sc[2i + 1] of head 2u + 1 (positions: the
    // lanes of the same u)
    auto softmax_kt = [&](auto & sc) {
        constexpr int N = sizeof(sc)/sizeof(sc[0]);
        float ma = sc[0];
        float mb = sc[1];
#pragma unroll
        for (int i = 1; i < N/2; ++i) {
            ma = fmaxf(ma, sc[2*i]);
            mb = fmaxf(mb, sc[2*i + 1]);
        }
#pragma unroll
        for (int o = 4; o < WARP_SIZE; o *= 2) {
            ma = fmaxf(ma, __shfl_xor_sync(0xFFFFFFFF, ma, o, WARP_SIZE));
            mb = fmaxf(mb, __shfl_xor_sync(0xFFFFFFFF, mb, o, WARP_SIZE));
        }
        const float na = fmaxf(M, ma);
        const float nb = fmaxf(M2, mb);
        const float sa = expf(M - na);
        const float sb = expf(M2 - nb);
        M  = na;
        M2 = nb;
        float la = 0.0f;
        float lb = 0.0f;
#pragma unroll
        for (int i = 0; i < N/2; ++i) {
            sc[2*i]     = expf(sc[2*i]     - M);
            sc[2*i + 1] = expf(sc[2*i + 1] - M2);
            la += sc[2*i];
            lb += sc[2*i + 1];
        }
        L  = L *sa + la;
        L2 = L2*sb + lb;
#pragma unroll
        for (int mt2 = 0; mt2 < D/16; ++mt2) {
            O[mt2][0] *= sa; O[mt2][1] *= sb; O[mt2][2] *= sa; O[mt2][3] *= sb;
        }
    };

    // KT: S^T of the 16 positions kp0 + 16t.. (rows 16t + g and 16t + g + 8 of the stage), K's
    // block scales applied: s = (pos g: heads 2u, 2u+1; pos g + 8: heads 2u, 2u+1)
    auto k_chunk_kt = [&](auto al, const uint8_t * sk, const int kp0, const int t, float (&s)[4]) {
        const int r = 16*t + g;
        const uint8_t * ra = sk + (r    )*SK + k_off_kt(al, kp0 + r);
        const uint8_t * rb = sk + (r + 8)*SK + k_off_kt(al, kp0 + r + 8);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            s[i] = 0.0f;
        }
#pragma unroll
        for (int b = 0; b < NB; ++b) {
            uint32_t XA, HA, XB, HB;
            tq_k_words_c<HK>(ra + b*BK, u, XA, HA);
            tq_k_words_c<HK>(rb + b*BK, u, XB, HB);
            uint32_t fa[4][2], fb[4][2];   // rows g, g + 8: slab s's (r0, r1) = A's (a0, a2), (a1, a3)
            tq_slabs4<HK>(XA, HA, tkc, fa);
            tq_slabs4<HK>(XB, HB, tkc, fb);
            float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
            for (int sl = 0; sl < 4; ++sl) {
                tq_mma_16816(c, fa[sl][0], fb[sl][0], fa[sl][1], fb[sl][1], qa[4*b + sl][0], qa[4*b + sl][1]);
            }
            const float da = __half2float(*(const half *) (ra + b*BK));
            const float db = __half2float(*(const half *) (rb + b*BK));
            s[0] += da*c[0];
            s[1] += da*c[1];
            s[2] += db*c[2];
            s[3] += db*c[3];
        }
    };

    // KT: Oᵀ += Vᵀ Pᵀ over the 16 positions kp0 + 16t..; p = the lane's P (pos g: heads 2u, 2u+1;
    // pos g + 8: the same), times V's block scale of its position, transposed into Pᵀ's fragment
    auto v_step_kt = [&](auto al, const uint8_t * sv, const int kp0, const int t, const float (&p)[4]) {
        const int kt = kp0 + 16*t;
        const int ra = 16*t + 2*u;
        const uint8_t * va0 = sv + (ra    )*SV + v_off_kt(al, kt + 2*u);
        const uint8_t * va1 = sv + (ra + 1)*SV + v_off_kt(al, kt + 2*u + 1);
        const uint8_t * vb0 = sv + (ra + 8)*SV + v_off_kt(al, kt + 2*u + 8);
        const uint8_t * vb1 = sv + (ra + 9)*SV + v_off_kt(al, kt + 2*u + 9);
        const uint8_t * vg0 = sv + (16*t + g    )*SV + v_off_kt(al, kt + g);
        const uint8_t * vg8 = sv + (16*t + g + 8)*SV + v_off_kt(al, kt + g + 8);
#pragma unroll
        for (int b = 0; b < NB; ++b) {
            const int bo = b*BV;
            const float d0 = __half2float(*(const half *) (vg0 + bo));
            const float d8 = __half2float(*(const half *) (vg8 + bo));
            const uint32_t pb0 = tq_movmatrix_t(tq_pack_h2(p[0]*d0, p[1]*d0));
            const uint32_t pb1 = tq_movmatrix_t(tq_pack_h2(p[2]*d8, p[3]*d8));
            uint32_t XA, HA, XB, HB;
            tq_v_words_c<HV>(va0 + bo, va1 + bo, g, XA, HA);
            tq_v_words_c<HV>(vb0 + bo, vb1 + bo, g, XB, HB);
            uint32_t fa[4][2], fb[4][2];   // rows pair A, pair B: slab s's (r0, r1) = (a0, a1), (a2, a3)
            tq_slabs4<HV>(XA, HA, tvc, fa);
            tq_slabs4<HV>(XB, HB, tvc, fb);
#pragma unroll
            for (int sl = 0; sl < 4; ++sl) {
                tq_mma_16816(O[4*b + sl], fa[sl][0], fa[sl][1], fb[sl][0], fb[sl][1], pb0, pb1);
            }
        }
    };

    // KT: the warp's 32 staged rows; mk[2j + h]: mask value at position kp0 + 8j + g (j = 0..3), head 2u + h.
    // sc[4t + 2e + h]: position kp0 + 16t + 8e + g, head 2u + h. Both chunks' scores are computed
    // before any is finished (softcap, mask), so their mma chains interleave.
    auto cache_tile_kt = [&](auto al, const uint8_t * sk, const uint8_t * sv, const int kp0, const float (&mk)[8]) {
        float s0[4];
        float s1[4];
        k_chunk_kt(al, sk, kp0, 0, s0);
        k_chunk_kt(al, sk, kp0, 1, s1);
        float sc[8];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            sc[i]     = s0[i];
            sc[i + 4] = s1[i];
        }
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const int j = i/2;   // position kp0 + 8j + g
            float x = sc[i];
            if (logit_softcap != 0.0f) {
                x = logit_softcap*tanhf(x);
            }
            x += (i % 2 ? slope_b : slope_a)*mk[i];
            sc[i] = kp0 + 8*j + g < k_max ? x : -INFINITY;
        }
        if (n_side > 0 && kp0 + 32 > side_lo && kp0 <= side_hi) {
            // replaced cells score -inf here (the sink store holds them exactly)
#pragma unroll 1
            for (int j = 0; j < n_side; ++j) {
                const int off = side_cells[j] - kp0;
#pragma unroll
                for (int i = 0; i < 8; ++i) {
                    sc[i] = off == 8*(i/2) + g ? -INFINITY : sc[i];
                }
            }
        }
        softmax_kt(sc);
        const float p0[4] = {sc[0], sc[1], sc[2], sc[3]};
        const float p1[4] = {sc[4], sc[5], sc[6], sc[7]};
        v_step_kt(al, sv, kp0, 0, p0);
        v_step_kt(al, sv, kp0, 1, p1);
    };

    // ---- the warp's 32 staged rows (positions kp0..): S for 4 tiles of 8, one softmax step,
    // then Oᵀ over 2 steps of 16; mk: mask values of the lane's 8 scores.
    // ROLL (short context): the 4 K sub-tiles and the 2 V steps run as loops, not unrolled copies
    // (a quarter and a half of their unrolled code): a kernel that runs once per layer fetches
    // each instruction from L2 or memory (the values move through sc and mr by shifts, so that
    // no array is indexed at run time)
    auto cache_tile = [&](const uint8_t * sk, const uint8_t * sv, const int kp0, const float (&mk)[8]) {
        float sc[8];
        if constexpr (ROLL) {
            float mr[8];
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                mr[i] = mk[i];
                sc[i] = 0.0f;
            }
#pragma unroll 1
            for (int nt = 0; nt < 4; ++nt) {
                float s0, s1;
                k_sub(sk, kp0, nt, s0, s1);
                const int kc = kp0 + 8*nt + 2*u;
                const float f0 = finish_score(s0, kc,     mr[0]);
                const float f1 = finish_score(s1, kc + 1, mr[1]);
#pragma unroll
                for (int i = 0; i < 6; ++i) {
                    sc[i] = sc[i + 2];
                    mr[i] = mr[i + 2];
                }
                sc[6] = f0;
                sc[7] = f1;
            }
        } else {
#pragma unroll
            for (int nt = 0; nt < 4; ++nt) {
                float s0, s1;
                k_sub(sk, kp0, nt, s0, s1);
                const int kc = kp0 + 8*nt + 2*u;
                sc[2*nt + 0] = finish_score(s0, kc,     mk[2*nt + 0]);
                sc[2*nt + 1] = finish_score(s1, kc + 1, mk[2*nt + 1]);
            }
        }
        if (n_side > 0 && kp0 + 32 > side_lo && kp0 <= side_hi) {
            // replaced cells score -inf here (the sink store holds them exactly)
#pragma unroll 1
            for (int j = 0; j < n_side; ++j) {
                const int off = side_cells[j] - kp0;
#pragma unroll
                for (int i = 0; i < 8; ++i) {
                    sc[i] = off == 8*(i/2) + 2*u + i%2 ? -INFINITY : sc[i];
                }
            }
        }
        softmax(sc);
        if constexpr (ROLL) {
#pragma unroll 1
            for (int t = 0; t < 2; ++t) {
                v_step(sv, kp0, t, sc[0], sc[1], sc[2], sc[3]);
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    sc[i] = sc[i + 4];
                }
            }
        } else {
#pragma unroll
            for (int t = 0; t < 2; ++t) {
                v_step(sv, kp0, t, sc[4*t + 0], sc[4*t + 1], sc[4*t + 2], sc[4*t + 3]);
            }
        }
    };

    // the sink store first: its global loads overlap the rows already in flight
    // ---- sink store: 16 slots per tile, exact f16 rows from global memory, first parallel block
    if (n_side > 0 && blockIdx.y == 0) {
        const char * Ks = side.k + sequence*side.nbk3 + int64_t(kv_head)*side.nbk2;
        const char * Vs = side.v + sequence*side.nbv3 + int64_t(kv_head)*side.nbv2;
        for (int j0 = 16*side_w; j0 < n_side; j0 += 16*nwarps) {
            float sc[4];
            uint32_t pb0, pb1;
            if constexpr (KT) {
                // sc[2e + h]: slot j0 + 8e + g, head 2u + h
                const half * ka = (const half *) (Ks + int64_t(min(j0 + g,     n_side - 1))*side.nbk1);
                const half * kb = (const half *) (Ks + int64_t(min(j0 + g + 8, n_side - 1))*side.nbk1);
                float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
                for (int ks = 0; ks < D/16; ++ks) {
                    const uint32_t a0 = *(const uint32_t *) (ka + 16*ks + 2*u);
                    const uint32_t a1 = *(const uint32_t *) (kb + 16*ks + 2*u);
                    const uint32_t a2 = *(const uint32_t *) (ka + 16*ks + 2*u + 8);
                    const uint32_t a3 = *(const uint32_t *) (kb + 16*ks + 2*u + 8);
                    tq_mma_16816(c, a0, a1, a2, a3, qa[ks][0], qa[ks][1]);
                }
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int j    = j0 + 8*e + g;
                    const int cell = j < n_side ? side_cells[j] : -1;
                    const bool ok  = cell >= 0 && cell < k_max;
#pragma unroll
                    for (int h = 0; h < 2; ++h) {
                        const float mk = ok && maskh ? __half2float((h ? mask_b : mask_a)[cell]) : 0.0f;
                        float x = c[2*e + h];
                        if (logit_softcap != 0.0f) {
                            x = logit_softcap*tanhf(x);
                        }
                        x += (h ? slope_b : slope_a)*mk;
                        sc[2*e + h] = ok ? x : -INFINITY;
                    }
                }
                softmax_kt(sc);
                pb0 = tq_movmatrix_t(tq_pack_h2(sc[0], sc[1]));
                pb1 = tq_movmatrix_t(tq_pack_h2(sc[2], sc[3]));
            } else {
#pragma unroll
                for (int nt = 0; nt < 2; ++nt) {
                    const int jr = min(j0 + 8*nt + g, n_side - 1);
                    const half * kr = (const half *) (Ks + int64_t(jr)*side.nbk1);
                    float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
                    for (int ks = 0; ks < D/16; ++ks) {
                        const uint32_t b0 = *(const uint32_t *) (kr + 16*ks + 2*u);
                        const uint32_t b1 = *(const uint32_t *) (kr + 16*ks + 2*u + 8);
                        tq_mma_16816(c, qa[ks][0], 0u, qa[ks][1], 0u, b0, b1);
                    }
#pragma unroll
                    for (int i = 0; i < 2; ++i) {
                        const int j    = j0 + 8*nt + 2*u + i;
                        const int cell = j < n_side ? side_cells[j] : -1;
                        const bool ok  = cell >= 0 && cell < k_max;
                        sc[2*nt + i] = ok ? finish_score(c[i], cell, maskh ? __half2float(mask_g[cell]) : 0.0f) : -INFINITY;
                    }
                }
                softmax(sc);
                pb0 = tq_pack_h2(sc[0], sc[1]);
                pb1 = tq_pack_h2(sc[2], sc[3]);
            }
            const half * v0 = (const half *) (Vs + int64_t(min(j0 + 2*u,     n_side - 1))*side.nbv1);
            const half * v1 = (const half *) (Vs + int64_t(min(j0 + 2*u + 1, n_side - 1))*side.nbv1);
            const half * v8 = (const half *) (Vs + int64_t(min(j0 + 2*u + 8, n_side - 1))*side.nbv1);
            const half * v9 = (const half *) (Vs + int64_t(min(j0 + 2*u + 9, n_side - 1))*side.nbv1);
#pragma unroll
            for (int mt = 0; mt < D/16; ++mt) {
                const int d = 16*mt + 2*g;   // rows g, g+8: dims d, d+1 (as in the cache tiles)
                const uint32_t w0 = *(const uint32_t *) (v0 + d);
                const uint32_t w1 = *(const uint32_t *) (v1 + d);
                const uint32_t w8 = *(const uint32_t *) (v8 + d);
                const uint32_t w9 = *(const uint32_t *) (v9 + d);
                tq_mma_16816(O[mt], __byte_perm(w0, w1, 0x5410), __byte_perm(w0, w1, 0x7632),
                                    __byte_perm(w8, w9, 0x5410), __byte_perm(w8, w9, 0x7632), pb0, pb1);
            }
        }
    }

    unsigned long long tq_t1 = 0;
    int tq_ntiles = 0;
    if constexpr (MODE == 6) {
        tq_t1 = tq_globaltimer();
    }
    int st = 0;
#pragma unroll 1
    while (kq[0] < k_max) {
        const int kn = next_kb();
        issue(kn, (st + STAGES - 1) % STAGES);
        const int kb = kq[0];
        const uint8_t * sk = stage0 + st*STAGE_BYTES;
        // mask values of the lane's 8 scores (KT: mk[2j + h] of position kb + 8j + g, head 2u + h),
        // loaded before waiting for the rows (staged with them: read after the wait)
        float mk[8];
        bool live = false;
        const bool ms = mstaged(kb);
        if (!ms) {
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                const int kp = kb + (KT ? 8*(i/2) + g : 8*(i/2) + 2*u + i%2);
                const half * mrow = KT ? (i % 2 ? mask_b : mask_a) : mask_g;
                mk[i] = maskh ? __half2float(mrow[min(kp, k_max - 1)]) : 0.0f;
                live = live || (kp < k_max && mk[i] != -INFINITY);
            }
        }
        tq_cp_async_wait<STAGES - 1>();
        __syncwarp();
        if (ms) {
            const half * msk = (const half *) (sk + MASK_OFF);   // KT, one mask row for all heads
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                mk[i] = __half2float(msk[KT ? 8*(i/2) + g : 0]);   // every position below k_max here
                live = live || mk[i] != -INFINITY;
            }
        }
        // a tile whose scores are all -inf changes nothing (exactly: P = 0 and the running max
        // stays), so it is skipped: at short context most of the cache view is masked
        live = __any_sync(0xFFFFFFFF, live) || (side.off & TQ_OFF_SKIP);
        if (MODE != 1 && MODE != 5 && live) {
#pragma unroll 1
            for (int rep = 0; rep < (MODE == 4 ? 2 : 1); ++rep) {   // probe 4: the tile twice (the second time with its code cached)
                if constexpr (KT) {
                    // the launch takes this instance only for row strides that are multiples of 16
                    // (tq_mma_kt_ok): every row's offset is the head's (a second copy of the tile
                    // code for other strides cost instruction-cache space)
                    cache_tile_kt(std::true_type{}, sk, sk + ROWS*SK, kb, mk);
                } else {
                    cache_tile(sk, sk + ROWS*SK, kb, mk);
                }
            }
        }
        __syncwarp();
#pragma unroll
        for (int i = 0; i < STAGES - 2; ++i) {
            kq[i] = kq[i + 1];
        }
        kq[STAGES - 2] = kn;
        st = (st + 1) % STAGES;
        if constexpr (MODE == 6) {
            ++tq_ntiles;
        }
    }
    tq_cp_async_wait<0>();
    unsigned long long tq_t2 = 0;
    if constexpr (MODE == 6) {
        tq_t2 = tq_globaltimer();
    }


    // attention sinks: one warp takes them into its softmax state (as upstream)
    if (KT && sinks_ptr && blockIdx.y == 0 && warp == 0) {
        const float sink_a = 2*u     < nh ? ((const float *) sinks_ptr)[head0 + 2*u]     : -FLT_MAX/2.0f;
        const float sink_b = 2*u + 1 < nh ? ((const float *) sinks_ptr)[head0 + 2*u + 1] : -FLT_MAX/2.0f;
        const float na = fmaxf(M, sink_a);
        const float nb = fmaxf(M2, sink_b);
        const float sa = expf(M - na);
        const float sb = expf(M2 - nb);
        M  = na;
        M2 = nb;
        L  = L *sa + (g == 0 ? expf(sink_a - M)  : 0.0f);
        L2 = L2*sb + (g == 0 ? expf(sink_b - M2) : 0.0f);
#pragma unroll
        for (int mt = 0; mt < D/16; ++mt) {
            O[mt][0] *= sa; O[mt][1] *= sb; O[mt][2] *= sa; O[mt][3] *= sb;
        }
    }
    if (!KT && sinks_ptr && blockIdx.y == 0 && warp == 0) {
        const float sink = g < nh ? ((const float *) sinks_ptr)[head0 + g] : -FLT_MAX/2.0f;
        const float mnew = fmaxf(M, sink);
        const float scl  = expf(M - mnew);
        M = mnew;
        L = L*scl + (u == 0 ? expf(sink - M) : 0.0f);
        const float sa = __shfl_sync(0xFFFFFFFF, scl, (2*u    )*4, WARP_SIZE);
        const float sb = __shfl_sync(0xFFFFFFFF, scl, (2*u + 1)*4, WARP_SIZE);
#pragma unroll
        for (int mt = 0; mt < D/16; ++mt) {
            O[mt][0] *= sa; O[mt][1] *= sb; O[mt][2] *= sa; O[mt][3] *= sb;
        }
    }

    // ---- combine the warps (the staging buffers are reused)
    if constexpr (KT) {
#pragma unroll
        for (int o = 4; o < WARP_SIZE; o *= 2) {
            L  += __shfl_xor_sync(0xFFFFFFFF, L,  o, WARP_SIZE);
            L2 += __shfl_xor_sync(0xFFFFFFFF, L2, o, WARP_SIZE);
        }
    } else {
        L += __shfl_xor_sync(0xFFFFFFFF, L, 1, WARP_SIZE);
        L += __shfl_xor_sync(0xFFFFFFFF, L, 2, WARP_SIZE);
    }
    __syncthreads();
    float * VKQs = (float *) smem;   // [nwarps][G][D]
#pragma unroll
    for (int mt = 0; mt < D/16; ++mt) {
        const int d = 16*mt + 2*g;
        *(float2 *) &VKQs[(warp*G + 2*u    )*D + d] = make_float2(O[mt][0], O[mt][2]);
        *(float2 *) &VKQs[(warp*G + 2*u + 1)*D + d] = make_float2(O[mt][1], O[mt][3]);
    }
    if (KT) {
        if (g == 0) {
            meta_s[warp][2*u]     = make_float2(M,  L);
            meta_s[warp][2*u + 1] = make_float2(M2, L2);
        }
    } else if (u == 0) {
        meta_s[warp][g] = make_float2(M, L);
    }
    __syncthreads();

    const int tid = warp*WARP_SIZE + lane;
    for (int h = 0; h < nh; ++h) {
        float kqmax = meta_s[0][h].x;
#pragma unroll
        for (int w = 1; w < nwarps; ++w) {
            kqmax = fmaxf(kqmax, meta_s[w][h].x);
        }
        float wsc[nwarps];
        float kqsum = 0.0f;
#pragma unroll
        for (int w = 0; w < nwarps; ++w) {
            wsc[w] = expf(meta_s[w][h].x - kqmax);
            kqsum += wsc[w]*meta_s[w][h].y;
        }
        const int64_t j_dst = (int64_t(sequence)*int(ne01.z) + ic0)*ne02 + head0 + h;
#pragma unroll
        for (int i0 = 0; i0 < D; i0 += nwarps*WARP_SIZE) {
            const int i = i0 + tid;
            if (i0 + nwarps*WARP_SIZE <= D || i < D) {
                float val = 0.0f;
#pragma unroll
                for (int w = 0; w < nwarps; ++w) {
                    val += wsc[w]*VKQs[(w*G + h)*D + i];
                }
                if (gridDim.y == 1) {
                    val /= kqsum;
                }
                if (side.o_rot) {
                    VKQs[h*D + i] = val;   // warp 0's row of head h: read only by this thread above
                } else {
                    dst_ptr[(j_dst*gridDim.y + blockIdx.y)*D + i] = val;
                }
            }
        }
        if (gridDim.y != 1 && tid == 0) {
            dst_meta_ptr[j_dst*gridDim.y + blockIdx.y] = make_float2(kqmax, kqsum);
        }
    }
    if (side.o_rot) {
        // R o (per 64-value chunk or the whole row) for the rotation node turbo-fuse.cu skipped; R is
        // linear, so the parallel blocks'
        // partial outputs may be rotated before they are combined
        __syncthreads();
#pragma unroll 1
        for (int h = warp; h < nh; h += nwarps) {
            const int64_t j_dst = (int64_t(sequence)*int(ne01.z) + ic0)*ne02 + head0 + h;
            float reg[D/32];
#pragma unroll
            for (int i = 0; i < D/32; ++i) {
                reg[i] = VKQs[h*D + i*32 + lane];
            }
            if (side.o_n == 64) {
                tq_fwht_regs<D, 64>(reg, side.o_rot, 1.0f/sqrtf(64.0f), lane);
            } else {
                tq_fwht_regs<D>(reg, side.o_rot, 1.0f/sqrtf((float) D), lane);
            }
#pragma unroll
            for (int i = 0; i < D/32; ++i) {
                dst_ptr[(j_dst*gridDim.y + blockIdx.y)*D + i*32 + lane] = reg[i];
            }
        }
    }
    if constexpr (MODE == 6) {
        if (lane == 0) {
            unsigned int smid;
            asm volatile("mov.u32 %0, %%smid;" : "=r"(smid));
            printf("TQTRACE %u %d %d %d %llu %llu %llu %llu %d\n", smid, (int) blockIdx.y, (int) blockIdx.z, warp,
                   tq_t0, tq_t1, tq_t2, tq_globaltimer(), tq_ntiles);
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
#endif // FLASH_ATTN_AVAILABLE && AMPERE_MMA_AVAILABLE && CP_ASYNC_AVAILABLE
}


// dynamic shared memory: the warps' staging rings, reused for their outputs at the end
template <int D, ggml_type type_K, ggml_type type_V, int STAGES, bool KT>
static constexpr size_t tq_mma_smem_bytes() {
    constexpr int NB = D/64;
    constexpr int SK = tq_stride(NB*tq_mma_blk<type_K>::bytes);
    constexpr int SV = tq_stride(NB*tq_mma_blk<type_V>::bytes);
    constexpr size_t stage = size_t(4*STAGES*(32*(SK + SV) + (KT ? 32*sizeof(half) : 0)));   // as STAGE_BYTES
    constexpr size_t comb  = size_t(4*8*D*sizeof(float));
    return stage > comb ? stage : comb;
}

template <int D, ggml_type type_K, ggml_type type_V, int STAGES, int MINB, int MODE, bool ROLL = false, bool KT = false>
static void ggml_cuda_flash_attn_ext_mma_turbo_launch(ggml_backend_cuda_context & ctx, ggml_tensor * dst) {
    constexpr int nwarps = 4;
    constexpr size_t nbytes = tq_mma_smem_bytes<D, type_K, type_V, STAGES, KT>();
    GGML_ASSERT((!dst->src[5] || dst->src[5]->ne[1] <= TQ_FATTN_SIDE_MAX) && "sink store larger than the decode kernel takes");
    tq_fattn_kernel_t kernel = flash_attn_ext_mma_turbo<D, type_K, type_V, STAGES, MINB, MODE, ROLL, KT>;
    CUDA_SET_SHARED_MEMORY_LIMIT((const void *) kernel, nbytes);
    if constexpr (MINB > 2) {
        // several blocks per SM: the largest shared-memory carveout, so that shared memory does not
        // cap the blocks below what launch_fattn's occupancy query (and parallel-block count) assumes
        static bool carveout_set[GGML_CUDA_MAX_DEVICES] = {false};
        const int id = ggml_cuda_get_device();
        if (!carveout_set[id]) {
            CUDA_CHECK(cudaFuncSetAttribute((const void *) kernel, cudaFuncAttributePreferredSharedMemoryCarveout, 100));
            carveout_set[id] = true;
        }
    }
    launch_fattn<D, 1, 8>(ctx, dst, nullptr, nwarps, nbytes, nwarps*32, false, false, false, false, WARP_SIZE, kernel);
}

// TQ_FA_TURBO_PROBE=loads|compute|none|twice|notile (measurements only, head 128 turbo3/turbo3): run
// the kernel with its cache-row loads but no decode/math, the math on whatever the staging buffers
// hold, nothing, every unmasked tile twice (the second time with its code cached), or no tile at
// all (wrong results): what each part costs (docs/results/cuda.md)
static int tq_mma_probe() {
    static const int v = [] {
        const char * e = getenv("TQ_FA_TURBO_PROBE");
        return !e ? 0 : strcmp(e, "loads") == 0 ? 1 : strcmp(e, "compute") == 0 ? 2 : strcmp(e, "none") == 0 ? 3 :
                        strcmp(e, "twice") == 0 ? 4 : strcmp(e, "notile") == 0 ? 5 : strcmp(e, "trace") == 0 ? 6 : 0;
    }();
    return v;
}


// TQ_FA_TURBO_MMA=0 keeps turbo x turbo decode on the vector kernel (for comparisons).
static bool tq_fattn_mma_enabled() {
    static const bool on = [] {
        const char * e = getenv("TQ_FA_TURBO_MMA");
        return !(e && e[0] == '0');
    }();
    return on;
}

// whether turbo x turbo decode (batch <= 4) runs this kernel; only this kernel rotates Q and its
// output itself (turbo-fuse.cu)
static bool tq_fattn_mma_applies(const int cc, const ggml_type type_K, const ggml_type type_V) {
    const bool turbo = (type_K == GGML_TYPE_TURBO3 || type_K == GGML_TYPE_TURBO2) &&
                       (type_V == GGML_TYPE_TURBO3 || type_V == GGML_TYPE_TURBO2);
    return turbo && tq_fattn_mma_enabled() && ampere_mma_available(cc) && cp_async_available(cc);
}

// the short-context kernel (rolled tile loops) up to this many KV positions in the view: up to
// about 6K each warp takes at most one tile (launch_fattn's parallel blocks), so the tile's code
// runs once per layer; measured at depth 0, tg128 (+1.3 to +2.1 % decode) and depth 3840 (no difference)
#define TQ_MMA_SHORT_KV 4096

template <int D, ggml_type type_K, ggml_type type_V>
static void ggml_cuda_flash_attn_ext_mma_turbo(ggml_backend_cuda_context & ctx, ggml_tensor * dst) {
    if constexpr (D == 128 && type_K == GGML_TYPE_TURBO3 && type_V == GGML_TYPE_TURBO3) {
        switch (tq_mma_probe()) {   // timing only: results are wrong anyway, rotations included
            case 1: ggml_cuda_flash_attn_ext_mma_turbo_launch<D, type_K, type_V, 2, 2, 1>(ctx, dst); return;
            case 2: ggml_cuda_flash_attn_ext_mma_turbo_launch<D, type_K, type_V, 2, 2, 2>(ctx, dst); return;
            case 3: ggml_cuda_flash_attn_ext_mma_turbo_launch<D, type_K, type_V, 2, 2, 3>(ctx, dst); return;
            case 4: ggml_cuda_flash_attn_ext_mma_turbo_launch<D, type_K, type_V, 2, 2, 4>(ctx, dst); return;
            case 5: ggml_cuda_flash_attn_ext_mma_turbo_launch<D, type_K, type_V, 2, 2, 5>(ctx, dst); return;
            default: break;
        }
    }
    if (dst->src[1]->ne[1] <= TQ_MMA_SHORT_KV && !(tq_fattn_off() & TQ_OFF_ROLL)) {
        ggml_cuda_flash_attn_ext_mma_turbo_launch<D, type_K, type_V, 2, 2, 0, true>(ctx, dst);
        return;
    }
    if (!(tq_fattn_off() & TQ_OFF_KT) && dst->src[1]->nb[1] % 16 == 0 && dst->src[2]->nb[1] % 16 == 0) {
        if constexpr (D == 128 && type_K == GGML_TYPE_TURBO3 && type_V == GGML_TYPE_TURBO3) {
            if (tq_mma_probe() == 6) {
                // trace: every 32nd long-context launch (layer 5 of a 32-layer model) prints its
                // blocks' timestamps (TQTRACE lines); the kernel otherwise as built
                static int n_calls = 0;
                if (n_calls++ % 32 == 5) {
                    ggml_cuda_flash_attn_ext_mma_turbo_launch<D, type_K, type_V, 2, 2, 6, false, true>(ctx, dst);
                    return;
                }
            }
        }
        ggml_cuda_flash_attn_ext_mma_turbo_launch<D, type_K, type_V, 2, 2, 0, false, true>(ctx, dst);
        return;
    }
    ggml_cuda_flash_attn_ext_mma_turbo_launch<D, type_K, type_V, 2, 2, 0>(ctx, dst);
}
