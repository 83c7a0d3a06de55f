// AArch64 NEON kernels (Advanced SIMD, part of every ARMv8-A CPU): 6x16 tiles of 4-lane vectors
// (24 of the 32 vector registers hold accumulators). Shares tile_impl.hpp with the x86 files; the
// vector traits, the block packing, the conversions and the int8 screening kernel are NEON's own.
// Built only for AArch64, with the baseline flags (no extension); neon_dotprod.cpp adds sdot.
#include <arm_neon.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "mudg_fast/simd.hpp"

namespace mudg_fast {
namespace neon {
namespace {

struct Isa {
    using V = float32x4_t;
    static constexpr int W = 4;
    static constexpr int MR = 6;       // 6 rows x 4 vectors (one block) = 24 accumulators
    static constexpr int NB_FULL = 1;
    static constexpr int NB_ONE = 4;   // one row: 16 accumulators over 4 blocks

    static V zero() { return vdupq_n_f32(0.0f); }
    static V bcast(const float* p) { return vld1q_dup_f32(p); }
    static V fma(V a, V b, V c) { return vfmaq_f32(c, a, b); }  // c + a * b, one rounding
    static V add(V a, V b) { return vaddq_f32(a, b); }
    static V loadu(const float* p) { return vld1q_f32(p); }
    static void storeu(float* p, V v) { vst1q_f32(p, v); }
    static V load_f32(const float* row, int s) { return vld1q_f32(row + 4 * s); }
    static V load_f16(const std::uint16_t* row, int s) {
        return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(row + 4 * s)));  // exact for every half
    }
    static V load_sq8(const std::uint8_t* row, int s) {
        std::uint32_t w;
        std::memcpy(&w, row + 4 * s, 4);
        const uint16x8_t h = vmovl_u8(vcreate_u8(w));
        return vcvtq_f32_u32(vmovl_u16(vget_low_u16(h)));
    }
    // Columns 4s .. 4s+3: low nibbles of bytes 0..7 are columns 0..7, high nibbles columns 8..15.
    // The 16-entry float table is 64 bytes; tbl picks the 4 bytes of each code's value.
    static V load_sq4(const std::uint8_t* row8, const float* lut, int s) {
        std::uint32_t w;
        std::memcpy(&w, row8 + 4 * (s & 1), 4);
        const uint8x8_t bytes = vcreate_u8(w);
        const uint8x8_t codes = s < 2 ? vand_u8(bytes, vdup_n_u8(0x0F)) : vshr_n_u8(bytes, 4);
        static const std::uint8_t spread[16] = {0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3};
        static const std::uint8_t within[16] = {0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3};
        const uint8x16_t code4 = vqtbl1q_u8(vcombine_u8(codes, codes), vld1q_u8(spread));
        const uint8x16_t idx = vaddq_u8(vshlq_n_u8(code4, 2), vld1q_u8(within));
        uint8x16x4_t table;
        const auto* lb = reinterpret_cast<const std::uint8_t*>(lut);
        table.val[0] = vld1q_u8(lb);
        table.val[1] = vld1q_u8(lb + 16);
        table.val[2] = vld1q_u8(lb + 32);
        table.val[3] = vld1q_u8(lb + 48);
        return vreinterpretq_f32_u8(vqtbl4q_u8(table, idx));
    }
    static unsigned mask_ge(V a, V b) {
        static const std::uint32_t bits[4] = {1, 2, 4, 8};
        return vaddvq_u32(vandq_u32(vcgeq_f32(a, b), vld1q_u32(bits)));
    }
    static void lane_update(float* best, std::int32_t* col, V acc, std::int32_t col0) {
        static const std::int32_t lanes[4] = {0, 1, 2, 3};
        const V b = vld1q_f32(best);
        const uint32x4_t m = vcgtq_f32(acc, b);
        vst1q_f32(best, vbslq_f32(m, acc, b));
        const int32x4_t nc = vaddq_s32(vdupq_n_s32(col0), vld1q_s32(lanes));
        vst1q_s32(col, vbslq_s32(m, nc, vld1q_s32(col)));
    }
};

#include "tile_impl.hpp"

/// Transposes 4 rows x 4 dimensions (rows[i] + k) into 4 dimension rows of stride 16 at out.
inline void transpose4(const float* const* rows, idx_t k, float* out) {
    const float32x4_t r0 = vld1q_f32(rows[0] + k), r1 = vld1q_f32(rows[1] + k);
    const float32x4_t r2 = vld1q_f32(rows[2] + k), r3 = vld1q_f32(rows[3] + k);
    const float64x2_t t0 = vreinterpretq_f64_f32(vtrn1q_f32(r0, r1)), t1 = vreinterpretq_f64_f32(vtrn2q_f32(r0, r1));
    const float64x2_t t2 = vreinterpretq_f64_f32(vtrn1q_f32(r2, r3)), t3 = vreinterpretq_f64_f32(vtrn2q_f32(r2, r3));
    vst1q_f32(out + 0 * kBlock, vreinterpretq_f32_f64(vtrn1q_f64(t0, t2)));
    vst1q_f32(out + 1 * kBlock, vreinterpretq_f32_f64(vtrn1q_f64(t1, t3)));
    vst1q_f32(out + 2 * kBlock, vreinterpretq_f32_f64(vtrn2q_f64(t0, t2)));
    vst1q_f32(out + 3 * kBlock, vreinterpretq_f32_f64(vtrn2q_f64(t1, t3)));
}

void k_pack_blocks_f32(const float* src, idx_t stride, const idx_t* ids, idx_t n, idx_t d, float* out) {
    const idx_t nblk = (n + kBlock - 1) / kBlock;
    for (idx_t b = 0; b < nblk; ++b) {
        float* blk = out + b * kBlock * d;
        const idx_t rows = n - b * kBlock < kBlock ? n - b * kBlock : kBlock;
        const float* rp[kBlock];
        for (idx_t j = 0; j < rows; ++j) {
            const idx_t i = b * kBlock + j;
            rp[j] = src + (ids ? ids[i] : i) * stride;
        }
        if (rows == kBlock) {
            idx_t k = 0;
            for (; k + 4 <= d; k += 4)
                for (int g = 0; g < 4; ++g) transpose4(rp + 4 * g, k, blk + k * kBlock + 4 * g);
            for (; k < d; ++k)
                for (int j = 0; j < kBlock; ++j) blk[k * kBlock + j] = rp[j][k];
        } else {
            for (idx_t k = 0; k < d; ++k)
                for (int j = 0; j < kBlock; ++j) blk[k * kBlock + j] = j < rows ? rp[j][k] : 0.0f;
        }
    }
}

void k_f32_to_f16(const float* src, idx_t n, std::uint16_t* dst) {
    idx_t i = 0;
    for (; i + 4 <= n; i += 4)  // round to nearest even (the default FPCR mode), overflow to inf
        vst1_u16(dst + i, vreinterpret_u16_f16(vcvt_f16_f32(vld1q_f32(src + i))));
    for (; i < n; ++i) dst[i] = float_to_half(src[i]);
}

void k_encode_sq4(const float* blk, idx_t d, const float* mids, std::uint8_t* out) {
    for (idx_t k = 0; k < d; ++k) {
        float32x4_t v[4];
        uint32x4_t c[4];
        for (int i = 0; i < 4; ++i) {
            v[i] = vld1q_f32(blk + k * 16 + 4 * i);
            c[i] = vdupq_n_u32(0);
        }
        const float* m = mids + k * 15;
        for (int j = 0; j < 15; ++j) {  // count the midpoints strictly below each value
            const float32x4_t mj = vdupq_n_f32(m[j]);
            for (int i = 0; i < 4; ++i) c[i] = vsubq_u32(c[i], vcgtq_f32(v[i], mj));  // true = all ones = -1
        }
        // byte j = code(column j) | code(column j + 8) << 4
        const uint32x4_t lo = vorrq_u32(c[0], vshlq_n_u32(c[2], 4)), hi = vorrq_u32(c[1], vshlq_n_u32(c[3], 4));
        vst1_u8(out + k * 8, vmovn_u16(vcombine_u16(vmovn_u32(lo), vmovn_u32(hi))));
    }
}

float k_max_value(const float* z, idx_t n) {
    // z > m ? z : m lane by lane, as the scalar kernel (a NaN never replaces the maximum)
    float32x4_t m = vdupq_n_f32(-__builtin_inff());
    idx_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const float32x4_t v = vld1q_f32(z + i);
        m = vbslq_f32(vcgtq_f32(v, m), v, m);
    }
    float t[4];
    vst1q_f32(t, m);
    float r = t[0];
    for (int j = 1; j < 4; ++j) r = t[j] > r ? t[j] : r;
    for (; i < n; ++i) r = z[i] > r ? z[i] : r;
    return r;
}

idx_t k_collect_ge(const float* z, idx_t n, float tau, std::int32_t* out) {
    static const std::uint32_t bits[4] = {1, 2, 4, 8};
    const uint32x4_t vbits = vld1q_u32(bits);
    const float32x4_t t = vdupq_n_f32(tau);
    idx_t cnt = 0, i = 0;
    for (; i + 4 <= n; i += 4) {
        unsigned m = vaddvq_u32(vandq_u32(vcgeq_f32(vld1q_f32(z + i), t), vbits));
        while (m) {
            out[cnt++] = static_cast<std::int32_t>(i + __builtin_ctz(m));
            m &= m - 1;
        }
    }
    for (; i < n; ++i)
        if (z[i] >= tau) out[cnt++] = static_cast<std::int32_t>(i);
    return cnt;
}

void k_quantize_row(const float* x, idx_t d, int lim, int offset, std::uint8_t* out, idx_t stride, float* a_out,
                    double* stats) {
    float32x4_t vmax = vdupq_n_f32(0.0f), vx2 = vdupq_n_f32(0.0f);
    idx_t k = 0;
    for (; k + 4 <= d; k += 4) {
        const float32x4_t v = vld1q_f32(x + k);
        vmax = vmaxq_f32(vmax, vabsq_f32(v));
        vx2 = vfmaq_f32(vx2, v, v);
    }
    float amax = vmaxvq_f32(vmax);
    float x2 = vaddvq_f32(vx2);
    for (idx_t j = k; j < d; ++j) {
        const float v = std::fabs(x[j]);
        amax = v > amax ? v : amax;
        x2 += x[j] * x[j];
    }
    // At least the smallest normal float (0x1p-126): for a subnormal max|x|, amax / lim could
    // underflow and 1 / a overflow, and x * inf is not convertible to int.
    float a = amax > 0 ? amax / static_cast<float>(lim) : 1.0f;
    a = a < 0x1p-126f ? 0x1p-126f : a;
    const float inv = 1.0f / a;
    const float32x4_t va = vdupq_n_f32(a), vinv = vdupq_n_f32(inv);
    const int32x4_t vlim = vdupq_n_s32(lim), vnlim = vdupq_n_s32(-lim), voff = vdupq_n_s32(offset);
    float32x4_t vq2 = vdupq_n_f32(0.0f), ve2 = vdupq_n_f32(0.0f);
    for (k = 0; k + 4 <= d; k += 4) {
        const float32x4_t v = vld1q_f32(x + k);
        int32x4_t q = vcvtnq_s32_f32(vmulq_f32(v, vinv));  // nearest, ties to even
        q = vmaxq_s32(vnlim, vminq_s32(vlim, q));
        const float32x4_t qf = vcvtq_f32_s32(q);
        const float32x4_t e = vfmsq_f32(v, va, qf);  // x - a q, one rounding
        vq2 = vfmaq_f32(vq2, qf, qf);                 // integers: exact while below 2^24 per lane
        ve2 = vfmaq_f32(ve2, e, e);
        // q + offset is in 0..255 (offset bytes) or -lim..lim (plain int8): the low byte is the code
        const int16x4_t w16 = vmovn_s32(vaddq_s32(q, voff));
        const uint8x8_t w8 = vreinterpret_u8_s8(vmovn_s16(vcombine_s16(w16, w16)));
        const std::uint32_t g = vget_lane_u32(vreinterpret_u32_u8(w8), 0);
        std::memcpy(out + (k / 4) * stride, &g, 4);
    }
    float q2 = vaddvq_f32(vq2), e2 = vaddvq_f32(ve2);
    for (; k < d; ++k) {
        // The same arithmetic as the vector lanes above: round to nearest even, and the residual
        // x - a q with one rounding.
        int q = static_cast<int>(std::nearbyint(x[k] * inv));
        q = q > lim ? lim : (q < -lim ? -lim : q);
        const float e = std::fma(-a, static_cast<float>(q), x[k]);
        q2 += static_cast<float>(q * q);
        e2 += e * e;
        out[(k / 4) * stride + (k % 4)] = static_cast<std::uint8_t>(q + offset);
    }
    // Float sums of d squares are within d*u relative of the truth: inflate to stay an upper bound.
    // Squares that underflow lose at most 2^-150 each: covered by e2's 1e-40 floor, and for |x|
    // by summing in double when the row is so small that its squares underflow.
    const double infl = 1.0 + 4.0 * static_cast<double>(d) * 0x1.0p-24;
    double x2d = x2;
    if (amax < 0x1p-40f) {
        x2d = 0;
        for (idx_t j = 0; j < d; ++j) x2d += static_cast<double>(x[j]) * x[j];
    }
    *a_out = a;
    stats[0] = static_cast<double>(a) * std::sqrt(static_cast<double>(q2) * infl);
    stats[1] = std::sqrt(static_cast<double>(e2) * infl + 1e-40) * (1.0 + 1e-6);
    stats[2] = std::sqrt(x2d * infl) * (1.0 + 1e-6);
}

#include "i8_neon_impl.hpp"

// Screening stays off by default here: without sdot an int8 dot product costs as many
// instructions as the fp32 one (see README, "ARM").
const Kernels kTable = {SimdLevel::neon, Isa::MR, k_scores, k_argmax, k_topk, k_pack_blocks_f32, k_f32_to_f16,
                        false, 127, k_i8_scores_neon, k_max_value, k_collect_ge, k_quantize_row, k_encode_sq4};

}  // namespace

const Kernels& table() { return kTable; }

}  // namespace neon
}  // namespace mudg_fast
