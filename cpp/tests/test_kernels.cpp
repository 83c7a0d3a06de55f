// Every kernel of every SIMD level this CPU has against the scalar reference table, bit for bit,
// on buffers of exactly the documented sizes (so AddressSanitizer sees any overrun), plus the
// half-float conversions over all 65536 half values.
//
// MUDG_EXPECT_SIMD_LEVELS="scalar,neon,..." (set by .ci/neon for each emulated CPU) makes the run
// fail unless the CPU offers exactly those levels, so a detection bug cannot shrink the coverage.
#include <limits>
#include <map>

#include "check.hpp"

using namespace mudg_fast;
using namespace mudg_test;

namespace {

/// Random database blocks for a codec: ceil(n/16) blocks, exactly, 64-byte aligned.
struct Blocks {
    Aligned<std::uint8_t> bytes;
    std::vector<float> lut;  // sq4: [d][16]
    Blocks(Codec codec, idx_t n, idx_t d, std::uint64_t seed)
        : bytes(static_cast<std::size_t>(n_blocks(n) * block_bytes(codec, d))) {
        Rng rng(seed);
        const std::size_t nb = bytes.size();
        switch (codec) {
            case Codec::f32: {
                auto* f = reinterpret_cast<float*>(bytes.data());
                for (std::size_t i = 0; i < nb / 4; ++i) f[i] = static_cast<float>(2 * rng.uniform() - 1);
                break;
            }
            case Codec::f16: {
                auto* h = reinterpret_cast<std::uint16_t*>(bytes.data());
                for (std::size_t i = 0; i < nb / 2; ++i) h[i] = float_to_half(static_cast<float>(4 * rng.uniform() - 2));
                break;
            }
            case Codec::sq8:
            case Codec::sq4:
                for (std::size_t i = 0; i < nb; ++i) bytes[i] = static_cast<std::uint8_t>(rng.below(256));
                break;
        }
        if (codec == Codec::sq4) {
            lut.resize(static_cast<std::size_t>(d * 16));
            for (auto& v : lut) v = static_cast<float>(2 * rng.uniform() - 1);
            for (idx_t k = 0; k < d; ++k) std::sort(lut.begin() + k * 16, lut.begin() + k * 16 + 16);
        }
    }
};

/// Query rows packed for table K: exactly ceil(n/mr) panels.
Aligned<float> panels_for(const Kernels& K, const std::vector<float>& x, idx_t n, idx_t d) {
    Aligned<float> a(static_cast<std::size_t>(packed_rows_size(n, d, K.mr)), -99.0f);
    pack_rows(x.data(), d, nullptr, n, d, K.mr, nullptr, a.data());
    return a;
}

const Codec kCodecs[] = {Codec::f32, Codec::f16, Codec::sq8, Codec::sq4};
const char* codec_name(Codec c) {
    return c == Codec::f32 ? "f32" : c == Codec::f16 ? "f16" : c == Codec::sq8 ? "sq8" : "sq4";
}

struct Hit {
    idx_t row, col;
    float score;
};
void collect(void* ctx, idx_t row, idx_t col, float score) {
    static_cast<std::vector<Hit>*>(ctx)->push_back({row, col, score});
}

/// Per row, the (col, score) sequence a topk call reported.
std::map<idx_t, std::vector<std::pair<idx_t, float>>> by_row(const std::vector<Hit>& hits) {
    std::map<idx_t, std::vector<std::pair<idx_t, float>>> m;
    for (const Hit& h : hits) m[h.row].push_back({h.col, h.score});
    return m;
}

}  // namespace

TEST(expected_simd_levels_are_available) {
    const char* expect = std::getenv("MUDG_EXPECT_SIMD_LEVELS");
    std::string got;
    for (SimdLevel level : available_levels()) got += (got.empty() ? "" : ",") + std::string(simd_level_name(level));
    std::printf("       SIMD levels of this CPU: %s\n", got.c_str());
    if (expect && *expect) CHECK_EQ(got, std::string(expect));
}

TEST(tile_kernels_equal_scalar_for_every_codec) {
    const Kernels& S = kernels_for(SimdLevel::scalar);
    std::uint64_t seed = 1;
    for (SimdLevel level : available_levels()) {
        const Kernels& K = kernels_for(level);
        for (Codec codec : kCodecs)
            for (idx_t d : {1, 3, 8, 17, 33})
                for (idx_t n_rows : {1, 2, 5, 6, 7, 13})
                    for (idx_t n_cols : {1, 15, 16, 17, 33, 64, 70}) {
                        const std::string what = std::string(simd_level_name(level)) + " " + codec_name(codec) +
                                                 " d=" + show(d) + " rows=" + show(n_rows) + " cols=" + show(n_cols);
                        const auto x = uniform(n_rows * d, ++seed);
                        const Blocks blk(codec, n_cols, d, ++seed);
                        const auto bias = uniform(n_cols, ++seed);
                        const Aligned<float> as = panels_for(S, x, n_rows, d), ak = panels_for(K, x, n_rows, d);
                        for (bool with_bias : {false, true}) {
                            TileArgs t;
                            t.n_rows = n_rows;
                            t.b = blk.bytes.data();
                            t.n_cols = n_cols;
                            t.d = d;
                            t.codec = codec;
                            t.lut = blk.lut.empty() ? nullptr : blk.lut.data();
                            t.col_bias = with_bias ? bias.data() : nullptr;
                            TileArgs ts = t, tk = t;
                            ts.a = as.data();
                            tk.a = ak.data();

                            // scores, written with a leading dimension wider than n_cols
                            const idx_t ld = n_cols + 3;
                            Aligned<float> out_s(static_cast<std::size_t>(n_rows * ld), 5.0f),
                                out_k(static_cast<std::size_t>(n_rows * ld), 5.0f);
                            S.scores(ts, out_s.data(), ld);
                            K.scores(tk, out_k.data(), ld);
                            for (std::size_t i = 0; i < out_s.size(); ++i)
                                if (!same_bits(out_s[i], out_k[i])) fail(__FILE__, __LINE__, "scores differ: " + what);
                            for (idx_t r = 0; r < n_rows; ++r)
                                for (idx_t c = n_cols; c < ld; ++c) CHECK_EQ(out_k[r * ld + c], 5.0f);
                            if (codec == Codec::f32 && !with_bias) {  // and both equal the oracle
                                for (idx_t r = 0; r < n_rows; ++r)
                                    for (idx_t c = 0; c < n_cols; ++c) {
                                        std::vector<float> col(d);
                                        const auto* f = reinterpret_cast<const float*>(blk.bytes.data());
                                        for (idx_t k = 0; k < d; ++k) col[k] = f[(c / 16) * 16 * d + k * 16 + c % 16];
                                        CHECK_BITS(out_s[r * ld + c], ip(x.data() + r * d, col.data(), d));
                                    }
                            }

                            // argmax, starting from a partly filled state
                            std::vector<float> best_s(n_rows), best_k;
                            std::vector<idx_t> id_s(n_rows), id_k;
                            for (idx_t r = 0; r < n_rows; ++r) {
                                best_s[r] = r % 3 == 0 ? -INFINITY : out_s[r * ld + (r % n_cols)];
                                id_s[r] = r % 3 == 0 ? -1 : 1000 + r % n_cols;
                            }
                            best_k = best_s;
                            id_k = id_s;
                            const auto lanes_for = [&](const Kernels& T) {
                                return static_cast<std::size_t>(32 * ((n_rows + T.mr - 1) / T.mr * T.mr));
                            };
                            Aligned<std::uint32_t> lanes_s(lanes_for(S)), lanes_k(lanes_for(K));
                            S.argmax(ts, 1000, best_s.data(), id_s.data(), lanes_s.data());
                            K.argmax(tk, 1000, best_k.data(), id_k.data(), lanes_k.data());
                            CHECK(id_s == id_k);
                            for (idx_t r = 0; r < n_rows; ++r) CHECK_BITS(best_s[r], best_k[r]);

                            // topk: all candidates at or above per-row thresholds, per row in column order
                            std::vector<float> thr_s(n_rows);
                            for (idx_t r = 0; r < n_rows; ++r) thr_s[r] = r % 2 ? -INFINITY : out_s[r * ld + n_cols / 2];
                            std::vector<float> thr_k = thr_s;
                            std::vector<Hit> hits_s, hits_k;
                            S.topk(ts, thr_s.data(), collect, &hits_s);
                            K.topk(tk, thr_k.data(), collect, &hits_k);
                            const auto rs = by_row(hits_s), rk = by_row(hits_k);
                            CHECK_EQ(rs.size(), rk.size());
                            for (const auto& [row, v] : rs) {
                                const auto it = rk.find(row);
                                CHECK(it != rk.end());
                                CHECK_EQ(v.size(), it->second.size());
                                for (std::size_t i = 0; i < v.size(); ++i) {
                                    CHECK_EQ(v[i].first, it->second[i].first);
                                    CHECK_BITS(v[i].second, it->second[i].second);
                                }
                            }
                            for (const Hit& h : hits_s) CHECK(h.score >= thr_s[h.row]);
                        }
                    }
    }
}

TEST(scores_of_rows_in_place_equal_packed_scores) {
    const Kernels& S = kernels_for(SimdLevel::scalar);
    std::uint64_t seed = 500;
    for (SimdLevel level : available_levels()) {
        const Kernels& K = kernels_for(level);
        for (idx_t d : {1, 3, 16, 17, 64})
            for (idx_t n_rows : {1, 5, 12, 13, 25})
                for (idx_t n_cols : {1, 15, 16, 17, 40}) {
                    const std::string what = std::string(simd_level_name(level)) + " d=" + show(d) +
                                             " rows=" + show(n_rows) + " cols=" + show(n_cols);
                    const idx_t stride = d + 3, src_rows = 30;
                    const auto src = uniform(src_rows * stride, ++seed);
                    std::vector<const float*> rows(n_rows);  // scattered, and some rows twice
                    std::vector<idx_t> ids(n_rows);
                    for (idx_t r = 0; r < n_rows; ++r) {
                        ids[r] = (r * 7 + 2) % src_rows;
                        rows[r] = src.data() + ids[r] * stride;
                    }
                    const Blocks blk(Codec::f32, n_cols, d, ++seed);
                    const auto* b = reinterpret_cast<const float*>(blk.bytes.data());
                    const idx_t ld = n_cols + 2;
                    Aligned<float> out_k(static_cast<std::size_t>(n_rows * ld), 7.0f),
                        out_s(static_cast<std::size_t>(n_rows * ld), 7.0f),
                        out_p(static_cast<std::size_t>(n_rows * ld), 7.0f);
                    K.scores_rows(rows.data(), n_rows, b, n_cols, d, out_k.data(), ld);
                    S.scores_rows(rows.data(), n_rows, b, n_cols, d, out_s.data(), ld);
                    // the packed-panel kernel on the same rows
                    Aligned<float> a(static_cast<std::size_t>(packed_rows_size(n_rows, d, K.mr)));
                    pack_rows(src.data(), stride, ids.data(), n_rows, d, K.mr, nullptr, a.data());
                    TileArgs t;
                    t.a = a.data();
                    t.n_rows = n_rows;
                    t.b = b;
                    t.n_cols = n_cols;
                    t.d = d;
                    K.scores(t, out_p.data(), ld);
                    for (std::size_t i = 0; i < out_k.size(); ++i) {
                        if (!same_bits(out_k[i], out_s[i])) fail(__FILE__, __LINE__, "scores_rows differ: " + what);
                        if (!same_bits(out_k[i], out_p[i])) fail(__FILE__, __LINE__, "differs from scores: " + what);
                    }
                    for (idx_t r = 0; r < n_rows; ++r)
                        for (idx_t c = n_cols; c < ld; ++c) CHECK_EQ(out_k[r * ld + c], 7.0f);
                }
    }
}

TEST(pack_kernels_equal_scalar) {
    const Kernels& S = kernels_for(SimdLevel::scalar);
    for (SimdLevel level : available_levels()) {
        const Kernels& K = kernels_for(level);
        for (idx_t d : {1, 3, 8, 9, 16, 17, 40})
            for (idx_t n : {1, 7, 16, 17, 40}) {
                const idx_t stride = d + 2, src_rows = 50;
                const auto src = uniform(src_rows * stride, static_cast<std::uint64_t>(d * 100 + n));
                std::vector<idx_t> ids(n);
                for (idx_t i = 0; i < n; ++i) ids[i] = (i * 7 + 3) % src_rows;
                for (bool use_ids : {false, true}) {
                    Aligned<float> bs(static_cast<std::size_t>(n_blocks(n) * kBlock * d), 9.0f),
                        bk(static_cast<std::size_t>(n_blocks(n) * kBlock * d), 9.0f);
                    S.pack_blocks_f32(src.data(), stride, use_ids ? ids.data() : nullptr, n, d, bs.data());
                    K.pack_blocks_f32(src.data(), stride, use_ids ? ids.data() : nullptr, n, d, bk.data());
                    for (std::size_t i = 0; i < bs.size(); ++i) CHECK_BITS(bs[i], bk[i]);
                    // layout: value of vector j in dimension k at block[k * 16 + j]; padding zero
                    for (idx_t i = 0; i < n_blocks(n) * kBlock; ++i)
                        for (idx_t k = 0; k < d; ++k) {
                            const float v = bk[(i / kBlock) * kBlock * d + k * kBlock + i % kBlock];
                            if (i < n) {
                                CHECK_EQ(v, src[(use_ids ? ids[i] : i) * stride + k]);
                            } else {
                                CHECK_EQ(v, 0.0f);
                            }
                        }
                }
            }
    }
}

TEST(f16_conversion_equals_scalar) {
    std::vector<float> src = uniform(1001, 3);
    for (auto& v : src) v *= 70000.0f;  // past the half range: overflows to inf
    const float specials[] = {0.0f, -0.0f, INFINITY, -INFINITY, 65504.0f, 65520.0f, 65519.99f, 6.1e-5f, 5.96e-8f,
                              2.98e-8f, 2.99e-8f, -3e-8f, 1e-10f, std::numeric_limits<float>::denorm_min(), 1.0f,
                              1.00048828125f, 1.000732421875f};
    src.insert(src.begin(), std::begin(specials), std::end(specials));
    for (SimdLevel level : available_levels()) {
        const Kernels& K = kernels_for(level);
        for (idx_t n : {idx_t{0}, idx_t{1}, idx_t{7}, idx_t{8}, idx_t{9}, static_cast<idx_t>(src.size())}) {
            Aligned<std::uint16_t> out(static_cast<std::size_t>(n));
            K.f32_to_f16(src.data(), n, out.data());
            for (idx_t i = 0; i < n; ++i) CHECK_EQ(out[i], float_to_half(src[i]));
        }
        // NaN stays NaN (its payload is not specified)
        const float nan = std::numeric_limits<float>::quiet_NaN();
        std::vector<float> nans(9, nan);
        std::vector<std::uint16_t> out(9);
        K.f32_to_f16(nans.data(), 9, out.data());
        for (auto h : out) CHECK(std::isnan(half_to_float(h)));
    }
}

TEST(half_float_round_trip_is_exact_for_every_half) {
    for (std::uint32_t h = 0; h < 65536; ++h) {
        const float f = half_to_float(static_cast<std::uint16_t>(h));
        if ((h & 0x7C00u) == 0x7C00u && (h & 0x3FFu)) {
            CHECK(std::isnan(f));
            CHECK(std::isnan(half_to_float(float_to_half(f))));
        } else {
            CHECK_EQ(static_cast<std::uint32_t>(float_to_half(f)), h);
        }
    }
    // round to nearest even, halfway cases
    CHECK_EQ(float_to_half(1.0f + 1.0f / 2048), std::uint16_t{0x3C00});  // halfway, even is down
    CHECK_EQ(float_to_half(1.0f + 3.0f / 2048), std::uint16_t{0x3C02});  // halfway, even is up
    CHECK_EQ(float_to_half(65520.0f), std::uint16_t{0x7C00});
    CHECK_EQ(float_to_half(-1e9f), std::uint16_t{0xFC00});
}

TEST(int8_screening_kernels_equal_scalar) {
    const Kernels& S = kernels_for(SimdLevel::scalar);
    Rng rng(77);
    for (SimdLevel level : available_levels()) {
        const Kernels& K = kernels_for(level);
        const int lim = K.i8_col_limit;
        CHECK(lim == 63 || lim == 127);
        for (idx_t d4 : {1, 2, 5, 16, 256})
            for (idx_t n_rows : {1, 5, 6, 7, 13})
                for (idx_t n_cols : {1, 15, 16, 17, 50, 64, 65, 113}) {
                    if (d4 == 256 && n_rows * n_cols > 200) continue;  // d = 1024: a few extreme cases
                    // rows: u8 q + 128 with |q| <= 127; columns: s8 with |q| <= the table's limit
                    const idx_t n_panels = (n_rows + kMr8 - 1) / kMr8;
                    Aligned<std::uint8_t> a(static_cast<std::size_t>(n_panels * d4 * 4 * kMr8), 128);
                    for (std::size_t i = 0; i < a.size(); ++i) a[i] = static_cast<std::uint8_t>(1 + rng.below(255));
                    Aligned<std::int8_t> b(static_cast<std::size_t>(n_blocks(n_cols) * d4 * 64));
                    for (std::size_t i = 0; i < b.size(); ++i)
                        b[i] = static_cast<std::int8_t>(static_cast<int>(rng.below(2 * lim + 1)) - lim);
                    if (d4 == 256) {  // the largest sums the contract allows: every product at its extreme
                        for (std::size_t i = 0; i < a.size(); ++i) a[i] = i % 3 ? 255 : 1;
                        for (std::size_t i = 0; i < b.size(); ++i)
                            b[i] = static_cast<std::int8_t>(i % 5 ? lim : -lim);
                    }
                    std::vector<float> rs(n_rows), cs(n_cols);
                    std::vector<std::int32_t> corr(n_cols);
                    for (auto& v : rs) v = static_cast<float>(rng.uniform() + 0.01);
                    for (auto& v : cs) v = static_cast<float>(rng.uniform() + 0.01);
                    for (auto& v : corr) v = static_cast<std::int32_t>(rng.below(20000)) - 10000;
                    const idx_t ld = n_cols + 1;
                    const auto n_out = static_cast<std::size_t>(n_rows * ld);
                    Aligned<float> zs(n_out, 3.0f), zk(n_out, 3.0f);
                    S.i8_scores(a.data(), n_rows, b.data(), n_cols, d4, rs.data(), cs.data(), corr.data(), zs.data(),
                                ld);
                    K.i8_scores(a.data(), n_rows, b.data(), n_cols, d4, rs.data(), cs.data(), corr.data(), zk.data(),
                                ld);
                    for (std::size_t i = 0; i < zs.size(); ++i) CHECK_BITS(zs[i], zk[i]);
                }
        for (idx_t n : {1, 7, 8, 9, 31, 100}) {
            std::vector<float> z = uniform(n, static_cast<std::uint64_t>(n));
            Aligned<float> za(static_cast<std::size_t>(n));
            std::copy(z.begin(), z.end(), za.data());
            CHECK_BITS(K.max_value(za.data(), n), S.max_value(za.data(), n));
            CHECK_BITS(K.max_value(za.data(), n), *std::max_element(z.begin(), z.end()));
            for (float tau : {-2.0f, 0.0f, 0.5f, z[n / 2], 2.0f}) {
                Aligned<std::int32_t> os(static_cast<std::size_t>(n)), ok(static_cast<std::size_t>(n));
                const idx_t ms = S.collect_ge(za.data(), n, tau, os.data());
                const idx_t mk = K.collect_ge(za.data(), n, tau, ok.data());
                CHECK_EQ(ms, mk);
                for (idx_t i = 0; i < ms; ++i) CHECK_EQ(os[i], ok[i]);
                idx_t want = 0;
                for (float v : z) want += v >= tau;
                CHECK_EQ(ms, want);
            }
        }
        for (idx_t d : {1, 3, 4, 5, 17, 64, 100})
            for (int lim : {63, 127}) {
                std::vector<float> x = uniform(d, static_cast<std::uint64_t>(d * lim));
                if (d == 5) std::fill(x.begin(), x.end(), 0.0f);  // a zero row: a = 1
                if (d == 3 || d == 100)  // subnormal rows: a stays normal, 1 / a finite
                    for (auto& v : x) v *= d == 3 ? 1e-44f : 1e-39f;
                if (d == 4 || d == 17) {  // x / a exactly halfway between integers: ties to even
                    x[0] = static_cast<float>(lim);
                    x[1] = 0.5f;
                    x[2] = -2.5f;
                    x[3] = 1.5f;
                }
                const idx_t stride = 4 * kMr8, d4 = (d + 3) / 4;
                Aligned<std::uint8_t> os(static_cast<std::size_t>(d4 * stride), 0), ok(static_cast<std::size_t>(d4 * stride), 0);
                float as_ = 0, ak_ = 0;
                double sts[3], stk[3];
                const int offset = lim == 127 ? 128 : 0;
                S.quantize_row(x.data(), d, lim, offset, os.data(), stride, &as_, sts);
                K.quantize_row(x.data(), d, lim, offset, ok.data(), stride, &ak_, stk);
                CHECK_BITS(as_, ak_);
                CHECK(as_ > 0 && std::isfinite(1.0f / as_));
                for (std::size_t i = 0; i < os.size(); ++i) CHECK_EQ(int(os[i]), int(ok[i]));
                // The stats are upper bounds (each level may sum in its own order): check that both
                // levels' values bound a|q|, |x - a q| and |x|, and are looser than the truth by no
                // more than the documented inflation.
                double q2 = 0, e2 = 0, x2 = 0;
                for (idx_t k = 0; k < d; ++k) {
                    const int q = static_cast<int>(os[(k / 4) * stride + k % 4]) - offset;
                    const int qs = lim == 127 ? q : static_cast<std::int8_t>(os[(k / 4) * stride + k % 4]);
                    CHECK(std::abs(qs) <= lim);
                    const double e = static_cast<double>(x[k]) - static_cast<double>(as_) * qs;
                    q2 += static_cast<double>(qs) * qs;
                    e2 += e * e;
                    x2 += static_cast<double>(x[k]) * x[k];
                }
                const double want[3] = {as_ * std::sqrt(q2), std::sqrt(e2), std::sqrt(x2)};
                for (int i = 0; i < 3; ++i) {
                    if (!(want[i] <= sts[i] && want[i] <= stk[i]))
                        fail(__FILE__, __LINE__,
                             "stat " + show(i) + " d=" + show(d) + " lim=" + show(lim) + " level=" +
                                 simd_level_name(level) + ": true " + show(want[i]) + ", scalar " + show(sts[i]) +
                                 ", level " + show(stk[i]));
                    CHECK_NEAR(sts[i], want[i], (4.0 * d * 0x1.0p-24 + 2e-6) * want[i] + 1e-19);
                    CHECK_NEAR(stk[i], want[i], (4.0 * d * 0x1.0p-24 + 2e-6) * want[i] + 1e-19);
                }
            }
    }
}

TEST(sq4_encoder_equals_scalar_and_counts_midpoints) {
    const Kernels& S = kernels_for(SimdLevel::scalar);
    for (SimdLevel level : available_levels()) {
        const Kernels& K = kernels_for(level);
        for (idx_t d : {1, 3, 17}) {
            auto blk = uniform(d * 16, static_cast<std::uint64_t>(d));
            std::vector<float> mids = uniform(d * 15, static_cast<std::uint64_t>(d + 1));
            for (idx_t k = 0; k < d; ++k) std::sort(mids.begin() + k * 15, mids.begin() + k * 15 + 15);
            blk[0] = mids[3];  // exactly on a midpoint: not counted (strictly greater)
            Aligned<std::uint8_t> os(static_cast<std::size_t>(d * 8)), ok(static_cast<std::size_t>(d * 8));
            S.encode_sq4(blk.data(), d, mids.data(), os.data());
            K.encode_sq4(blk.data(), d, mids.data(), ok.data());
            for (std::size_t i = 0; i < os.size(); ++i) CHECK_EQ(int(os[i]), int(ok[i]));
            for (idx_t k = 0; k < d; ++k)
                for (int j = 0; j < 16; ++j) {
                    int want = 0;
                    for (int t = 0; t < 15; ++t) want += blk[k * 16 + j] > mids[k * 15 + t];
                    const std::uint8_t byte = ok[k * 8 + (j & 7)];
                    CHECK_EQ(j < 8 ? byte & 0x0F : byte >> 4, want);
                }
        }
    }
}

int main(int argc, char** argv) { return mudg_test::run_all(argc, argv); }
