// tq-gguf: turbo2/turbo3 indices -> f16 tensor-core fragments, for the decode kernel
// (fattn-mma-turbo.cuh) and for a host build that tests compare with tq_gguf/turbo.py
// (tests/test_cuda_frag.py).
//
// Block layout (turbo.cuh): fp16 d | qs[16]: value j at qs[j%16] bits 2*(j/16) | qh[8]: bit j/8
// of qh[j%8] (turbo3). The fragments take two values per 32-bit register (half2):
//   K (B operand of S = Q·Kᵀ), one row, lane u = 0..3, slab s = 0..3 (values 16s..16s+15):
//     r0 = (value 16s+2u, 16s+2u+1), r1 = (value 16s+2u+8, 16s+2u+9)   [tq_k_words]
//   V (A operand of Oᵀ = Vᵀ·Pᵀ), rows p0, p1, lane g = 0..7, slab s:
//     r0 = (row p0, row p1 of value 16s+2g), r1 = (the same of value 16s+2g+1)   [tq_v_words]
// Both build X (four 2-bit planes, one byte per value pair member) and H (the high bits, bit
// 2s of each byte); tq_idx cuts slab s out as four 3-bit indices, tq_lookup4 turns them into
// f16 with byte permutes from the codebook held in registers (tq_cb16).
#pragma once

#include <stdint.h>

#if defined(__CUDACC__)
#define TQ_FFN static __host__ __device__ __forceinline__
#else
#include <string.h>
#define TQ_FFN static inline
#endif

// PRMT: byte n of the result is byte (s >> 4n) & 7 of {y, x} (selectors here never set bit 3)
TQ_FFN uint32_t tq_prmt(const uint32_t x, const uint32_t y, const uint32_t s) {
#if defined(__CUDA_ARCH__)
    return __byte_perm(x, y, s);
#else
    const uint64_t v = ((uint64_t) y << 32) | x;
    uint32_t r = 0;
    for (int n = 0; n < 4; ++n) {
        r |= (uint32_t) ((v >> (8*((s >> (4*n)) & 7))) & 0xFF) << (8*n);
    }
    return r;
#endif
}

// 16-bit load at a 2-byte aligned address (blocks are 26/18 bytes)
TQ_FFN uint32_t tq_lds_u16(const uint8_t * p) {
#if defined(__CUDA_ARCH__)
    return *(const uint16_t *) p;
#else
    uint16_t v;
    memcpy(&v, p, sizeof(v));
    return v;
#endif
}

// the codebook as f16 bit patterns split into low and high bytes (entries 0-3, 4-7)
struct tq_cb16 {
    uint32_t l0, l1, h0, h1;
};

// h: the f16 bit patterns of n codebook entries (8 or 4; 4 are repeated into 8)
TQ_FFN tq_cb16 tq_cb16_pack(const uint16_t * h, const int n) {
    uint32_t lo[2] = {0, 0};
    uint32_t hi[2] = {0, 0};
#if defined(__CUDACC__)
#pragma unroll
#endif
    for (int i = 0; i < 8; ++i) {
        lo[i/4] |= (uint32_t) (h[i % n] & 0xFF) << (8*(i % 4));
        hi[i/4] |= (uint32_t) (h[i % n] >> 8)   << (8*(i % 4));
    }
    return {lo[0], lo[1], hi[0], hi[1]};
}

// idx: bytes [a0, a1, b0, b1], each a codebook index < 8 (other bits zero).
// r0 = half2(cb[a0], cb[a1]), r1 = half2(cb[b0], cb[b1]).
TQ_FFN void tq_lookup4(const uint32_t idx, const tq_cb16 & t, uint32_t & r0, uint32_t & r1) {
    const uint32_t sel = idx | (idx >> 12);          // nibbles a0, b0, a1, b1
    const uint32_t lo  = tq_prmt(t.l0, t.l1, sel);
    const uint32_t hi  = tq_prmt(t.h0, t.h1, sel);
    r0 = tq_prmt(lo, hi, 0x6240);
    r1 = tq_prmt(lo, hi, 0x7351);
}

// indices of slab s (values 16s + ...) from X (2-bit planes, 4 bytes) and H (high bits)
template <bool hi, int s>
TQ_FFN uint32_t tq_idx(const uint32_t X, const uint32_t H) {
    uint32_t idx = (X >> (2*s)) & 0x03030303u;
    if constexpr (hi) {
        const uint32_t h = s == 0 ? H << 2 : H >> (2*s - 2);
        idx |= h & 0x04040404u;
    }
    return idx;
}

// K: the words of lane u for the 64-value block at blk
template <bool hi>
TQ_FFN void tq_k_words(const uint8_t * blk, const int u, uint32_t & X, uint32_t & H) {
    X = tq_lds_u16(blk + 2 + 2*u) | (tq_lds_u16(blk + 2 + 2*u + 8) << 16);
    H = 0;
    if constexpr (hi) {
        const uint32_t h16 = tq_lds_u16(blk + 18 + 2*u);
        H = h16 | ((h16 << 15) & 0xFFFF0000u);
    }
}

// V: the words of lane g for the 64-value blocks b0, b1 of rows p0, p1
template <bool hi>
TQ_FFN void tq_v_words(const uint8_t * b0, const uint8_t * b1, const int g, uint32_t & X, uint32_t & H) {
    const int qo = 2 + 2*g;           // qs bytes 2g, 2g+1
    const int ho = 18 + (2*g) % 8;    // qh bytes of values 2g, 2g+1 ...
    const int hs = g >= 4;            // ... at bit 2s + hs
    X = tq_prmt(tq_lds_u16(b0 + qo), tq_lds_u16(b1 + qo), 0x5140);
    H = 0;
    if constexpr (hi) {
        H = tq_prmt(tq_lds_u16(b0 + ho), tq_lds_u16(b1 + ho), 0x5140) >> hs;
    }
}

// ---- the same fragments from fewer operations (the decode kernel's long-context instance, KT):
// all four slabs of a word at once. Hc is H with the high bits only (bit 2s of each byte, the other
// bits clear); E's nibbles are [slab 0 | slab 2] of each byte and O's [slab 1 | slab 3] (index bits
// 0-1 from X, bit 2 from Hc, bit 3 clear), so that E, E >> 16, O and O >> 16 are PRMT selectors as
// they are (PRMT reads the selector's low 16 bits): lo/hi bytes of the entries of byte k's two
// nibbles land in adjacent result bytes, and the two byte permutes that interleave them give
// (slab 0's r0, slab 2's r0) from E, (slab 0's r1, slab 2's r1) from E >> 16, and slabs 1, 3 from O.
// About 9 operations and 16 PRMTs per word of 16 values, against 4 x (4-5 + 2) and 16 PRMTs.

// PRMT with a selector whose nibbles have bit 3 clear (as tq_prmt; on the GPU without the
// & 0x7777 that __byte_perm's definition makes the compiler add)
TQ_FFN uint32_t tq_prmt_raw(const uint32_t x, const uint32_t y, const uint32_t s) {
#if defined(__CUDA_ARCH__)
    uint32_t r;
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(x), "r"(y), "r"(s));
    return r;
#else
    return tq_prmt(x, y, s);
#endif
}

// sel: 4 nibbles n0..n3 (bit 3 clear) -> r0 = half2(cb[n0], cb[n2]), r1 = half2(cb[n1], cb[n3])
TQ_FFN void tq_lookup_sel(const uint32_t sel, const tq_cb16 & t, uint32_t & r0, uint32_t & r1) {
    const uint32_t lo = tq_prmt_raw(t.l0, t.l1, sel);
    const uint32_t hi = tq_prmt_raw(t.h0, t.h1, sel);
    r0 = tq_prmt(lo, hi, 0x6240);
    r1 = tq_prmt(lo, hi, 0x7351);
}

// r[s][0], r[s][1]: the registers tq_lookup4(tq_idx<hi, s>(X, H), t, ...) gives, for the H whose
// high bits Hc holds
template <bool hi>
TQ_FFN void tq_slabs4(const uint32_t X, const uint32_t Hc, const tq_cb16 & t, uint32_t (&r)[4][2]) {
    uint32_t E = X & 0x33333333u;
    uint32_t O = (X >> 2) & 0x33333333u;
    if constexpr (hi) {
        E |= (Hc << 2) & 0xCCCCCCCCu;
        O |= Hc & 0xCCCCCCCCu;
    }
    tq_lookup_sel(E,       t, r[0][0], r[2][0]);
    tq_lookup_sel(E >> 16, t, r[0][1], r[2][1]);
    tq_lookup_sel(O,       t, r[1][0], r[3][0]);
    tq_lookup_sel(O >> 16, t, r[1][1], r[3][1]);
}

// K: tq_k_words with Hc (turbo3: qh bytes 2u, 2u+1; bits 2s+1, values +8, +9, move to bytes 2, 3)
template <bool hi>
TQ_FFN void tq_k_words_c(const uint8_t * blk, const int u, uint32_t & X, uint32_t & Hc) {
    X = tq_lds_u16(blk + 2 + 2*u) | (tq_lds_u16(blk + 2 + 2*u + 8) << 16);
    Hc = 0;
    if constexpr (hi) {
        const uint32_t h16 = tq_lds_u16(blk + 18 + 2*u);
        Hc = (h16 | (h16 << 15)) & 0x55555555u;
    }
}

// V: tq_v_words with Hc
template <bool hi>
TQ_FFN void tq_v_words_c(const uint8_t * b0, const uint8_t * b1, const int g, uint32_t & X, uint32_t & Hc) {
    const int qo = 2 + 2*g;
    const int ho = 18 + (2*g) % 8;
    const int hs = g >= 4;
    X = tq_prmt(tq_lds_u16(b0 + qo), tq_lds_u16(b1 + qo), 0x5140);
    Hc = 0;
    if constexpr (hi) {
        Hc = (tq_prmt(tq_lds_u16(b0 + ho), tq_lds_u16(b1 + ho), 0x5140) >> hs) & 0x55555555u;
    }
}
