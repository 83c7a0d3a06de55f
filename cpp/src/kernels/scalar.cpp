// Portable reference kernels: plain loops with the same arithmetic as the vector ISAs (one fma
// chain per score, dimensions in increasing order). Always built; the other levels are tested
// for bit-equality against these.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "mudg_fast/simd.hpp"

namespace mudg_fast {
namespace scalar {
namespace {

constexpr int kMr = 4;

float decode(const TileArgs& t, idx_t col, idx_t k) {
    const auto* b = static_cast<const std::uint8_t*>(t.b) + (col / kBlock) * block_bytes(t.codec, t.d);
    const int j = static_cast<int>(col % kBlock);
    switch (t.codec) {
        case Codec::f32: return reinterpret_cast<const float*>(b)[k * kBlock + j];
        case Codec::f16: return half_to_float(reinterpret_cast<const std::uint16_t*>(b)[k * kBlock + j]);
        case Codec::sq8: return static_cast<float>(b[k * kBlock + j]);
        case Codec::sq4: {
            const std::uint8_t byte = b[k * (kBlock / 2) + (j & 7)];
            const int code = j < 8 ? (byte & 0x0F) : (byte >> 4);
            return t.lut[k * kBlock + code];
        }
    }
    return 0.0f;
}

float score(const TileArgs& t, idx_t row, idx_t col) {
    const float* a = t.a + (row / kMr) * kMr * t.d + row % kMr;
    float acc = 0.0f;
    for (idx_t k = 0; k < t.d; ++k) acc = std::fma(a[k * kMr], decode(t, col, k), acc);
    if (t.col_bias) acc = acc + t.col_bias[col];
    return acc;
}

void k_scores(const TileArgs& t, float* out, idx_t ld) {
    for (idx_t r = 0; r < t.n_rows; ++r)
        for (idx_t c = 0; c < t.n_cols; ++c) out[r * ld + c] = score(t, r, c);
}

void k_argmax(const TileArgs& t, idx_t col_offset, float* best, idx_t* best_id, void*) {
    for (idx_t r = 0; r < t.n_rows; ++r) {
        for (idx_t c = 0; c < t.n_cols; ++c) {
            const float s = score(t, r, c);
            const idx_t id = col_offset + c;
            if (s > best[r] || (s == best[r] && (best_id[r] < 0 || id < best_id[r]))) {
                best[r] = s;
                best_id[r] = id;
            }
        }
    }
}

void k_topk(const TileArgs& t, float* thresholds, CandidateSink sink, void* ctx) {
    for (idx_t r = 0; r < t.n_rows; ++r)
        for (idx_t c = 0; c < t.n_cols; ++c) {
            const float s = score(t, r, c);
            if (s >= thresholds[r]) sink(ctx, r, c, s);
        }
}

void k_scores_rows(const float* const* rows, idx_t n_rows, const float* b, idx_t n_cols, idx_t d, float* out,
                   idx_t ld) {
    for (idx_t r = 0; r < n_rows; ++r)
        for (idx_t c = 0; c < n_cols; ++c) {
            const float* col = b + (c / kBlock) * kBlock * d + c % kBlock;
            float acc = 0.0f;
            for (idx_t k = 0; k < d; ++k) acc = std::fma(rows[r][k], col[k * kBlock], acc);
            out[r * ld + c] = acc;
        }
}

void k_pack_blocks_f32(const float* src, idx_t stride, const idx_t* ids, idx_t n, idx_t d, float* out) {
    const idx_t nblk = (n + kBlock - 1) / kBlock;
    for (idx_t b = 0; b < nblk; ++b)
        for (int j = 0; j < kBlock; ++j) {
            const idx_t i = b * kBlock + j;
            float* o = out + b * kBlock * d + j;
            if (i < n) {
                const float* row = src + (ids ? ids[i] : i) * stride;
                for (idx_t k = 0; k < d; ++k) o[k * kBlock] = row[k];
            } else {
                for (idx_t k = 0; k < d; ++k) o[k * kBlock] = 0.0f;
            }
        }
}

void k_f32_to_f16(const float* src, idx_t n, std::uint16_t* dst) {
    for (idx_t i = 0; i < n; ++i) dst[i] = float_to_half(src[i]);
}

void k_i8_scores(const std::uint8_t* a, idx_t n_rows, const std::int8_t* b, idx_t n_cols, idx_t d4,
                 const float* row_scale, const float* col_scale, const std::int32_t* col_corr, float* out,
                 idx_t ld) {
    for (idx_t r = 0; r < n_rows; ++r) {
        const std::uint8_t* ap = a + (r / kMr8) * d4 * 4 * kMr8 + (r % kMr8) * 4;
        for (idx_t c = 0; c < n_cols; ++c) {
            const std::int8_t* bp = b + (c / 16) * d4 * 64 + (c % 16) * 4;
            std::int32_t s = 0;
            for (idx_t k = 0; k < d4; ++k)
                for (int i = 0; i < 4; ++i) s += static_cast<std::int32_t>(ap[k * 4 * kMr8 + i]) * bp[k * 64 + i];
            out[r * ld + c] = static_cast<float>(s - col_corr[c]) * (row_scale[r] * col_scale[c]);
        }
    }
}

float k_max_value(const float* z, idx_t n) {
    float m = -HUGE_VALF;
    for (idx_t i = 0; i < n; ++i) m = z[i] > m ? z[i] : m;
    return m;
}

idx_t k_collect_ge(const float* z, idx_t n, float tau, std::int32_t* out) {
    idx_t cnt = 0;
    for (idx_t i = 0; i < n; ++i)
        if (z[i] >= tau) out[cnt++] = static_cast<std::int32_t>(i);
    return cnt;
}

void k_quantize_row(const float* x, idx_t d, int lim, int offset, std::uint8_t* out, idx_t stride, float* a_out,
                    double* stats) {
    float amax = 0;
    double x2 = 0;
    for (idx_t k = 0; k < d; ++k) {
        amax = std::max(amax, std::fabs(x[k]));
        x2 += static_cast<double>(x[k]) * x[k];
    }
    // At least the smallest normal float (0x1p-126): for a subnormal max|x|, amax / lim could
    // underflow and 1 / a overflow, and x * inf is not convertible to int.
    float a = amax > 0 ? amax / static_cast<float>(lim) : 1.0f;
    a = a < 0x1p-126f ? 0x1p-126f : a;
    const float inv = 1.0f / a;
    double q2 = 0, e2 = 0;
    for (idx_t k = 0; k < d; ++k) {
        const float f = x[k] * inv;
        int q = static_cast<int>(std::nearbyint(f));
        q = q > lim ? lim : (q < -lim ? -lim : q);
        const double e = static_cast<double>(x[k]) - static_cast<double>(a) * q;
        q2 += static_cast<double>(q) * q;
        e2 += e * e;
        out[(k / 4) * stride + (k % 4)] = static_cast<std::uint8_t>(q + offset);
    }
    *a_out = a;
    stats[0] = a * std::sqrt(q2) * (1.0 + 1e-12);
    stats[1] = std::sqrt(e2) * (1.0 + 1e-9) + 1e-300;
    stats[2] = std::sqrt(x2) * (1.0 + 1e-9);
}

void k_encode_sq4(const float* blk, idx_t d, const float* mids, std::uint8_t* out) {
    for (idx_t k = 0; k < d; ++k) {
        const float* m = mids + k * 15;
        for (int j = 0; j < 8; ++j) {
            int lo = 0, hi = 0;
            for (int t = 0; t < 15; ++t) {
                lo += blk[k * kBlock + j] > m[t];
                hi += blk[k * kBlock + j + 8] > m[t];
            }
            out[k * 8 + j] = static_cast<std::uint8_t>(lo | (hi << 4));
        }
    }
}

const Kernels kTable = {SimdLevel::scalar, kMr, k_scores, k_argmax, k_topk, k_scores_rows, k_pack_blocks_f32,
                          k_f32_to_f16, false, 127, k_i8_scores, k_max_value, k_collect_ge, k_quantize_row,
                          k_encode_sq4};

}  // namespace

const Kernels& table() { return kTable; }

}  // namespace scalar
}  // namespace mudg_fast
