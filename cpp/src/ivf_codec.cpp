// IvfIndex codecs: scalar-quantiser training, encoding of blocks and slots, decoding.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <vector>

#include "ivf_internal.hpp"
#include "mudg_fast/parallel.hpp"
#include "mudg_fast/topk.hpp"

namespace mudg_fast {

namespace {
constexpr float kMinListScale = 0x1p-32f, kMaxListScale = 0x1p32f;
/// Residual form: a list's scale is estimated from its sample rows as if it also held this many
/// rows at the sample's mean squared residual norm (lists with few rows stay near 1).
constexpr double kScalePriorRows = 16;

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
        MUDG_CHECK(b.empty() || static_cast<idx_t>(b.size()) == nlist_,
                   "SQ4 list scales must be empty (direct form) or hold one value per list (%lld), got %llu",
                   (long long)nlist_, (unsigned long long)b.size());
        // Decoded values (levels, or centroid + scale * level) stay within the magnitude every
        // float32 input is held to (twice that for residuals, which span two inputs), so that no
        // score computed from them can overflow.
        const double limit = b.empty() ? magnitude_limit(d) : 2 * magnitude_limit(d);
        double max_level = 0;
        for (idx_t k = 0; k < d; ++k)
            for (int j = 0; j < 16; ++j) {
                const float v = a[k * 16 + j];
                MUDG_CHECK(std::isfinite(v) && std::fabs(v) <= limit,
                           "invalid SQ4 level %g for dimension %lld (need finite, within +-%g)", (double)v,
                           (long long)k, limit);
                MUDG_CHECK(j == 0 || v >= a[k * 16 + j - 1], "SQ4 levels must be sorted");
                max_level = std::max(max_level, std::fabs(static_cast<double>(v)));
            }
        for (idx_t l = 0; l < static_cast<idx_t>(b.size()); ++l)
            MUDG_CHECK(std::isfinite(b[l]) && b[l] >= kMinListScale && b[l] <= kMaxListScale &&
                           b[l] * max_level <= limit,
                       "invalid SQ4 list scale %g for list %lld (need finite, in [2^-32, 2^32], scale * largest "
                       "|level| within +-%g)",
                       (double)b[l], (long long)l, limit);
        sq4_mid_.assign(static_cast<std::size_t>(d * 15), 0.0f);
        for (idx_t k = 0; k < d; ++k)
            for (int j = 0; j < 15; ++j)
                sq4_mid_[k * 15 + j] = 0.5f * (a[k * 16 + j] + a[k * 16 + j + 1]);
    } else {
        MUDG_CHECK(a.empty() && b.empty(), "codec '%s' has no parameters", codec_ == Codec::f32 ? "f32" : "f16");
    }
    sq_a_ = std::move(a);
    sq_b_ = std::move(b);
}

void IvfIndex::train_codec(MatrixView<const float> sample, bool sq4_residual, int n_threads) {
    MUDG_CHECK(ntotal_ == 0, "the codec can only be trained on an empty index");
    if (codec_ == Codec::f32 || codec_ == Codec::f16) return;
    MUDG_CHECK(sample.cols == dim_, "training sample has %lld dimensions, the index %lld", (long long)sample.cols,
               (long long)dim_);
    MUDG_CHECK(sample.rows >= 2, "need at least 2 training vectors for the scalar quantiser, got %lld",
               (long long)sample.rows);
    const bool residual = codec_ == Codec::sq4 && sq4_residual;
    MUDG_CHECK(!residual || has_centroids(),
               "the sq4 codec encodes residuals to the list centroids: set the centroids (train, train_paired or "
               "set_centroids) before training it");
    const idx_t n = sample.rows, d = dim_;
    std::vector<float> a, b;
    if (codec_ == Codec::sq8) {
        a.resize(d);
        b.resize(d);
    } else {
        a.resize(d * 16);
    }
    // Residual form: each sample row's list (as add() assigns it), then the list scales: the RMS
    // residual norm of the list's rows relative to the whole sample's, shrunk towards 1.
    std::vector<idx_t> label;
    if (residual) {
        label.resize(n);
        assign_lists(sample, label.data(), n_threads);
        std::vector<double> norm2(n);
        parallel_for(n, 256, n_threads, [&](idx_t i0, idx_t i1, int) {
            for (idx_t i = i0; i < i1; ++i) {
                const float* x = sample.row(i);
                const float* c = centroids().data() + label[i] * d;
                double s = 0;
                for (idx_t k = 0; k < d; ++k) {
                    const double e = static_cast<double>(x[k]) - c[k];
                    s += e * e;
                }
                norm2[i] = s;
            }
        });
        std::vector<double> sum(nlist_, 0.0), count(nlist_, 0.0);
        double total = 0;
        for (idx_t i = 0; i < n; ++i) {  // in row order: the same sums at any thread count
            sum[label[i]] += norm2[i];
            count[label[i]] += 1;
            total += norm2[i];
        }
        const double g = total / static_cast<double>(n);
        b.assign(nlist_, 1.0f);
        if (g > 0 && std::isfinite(g))
            for (idx_t l = 0; l < nlist_; ++l) {
                const double s = std::sqrt((sum[l] + kScalePriorRows * g) / ((count[l] + kScalePriorRows) * g));
                b[l] = static_cast<float>(std::min<double>(std::max<double>(s, kMinListScale), kMaxListScale));
            }
    }
    parallel_for(d, 8, n_threads, [&](idx_t k0, idx_t k1, int) {
        std::vector<float> col(n), tmp(residual ? d : 0);
        std::vector<double> prefix(n + 1);
        for (idx_t k = k0; k < k1; ++k) {
            for (idx_t i = 0; i < n; ++i)  // exactly what encode sees (see code_input)
                col[i] = residual ? (sample.row(i)[k] - centroids()[label[i] * d + k]) / b[label[i]] : sample.row(i)[k];
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
    if (residual) {
        // Residuals of inputs near the magnitude limit could decode beyond it (see
        // set_codec_params): clip the levels and scales in that extreme case.
        const double limit = 2 * magnitude_limit(d);
        double max_level = 0;
        for (float& v : a) {
            v = static_cast<float>(std::min<double>(std::max<double>(v, -limit), limit));
            max_level = std::max(max_level, std::fabs(static_cast<double>(v)));
        }
        for (float& s : b)
            if (s * max_level > limit) s = std::max(kMinListScale, static_cast<float>(limit / max_level * 0.999));
    }
    set_codec_params(std::move(a), std::move(b));
}

void IvfIndex::assign_lists(MatrixView<const float> x, idx_t* lists, int n_threads) const {
    // The coarse quantizer's choice (exact with a flat one), the same as add() makes.
    std::vector<float> score(static_cast<std::size_t>(x.rows));
    coarse_search(x, 1, MatrixView<float>(score.data(), x.rows, 1), MatrixView<idx_t>(lists, x.rows, 1), n_threads);
}

const float* IvfIndex::code_input(idx_t l, const float* x, float* out) const {
    if (!sq4_residual()) return x;
    const float* c = centroids().data() + l * dim_;
    const float s = sq_b_[l];
    for (idx_t k = 0; k < dim_; ++k) out[k] = (x[k] - c[k]) / s;
    return out;
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

void IvfIndex::copy_slot(const std::uint8_t* src, int from, std::uint8_t* dst, int to) const {
    const idx_t d = dim_;
    switch (codec_) {
        case Codec::f32:
        case Codec::f16:
        case Codec::sq8: {
            const int w = codec_ == Codec::f32 ? 4 : codec_ == Codec::f16 ? 2 : 1;
            for (idx_t k = 0; k < d; ++k) std::memcpy(dst + (k * kBlock + to) * w, src + (k * kBlock + from) * w, w);
            break;
        }
        case Codec::sq4:
            for (idx_t k = 0; k < d; ++k) {
                const std::uint8_t in = src[k * 8 + (from & 7)];
                const int c = from < 8 ? (in & 0x0F) : (in >> 4);
                std::uint8_t& byte = dst[k * 8 + (to & 7)];
                byte = to < 8 ? static_cast<std::uint8_t>((byte & 0xF0) | c)
                              : static_cast<std::uint8_t>((byte & 0x0F) | (c << 4));
            }
            break;
    }
}

void IvfIndex::decode(idx_t l, idx_t pos, float* out) const {
    const List& list = lists_[l];
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
    if (sq4_residual()) {
        const float* c = centroids().data() + l * d;
        const float s = sq_b_[l];
        for (idx_t k = 0; k < d; ++k) out[k] = c[k] + s * out[k];
    }
}
}  // namespace mudg_fast
