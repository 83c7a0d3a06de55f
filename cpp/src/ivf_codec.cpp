// IvfIndex codecs: scalar-quantiser training, encoding of blocks and slots, decoding.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <vector>

#include "ivf_internal.hpp"
#include "mudg_fast/parallel.hpp"

namespace mudg_fast {

namespace {
std::uint8_t sq8_code(float v, float vmin, float inv_step) {
    float t = (v - vmin) * inv_step + 0.5f;
    // NaN (0 * inf when 1 / step overflows) goes to 0: converting NaN to an integer is undefined.
    t = t > 0.0f ? (t < 255.0f ? t : 255.0f) : 0.0f;
    return static_cast<std::uint8_t>(t);
}

/// Code of v among 16 levels given the 15 sorted midpoints m: #{j : m[j] < v}, branch-free.
int sq4_code(float v, const float* m) {
    int c = v > m[7] ? 8 : 0;
    c += v > m[c + 3] ? 4 : 0;
    c += v > m[c + 1] ? 2 : 0;
    c += v > m[c] ? 1 : 0;
    return c;
}
}  // namespace

void IvfIndex::set_codec_params(std::vector<float> a, std::vector<float> b) {
    const idx_t d = dim_;
    if (codec_ == Codec::sq8) {
        MUDG_CHECK(static_cast<idx_t>(a.size()) == d && static_cast<idx_t>(b.size()) == d,
                   "SQ8 parameters must be two arrays of %lld values", (long long)d);
        // Decoded values must stay within the magnitude every float32 input is held to, so that
        // scores against them cannot overflow.
        const double limit = magnitude_limit(d);
        for (idx_t k = 0; k < d; ++k) {
            MUDG_CHECK(std::isfinite(a[k]) && std::isfinite(b[k]) && b[k] > 0,
                       "invalid SQ8 parameters for dimension %lld: vmin=%g, step=%g (need finite, step > 0)",
                       (long long)k, (double)a[k], (double)b[k]);
            const double top = static_cast<double>(a[k]) + 255.0 * b[k];
            MUDG_CHECK(std::fabs(a[k]) <= limit && std::fabs(top) <= limit,
                       "SQ8 parameters for dimension %lld decode to values beyond +-%g", (long long)k, limit);
        }
    } else if (codec_ == Codec::sq4) {
        MUDG_CHECK(static_cast<idx_t>(a.size()) == d * 16, "SQ4 parameters must hold %lld levels",
                   (long long)(d * 16));
        for (idx_t k = 0; k < d; ++k)
            for (int j = 0; j < 16; ++j) {
                MUDG_CHECK(std::isfinite(a[k * 16 + j]) && std::fabs(a[k * 16 + j]) <= magnitude_limit(d),
                           "invalid SQ4 level %g for dimension %lld (need finite, within +-%g)",
                           (double)a[k * 16 + j], (long long)k, magnitude_limit(d));
                MUDG_CHECK(j == 0 || a[k * 16 + j] >= a[k * 16 + j - 1], "SQ4 levels must be sorted");
            }
        sq4_mid_.assign(static_cast<std::size_t>(d * 15), 0.0f);
        for (idx_t k = 0; k < d; ++k)
            for (int j = 0; j < 15; ++j)
                sq4_mid_[k * 15 + j] = 0.5f * (a[k * 16 + j] + a[k * 16 + j + 1]);
        b.clear();
    } else {
        MUDG_CHECK(a.empty() && b.empty(), "codec '%s' has no parameters", codec_ == Codec::f32 ? "f32" : "f16");
    }
    sq_a_ = std::move(a);
    sq_b_ = std::move(b);
}

void IvfIndex::train_codec(MatrixView<const float> sample) {
    MUDG_CHECK(ntotal_ == 0, "the codec can only be trained on an empty index");
    if (codec_ == Codec::f32 || codec_ == Codec::f16) return;
    MUDG_CHECK(sample.cols == dim_, "training sample has %lld dimensions, the index %lld", (long long)sample.cols,
               (long long)dim_);
    MUDG_CHECK(sample.rows >= 2, "need at least 2 training vectors for the scalar quantiser, got %lld",
               (long long)sample.rows);
    const idx_t n = sample.rows, d = dim_;
    std::vector<float> a, b;
    if (codec_ == Codec::sq8) {
        a.resize(d);
        b.resize(d);
    } else {
        a.resize(d * 16);
    }
    parallel_for(d, 8, 0, [&](idx_t k0, idx_t k1, int) {
        std::vector<float> col(n);
        std::vector<double> prefix(n + 1);
        for (idx_t k = k0; k < k1; ++k) {
            for (idx_t i = 0; i < n; ++i) col[i] = sample.row(i)[k];
            std::sort(col.begin(), col.end());
            auto quantile = [&](double q) {
                const double pos = q * static_cast<double>(n - 1);
                const idx_t i = static_cast<idx_t>(pos);
                const double f = pos - static_cast<double>(i);
                return i + 1 < n ? (1 - f) * col[i] + f * col[i + 1] : static_cast<double>(col[n - 1]);
            };
            if (codec_ == Codec::sq8) {
                // The sample's full range: with 256 levels the step is already fine, and the
                // extreme values are the ones that decide the top neighbours, so clipping them
                // (a trimmed range) costs more recall than the finer step gains.
                const double lo = col[0], hi = col[n - 1];
                // A subnormal step would have an infinite reciprocal: floor it at the smallest
                // normal float.
                const double step = hi > lo ? std::max((hi - lo) / 255.0, double{FLT_MIN}) : 1e-12;
                a[k] = static_cast<float>(lo);
                b[k] = static_cast<float>(step);
                continue;
            }
            // SQ4: 16 levels minimising squared error (1-D Lloyd-Max), started at the centres of
            // 16 equal-mass bins. Sorted data + prefix sums make each iteration O(16 log n).
            prefix[0] = 0;
            for (idx_t i = 0; i < n; ++i) prefix[i + 1] = prefix[i] + col[i];
            double lv[16];
            for (int j = 0; j < 16; ++j) lv[j] = quantile((j + 0.5) / 16.0);
            for (int it = 0; it < 30; ++it) {
                idx_t start = 0;
                for (int j = 0; j < 16; ++j) {
                    idx_t end = n;
                    if (j < 15) {
                        const float mid = static_cast<float>(0.5 * (lv[j] + lv[j + 1]));
                        end = std::upper_bound(col.begin() + start, col.end(), mid) - col.begin();
                    }
                    if (end > start) lv[j] = (prefix[end] - prefix[start]) / static_cast<double>(end - start);
                    start = end;
                }
                std::sort(lv, lv + 16);
            }
            for (int j = 0; j < 16; ++j) a[k * 16 + j] = static_cast<float>(lv[j]);
        }
    });
    set_codec_params(std::move(a), std::move(b));
}

// ---------------------------------------------------------------------------------------------
// Encoding

void IvfIndex::encode_block(const float* blk, std::uint8_t* out) const {
    const idx_t d = dim_;
    switch (codec_) {
        case Codec::f32:
            std::memcpy(out, blk, static_cast<std::size_t>(d * kBlock * sizeof(float)));
            break;
        case Codec::f16:
            kernels().f32_to_f16(blk, d * kBlock, reinterpret_cast<std::uint16_t*>(out));
            break;
        case Codec::sq8:
            for (idx_t k = 0; k < d; ++k) {
                const float vmin = sq_a_[k], inv = 1.0f / sq_b_[k];
                for (int j = 0; j < kBlock; ++j) out[k * kBlock + j] = sq8_code(blk[k * kBlock + j], vmin, inv);
            }
            break;
        case Codec::sq4:
            kernels().encode_sq4(blk, d, sq4_mid_.data(), out);
            break;
    }
}

void IvfIndex::encode_slot(const float* v, std::uint8_t* blk, int slot) const {
    const idx_t d = dim_;
    switch (codec_) {
        case Codec::f32: {
            auto* o = reinterpret_cast<float*>(blk);
            for (idx_t k = 0; k < d; ++k) o[k * kBlock + slot] = v[k];
            break;
        }
        case Codec::f16: {
            auto* o = reinterpret_cast<std::uint16_t*>(blk);
            for (idx_t k = 0; k < d; ++k) o[k * kBlock + slot] = float_to_half(v[k]);
            break;
        }
        case Codec::sq8:
            for (idx_t k = 0; k < d; ++k) blk[k * kBlock + slot] = sq8_code(v[k], sq_a_[k], 1.0f / sq_b_[k]);
            break;
        case Codec::sq4:
            for (idx_t k = 0; k < d; ++k) {
                const int c = sq4_code(v[k], sq4_mid_.data() + k * 15);
                std::uint8_t& byte = blk[k * 8 + (slot & 7)];
                byte = slot < 8 ? static_cast<std::uint8_t>((byte & 0xF0) | c)
                                : static_cast<std::uint8_t>((byte & 0x0F) | (c << 4));
            }
            break;
    }
}

void IvfIndex::decode(const List& list, idx_t pos, float* out) const {
    const idx_t d = dim_;
    const std::uint8_t* blk = list.code_ptr() + (pos / kBlock) * block_bytes(codec_, d);
    const int slot = static_cast<int>(pos % kBlock);
    for (idx_t k = 0; k < d; ++k) {
        switch (codec_) {
            case Codec::f32: out[k] = reinterpret_cast<const float*>(blk)[k * kBlock + slot]; break;
            case Codec::f16: out[k] = half_to_float(reinterpret_cast<const std::uint16_t*>(blk)[k * kBlock + slot]); break;
            case Codec::sq8: out[k] = sq_a_[k] + static_cast<float>(blk[k * kBlock + slot]) * sq_b_[k]; break;
            case Codec::sq4: {
                const std::uint8_t byte = blk[k * 8 + (slot & 7)];
                out[k] = sq_a_[k * 16 + (slot < 8 ? (byte & 0x0F) : (byte >> 4))];
                break;
            }
        }
    }
}
}  // namespace mudg_fast
