// Two pairs of kernels of cuda/turbo.cuh, each pair on the same inputs (a measurement aid for
// docs/results/cuda-pp/README.md, not a test):
// - turbo -> f16 before prefill attention: the thread-per-8-values kernel against the warp kernel.
//   Checks that both write the same bits (sizes with and without a partial 32-block chunk), then
//   times them at the size of one layer's K (or V) view at depth 32768 + 2048 (34816 cells x 8 KV
//   heads x 128 = 557056 blocks of 64), one tensor per launch and K + V in one launch;
// - the fused cache write (rotate + quantize): warp per row (turbo-fuse.cu's kernel, copied here)
//   against a thread-per-block kernel that was tried and dropped (slower). Checks the
//   cache bytes are identical (head sizes 64/128/256, turbo3/turbo2, a zero row, rows not a
//   multiple of a CTA's), then times both at prefill (512 tokens) and decode (1 token) shapes.
//   nvcc -std=c++17 -arch=sm_90 -O3 -I$SRC/ggml/include -I$SRC/ggml/src -I$SRC/ggml/src/ggml-cuda \
//        conv_bench.cu -o conv_bench -L$BIN -lggml-cuda -lggml-base
#include "turbo.cuh"

#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { printf("CUDA error %s at %d\n", cudaGetErrorString(e_), __LINE__); exit(1); } } while (0)

template <int levels>
static void old_launch(const void * x, half * y, int64_t nblk, cudaStream_t s) {
    const int64_t nthr = nblk*8;
    tq_turbo_to_f16_cont<levels><<<(unsigned) ((nthr + 255)/256), 256, 0, s>>>((const uint16_t *) x, y, nblk);
}

static void fill(std::vector<uint8_t> & b, int levels, int64_t nblk, uint32_t seed) {
    const int bs = levels == 8 ? 26 : 18;
    std::mt19937 rng(seed);
    b.resize(nblk*bs);
    for (auto & c : b) c = (uint8_t) rng();
    for (int64_t i = 0; i < nblk; ++i) {   // finite scales in [2^-6, 2)
        const uint16_t d = (uint16_t) (0x2400 + rng() % 0x1800);
        memcpy(&b[i*bs], &d, 2);
    }
}

// --- the store experiment (dropped): copies of turbo-fuse.cu's tq_rot_set_rows (warp per row) and of
// the thread-per-block kernel tried against it; both call the quantizers of turbo.cuh/turbo-quant.h
template <int N, int levels>
__launch_bounds__(128, 1)
static __global__ void tq_rot_set_rows(const float * __restrict__ x, const float * __restrict__ signs, const float scale,
        const void * __restrict__ idx, const int idx64, char * __restrict__ dst, const int64_t nb1,
        const int n_head, const int64_t n_rows) {
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
    char * out = dst + row*nb1 + int64_t(h)*(N/64)*BLK;
    tq_quantize_blocks_warp<levels, N/64>(reg, levels == 8 ? kvalues_turbo3 : kvalues_turbo2, (uint16_t *) out, lane);
}

// the CTA's warps rotate rows into shared memory, then one thread per 64-value block runs tq_quantize_block
#define TQ_STORE_BLOCKS 128
template <int N, int levels>
__launch_bounds__(TQ_STORE_BLOCKS)
static __global__ void tq_rot_set_rows_blk(const float * __restrict__ x, const float * __restrict__ signs, const float scale,
        const void * __restrict__ idx, const int idx64, char * __restrict__ dst, const int64_t nb1,
        const int n_head, const int64_t n_rows) {
    constexpr int NB   = N/64;
    constexpr int ROWS = TQ_STORE_BLOCKS/NB;
    constexpr int BLK  = levels == 8 ? 26 : 18;
    __shared__ float xs[TQ_STORE_BLOCKS][QK_TURBO + 1];
    const int lane = threadIdx.x % 32;
    const int64_t r0 = (int64_t) blockIdx.x*ROWS;
    ggml_cuda_pdl_sync();
    for (int rr = threadIdx.x/32; rr < ROWS; rr += TQ_STORE_BLOCKS/32) {
        const int64_t r = r0 + rr;
        if (r >= n_rows) {
            break;
        }
        float reg[N/32];
#pragma unroll
        for (int i = 0; i < N/32; ++i) {
            reg[i] = x[r*N + i*32 + lane];
        }
        tq_fwht_regs<N>(reg, signs, scale, lane);
#pragma unroll
        for (int i = 0; i < N/32; ++i) {
            xs[rr*NB + i/2][32*(i % 2) + lane] = reg[i];
        }
    }
    __syncthreads();
    const int64_t r = r0 + threadIdx.x/NB;
    if (r >= n_rows) {
        return;
    }
    const int b = threadIdx.x % NB;
    const int64_t t = r / n_head;
    const int     h = (int) (r % n_head);
    const int64_t row = idx64 ? ((const int64_t *) idx)[t] : (int64_t) ((const int32_t *) idx)[t];
    tq_quantize_block<levels>(xs[threadIdx.x], levels == 8 ? kvalues_turbo3 : kvalues_turbo2,
                              (uint8_t *) (dst + row*nb1 + int64_t(h*NB + b)*BLK));
}

template <int N, int levels>
static int store_case(int64_t n_rows, int n_head, bool timing) {
    constexpr int BLK = levels == 8 ? 26 : 18;
    const int64_t n_tok = (n_rows + n_head - 1)/n_head;
    n_rows = n_tok*n_head;
    std::mt19937 rng((uint32_t) (N*levels + n_rows));
    std::uniform_real_distribution<float> U(-1.0f, 1.0f);
    std::vector<float> hx(n_rows*N), hs(N);
    for (auto & v : hx) v = U(rng);
    for (int j = 0; j < N; ++j) hx[j] = 0.0f;   // a zero row
    for (auto & v : hs) v = rng() % 2 ? 1.0f : -1.0f;
    std::vector<int32_t> hi(n_tok);
    for (int64_t t = 0; t < n_tok; ++t) hi[t] = (int32_t) (n_tok - 1 - t);
    const int64_t nb1 = (int64_t) n_head*(N/64)*BLK;
    float * dx; float * ds; int32_t * di; char * d0; char * d1;
    CK(cudaMalloc(&dx, hx.size()*4)); CK(cudaMalloc(&ds, N*4)); CK(cudaMalloc(&di, n_tok*4));
    CK(cudaMalloc(&d0, n_tok*nb1)); CK(cudaMalloc(&d1, n_tok*nb1));
    CK(cudaMemcpy(dx, hx.data(), hx.size()*4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(ds, hs.data(), N*4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(di, hi.data(), n_tok*4, cudaMemcpyHostToDevice));
    CK(cudaMemset(d0, 0x55, n_tok*nb1)); CK(cudaMemset(d1, 0xAA, n_tok*nb1));
    const float scale = 1.0f/sqrtf((float) N);
    auto warp = [&] { tq_rot_set_rows<N, levels><<<(unsigned) ((n_rows + 3)/4), dim3(32, 4, 1)>>>(dx, ds, scale, di, 0, d0, nb1, n_head, n_rows); };
    auto blk  = [&] { constexpr int R = TQ_STORE_BLOCKS/(N/64);
                      tq_rot_set_rows_blk<N, levels><<<(unsigned) ((n_rows + R - 1)/R), TQ_STORE_BLOCKS>>>(dx, ds, scale, di, 0, d1, nb1, n_head, n_rows); };
    warp(); blk();
    CK(cudaDeviceSynchronize());
    std::vector<char> a(n_tok*nb1), b(n_tok*nb1);
    CK(cudaMemcpy(a.data(), d0, a.size(), cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(b.data(), d1, b.size(), cudaMemcpyDeviceToHost));
    const bool same = a == b;
    printf("store check N=%d levels=%d rows=%lld: %s\n", N, levels, (long long) n_rows, same ? "same bytes" : "DIFFERENT");
    if (timing) {
        cudaEvent_t e0, e1;
        CK(cudaEventCreate(&e0)); CK(cudaEventCreate(&e1));
        for (int k = 0; k < 2; ++k) {
            for (int r = 0; r < 3; ++r) { k ? blk() : warp(); }
            CK(cudaEventRecord(e0));
            for (int r = 0; r < 50; ++r) { k ? blk() : warp(); }
            CK(cudaEventRecord(e1)); CK(cudaEventSynchronize(e1));
            float ms; CK(cudaEventElapsedTime(&ms, e0, e1));
            printf("store time N=%d levels=%d rows=%lld %-16s %7.2f us (back to back, 50 launches)\n", N, levels, (long long) n_rows,
                   k ? "thread per block" : "warp per row", 1e3*ms/50);
        }
    }
    cudaFree(dx); cudaFree(ds); cudaFree(di); cudaFree(d0); cudaFree(d1);
    return !same;
}

static int store_bench() {
    int bad = 0;
    bad += store_case< 64, 8>(1000, 4, false);  bad += store_case< 64, 4>(1000, 4, false);
    bad += store_case<128, 8>(1000, 8, false);  bad += store_case<128, 4>(1000, 8, false);
    bad += store_case<256, 8>(1000, 4, false);  bad += store_case<256, 4>(1000, 4, false);
    // llama-8b: K rows of 128 (8 heads), V in 64-value chunks (16 per token); 512 tokens and 1 token
    bad += store_case<128, 8>(512*8, 8, true);  bad += store_case< 64, 8>(512*16, 16, true);
    bad += store_case<128, 8>(8, 8, true);      bad += store_case< 64, 8>(16, 16, true);
    bad += store_case<128, 4>(512*8, 8, true);
    return bad;
}

int main() {
    cudaStream_t s;
    CK(cudaStreamCreate(&s));
    const int64_t NB = 557056;
    char * x[2]; half * y[2]; half * z;
    for (int i = 0; i < 2; ++i) {
        CK(cudaMalloc(&x[i], NB*26 + 64));
        CK(cudaMalloc(&y[i], NB*64*sizeof(half)));
    }
    CK(cudaMalloc(&z, NB*64*sizeof(half)));
    int bad = 0;
    for (int levels : {8, 4}) {
        for (int64_t nblk : {(int64_t) 1, (int64_t) 31, (int64_t) 33, (int64_t) 452, (int64_t) 1000, (int64_t) 29 * 4 * 2 + 3, NB}) {
            std::vector<uint8_t> h;
            fill(h, levels, nblk, (uint32_t) (nblk*levels));
            CK(cudaMemcpy(x[0], h.data(), h.size(), cudaMemcpyHostToDevice));
            CK(cudaMemset(y[0], 0xFF, nblk*128)); CK(cudaMemset(z, 0xEE, nblk*128));
            if (levels == 8) old_launch<8>(x[0], y[0], nblk, s); else old_launch<4>(x[0], y[0], nblk, s);
            tq_f16_jobs jobs = {};
            jobs.j[0] = {x[0], z, nblk, levels};
            tq_turbo_to_f16_jobs_cuda(jobs, 1, s);
            CK(cudaStreamSynchronize(s));
            std::vector<uint8_t> a(nblk*128), b(nblk*128);
            CK(cudaMemcpy(a.data(), y[0], a.size(), cudaMemcpyDeviceToHost));
            CK(cudaMemcpy(b.data(), z, b.size(), cudaMemcpyDeviceToHost));
            const bool same = a == b;
            bad += !same;
            printf("check levels=%d nblk=%lld: %s\n", levels, (long long) nblk, same ? "same bits" : "DIFFERENT");
        }
    }
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0)); CK(cudaEventCreate(&e1));
    const int R = 50;
    for (int levels : {8, 4}) {
        const int bs = levels == 8 ? 26 : 18;
        const double bytes1 = (double) NB*(bs + 128);
        std::vector<uint8_t> h;
        fill(h, levels, NB, 7);
        for (int i = 0; i < 2; ++i) CK(cudaMemcpy(x[i], h.data(), h.size(), cudaMemcpyHostToDevice));
        auto timeit = [&](const char * name, double bytes, auto fn) {
            for (int r = 0; r < 3; ++r) fn();
            CK(cudaEventRecord(e0, s));
            for (int r = 0; r < R; ++r) fn();
            CK(cudaEventRecord(e1, s));
            CK(cudaEventSynchronize(e1));
            float ms; CK(cudaEventElapsedTime(&ms, e0, e1));
            const double us = 1e3*ms/R;
            printf("time levels=%d %-34s %8.1f us  %6.0f GB/s\n", levels, name, us, bytes/us*1e-3);
        };
        timeit("thread kernel, K", bytes1, [&] { if (levels == 8) old_launch<8>(x[0], y[0], NB, s); else old_launch<4>(x[0], y[0], NB, s); });
        timeit("thread kernel, K then V", 2*bytes1, [&] {
            for (int i = 0; i < 2; ++i) { if (levels == 8) old_launch<8>(x[i], y[i], NB, s); else old_launch<4>(x[i], y[i], NB, s); } });
        timeit("warp kernel, K", bytes1, [&] { tq_f16_jobs j = {}; j.j[0] = {x[0], y[0], NB, levels}; tq_turbo_to_f16_jobs_cuda(j, 1, s); });
        timeit("warp kernel, K + V one launch", 2*bytes1, [&] {
            tq_f16_jobs j = {}; j.j[0] = {x[0], y[0], NB, levels}; j.j[1] = {x[1], y[1], NB, levels}; tq_turbo_to_f16_jobs_cuda(j, 2, s); });
        timeit("cudaMemcpyAsync of the f16 size", 2.0*NB*128, [&] { CK(cudaMemcpyAsync(z, y[0], NB*128, cudaMemcpyDeviceToDevice, s)); });
    }
    bad += store_bench();
    printf("%s\n", bad ? "FAIL" : "all checks same bits");
    return bad != 0;
}
