// tq-gguf: the turbo caches' randomized Hadamard R = D·H·D/sqrt(n) fused into the nodes next to it.
//
// Why: at decode a turbo cache adds four tiny rotation kernels per layer (Q, K, V, output) and a
// quantizing cache write that ran one thread per 64-value block. Fusing them makes turbo3 decode
// 6 % faster at depth 0 and 10 % at depth 32768 on an H100 (docs/results/cuda.md). The graph is
// unchanged (other backends run it as built); on CUDA:
//   store: MUL_MAT(R, x) -> views -> SET_ROWS(turbo)  => one kernel at the SET_ROWS: each warp
//          rotates one head row in registers and quantizes its 64-value blocks (warp quantizer of
//          turbo-quant-warp.cuh, bit-exact with the reference: float64 sums in index order); a
//          layer's K and V writes (with the sink store's) run in one launch;
//   q:     MUL_MAT(R, q) -> views -> FLASH_ATTN_EXT     => the tensor-core turbo kernel rotates Q;
//   out:   FLASH_ATTN_EXT -> views -> MUL_MAT(R, o)     => that kernel writes R·o straight into the
//          MUL_MAT's output.
// A deferred node's input stays allocated until the node that does its work (alloc deps added in
// graph_optimize), and the output fusion keeps attention's inputs alive until the MUL_MAT, so its
// output cannot overlap them. Both passes take the same decisions from the graph alone.
// TQ_CUDA_FUSE=0 turns all of it off (for comparisons); so do GGML_CUDA_DISABLE_FUSION=1 and
// GGML_CUDA_GRAPH_OPT=1 (concurrent streams would run a deferred node's work on another stream).
#include "common.cuh"
#include "convert.cuh"
#include "fattn.cuh"
#include "fattn-common.cuh"
#include "fwht.cuh"
#include "turbo.cuh"
#include "turbo-fuse.cuh"
#include "../ggml-backend-impl.h"
#include "../ggml-impl.h"

#include <cstring>
#include <algorithm>
#include <unordered_map>
#include <unordered_set>

#define TQ_FUSE_WINDOW 96   // nodes searched for a consumer

bool tq_cuda_fuse_enabled() {
    static const bool on = [] {
        const char * e = getenv("TQ_CUDA_FUSE");
        const char * f = getenv("GGML_CUDA_DISABLE_FUSION");
        const char * o = getenv("GGML_CUDA_GRAPH_OPT");
        return !(e && e[0] == '0') && !(f && atoi(f)) && !(o && atoi(o) == 1);
    }();
    return on;
}

// ---- the graph patterns

static bool tq_is_rot(const ggml_tensor * t) {
    return t->op == GGML_OP_MUL_MAT && ggml_cuda_op_mul_mat_use_fwht(t) &&
           ggml_get_op_params_i32(t, 1) != GGML_HINT_SRC0_IS_HADAMARD &&
           strstr(t->src[0]->name, "_dhd_dense") != nullptr &&
           t->src[1]->type == GGML_TYPE_F32 && ggml_is_contiguous(t->src[1]) &&
           (t->ne[0] == 64 || t->ne[0] == 128 || t->ne[0] == 256);
}

static bool tq_is_view(const ggml_tensor * t) {
    return t->op == GGML_OP_RESHAPE || t->op == GGML_OP_VIEW || t->op == GGML_OP_PERMUTE;
}

// the first node that is not a view and consumes node i through single-use views; -1 if none
// (or if a tensor on the way is used twice or is a graph output); *src: which src it is there
static int tq_sole_consumer(const ggml_cgraph * g, const int i, int * src, const bool reshape_only) {
    int cur = i;
    for (int hop = 0; hop < 8; ++hop) {
        const ggml_tensor * t = g->nodes[cur];
        if ((t->flags & GGML_TENSOR_FLAG_OUTPUT) || ggml_node_get_use_count(g, cur) != 1) {
            return -1;
        }
        int next = -1;
        for (int j = cur + 1; j < g->n_nodes && j <= cur + TQ_FUSE_WINDOW && next < 0; ++j) {
            for (int s = 0; s < GGML_MAX_SRC; ++s) {
                if (g->nodes[j]->src[s] == t) {
                    next = j;
                    *src = s;
                    break;
                }
            }
        }
        if (next < 0) {
            return -1;
        }
        const ggml_tensor * n = g->nodes[next];
        if (tq_is_view(n)) {
            if (reshape_only && n->op != GGML_OP_RESHAPE) {
                return -1;
            }
            cur = next;
            continue;
        }
        return next;
    }
    return -1;
}

static const ggml_tensor * tq_root(const ggml_tensor * t) {
    return t->view_src ? t->view_src : t;
}

// all non-view consumers of node i, reached through views (at most max_out of them): their count,
// -1 if a tensor on the way is a graph output or has a consumer beyond the search window
static int tq_consumers(const ggml_cgraph * g, const int i, int * out, int * out_src, const int max_out) {
    int stack[8];
    int ns = 0;
    int n  = 0;
    stack[ns++] = i;
    while (ns > 0) {
        const int cur = stack[--ns];
        const ggml_tensor * t = g->nodes[cur];
        if (t->flags & GGML_TENSOR_FLAG_OUTPUT) {
            return -1;
        }
        int found = 0;
        for (int j = cur + 1; j < g->n_nodes && j <= cur + TQ_FUSE_WINDOW; ++j) {
            for (int s = 0; s < GGML_MAX_SRC; ++s) {
                if (g->nodes[j]->src[s] != t) {
                    continue;
                }
                ++found;
                if (tq_is_view(g->nodes[j])) {
                    if (ns == 8) {
                        return -1;
                    }
                    stack[ns++] = j;
                } else {
                    if (n == max_out) {
                        return -1;
                    }
                    out[n] = j;
                    out_src[n] = s;
                    ++n;
                }
            }
        }
        if (found != ggml_node_get_use_count(g, cur)) {
            return -1;
        }
    }
    return n;
}

// rotation node i whose SET_ROWS consumer writes a turbo cache row per token: the fused store applies
static bool tq_store_applies(const ggml_tensor * rot, const ggml_tensor * sr) {
    const ggml_tensor * x   = sr->src[0];
    const ggml_tensor * idx = sr->src[1];
    return sr->op == GGML_OP_SET_ROWS && (sr->type == GGML_TYPE_TURBO3 || sr->type == GGML_TYPE_TURBO2) &&
           x->view_src == rot && x->view_offs == 0 && ggml_is_contiguous(x) &&
           ggml_nelements(x) == ggml_nelements(rot) && x->ne[0] % rot->ne[0] == 0 && x->ne[2] == 1 && x->ne[3] == 1 &&
           (idx->type == GGML_TYPE_I64 || idx->type == GGML_TYPE_I32) && ggml_is_contiguous(idx) &&
           ggml_nelements(idx) == x->ne[1] && sr->ne[0] == x->ne[0] && sr->ne[2] == 1 && sr->ne[3] == 1;
}

// the sink store's write (llama_kv_cache::cpy_sink) beside the turbo cache write cache_sr, from the
// same rotation: every token's rotated row to its side row of an F16 store named *_sink_l*, whose
// last row is scratch (the tokens that are no sink cells go there; the fused store skips them)
static bool tq_side_store_applies(const ggml_tensor * rot, const ggml_tensor * sr, const ggml_tensor * cache_sr) {
    const ggml_tensor * x   = sr->src[0];
    const ggml_tensor * idx = sr->src[1];
    const ggml_tensor * xc  = cache_sr->src[0];
    return sr->op == GGML_OP_SET_ROWS && sr->type == GGML_TYPE_F16 && strstr(tq_root(sr)->name, "_sink_l") != nullptr &&
           x->view_src == rot && x->view_offs == 0 && ggml_is_contiguous(x) && x->type == GGML_TYPE_F32 &&
           x->ne[0] == xc->ne[0] && x->ne[1] == xc->ne[1] && x->ne[2] == 1 && x->ne[3] == 1 &&
           (idx->type == GGML_TYPE_I64 || idx->type == GGML_TYPE_I32) && ggml_is_contiguous(idx) &&
           ggml_nelements(idx) == x->ne[1] && sr->ne[0] == x->ne[0] && sr->ne[2] == 1 && sr->ne[3] == 1 &&
           sr->nb[1] == (size_t) sr->ne[0]*sizeof(half);
}

// node i is a rotation whose work a later node does (a turbo cache write, with the sink store's
// write when there is one, or the decode kernel's Q): that node's index (work), else -1
struct tq_defer {
    int work = -1;
    int side = -1;   // the sink store's SET_ROWS, done by the fused store too
};

static tq_defer tq_deferred(const ggml_cgraph * g, const int i, const int device) {
    tq_defer d;
    const ggml_tensor * t = g->nodes[i];
    if (!tq_is_rot(t)) {
        return d;
    }
    int s = -1;
    const int c = tq_sole_consumer(g, i, &s, false);
    if (c >= 0) {
        if (s != 0) {
            return d;
        }
        const ggml_tensor * n = g->nodes[c];
        const bool store = n->op == GGML_OP_SET_ROWS && tq_store_applies(t, n);
        const bool q = n->op == GGML_OP_FLASH_ATTN_EXT && tq_root(n->src[0]) == t && n->src[0]->ne[0] == t->ne[0] &&
                       ggml_cuda_fattn_turbo_takes_rot(device, n);
        d.work = store || q ? c : -1;
        return d;
    }
    int cs[2];
    int ss[2];
    if (tq_consumers(g, i, cs, ss, 2) != 2 || ss[0] != 0 || ss[1] != 0) {
        return d;
    }
    for (int a = 0; a < 2; ++a) {
        const ggml_tensor * sr = g->nodes[cs[a]];
        if (sr->op == GGML_OP_SET_ROWS && tq_store_applies(t, sr) && tq_side_store_applies(t, g->nodes[cs[1 - a]], sr)) {
            d.work = cs[a];
            d.side = cs[1 - a];
            return d;
        }
    }
    return d;
}

// node i is a FLASH_ATTN_EXT whose output a rotation takes through reshapes only: that rotation's index
static int tq_out_target(const ggml_cgraph * g, const int i, const int device) {
    const ggml_tensor * fa = g->nodes[i];
    if (fa->op != GGML_OP_FLASH_ATTN_EXT || fa->type != GGML_TYPE_F32 || !ggml_is_contiguous(fa)) {
        return -1;
    }
    int s = -1;
    const int c = tq_sole_consumer(g, i, &s, true);
    if (c < 0 || s != 1) {
        return -1;
    }
    const ggml_tensor * rot = g->nodes[c];
    if (!tq_is_rot(rot) || tq_root(rot->src[1]) != fa || rot->src[1]->view_offs != 0 ||
            (rot->ne[0] != fa->ne[0] && rot->ne[0] != 64) || fa->ne[0] % rot->ne[0] != 0 ||
            ggml_nelements(rot) != ggml_nelements(fa) || !ggml_cuda_fattn_turbo_takes_rot(device, fa)) {
        return -1;
    }
    return c;
}

void tq_cuda_fuse_plan(const int device, ggml_cgraph * g, ggml_backend_graph_optimize_params * params) {
    if (!tq_cuda_fuse_enabled() || !params) {
        return;
    }
    auto keep = [&](ggml_tensor * t, ggml_tensor * until) {
        params->add_alloc_dep(params->user_data, t, until);
        if (t->view_src) {
            params->add_alloc_dep(params->user_data, t->view_src, until);
        }
    };
    for (int i = 0; i < g->n_nodes; ++i) {
        ggml_tensor * t = g->nodes[i];
        const tq_defer d = tq_deferred(g, i, device);
        if (d.work >= 0) {
            keep(t->src[1], g->nodes[std::max(d.work, d.side)]);   // read by the node that does the rotation
        }
        const int o = tq_out_target(g, i, device);
        if (o >= 0) {
            // the rotation's output is written by the attention kernel: none of its inputs may share memory with it
            for (int s = 0; s < GGML_MAX_SRC; ++s) {
                if (t->src[s]) {
                    keep(t->src[s], g->nodes[o]);
                }
            }
            // nor Q's unrotated input, which the kernel reads when the Q rotation is deferred too
            // (kept alive even when it is not: a longer lifetime is harmless)
            ggml_tensor * q_rot = t->src[0]->view_src ? t->src[0]->view_src : t->src[0];
            if (tq_is_rot(q_rot)) {
                keep(q_rot->src[1], g->nodes[o]);
            }
        }
    }
}

// ---- the fused store

// the sink store's write beside the cache write (tq_side_store_applies): null dst: none
struct tq_side_store {
    half       * dst   = nullptr;
    int64_t      nb1   = 0;
    const void * idx   = nullptr;
    int          idx64 = 0;
    int64_t      skip  = -1;   // the scratch row: not written
};

// one rotated, quantized cache write (and its sink store's write): rows of N values (a head, or a
// 64-value chunk of one), n_head of them per token
struct tq_store_job {
    const float * x     = nullptr;
    const float * signs = nullptr;   // R's first row
    float         scale = 1.0f;
    const void  * idx   = nullptr;
    int           idx64 = 0;
    int           N     = 0;
    int           levels = 0;
    int           n_head = 0;
    char        * dst   = nullptr;
    int64_t       nb1   = 0;
    int64_t       n_rows = 0;
    tq_side_store side;
};

// a launch does one or two jobs (a layer's K and V writes: blockIdx.y); a warp per row
struct tq_store_jobs {
    tq_store_job j[2];
};

#define TQ_STORE_WARPS 4

template <int N, int levels>
static __device__ __forceinline__ void tq_store_row(const tq_store_job & jb, const int64_t r, double * sm, const int lane) {
    constexpr int BLK = levels == 8 ? 26 : 18;
    float reg[N/32];
#pragma unroll
    for (int i = 0; i < N/32; ++i) {
        reg[i] = jb.x[r*N + i*32 + lane];
    }
    tq_fwht_regs<N>(reg, jb.signs, jb.scale, lane);
    const int64_t t = r / jb.n_head;
    const int     h = (int) (r % jb.n_head);
    const int64_t row = jb.idx64 ? ((const int64_t *) jb.idx)[t] : (int64_t) ((const int32_t *) jb.idx)[t];
    const tq_side_store & side = jb.side;
    if (side.dst) {
        const int64_t srow = side.idx64 ? ((const int64_t *) side.idx)[t] : (int64_t) ((const int32_t *) side.idx)[t];
        if (srow != side.skip) {
            half * o = (half *) ((char *) side.dst + srow*side.nb1) + int64_t(h)*N;
#pragma unroll
            for (int i = 0; i < N/32; ++i) {
                o[i*32 + lane] = __float2half(reg[i]);
            }
        }
    }
    char * out = jb.dst + row*jb.nb1 + int64_t(h)*(N/64)*BLK;
    tq_quantize_blocks_warp<levels, N/64>(reg, levels == 8 ? kvalues_turbo3 : kvalues_turbo2, (uint16_t *) out, sm, lane);
}

// job 0: rows of NA values into a cache of LA levels; job 1 (NB > 0): NB, LB
template <int NA, int LA, int NB, int LB>
__launch_bounds__(32*TQ_STORE_WARPS, 1)
static __global__ void tq_rot_set_rows(const tq_store_jobs jobs) {
    constexpr int NMAX = NA > NB ? NA : NB;
    __shared__ __align__(16) double scratch[TQ_STORE_WARPS][TQ_WQ_SCRATCH(NMAX/64)];
    const int64_t r = (int64_t) blockIdx.x*blockDim.y + threadIdx.y;
    const int lane = threadIdx.x;
    ggml_cuda_pdl_sync();
    if (NB == 0 || blockIdx.y == 0) {
        if (r < jobs.j[0].n_rows) {
            tq_store_row<NA, LA>(jobs.j[0], r, scratch[threadIdx.y], lane);
        }
    } else {
        if (r < jobs.j[1].n_rows) {
            tq_store_row<NB == 0 ? NA : NB, LB == 0 ? LA : LB>(jobs.j[1], r, scratch[threadIdx.y], lane);
        }
    }
}

template <int NA, int LA, int NB, int LB>
static void tq_rot_set_rows_go(const tq_store_jobs & jobs, const int n, cudaStream_t stream) {
    int64_t rows = jobs.j[0].n_rows;
    if (n == 2) {
        rows = std::max(rows, jobs.j[1].n_rows);
    }
    const dim3 block(32, TQ_STORE_WARPS, 1);
    const dim3 grid((unsigned) ((rows + TQ_STORE_WARPS - 1)/TQ_STORE_WARPS), (unsigned) n, 1);
    tq_rot_set_rows<NA, LA, NB, LB><<<grid, block, 0, stream>>>(jobs);
    CUDA_CHECK(cudaGetLastError());
}

template <int NA, int LA>
static void tq_rot_set_rows_na(const tq_store_jobs & jobs, const int n, cudaStream_t stream) {
    if (n == 1) {
        tq_rot_set_rows_go<NA, LA, 0, 0>(jobs, 1, stream);
        return;
    }
    const tq_store_job & b = jobs.j[1];
    GGML_ASSERT(b.levels == LA && (b.N == 64 || b.N == NA));
    if (b.N == 64) {
        tq_rot_set_rows_go<NA, LA, 64, LA>(jobs, 2, stream);
    } else {
        tq_rot_set_rows_go<NA, LA, NA, LA>(jobs, 2, stream);
    }
}

static tq_store_job tq_store_job_make(const ggml_tensor * rot, const ggml_tensor * sr, const tq_side_store & side) {
    tq_store_job jb;
    const ggml_tensor * idx = sr->src[1];
    jb.N      = (int) rot->ne[0];
    GGML_ASSERT(jb.N == 64 || jb.N == 128 || jb.N == 256);
    jb.x      = (const float *) rot->src[1]->data;
    jb.signs  = (const float *) rot->src[0]->data;
    jb.scale  = 1.0f/sqrtf((float) jb.N);
    jb.idx    = idx->data;
    jb.idx64  = idx->type == GGML_TYPE_I64;
    jb.levels = sr->type == GGML_TYPE_TURBO3 ? 8 : 4;
    jb.n_head = (int) (sr->src[0]->ne[0] / jb.N);
    jb.dst    = (char *) sr->data;
    jb.nb1    = (int64_t) sr->nb[1];
    jb.n_rows = ggml_nrows(rot);
    jb.side   = side;
    return jb;
}

// the jobs in one launch (two: the same levels, the second's rows of 64 values or of the first's size)
static bool tq_store_pairable(const tq_store_job & a, const tq_store_job & b) {
    return a.levels == b.levels && (b.N == 64 || b.N == a.N);
}

static void tq_rot_set_rows_launch(const tq_store_job * jb, const int n, cudaStream_t stream) {
    tq_store_jobs jobs;
    for (int i = 0; i < n; ++i) {
        jobs.j[i] = jb[i];
    }
    switch (jb[0].N*16 + jb[0].levels) {
        case  64*16 + 8: tq_rot_set_rows_na< 64, 8>(jobs, n, stream); break;
        case 128*16 + 8: tq_rot_set_rows_na<128, 8>(jobs, n, stream); break;
        case 256*16 + 8: tq_rot_set_rows_na<256, 8>(jobs, n, stream); break;
        case  64*16 + 4: tq_rot_set_rows_na< 64, 4>(jobs, n, stream); break;
        case 128*16 + 4: tq_rot_set_rows_na<128, 4>(jobs, n, stream); break;
        case 256*16 + 4: tq_rot_set_rows_na<256, 4>(jobs, n, stream); break;
        default: GGML_ABORT("unexpected rotation size");
    }
}

// ---- prefill attention on a turbo cache
//
// Batches the turbo decode kernels do not take run upstream's f16 kernels on K/V converted to f16.
// Upstream's launch_fattn converts K and V in a launch each and the sink store adds a scatter each.
// Here both conversions run in one launch (turbo.cuh's warp converter) and both scatters in one,
// then upstream's kernel runs on f16 copies of the K/V nodes that point at the converted buffers:
// the node's own f16 scratch behind its output, which its allocation holds already
// (ggml_cuda_flash_attn_ext_get_alloc_size sizes it for the f16 kernels this path runs), and with
// the sink store dropped from the node (its rows are in the buffers now). A K/V view that is not
// contiguous in memory (several streams) is converted by upstream's strided converter, still
// followed by the one scatter. TQ_FA_TURBO_OFF=8 leaves all of it to launch_fattn (comparisons).
#define TQ_PREFILL_MIN_BATCH 5   // fattn.cu decodes batches up to 4 with the turbo kernels

static bool tq_is_turbo(const ggml_type t) {
    return t == GGML_TYPE_TURBO3 || t == GGML_TYPE_TURBO2;
}

static bool tq_fattn_prefill(ggml_backend_cuda_context & ctx, ggml_tensor * node) {
    const ggml_tensor * Q = node->src[0];
    const ggml_tensor * K = node->src[1];
    const ggml_tensor * V = node->src[2];
    if ((!tq_is_turbo(K->type) && !tq_is_turbo(V->type)) || (tq_fattn_off() & TQ_OFF_PREFILL) ||
            Q->ne[1] < TQ_PREFILL_MIN_BATCH) {
        return false;
    }
    const int cc = ggml_cuda_info().devices[ctx.device].cc;
    if (!GGML_CUDA_CC_IS_NVIDIA(cc) || !ampere_mma_available(cc)) {
        return false;
    }
    for (int d = 0; d < GGML_MAX_DIMS; ++d) {
        if (K->ne[d] != V->ne[d]) {
            return false;
        }
    }
    const bool V_is_K_view = V->view_src && (V->view_src == K || (V->view_src == K->view_src && V->view_offs == K->view_offs));
    if (V_is_K_view || !ggml_cuda_flash_attn_ext_supported(ctx.device, node)) {
        return false;
    }
    for (const ggml_tensor * t : {K, V}) {
        if (t->type != GGML_TYPE_F16 && (t->nb[0] != ggml_type_size(t->type) || !ggml_get_to_fp16_cuda(t->type) ||
                                         !ggml_get_to_fp16_nc_cuda(t->type))) {
            return false;
        }
    }
    cudaStream_t stream = ctx.stream();
    const ggml_cuda_flash_attn_ext_f16_extra_data ex = ggml_cuda_flash_attn_ext_get_f16_extra_data(node, true, true);
    char * buf[2] = {(char *) ex.K, (char *) ex.V};
    const ggml_tensor * src[2] = {K, V};
    ggml_tensor kv16[2];
    tq_f16_jobs jobs = {};
    int njobs = 0;
    for (int i = 0; i < 2; ++i) {
        const ggml_tensor * t = src[i];
        kv16[i] = *t;
        if (t->type == GGML_TYPE_F16) {
            continue;
        }
        GGML_ASSERT(buf[i] != nullptr);
        ggml_tensor & o = kv16[i];
        const size_t bs = ggml_blck_size(t->type);
        const size_t ts = ggml_type_size(t->type);
        o.type      = GGML_TYPE_F16;
        o.data      = buf[i];
        o.buffer    = node->buffer;
        o.view_src  = nullptr;
        o.view_offs = 0;
        o.nb[0]     = sizeof(half);
        if (ggml_is_contiguously_allocated(t)) {
            for (int d = 1; d < GGML_MAX_DIMS; ++d) {
                o.nb[d] = t->nb[d]*bs*sizeof(half)/ts;
            }
            if (tq_is_turbo(t->type) && !tq_conv_thread_only() && tq_f16_job_ok(t->data, buf[i])) {
                jobs.j[njobs++] = {(const char *) t->data, (half *) buf[i], ggml_nelements(t)/QK_TURBO,
                                   t->type == GGML_TYPE_TURBO3 ? 8 : 4};
            } else {
                ggml_get_to_fp16_cuda(t->type)(t->data, (half *) buf[i], ggml_nelements(t), stream);
            }
        } else {
            ggml_get_to_fp16_nc_cuda(t->type)(t->data, (half *) buf[i], t->ne[0], t->ne[1], t->ne[2], t->ne[3],
                                              t->nb[1]/ts, t->nb[2]/ts, t->nb[3]/ts, stream);
            o.nb[1] = o.ne[0]*o.nb[0];
            o.nb[2] = o.ne[1]*o.nb[1];
            o.nb[3] = o.ne[2]*o.nb[2];
        }
    }
    if (njobs > 0) {
        tq_turbo_to_f16_jobs_cuda(jobs, njobs, stream);
    }
    const tq_fattn_side side = tq_fattn_side_get(node);
    if (side.k) {
        tq_side_scatter_dst d[2];
        for (int i = 0; i < 2; ++i) {
            if (src[i]->type == GGML_TYPE_F16) {
                continue;   // an f16 cache holds the side rows already
            }
            d[i].dst  = (half *) kv16[i].data;
            d[i].side = i == 0 ? side.k : side.v;
            d[i].D    = (int32_t) src[i]->ne[0];
            d[i].nbs1 = i == 0 ? side.nbk1 : side.nbv1;
            d[i].nbs2 = i == 0 ? side.nbk2 : side.nbv2;
            d[i].nbs3 = i == 0 ? side.nbk3 : side.nbv3;
            d[i].nbd1 = (int64_t) kv16[i].nb[1];
            d[i].nbd2 = (int64_t) kv16[i].nb[2];
            d[i].nbd3 = (int64_t) kv16[i].nb[3];
        }
        tq_fattn_side_scatter_kv(side, d[0], d[1], (int) K->ne[1], (int) K->ne[2], (int) K->ne[3], stream);
    }
    ggml_tensor fa = *node;
    fa.src[1] = &kv16[0];
    fa.src[2] = &kv16[1];
    fa.src[5] = nullptr;   // the sink store: scattered above
    fa.src[6] = nullptr;
    fa.src[7] = nullptr;
    ggml_cuda_flash_attn_ext(ctx, &fa);
    return true;
}

// ---- execution

// nodes of the graph being computed whose work moved elsewhere (deferred rotations, fused rotations)
static thread_local std::unordered_set<const ggml_tensor *> tq_deferred_set;
static thread_local std::unordered_set<const ggml_tensor *> tq_done_set;
// deferred rotations whose work is a turbo cache write not done yet: the write's node index and the
// sink store's (-1: none)
struct tq_pending_store {
    const ggml_tensor * rot;
    int                 work;
    int                 side;
};
static thread_local std::vector<tq_pending_store> tq_pending;

void tq_cuda_fuse_begin() {
    tq_deferred_set.clear();
    tq_done_set.clear();
    tq_pending.clear();
}

static const ggml_tensor * tq_deferred_root(const ggml_tensor * t) {
    const ggml_tensor * r = tq_root(t);
    return tq_deferred_set.count(r) ? r : nullptr;
}

static void tq_put_ptr(ggml_tensor * t, const int slot, const void * p) {
    memcpy(&t->op_params[slot], &p, sizeof(p));
}

bool tq_cuda_fuse_node(ggml_backend_cuda_context & ctx, ggml_cgraph * g, const int i) {
    if (!tq_cuda_fuse_enabled()) {
        return false;
    }
    ggml_tensor * node = g->nodes[i];
    if (tq_done_set.count(node)) {
        return true;
    }
    if (node->op == GGML_OP_MUL_MAT) {
        const tq_defer d = tq_deferred(g, i, ctx.device);
        if (d.work >= 0) {
            tq_deferred_set.insert(node);
            if (g->nodes[d.work]->op == GGML_OP_SET_ROWS) {
                tq_pending.push_back({node, d.work, d.side});
            }
            return true;
        }
        return false;
    }
    if (node->op == GGML_OP_SET_ROWS) {
        const ggml_tensor * rot = tq_deferred_root(node->src[0]);
        if (!rot) {
            return false;
        }
        // the cache write, and the sink store's write with it (whichever of the two comes first)
        auto it = std::find_if(tq_pending.begin(), tq_pending.end(), [&](const tq_pending_store & p) { return p.rot == rot; });
        GGML_ASSERT(it != tq_pending.end());
        const tq_pending_store pa = *it;
        tq_pending.erase(it);
        // and the other rotation's pending write (a layer's V beside its K), in the same launch when only
        // views and these writes lie between this node and the last of them: nothing in between reads
        // the caches, and the other write's input was computed before its rotation node, which came before
        tq_pending_store pb = {nullptr, -1, -1};
        for (auto jt = tq_pending.begin(); jt != tq_pending.end(); ++jt) {
            const int last = std::max(jt->work, std::max(jt->side, pa.side));
            if (jt->work <= i || (jt->side >= 0 && jt->side <= i) || last > i + TQ_FUSE_WINDOW) {
                continue;
            }
            bool ok = true;
            for (int k = i + 1; k <= last && ok; ++k) {
                const ggml_tensor * n = g->nodes[k];
                ok = k == pa.work || k == pa.side || k == jt->work || k == jt->side || tq_is_view(n) ||
                     n->op == GGML_OP_NONE || n->op == GGML_OP_TRANSPOSE;
            }
            if (ok) {
                pb = *jt;
                tq_pending.erase(jt);
                break;
            }
        }
        tq_store_job jobs[2];
        int njobs = 0;
        const tq_pending_store * ps[2] = {&pa, &pb};
        for (const tq_pending_store * p : ps) {
            if (!p->rot) {
                continue;
            }
            const ggml_tensor * sr = g->nodes[p->work];
            tq_side_store side;
            if (p->side >= 0) {
                const ggml_tensor * s16 = g->nodes[p->side];
                side.dst   = (half *) s16->data;
                side.nb1   = (int64_t) s16->nb[1];
                side.idx   = s16->src[1]->data;
                side.idx64 = s16->src[1]->type == GGML_TYPE_I64;
                side.skip  = s16->ne[1] - 1;
                tq_done_set.insert(s16);
            }
            GGML_ASSERT(tq_store_applies(p->rot, sr));
            tq_done_set.insert(sr);
            jobs[njobs++] = tq_store_job_make(p->rot, sr, side);
        }
        if (njobs == 2 && !tq_store_pairable(jobs[0], jobs[1])) {
            std::swap(jobs[0], jobs[1]);
        }
        if (njobs == 2 && !tq_store_pairable(jobs[0], jobs[1])) {
            tq_rot_set_rows_launch(&jobs[0], 1, ctx.stream());
            tq_rot_set_rows_launch(&jobs[1], 1, ctx.stream());
        } else {
            tq_rot_set_rows_launch(jobs, njobs, ctx.stream());
        }
        return true;
    }
    if (node->op == GGML_OP_FLASH_ATTN_EXT) {
        const ggml_tensor * q_rot = tq_deferred_root(node->src[0]);
        const int o = tq_out_target(g, i, ctx.device);
        if (!q_rot && o < 0) {
            return tq_fattn_prefill(ctx, node);
        }
        ggml_tensor fa = *node;
        ggml_tensor q;
        if (q_rot) {
            // the unrotated Q has the rotation's layout: the same view of its input
            q = *node->src[0];
            q.data = (char *) q_rot->src[1]->data + ((const char *) node->src[0]->data - (const char *) q_rot->data);
            fa.src[0] = &q;
            tq_put_ptr(&fa, TQ_FA_OP_Q_ROT, q_rot->src[0]->data);
        }
        if (o >= 0) {
            const ggml_tensor * rot = g->nodes[o];
            fa.data = rot->data;
            tq_put_ptr(&fa, TQ_FA_OP_O_ROT, rot->src[0]->data);
            fa.op_params[TQ_FA_OP_O_N] = (int32_t) rot->ne[0];
            tq_done_set.insert(rot);
        }
        ggml_cuda_flash_attn_ext(ctx, &fa);
        return true;
    }
    return false;
}
