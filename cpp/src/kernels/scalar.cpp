// Portable reference kernels: plain loops with the same arithmetic as the vector ISAs (one fma
// chain per score, dimensions in increasing order). Always built; the other levels are tested
// for bit-equality against these.
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

const Kernels kTable = {SimdLevel::scalar, kMr, k_scores, k_argmax, k_topk, k_pack_blocks_f32, k_f32_to_f16};

}  // namespace

const Kernels& table() { return kTable; }

}  // namespace scalar
}  // namespace mudg_fast
