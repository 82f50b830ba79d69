// tq-gguf: the cache write's quantizer run by one warp on NB consecutive 64-value blocks (the fused
// rotate-and-store of turbo-fuse.cu). CUDA-only, but free of ggml, so a stand-alone program can
// compare it with turbo-quant.h's block quantizer on the device (docs/results/cuda-dec4/).
//
// Bit-exact with tq_quantize_block (and so with the reference): each float64 sum runs in index
// order, a value's level and the scale come from turbo-quant.h's helpers. The sums' terms go
// through shared memory, and each sum is one lane's chain: lane b sums block b's squares, then
// lanes b and NB + b sum block b's c^2 and x*c, reading two terms per 16-byte load (all lanes
// that sum the same row read the same address: a broadcast); the sums reach the other lanes by
// shuffles. (The previous version, on every lane for every block with the terms delivered by
// two shuffles each, issued NB*128 shuffles per sum: 2.8 us per call for a head-128 row against
// 1.9 us now on an H100, docs/results/cuda-dec4/.)
#pragma once

#include "turbo-quant.h"

#define TQ_WQ_ROW 66   // doubles per row of the scratch (64 terms + 16 bytes: rows start 4 banks apart)

// the scratch a warp needs (doubles, 16-byte aligned)
#define TQ_WQ_SCRATCH(NB) (2*(NB)*TQ_WQ_ROW)

// x: block b's value lane in x[2b], value lane + 32 in x[2b+1] (every lane calls it);
// sm: this warp's TQ_WQ_SCRATCH(NB) doubles
template <int levels, int NB>
static __device__ __forceinline__ void tq_quantize_blocks_warp(const float (&x)[2*NB], const float * cb,
                                                               uint16_t * __restrict__ y16, double * __restrict__ sm,
                                                               const int lane) {
    static_assert(NB == 1 || NB == 2 || NB == 4, "blocks per row");
    constexpr int U = levels == 8 ? 13 : 9;   // 16-bit units per block
    // the serial sum of scratch row r: terms 0..63 in order, from 0.0 (as the reference)
    auto chain = [&](const int r) {
        const double2 * p = (const double2 *) (sm + r*TQ_WQ_ROW);
        double s = 0.0;
#pragma unroll 8
        for (int j = 0; j < 32; ++j) {
            const double2 v = p[j];
            s = __dadd_rn(s, v.x);
            s = __dadd_rn(s, v.y);
        }
        return s;
    };
#pragma unroll
    for (int b = 0; b < NB; ++b) {
        sm[b*TQ_WQ_ROW + lane]      = __dmul_rn((double) x[2*b],     (double) x[2*b]);
        sm[b*TQ_WQ_ROW + 32 + lane] = __dmul_rn((double) x[2*b + 1], (double) x[2*b + 1]);
    }
    __syncwarp();
    const double s1 = chain(lane % NB);
    double ss[NB];
#pragma unroll
    for (int b = 0; b < NB; ++b) {
        ss[b] = __shfl_sync(0xFFFFFFFF, s1, b, 32);
    }

    double cbd[levels];
    double mid[levels - 1];
    tq_codebook_mids<levels>(cb, cbd, mid);
    uint32_t q[2*NB];
    double   c2[2*NB];
    double   xc2[2*NB];
    double   n[NB];
#pragma unroll
    for (int b = 0; b < NB; ++b) {
        n[b] = __dsqrt_rn(ss[b]);
        const double inv = __ddiv_rn(8.0, n[b]);
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            double c;
            const uint32_t qq = tq_level<levels>(__dmul_rn((double) x[2*b + h], inv), cbd, mid, c);
            q[2*b + h]   = ss[b] > 0.0 ? qq : levels/2;   // zero or NaN block: middle index, d = 0
            c2[2*b + h]  = __dmul_rn(c, c);
            xc2[2*b + h] = __dmul_rn((double) x[2*b + h], c);
        }
    }
    __syncwarp();   // every lane's reads of the squares are done
#pragma unroll
    for (int b = 0; b < NB; ++b) {
        sm[b*TQ_WQ_ROW + lane]           = c2[2*b];
        sm[b*TQ_WQ_ROW + 32 + lane]      = c2[2*b + 1];
        sm[(NB + b)*TQ_WQ_ROW + lane]      = xc2[2*b];
        sm[(NB + b)*TQ_WQ_ROW + 32 + lane] = xc2[2*b + 1];
    }
    __syncwarp();
    const double s2 = chain(lane % (2*NB));   // lane b: block b's sum of c^2, lane NB + b: its sum of x*c
    double rr[NB];
    double xc[NB];
#pragma unroll
    for (int b = 0; b < NB; ++b) {
        rr[b] = __shfl_sync(0xFFFFFFFF, s2, b, 32);
        xc[b] = __shfl_sync(0xFFFFFFFF, s2, NB + b, 32);
    }
#pragma unroll
    for (int b = 0; b < NB; ++b) {
        const uint16_t d = ss[b] > 0.0 ? tq_scale_bits(ss[b], n[b], rr[b], xc[b]) : 0;   // fp16 +0 for a zero block
        const uint32_t q0 = q[2*b];
        const uint32_t q1 = q[2*b + 1];
        // qs byte m (m < 16): values m, m+16, m+32, m+48 at bits 0, 2, 4, 6; lane m holds m and m+32
        const uint32_t p  = (q0 & 3) | ((q1 & 3) << 4);
        const uint32_t qs = p | (__shfl_down_sync(0xFFFFFFFF, p, 16, 32) << 2);
        // qh byte m (m < 8): bit t from value m + 8t; lane l holds values l (t = l/8) and l + 32 (t = l/8 + 4)
        uint32_t qh = (((q0 >> 2) & 1) << (lane/8)) | (((q1 >> 2) & 1) << (lane/8 + 4));
        qh |= __shfl_down_sync(0xFFFFFFFF, qh, 16, 32);
        qh |= __shfl_down_sync(0xFFFFFFFF, qh, 8, 32);
        // 16-bit unit u of the block: 0 = d, 1..8 = qs bytes 2(u-1), 2(u-1)+1, 9..12 = qh bytes 2(u-9), 2(u-9)+1
        const int sq2 = 2*max(0, min(lane - 1, 7));
        const int sh  = 2*max(0, min(lane - 9, 3));
        const uint32_t qa = __shfl_sync(0xFFFFFFFF, qs, sq2,     32);
        const uint32_t qb = __shfl_sync(0xFFFFFFFF, qs, sq2 + 1, 32);
        const uint32_t ha = __shfl_sync(0xFFFFFFFF, qh, sh,      32);
        const uint32_t hb = __shfl_sync(0xFFFFFFFF, qh, sh + 1,  32);
        const uint16_t v = lane == 0 ? d : lane <= 8 ? (uint16_t) ((qa & 0xFF) | ((qb & 0xFF) << 8))
                                                     : (uint16_t) ((ha & 0xFF) | ((hb & 0xFF) << 8));
        if (lane < U) {
            y16[b*U + lane] = v;
        }
    }
    __syncwarp();   // the scratch may be written again
}
