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

// K's RoPE done by the fused store (TQ_CUDA_FUSE_ROPE=0: the ROPE node runs, for comparisons)
static bool tq_rope_fuse_enabled() {
    static const bool on = [] {
        const char * e = getenv("TQ_CUDA_FUSE_ROPE");
        return tq_cuda_fuse_enabled() && !(e && e[0] == '0');
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

// node i is the RoPE of K feeding a rotation whose work is a turbo cache write (tq_deferred), through
// single-use reshapes, with the rotation's rows the RoPE's heads (row r: token r / ne1, head r % ne1):
// the fused store applies the RoPE to the ROPE node's input itself. Norm and neox modes over the whole
// head, without YaRN's extrapolation mix (ext_factor 0), with or without frequency factors, f32, 3-D
// (llama, qwen2, ...; other RoPEs run as built). Returns the rotation's index, *last: the last node
// that reads the RoPE's inputs then
static int tq_rope_target(const ggml_cgraph * g, const int i, const int device, int * last) {
    const ggml_tensor * rope = g->nodes[i];
    if (rope->op != GGML_OP_ROPE) {
        return -1;
    }
    const ggml_tensor * x   = rope->src[0];
    const ggml_tensor * pos = rope->src[1];
    const ggml_tensor * ff  = rope->src[2];
    const int32_t * op = (const int32_t *) rope->op_params;
    const int n_dims = op[1];
    const int mode   = op[2];
    const int n_offs = op[15];
    float ext_factor;
    memcpy(&ext_factor, op + 7, sizeof(float));
    if (rope->type != GGML_TYPE_F32 || x->type != GGML_TYPE_F32 || x->nb[0] != sizeof(float) ||
            x->nb[1] % sizeof(float) != 0 || x->nb[2] % sizeof(float) != 0 || rope->ne[3] != 1 ||
            (mode != GGML_ROPE_TYPE_NORMAL && mode != GGML_ROPE_TYPE_NEOX) ||
            n_dims != rope->ne[0] || n_offs != 0 || ext_factor != 0.0f ||
            pos->type != GGML_TYPE_I32 || !ggml_is_contiguous(pos) || pos->ne[0] < rope->ne[2] ||
            (ff && (ff->type != GGML_TYPE_F32 || !ggml_is_contiguous(ff) || ff->ne[0] < n_dims/2))) {
        return -1;
    }
    int s = -1;
    const int c = tq_sole_consumer(g, i, &s, true);
    if (c < 0 || s != 1) {
        return -1;
    }
    const ggml_tensor * rot = g->nodes[c];
    if (!tq_is_rot(rot) || tq_root(rot->src[1]) != rope || rot->src[1]->view_offs != 0 ||
            rot->ne[0] != rope->ne[0] || ggml_nelements(rot->src[1]) != ggml_nelements(rope)) {
        return -1;
    }
    const tq_defer d = tq_deferred(g, c, device);
    if (d.work < 0 || g->nodes[d.work]->op != GGML_OP_SET_ROWS ||
            g->nodes[d.work]->src[0]->ne[0] != rope->ne[0]*rope->ne[1]) {
        return -1;
    }
    *last = std::max(d.work, d.side);
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
        int last = -1;
        if (tq_rope_fuse_enabled() && tq_rope_target(g, i, device, &last) >= 0) {
            // the RoPE's inputs are read by the fused store
            for (int s = 0; s < 3; ++s) {
                if (t->src[s]) {
                    keep(t->src[s], g->nodes[last]);
                }
            }
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

// K's RoPE done by the store (tq_rope_target): the ROPE node's input and parameters; mode 0: none
struct tq_rope_job {
    int             mode  = 0;         // 1 norm, 2 neox (the kernel's template argument RA)
    int             pre   = 0;         // pos and ff are graph inputs: read before the PDL wait
    const float   * x     = nullptr;
    const int32_t * pos   = nullptr;
    const float   * ff    = nullptr;   // frequency factors, or null
    int64_t         s1    = 0;         // strides of a head and a token, in floats
    int64_t         s2    = 0;
    float           freq_scale  = 1.0f;
    float           attn_factor = 1.0f;
    float           theta_scale = 1.0f;
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
    tq_rope_job   rope;
};

// a launch does one or two jobs (a layer's K and V writes: blockIdx.y); a warp per row
struct tq_store_jobs {
    tq_store_job j[2];
    int          lc = 0;   // let the next kernel launch at once (PDL; it waits for this one's end to read)
};

// the store in the stream's programmatic dependent launch chain, as upstream's kernels around it
// (K's matmul before, attention after): TQ_CUDA_STORE_PDL bits, default 3: 1 the store launched with
// the PDL attribute (it starts while the kernel before it finishes, and waits for it before reading),
// 2 it lets the next kernel launch at its start; 0: as before (measurements)
static int tq_store_pdl() {
    static const int v = [] {
        const char * e = getenv("TQ_CUDA_STORE_PDL");
        return e ? atoi(e) : 3;
    }();
    return v;
}

#define TQ_STORE_WARPS 4

// K's RoPE (tq_rope_target's cases) with the expressions of upstream's rope.cu (rope_norm, rope_neox,
// rope_yarn with ext_factor 0; same compiler flags), so that the store sees the floats the ROPE node
// would have written. RM 1 (norm): lane's value i*32 + lane pairs with its neighbour lane (one angle
// per value); RM 2 (neox): values i*32 + lane and that + N/2, both the lane's (one angle per pair).
template <int N, int RM>
struct tq_rope_cs {
    static constexpr int n = RM == 2 ? N/64 : N/32;
    float c[n];
    float s[n];
};

template <int N, int RM>
static __device__ __forceinline__ void tq_rope_angles(tq_rope_cs<N, RM> & cs, const tq_rope_job & rp, const int64_t t,
                                                      const int lane) {
    const int32_t p = rp.pos[t];
#pragma unroll
    for (int j = 0; j < cs.n; ++j) {
        const int iw = RM == 2 ? 2*(j*32 + lane) : 2*((j*32 + lane) >> 1);   // i0 - n_offs of the pair
        const float theta_base  = p*powf(rp.theta_scale, iw/2.0f);
        const float freq_factor = rp.ff ? rp.ff[iw/2] : 1.0f;
        const float theta_extrap = theta_base/freq_factor;
        const float theta = rp.freq_scale * theta_extrap;   // rope_yarn, ext_factor 0
        cs.c[j] = cosf(theta) * rp.attn_factor;
        cs.s[j] = sinf(theta) * rp.attn_factor;
    }
}

template <int N, int RM>
static __device__ __forceinline__ void tq_rope_apply(float (&reg)[N/32], const tq_rope_cs<N, RM> & cs, const int lane) {
    if constexpr (RM == 1) {
        const bool first = (lane & 1) == 0;
        float other[N/32];
#pragma unroll
        for (int i = 0; i < N/32; ++i) {
            other[i] = __shfl_xor_sync(0xFFFFFFFF, reg[i], 1, 32);
        }
#pragma unroll
        for (int i = 0; i < N/32; ++i) {
            const float x0 = first ? reg[i] : other[i];
            const float x1 = first ? other[i] : reg[i];
            reg[i] = first ? x0 * cs.c[i] - x1 * cs.s[i] : x0 * cs.s[i] + x1 * cs.c[i];
        }
    } else {
#pragma unroll
        for (int i = 0; i < N/64; ++i) {
            const float x0 = reg[i];
            const float x1 = reg[i + N/64];
            reg[i]        = x0 * cs.c[i] - x1 * cs.s[i];
            reg[i + N/64] = x0 * cs.s[i] + x1 * cs.c[i];
        }
    }
}

// RM: the job's RoPE (0: none; else cs holds its angles)
template <int N, int levels, int RM = 0>
static __device__ __forceinline__ void tq_store_row(const tq_store_job & jb, const int64_t r, double * sm, const int lane,
                                                    const tq_rope_cs<N, RM == 0 ? 1 : RM> & cs) {
    constexpr int BLK = levels == 8 ? 26 : 18;
    const int64_t t = r / jb.n_head;
    const int     h = (int) (r % jb.n_head);
    float reg[N/32];
    if constexpr (RM != 0) {
        const float * xr = jb.rope.x + h*jb.rope.s1 + t*jb.rope.s2;
#pragma unroll
        for (int i = 0; i < N/32; ++i) {
            reg[i] = xr[i*32 + lane];
        }
        tq_rope_apply<N, RM>(reg, cs, lane);
    } else {
#pragma unroll
        for (int i = 0; i < N/32; ++i) {
            reg[i] = jb.x[r*N + i*32 + lane];
        }
    }
    tq_fwht_regs<N>(reg, jb.signs, jb.scale, lane);
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

// job 0: rows of NA values into a cache of LA levels, with K's RoPE RA (0: none); job 1 (NB > 0): NB, LB
template <int NA, int LA, int NB, int LB, int RA>
__launch_bounds__(32*TQ_STORE_WARPS, 1)
static __global__ void tq_rot_set_rows(const tq_store_jobs jobs) {
    constexpr int NMAX = NA > NB ? NA : NB;
    constexpr int RM   = RA == 0 ? 1 : RA;
    __shared__ __align__(16) double scratch[TQ_STORE_WARPS][TQ_WQ_SCRATCH(NMAX/64)];
    const int64_t r = (int64_t) blockIdx.x*blockDim.y + threadIdx.y;
    const int lane = threadIdx.x;
    if (jobs.lc) {
        ggml_cuda_pdl_lc();
    }
    const bool a = NB == 0 || blockIdx.y == 0;
    // RoPE angles from graph inputs before waiting for the kernel before this one (PDL), else after
    const bool pre = RA != 0 && a && jobs.j[0].rope.pre;
    tq_rope_cs<NA, RM> cs;
    if (!pre) {
        ggml_cuda_pdl_sync();
    }
    if constexpr (RA != 0) {
        if (a && r < jobs.j[0].n_rows) {
            tq_rope_angles<NA, RM>(cs, jobs.j[0].rope, r / jobs.j[0].n_head, lane);
        }
    }
    if (pre) {
        ggml_cuda_pdl_sync();
    }
    if (a) {
        if (r < jobs.j[0].n_rows) {
            tq_store_row<NA, LA, RA>(jobs.j[0], r, scratch[threadIdx.y], lane, cs);
        }
    } else {
        constexpr int N1 = NB == 0 ? NA : NB;
        if (r < jobs.j[1].n_rows) {
            tq_store_row<N1, LB == 0 ? LA : LB, 0>(jobs.j[1], r, scratch[threadIdx.y], lane, tq_rope_cs<N1, 1>());
        }
    }
}

template <int NA, int LA, int NB, int LB, int RA>
static void tq_rot_set_rows_go(const tq_store_jobs & jobs, const int n, cudaStream_t stream) {
    int64_t rows = jobs.j[0].n_rows;
    if (n == 2) {
        rows = std::max(rows, jobs.j[1].n_rows);
    }
    const dim3 block(32, TQ_STORE_WARPS, 1);
    const dim3 grid((unsigned) ((rows + TQ_STORE_WARPS - 1)/TQ_STORE_WARPS), (unsigned) n, 1);
    if (tq_store_pdl() & 1) {
        ggml_cuda_kernel_launch(tq_rot_set_rows<NA, LA, NB, LB, RA>, ggml_cuda_kernel_launch_params(grid, block, 0, stream), jobs);
    } else {
        tq_rot_set_rows<NA, LA, NB, LB, RA><<<grid, block, 0, stream>>>(jobs);
        CUDA_CHECK(cudaGetLastError());
    }
}

template <int NA, int LA, int RA>
static void tq_rot_set_rows_ra(const tq_store_jobs & jobs, const int n, cudaStream_t stream) {
    if (n == 1) {
        tq_rot_set_rows_go<NA, LA, 0, 0, RA>(jobs, 1, stream);
        return;
    }
    const tq_store_job & b = jobs.j[1];
    GGML_ASSERT(b.levels == LA && (b.N == 64 || b.N == NA) && b.rope.mode == 0);
    if (b.N == 64) {
        tq_rot_set_rows_go<NA, LA, 64, LA, RA>(jobs, 2, stream);
    } else {
        tq_rot_set_rows_go<NA, LA, NA, LA, RA>(jobs, 2, stream);
    }
}

template <int NA, int LA>
static void tq_rot_set_rows_na(const tq_store_jobs & jobs, const int n, cudaStream_t stream) {
    switch (jobs.j[0].rope.mode) {
        case 0: tq_rot_set_rows_ra<NA, LA, 0>(jobs, n, stream); break;
        case 1: tq_rot_set_rows_ra<NA, LA, 1>(jobs, n, stream); break;
        case 2: tq_rot_set_rows_ra<NA, LA, 2>(jobs, n, stream); break;
        default: GGML_ABORT("unexpected RoPE mode");
    }
}

static bool tq_is_input(const ggml_tensor * t) {
    return t->op == GGML_OP_NONE && t->view_src == nullptr;
}

static tq_rope_job tq_rope_job_make(const ggml_tensor * rope) {
    tq_rope_job rp;
    const ggml_tensor * x  = rope->src[0];
    const ggml_tensor * ff = rope->src[2];
    const int32_t * op = (const int32_t *) rope->op_params;
    rp.mode   = (op[2] & GGML_ROPE_TYPE_NEOX) ? 2 : 1;
    rp.pre    = tq_is_input(rope->src[1]) && (!ff || tq_is_input(ff));
    rp.x      = (const float *) x->data;
    rp.pos    = (const int32_t *) rope->src[1]->data;
    rp.ff     = ff ? (const float *) ff->data : nullptr;
    rp.s1     = (int64_t) (x->nb[1]/sizeof(float));
    rp.s2     = (int64_t) (x->nb[2]/sizeof(float));
    float freq_base;
    memcpy(&freq_base,      op + 5, sizeof(float));
    memcpy(&rp.freq_scale,  op + 6, sizeof(float));
    memcpy(&rp.attn_factor, op + 8, sizeof(float));
    const int n_dims = op[1];
    rp.theta_scale = powf(freq_base, -2.0f / n_dims);   // as rope.cu, on the host
    return rp;
}

static tq_store_job tq_store_job_make(const ggml_tensor * rot, const ggml_tensor * sr, const tq_side_store & side,
                                      const ggml_tensor * rope) {
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
    if (rope) {
        jb.rope = tq_rope_job_make(rope);
    }
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
    jobs.lc = (tq_store_pdl() & 2) != 0;
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
            Q->ne[1] < TQ_PREFILL_MIN_BATCH || tq_fattn_mask_per_head(node)) {
        return false;   // (a mask per head: ggml_cuda_flash_attn_ext runs it per K/V head, tq_fattn_per_head)
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
    const ggml_tensor * rope;   // K's RoPE, done by the store too (null: none)
};
static thread_local std::vector<tq_pending_store> tq_pending;
// ROPE nodes whose work the fused store does
static thread_local std::unordered_set<const ggml_tensor *> tq_rope_set;

void tq_cuda_fuse_begin() {
    tq_deferred_set.clear();
    tq_done_set.clear();
    tq_pending.clear();
    tq_rope_set.clear();
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
    if (node->op == GGML_OP_ROPE) {
        int last = -1;
        if (tq_rope_fuse_enabled() && tq_rope_target(g, i, ctx.device, &last) >= 0) {
            tq_rope_set.insert(node);
            return true;
        }
        return false;
    }
    if (node->op == GGML_OP_MUL_MAT) {
        const tq_defer d = tq_deferred(g, i, ctx.device);
        if (d.work >= 0) {
            tq_deferred_set.insert(node);
            if (g->nodes[d.work]->op == GGML_OP_SET_ROWS) {
                const ggml_tensor * rope = tq_root(node->src[1]);
                tq_pending.push_back({node, d.work, d.side, tq_rope_set.count(rope) ? rope : nullptr});
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
        tq_pending_store pb = {nullptr, -1, -1, nullptr};
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
            jobs[njobs++] = tq_store_job_make(p->rot, sr, side, p->rope);
        }
        // a pair's second job has no RoPE
        auto pairs = [](const tq_store_job & a, const tq_store_job & b) { return tq_store_pairable(a, b) && b.rope.mode == 0; };
        if (njobs == 2 && !pairs(jobs[0], jobs[1])) {
            std::swap(jobs[0], jobs[1]);
        }
        if (njobs == 2 && !pairs(jobs[0], jobs[1])) {
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
