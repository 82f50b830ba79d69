// tq-gguf: the turbo caches' randomized Hadamard R = D·H·D/sqrt(n) fused into the nodes next to it.
//
// Why: at decode a turbo cache adds four tiny rotation kernels per layer (Q, K, V, output) and a
// quantizing cache write that ran one thread per 64-value block. Fusing them makes turbo3 decode
// 6 % faster at depth 0 and 10 % at depth 32768 on an H100 (docs/results/cuda.md). The graph is
// unchanged (other backends run it as built); on CUDA:
//   store: MUL_MAT(R, x) -> views -> SET_ROWS(turbo)  => one kernel at the SET_ROWS: each warp
//          rotates one head row in registers and quantizes its 64-value blocks (warp quantizer,
//          bit-exact with the reference: float64 sums in index order);
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

template <int N, int levels>
__launch_bounds__(128, 1)
static __global__ void tq_rot_set_rows(const float * __restrict__ x, const float * __restrict__ signs, const float scale,
        const void * __restrict__ idx, const int idx64, char * __restrict__ dst, const int64_t nb1,
        const int n_head, const int64_t n_rows, const tq_side_store side) {
    constexpr int BLK = levels == 8 ? 26 : 18;
    const int64_t r = (int64_t) blockIdx.x*blockDim.y + threadIdx.y;
    const int lane = threadIdx.x;
    ggml_cuda_pdl_sync();
    if (r >= n_rows) {
        return;
    }
    float reg[N/32];
#pragma unroll
    for (int i = 0; i < N/32; ++i) {
        reg[i] = x[r*N + i*32 + lane];
    }
    tq_fwht_regs<N>(reg, signs, scale, lane);
    const int64_t t = r / n_head;
    const int     h = (int) (r % n_head);
    const int64_t row = idx64 ? ((const int64_t *) idx)[t] : (int64_t) ((const int32_t *) idx)[t];
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
    char * out = dst + row*nb1 + int64_t(h)*(N/64)*BLK;
    tq_quantize_blocks_warp<levels, N/64>(reg, levels == 8 ? kvalues_turbo3 : kvalues_turbo2, (uint16_t *) out, lane);
}

template <int N>
static void tq_rot_set_rows_launch(const ggml_tensor * rot, const ggml_tensor * sr, const tq_side_store & side, cudaStream_t stream) {
    const ggml_tensor * x   = rot->src[1];
    const ggml_tensor * idx = sr->src[1];
    const int64_t n_rows = ggml_nrows(rot);
    const int     n_head = (int) (sr->src[0]->ne[0] / N);
    const dim3 block(32, 4, 1);
    const dim3 grid((unsigned) ((n_rows + 3)/4), 1, 1);
    const float scale = 1.0f/sqrtf((float) N);
    const int idx64 = idx->type == GGML_TYPE_I64;
    if (sr->type == GGML_TYPE_TURBO3) {
        tq_rot_set_rows<N, 8><<<grid, block, 0, stream>>>((const float *) x->data, (const float *) rot->src[0]->data, scale,
            idx->data, idx64, (char *) sr->data, (int64_t) sr->nb[1], n_head, n_rows, side);
    } else {
        tq_rot_set_rows<N, 4><<<grid, block, 0, stream>>>((const float *) x->data, (const float *) rot->src[0]->data, scale,
            idx->data, idx64, (char *) sr->data, (int64_t) sr->nb[1], n_head, n_rows, side);
    }
    CUDA_CHECK(cudaGetLastError());
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
// a deferred rotation feeding a cache write and the sink store's write: those two SET_ROWS
static thread_local std::unordered_map<const ggml_tensor *, std::pair<const ggml_tensor *, const ggml_tensor *>> tq_store_pairs;

void tq_cuda_fuse_begin() {
    tq_deferred_set.clear();
    tq_done_set.clear();
    tq_store_pairs.clear();
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
            if (d.side >= 0) {
                tq_store_pairs[node] = { g->nodes[d.work], g->nodes[d.side] };
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
        const ggml_tensor * sr = node;
        tq_side_store side;
        const auto p = tq_store_pairs.find(rot);
        if (p != tq_store_pairs.end()) {
            sr = p->second.first;
            const ggml_tensor * s16 = p->second.second;
            side.dst   = (half *) s16->data;
            side.nb1   = (int64_t) s16->nb[1];
            side.idx   = s16->src[1]->data;
            side.idx64 = s16->src[1]->type == GGML_TYPE_I64;
            side.skip  = s16->ne[1] - 1;
            tq_done_set.insert(node == sr ? s16 : sr);
        }
        GGML_ASSERT(tq_store_applies(rot, sr));
        switch (rot->ne[0]) {
            case  64: tq_rot_set_rows_launch< 64>(rot, sr, side, ctx.stream()); break;
            case 128: tq_rot_set_rows_launch<128>(rot, sr, side, ctx.stream()); break;
            case 256: tq_rot_set_rows_launch<256>(rot, sr, side, ctx.stream()); break;
            default: GGML_ABORT("unexpected rotation size");
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
