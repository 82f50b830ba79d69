// The fused cache write's warp quantizer (cuda/turbo-quant-warp.cuh) against turbo-quant.h's block
// quantizer (checked byte for byte against the Python reference by tests/test_cuda_quantizer.py),
// both on the device: every block's bytes must match; and the warp quantizer's time per call (one row per
// warp, 8 warps on 8 SMs, 200 calls in a kernel, warm). Runs 1-3 ran a version that also checked and
// timed the previous (shuffle) quantizer, tq_quantize_blocks_warp_shfl, since removed (run3/measured-tree.diff).
//   nvcc -std=c++17 -arch=sm_90 -O3 -I cuda docs/results/cuda-dec4/quant_check.cu -o /tmp/qc && /tmp/qc
#include <cuda_fp16.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cmath>
#include <vector>
#include <random>
#include "turbo-quant-warp.cuh"

__constant__ float cb3[8] = {-2.111311435699463f, -1.3293428421020508f, -0.7506580948829651f, -0.24375343322753906f,
                              0.24375343322753906f, 0.7506580948829651f, 1.3293428421020508f, 2.111311435699463f};
__constant__ float cb2[4] = {-1.4999748468399048f, -0.45211896300315857f, 0.45211896300315857f, 1.4999748468399048f};

template <int levels>
__global__ void k_ref(const float * x, uint8_t * y, int nblk) {
    const int i = blockIdx.x*blockDim.x + threadIdx.x;
    if (i < nblk) tq_quantize_block<levels>(x + i*64, levels == 8 ? cb3 : cb2, y + i*(levels == 8 ? 26 : 18));
}

// a warp per row of NB blocks
template <int levels, int NB>
__global__ void k_warp(const float * x, uint8_t * y, int nrows, int reps) {
    extern __shared__ __align__(16) double sm[];
    const int r = blockIdx.x*blockDim.y + threadIdx.y;
    const int lane = threadIdx.x;
    if (r >= nrows) return;
    float reg[2*NB];
    for (int i = 0; i < 2*NB; ++i) reg[i] = x[(int64_t) r*NB*64 + i*32 + lane];
    uint16_t * out = (uint16_t *) (y + (int64_t) r*NB*(levels == 8 ? 26 : 18));
    for (int k = 0; k < reps; ++k) {
        tq_quantize_blocks_warp<levels, NB>(reg, levels == 8 ? cb3 : cb2, out, sm + threadIdx.y*TQ_WQ_SCRATCH(NB), lane);
    }
}

static std::vector<float> make_blocks(int nblk) {
    std::mt19937 g(1);
    std::normal_distribution<float> nd;
    std::vector<float> x((size_t) nblk*64);
    for (int b = 0; b < nblk; ++b) {
        float * v = &x[(size_t) b*64];
        const int kind = b % 16;
        const float sc = kind == 1 ? 1e-3f : kind == 2 ? 3e4f : kind == 3 ? 65504.f : 1.0f;
        for (int j = 0; j < 64; ++j) v[j] = nd(g)*sc;
        if (kind == 4) { for (int j = 0; j < 64; ++j) v[j] = 0; v[5] = 7.0f; }
        if (kind == 5) { for (int j = 0; j < 64; ++j) v[j] = 1e30f*nd(g); }
        if (kind == 6) { for (int j = 0; j < 64; ++j) v[j] = 1e-42f*nd(g); }
        if (kind == 7) { for (int j = 0; j < 64; ++j) v[j] = -3.f + 6.f*j/63.f; }
        if (kind == 8) { for (int j = 0; j < 64; ++j) v[j] = (j % 2 == 0) ? 1.0f : 0.0f; }
        if (kind == 9) { for (int j = 0; j < 64; ++j) v[j] = 0.0f; }
        if (kind == 10) { v[3] = NAN; }
        if (kind == 11) { v[17] = 40.0f*v[17]; }
        if (kind == 12) { for (int j = 0; j < 64; ++j) v[j] = -0.0f; }
        if (kind == 13) { v[0] = INFINITY; }
    }
    return x;
}

template <int levels, int NB>
static int check(const float * dx, int nblk) {
    const int bs = levels == 8 ? 26 : 18;
    uint8_t *dr, *dw;
    cudaMalloc(&dr, (size_t) nblk*bs); cudaMalloc(&dw, (size_t) nblk*bs);
    cudaMemset(dw, 0xAB, (size_t) nblk*bs);
    k_ref<levels><<<(nblk + 127)/128, 128>>>(dx, dr, nblk);
    const int nrows = nblk/NB;
    const size_t smem = 4*TQ_WQ_SCRATCH(NB)*sizeof(double);
    k_warp<levels, NB><<<(nrows + 3)/4, dim3(32, 4), smem>>>(dx, dw, nrows, 1);
    std::vector<uint8_t> r((size_t) nblk*bs), w(r.size());
    cudaMemcpy(r.data(), dr, r.size(), cudaMemcpyDeviceToHost);
    cudaMemcpy(w.data(), dw, w.size(), cudaMemcpyDeviceToHost);
    int bad = 0;
    for (int b = 0; b < nblk; ++b) {
        bad += memcmp(&r[(size_t) b*bs], &w[(size_t) b*bs], bs) != 0;
    }
    cudaEvent_t e0, e1; cudaEventCreate(&e0); cudaEventCreate(&e1);
    float ms = 0.0f;
    for (int it = 0; it < 2; ++it) {
        cudaEventRecord(e0);
        k_warp<levels, NB><<<8, dim3(32, 1), smem>>>(dx, dw, 8, 200);
        cudaEventRecord(e1); cudaEventSynchronize(e1);
        cudaEventElapsedTime(&ms, e0, e1);
    }
    printf("levels %d NB %d: %d blocks, %d differ; per call %.2f us\n", levels, NB, nblk, bad, ms*1000.0/200);
    cudaFree(dr); cudaFree(dw);
    return bad;
}

int main() {
    const int nblk = 1 << 16;
    std::vector<float> x = make_blocks(nblk);
    float * dx; cudaMalloc(&dx, x.size()*sizeof(float));
    cudaMemcpy(dx, x.data(), x.size()*sizeof(float), cudaMemcpyHostToDevice);
    int bad = 0;
    bad += check<8, 1>(dx, nblk); bad += check<8, 2>(dx, nblk); bad += check<8, 4>(dx, nblk);
    bad += check<4, 1>(dx, nblk); bad += check<4, 2>(dx, nblk); bad += check<4, 4>(dx, nblk);
    cudaError_t err = cudaDeviceSynchronize();
    printf("%s; %s\n", cudaGetErrorString(err), bad == 0 ? "ALL IDENTICAL" : "MISMATCH");
    return bad != 0 || err != cudaSuccess;
}
