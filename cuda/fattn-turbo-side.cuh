// tq-gguf: the sink store of a turbo cache in FlashAttention (ggml_flash_attn_ext_set_side).
//
// Slot j of stream s holds exact f16 K/V rows that replace cell cells[j, s] of the cache.
// Two ways the kernels honour it:
//   - paths that convert K/V to f16 first (prefill, pairs without a turbo decode kernel):
//     tq_fattn_side_scatter overwrites the replaced cells' rows in the converted buffers;
//   - the turbo decode kernel reads the cache directly: it skips the replaced cells and takes
//     the side rows instead (tq_fattn_side is passed by value as an extra kernel argument).
// A side of type F16 in the cache needs no scatter: its rows are the side rows already.
#pragma once

#include "common.cuh"
#include "cpy.cuh"

#include <cstdlib>
#include <cstring>

// op_params slots (int32 index, 8 bytes each) of a FLASH_ATTN_EXT copy that carry a rotation's
// first row (its signs) when the tensor-core decode kernel rotates Q (R q) or its output (R o)
// itself (turbo-fuse.cu); the graph's own nodes leave them zero
#define TQ_FA_OP_O_N   11   // the output rotation's size (64 or the head size)
#define TQ_FA_OP_Q_ROT 12
#define TQ_FA_OP_O_ROT 14

// most side rows per stream the turbo decode kernel takes (llama caps its store at this)
#define TQ_FATTN_SIDE_MAX 256

struct tq_fattn_side {
    const char    * k     = nullptr; // F16 [D, n_slot, n_head_kv, n_stream]; null: no side
    const char    * v     = nullptr;
    const int32_t * cells = nullptr; // [n_slot, n_stream], -1: unused
    int32_t n_slot = 0;
    int32_t nbk1 = 0, nbk2 = 0; int64_t nbk3 = 0; // bytes per slot, head, stream
    int32_t nbv1 = 0, nbv2 = 0; int64_t nbv3 = 0;
    const float * q_rot = nullptr;   // R's first row: rotate Q / the output (TQ_FA_OP_*)
    const float * o_rot = nullptr;
    int32_t o_n = 0;
    int32_t off = 0;                 // TQ_FA_TURBO_OFF bits (measurements only): tq_fattn_off()
};

// TQ_FA_TURBO_OFF=bits turns parts of the turbo FlashAttention paths off, for same-build comparisons
// (measurements only): 1 skipping fully masked tiles, 2 the rolled tile loops (tensor-core decode
// kernel); 4 the warp converter to f16 (turbo.cuh, TQ_OFF_CONV_WARP); 8 prefill's K/V conversion and
// sink scatter done by turbo-fuse.cu (upstream's launch_fattn converts and scatters instead); 16 the
// tensor-core decode kernel's short staging path (whole 16-byte chunks of rows known in range, no
// per-row clamps); 32 its transposed score layout (S^T = K.Q^T, the long-context instance); 64 the
// mask values staged with the rows (long-context instance; off: loaded from global memory per tile)
#define TQ_OFF_SKIP 1
#define TQ_OFF_ROLL 2
#define TQ_OFF_PREFILL 8
#define TQ_OFF_STAGE 16
#define TQ_OFF_KT 32
#define TQ_OFF_MSTAGE 64
static int tq_fattn_off() {
    static const int v = [] {
        const char * e = getenv("TQ_FA_TURBO_OFF");
        return e ? atoi(e) : 0;
    }();
    return v;
}

static tq_fattn_side tq_fattn_side_get(const ggml_tensor * dst) {
    tq_fattn_side side;
    memcpy(&side.q_rot, &dst->op_params[TQ_FA_OP_Q_ROT], sizeof(side.q_rot));
    memcpy(&side.o_rot, &dst->op_params[TQ_FA_OP_O_ROT], sizeof(side.o_rot));
    side.o_n = dst->op_params[TQ_FA_OP_O_N];
    side.off = tq_fattn_off();
    const ggml_tensor * k = dst->src[5];
    const ggml_tensor * v = dst->src[6];
    const ggml_tensor * c = dst->src[7];
    if (!k) {
        return side;
    }
    side.k      = (const char *) k->data;
    side.v      = (const char *) v->data;
    side.cells  = (const int32_t *) c->data;
    side.n_slot = (int32_t) k->ne[1];
    side.nbk1 = (int32_t) k->nb[1]; side.nbk2 = (int32_t) k->nb[2]; side.nbk3 = k->nb[3];
    side.nbv1 = (int32_t) v->nb[1]; side.nbv2 = (int32_t) v->nb[2]; side.nbv3 = v->nb[3];
    return side;
}

// one block per (slot, head, stream): copy the side row over the converted cell's row
static __global__ void tq_fattn_side_scatter_kernel(
        const char * side, const int32_t * cells, half * dst, const int D, const int n_slot, const int n_kv,
        const int32_t nbs1, const int32_t nbs2, const int64_t nbs3,
        const int64_t nbd1, const int64_t nbd2, const int64_t nbd3) {
    const int j = blockIdx.x;
    const int h = blockIdx.y;
    const int s = blockIdx.z;
    const int c = cells[s*n_slot + j];
    if (c < 0 || c >= n_kv) {
        return;
    }
    const half * src = (const half *) (side + j*nbs1 + h*nbs2 + s*nbs3);
    half * out = (half *) ((char *) dst + c*nbd1 + h*nbd2 + s*nbd3);
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        out[i] = src[i];
    }
}

// dst: the converted f16 K or V with strides nbd* (bytes), shape [D, n_kv, n_head_kv, n_stream]
static void tq_fattn_side_scatter(const tq_fattn_side & side, bool is_k, half * dst, const int D, const int n_kv,
        const int n_head_kv, const int n_stream, const int64_t nbd1, const int64_t nbd2, const int64_t nbd3,
        cudaStream_t stream) {
    const dim3 blocks(side.n_slot, n_head_kv, n_stream);
    tq_fattn_side_scatter_kernel<<<blocks, 128, 0, stream>>>(
        is_k ? side.k : side.v, side.cells, dst, D, side.n_slot, n_kv,
        is_k ? side.nbk1 : side.nbv1, is_k ? side.nbk2 : side.nbv2, is_k ? side.nbk3 : side.nbv3,
        nbd1, nbd2, nbd3);
    CUDA_CHECK(cudaGetLastError());
}

// the scatter into both converted buffers in one launch (prefill, turbo-fuse.cu): blockIdx.z =
// 2*stream + (0: K, 1: V); a null destination is skipped (an F16 cache holds the side rows already)
struct tq_side_scatter_dst {
    half * dst = nullptr;
    const char * side = nullptr;
    int32_t D = 0;
    int32_t nbs1 = 0, nbs2 = 0; int64_t nbs3 = 0;   // side strides (bytes)
    int64_t nbd1 = 0, nbd2 = 0, nbd3 = 0;           // converted buffer strides (bytes)
};

static __global__ void tq_fattn_side_scatter_kv_kernel(const tq_side_scatter_dst k, const tq_side_scatter_dst v,
        const int32_t * cells, const int n_slot, const int n_kv) {
    const int j = blockIdx.x;
    const int h = blockIdx.y;
    const int s = blockIdx.z / 2;
    const tq_side_scatter_dst & t = blockIdx.z % 2 ? v : k;
    if (!t.dst) {
        return;
    }
    const int c = cells[s*n_slot + j];
    if (c < 0 || c >= n_kv) {
        return;
    }
    const half * src = (const half *) (t.side + j*t.nbs1 + h*t.nbs2 + s*t.nbs3);
    half * out = (half *) ((char *) t.dst + c*t.nbd1 + h*t.nbd2 + s*t.nbd3);
    for (int i = threadIdx.x; i < t.D; i += blockDim.x) {
        out[i] = src[i];
    }
}

static void tq_fattn_side_scatter_kv(const tq_fattn_side & side, const tq_side_scatter_dst & k, const tq_side_scatter_dst & v,
        const int n_kv, const int n_head_kv, const int n_stream, cudaStream_t stream) {
    if (!k.dst && !v.dst) {
        return;
    }
    const dim3 blocks(side.n_slot, n_head_kv, 2*n_stream);
    tq_fattn_side_scatter_kv_kernel<<<blocks, 128, 0, stream>>>(k, v, side.cells, side.n_slot, n_kv);
    CUDA_CHECK(cudaGetLastError());
}

// ---- a mask per Q head (mask ne[2] == Q's heads: the positional key offset's logit correction,
// patch 0013). Upstream's kernels take one mask row for all heads of a column. The turbo decode
// kernels read the lane's head's row (ne32/nb32). Other batches (prefill) run upstream's kernels once
// per K/V head with that head's Q heads folded into the columns: Q's rows (head, token) copied
// together, the mask's rows of those heads are consecutive already, the output is copied back into
// place; one K/V conversion and launch per K/V head. With attention sinks (a value per Q head), or a
// mask whose rows are padded past the tokens, one launch per Q head instead. ALiBi (a slope from the
// head index) is not taken with such a mask.
static bool tq_fattn_mask_per_head(const ggml_tensor * dst) {
    const ggml_tensor * mask = dst->src[3];
    return mask && mask->ne[2] > 1;
}

static bool tq_fattn_mask_per_head_ok(const ggml_tensor * dst) {
    const ggml_tensor * Q    = dst->src[0];
    const ggml_tensor * mask = dst->src[3];
    float max_bias;
    memcpy(&max_bias, (const float *) dst->op_params + 1, sizeof(float));
    return mask->ne[2] == Q->ne[2] && max_bias == 0.0f && dst->type == GGML_TYPE_F32 && ggml_is_contiguous(dst) &&
           Q->type == GGML_TYPE_F32;
}

// run(ctx, node) computes a FLASH_ATTN_EXT node whose mask has one row for all heads
template <typename F>
static void tq_fattn_per_head(ggml_backend_cuda_context & ctx, ggml_tensor * dst, F run) {
    const ggml_tensor * Q    = dst->src[0];
    const ggml_tensor * K    = dst->src[1];
    const ggml_tensor * V    = dst->src[2];
    const ggml_tensor * mask = dst->src[3];
    GGML_ASSERT(tq_fattn_mask_per_head_ok(dst));
    const int64_t DV     = dst->ne[0];
    const int64_t n_head = Q->ne[2];
    const int64_t n_tok  = Q->ne[1];
    const int64_t ns     = Q->ne[3];
    const int64_t gqa    = n_head / K->ne[2];
    // heads per launch: a K/V head's Q heads, when their mask rows follow each other
    const int64_t G = !dst->src[4] && mask->ne[1] == n_tok && mask->nb[2] == mask->ne[1]*mask->nb[1] ? gqa : 1;
    const int64_t D = Q->ne[0];
    // scratch: Q's rows of the launch's heads (G > 1), the launch's output, then room for its K/V
    // converted to f16 (launch_fattn puts them behind the output)
    const size_t q_bytes   = G > 1 ? size_t(D*n_tok*G*ns)*sizeof(float) : 0;
    const size_t out_bytes = size_t(DV*n_tok*G*ns)*sizeof(float);
    const size_t kv_bytes  = size_t(ggml_nelements(K)/K->ne[2] + ggml_nelements(V)/V->ne[2])*sizeof(half);
    ggml_cuda_pool_alloc<char> buf(ctx.pool(), q_bytes + out_bytes + kv_bytes + 4*128);
    char * qbuf = buf.get();
    char * obuf = buf.get() + GGML_PAD(q_bytes, 128);
    for (int64_t h0 = 0; h0 < n_head; h0 += G) {
        const int64_t hk = h0 / gqa;
        ggml_tensor src[8];
        ggml_tensor o = *dst;
        for (int i = 0; i < 8; ++i) {
            if (dst->src[i]) {
                src[i] = *dst->src[i];
                src[i].view_src = nullptr;
                o.src[i] = &src[i];
            }
        }
        auto slice = [](ggml_tensor & t, const int dim, const int64_t i, const int64_t n) {
            t.data = (char *) t.data + i*t.nb[dim];
            t.ne[dim] = n;
        };
        slice(src[1], 2, hk, 1);       // K
        slice(src[2], 2, hk, 1);       // V
        if (dst->src[5]) {
            slice(src[5], 2, hk, 1);   // sink store rows (the cells, src[7], are per stream)
            slice(src[6], 2, hk, 1);
        }
        if (G == 1) {
            slice(src[0], 2, h0, 1);   // Q
            slice(src[3], 2, h0, 1);   // mask
            if (dst->src[4]) {
                slice(src[4], 0, h0, 1);   // attention sinks
            }
        } else {
            // Q rows (head, token) of heads h0..h0+G-1, contiguous: [D, n_tok*G, 1, ns]
            ggml_tensor qs = *Q;
            qs.view_src = nullptr;
            slice(qs, 2, h0, G);
            ggml_tensor qc = qs;
            qc.data  = qbuf;
            qc.nb[1] = D*sizeof(float);
            qc.nb[2] = qc.nb[1]*n_tok;
            qc.nb[3] = qc.nb[2]*G;
            ggml_cuda_cpy(ctx, &qs, &qc);
            src[0] = qc;
            src[0].ne[1] = n_tok*G;
            src[0].ne[2] = 1;
            src[0].nb[2] = qc.nb[3];
            // the mask's rows of those heads: consecutive (checked above)
            slice(src[3], 2, h0, 1);
            src[3].ne[1] = n_tok*G;
            src[3].nb[2] = src[3].nb[3];
        }
        o.data  = obuf;
        o.ne[1] = 1;
        o.ne[2] = n_tok*G;
        o.nb[2] = o.nb[1];
        o.nb[3] = o.nb[2]*o.ne[2];
        run(ctx, &o);
        // back into place: output rows (head, token) to dst's (token, head)
        ggml_tensor os = o;
        os.ne[1] = n_tok;
        os.ne[2] = G;
        os.nb[1] = DV*sizeof(float);
        os.nb[2] = os.nb[1]*n_tok;
        os.nb[3] = os.nb[2]*G;
        ggml_tensor od = *dst;
        od.view_src = nullptr;
        od.data  = (char *) dst->data + h0*dst->nb[1];
        od.ne[1] = n_tok;
        od.ne[2] = G;
        od.nb[1] = dst->nb[2];
        od.nb[2] = dst->nb[1];
        od.nb[3] = dst->nb[3];
        ggml_cuda_cpy(ctx, &os, &od);
    }
}
