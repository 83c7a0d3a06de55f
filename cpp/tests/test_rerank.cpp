// Re-ranking: the row kernels of every SIMD level against the scalar table and the fma-chain
// oracle, bit for bit; rerank() against a brute-force top-k over each query's distinct candidates,
// for segment and fetch sources, f32 / f16 / mixed rows, padding, repeats, every level and 1-3
// threads; and its errors.
#include <map>
#include <set>

#include "check.hpp"
#include "mudg_fast/rerank.hpp"

using namespace mudg_fast;
using namespace mudg_test;

namespace {

std::vector<std::uint16_t> to_half(const std::vector<float>& x) {
    std::vector<std::uint16_t> h(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) h[i] = float_to_half(x[i]);
    return h;
}

std::vector<float> from_half(const std::vector<std::uint16_t>& h) {
    std::vector<float> x(h.size());
    for (std::size_t i = 0; i < h.size(); ++i) x[i] = half_to_float(h[i]);
    return x;
}

/// The reference: distinct valid candidates of each row, scored with ip() on float rows, best k.
void reference(const std::vector<float>& q, const std::vector<idx_t>& cand, idx_t nq, idx_t sl, const float* rows,
               idx_t d, int k, std::vector<float>& s, std::vector<idx_t>& ids) {
    s.assign(static_cast<std::size_t>(nq * k), -INFINITY);
    ids.assign(static_cast<std::size_t>(nq * k), -1);
    for (idx_t i = 0; i < nq; ++i) {
        std::set<idx_t> distinct;
        for (idx_t j = 0; j < sl; ++j)
            if (cand[i * sl + j] >= 0) distinct.insert(cand[i * sl + j]);
        std::vector<std::pair<float, idx_t>> v;
        for (idx_t id : distinct) v.push_back({ip(q.data() + i * d, rows + id * d, d), id});
        std::sort(v.begin(), v.end(), BetterPair{});
        for (idx_t j = 0; j < std::min<idx_t>(k, static_cast<idx_t>(v.size())); ++j) {
            s[i * k + j] = v[j].first;
            ids[i * k + j] = v[j].second;
        }
    }
}

struct Out {
    std::vector<float> s;
    std::vector<idx_t> i;
};

Out run(const std::vector<float>& q, const std::vector<idx_t>& cand, idx_t nq, idx_t sl, idx_t d, int k,
        const RowSource& src, int threads) {
    Out o;
    o.s.assign(static_cast<std::size_t>(nq * k), 7.0f);
    o.i.assign(static_cast<std::size_t>(nq * k), 7);
    rerank(MatrixView<const float>(q.data(), nq, d), MatrixView<const idx_t>(cand.data(), nq, sl), k, src,
           MatrixView<float>(o.s.data(), nq, k), MatrixView<idx_t>(o.i.data(), nq, k), threads);
    return o;
}

void check_same(const Out& got, const std::vector<float>& s, const std::vector<idx_t>& ids, const std::string& what) {
    for (std::size_t j = 0; j < s.size(); ++j) {
        if (got.i[j] != ids[j] || !same_bits(got.s[j], s[j]))
            fail(__FILE__, __LINE__,
                 what + ": slot " + show(j) + " got (" + show(got.s[j]) + ", " + show(got.i[j]) + "), want (" +
                     show(s[j]) + ", " + show(ids[j]) + ")");
    }
}

/// Random shortlists over [0, n): -1 padding, repeats, some rows all padding.
std::vector<idx_t> shortlists(idx_t nq, idx_t sl, idx_t n, std::uint64_t seed) {
    Rng rng(seed);
    std::vector<idx_t> c(static_cast<std::size_t>(nq * sl));
    for (idx_t i = 0; i < nq; ++i)
        for (idx_t j = 0; j < sl; ++j) {
            const auto r = rng.below(10);
            idx_t& v = c[i * sl + j];
            if (i % 7 == 3 || r == 0) {
                v = -1;
            } else if (r == 1 && j > 0) {
                v = c[i * sl + rng.below(j)];  // a repeat (or a repeated -1)
            } else {
                v = static_cast<idx_t>(rng.below(static_cast<std::uint64_t>(n)));
            }
        }
    return c;
}

}  // namespace

TEST(row_kernels_equal_scalar_and_the_oracle) {
    const Kernels& S = kernels_for(SimdLevel::scalar);
    for (SimdLevel level : available_levels()) {
        const Kernels& K = kernels_for(level);
        CHECK(K.dot_rows_f32 != nullptr && K.dot_rows_f16 != nullptr);  // every table has them
        for (idx_t d : {1, 3, 7, 8, 9, 16, 17, 40, 64})
            for (idx_t n : {0, 1, 5, 8, 15, 16, 17, 31, 32, 33, 47, 64, 100}) {
                const std::string what = std::string(simd_level_name(level)) + " d=" + show(d) + " n=" + show(n);
                const idx_t n_src = 37;
                // rows at odd element offsets (unaligned), some repeated
                const auto x = uniform(n_src * d + 1, static_cast<std::uint64_t>(d * 1000 + n));
                const auto h = to_half(x);
                const auto xh = from_half(h);
                const auto q = uniform(d, static_cast<std::uint64_t>(d + 7 * n));
                std::vector<const float*> r32(n);
                std::vector<const std::uint16_t*> r16(n);
                for (idx_t i = 0; i < n; ++i) {
                    const idx_t src = (i * 11 + 5) % n_src;
                    r32[i] = x.data() + 1 + src * d;
                    r16[i] = h.data() + 1 + src * d;
                }
                Aligned<float> o32s(n, 9.0f), o32k(n, 9.0f), o16s(n, 9.0f), o16k(n, 9.0f);
                S.dot_rows_f32(q.data(), r32.data(), n, d, o32s.data());
                K.dot_rows_f32(q.data(), r32.data(), n, d, o32k.data());
                S.dot_rows_f16(q.data(), r16.data(), n, d, o16s.data());
                K.dot_rows_f16(q.data(), r16.data(), n, d, o16k.data());
                for (idx_t i = 0; i < n; ++i) {
                    const idx_t src = (i * 11 + 5) % n_src;
                    if (!same_bits(o32k[i], o32s[i]) || !same_bits(o16k[i], o16s[i]))
                        fail(__FILE__, __LINE__, "level differs from scalar: " + what + " i=" + show(i));
                    CHECK_BITS(o32s[i], ip(q.data(), x.data() + 1 + src * d, d));
                    CHECK_BITS(o16s[i], ip(q.data(), xh.data() + 1 + src * d, d));
                }
            }
    }
}

TEST(f16_rows_convert_every_half_exactly) {
    // All 63488 finite halves (subnormals included) through the f16 kernel: with q = e_k the
    // score is the converted value itself.
    std::vector<std::uint16_t> all;
    for (std::uint32_t v = 0; v < 65536; ++v)
        if ((v & 0x7C00u) != 0x7C00u) all.push_back(static_cast<std::uint16_t>(v));
    const idx_t d = 8, n = static_cast<idx_t>(all.size()) / d;
    for (SimdLevel level : available_levels()) {
        const Kernels& K = kernels_for(level);
        for (idx_t kk = 0; kk < d; ++kk) {
            std::vector<float> q(d, 0.0f);
            q[kk] = 1.0f;
            std::vector<const std::uint16_t*> rows(n);
            for (idx_t i = 0; i < n; ++i) rows[i] = all.data() + i * d;
            std::vector<float> out(n);
            K.dot_rows_f16(q.data(), rows.data(), n, d, out.data());
            for (idx_t i = 0; i < n; ++i) {
                // fma(1, x, 0) is x, except that -0 + 0 = +0: compare values, and zero signs apart
                const float want = half_to_float(all[i * d + kk]) + 0.0f;
                CHECK_BITS(out[i], want);
            }
        }
    }
}

TEST(rerank_equals_brute_force_for_every_source_level_and_thread_count) {
    LevelGuard restore;
    std::uint64_t seed = 100;
    for (idx_t d : {5, 16, 33})
        for (idx_t sl : {1, 9, 40})
            for (int k : {1, 4, 50}) {
                const idx_t n = 300, nq = 23;
                const auto x = uniform(n * d, ++seed);
                const auto h = to_half(x);
                const auto xh = from_half(h);
                const auto q = uniform(nq * d, ++seed);
                const auto cand = shortlists(nq, sl, n, ++seed);
                std::vector<float> want_s, want_s16, mixed_rows(x);
                std::vector<idx_t> want_i, want_i16;
                reference(q, cand, nq, sl, x.data(), d, k, want_s, want_i);
                reference(q, cand, nq, sl, xh.data(), d, k, want_s16, want_i16);

                RowSource f32, f16, mixed, fetch;
                f32.dim = f16.dim = mixed.dim = fetch.dim = d;
                f32.segments.push_back({x.data(), 0, n, d * 4, RowType::f32});
                f16.segments.push_back({h.data(), 0, n, d * 2, RowType::f16});
                // shards: f16 [0, 100), an empty one, f32 [100, 250) with a wider stride, f16 [250, 300)
                std::vector<float> wide(static_cast<std::size_t>(150 * (d + 3)));
                for (idx_t r = 0; r < 150; ++r)
                    for (idx_t t = 0; t < d; ++t) wide[r * (d + 3) + t] = x[(100 + r) * d + t];
                mixed.segments.push_back({h.data(), 0, 100, d * 2, RowType::f16});
                mixed.segments.push_back({nullptr, 100, 0, d * 2, RowType::f16});
                mixed.segments.push_back({wide.data(), 100, 150, (d + 3) * 4, RowType::f32});
                mixed.segments.push_back({h.data() + 250 * d, 250, 50, d * 2, RowType::f16});
                for (idx_t r = 0; r < n; ++r)
                    if (r < 100 || r >= 250)
                        for (idx_t t = 0; t < d; ++t) mixed_rows[r * d + t] = xh[r * d + t];
                std::vector<float> want_sm;
                std::vector<idx_t> want_im;
                reference(q, cand, nq, sl, mixed_rows.data(), d, k, want_sm, want_im);
                // a fetch callback: rows copied in the order asked; ids must come ascending, distinct
                fetch.fetch = [&](const idx_t* ids, idx_t m) {
                    auto buf = std::make_shared<std::vector<float>>(static_cast<std::size_t>(m * d));
                    for (idx_t j = 0; j < m; ++j) {
                        if (j > 0 && ids[j] <= ids[j - 1]) fail(__FILE__, __LINE__, "fetch ids not ascending");
                        std::copy(x.begin() + ids[j] * d, x.begin() + (ids[j] + 1) * d, buf->begin() + j * d);
                    }
                    FetchedRows r;
                    r.data = buf->data();
                    r.stride = d * 4;
                    r.type = RowType::f32;
                    r.keep = buf;
                    return r;
                };
                for (SimdLevel level : available_levels()) {
                    set_simd_level(level);
                    for (int threads : {1, 2, 3}) {
                        const std::string what = std::string(simd_level_name(level)) + " d=" + show(d) +
                                                 " sl=" + show(sl) + " k=" + show(k) + " threads=" + show(threads);
                        check_same(run(q, cand, nq, sl, d, k, f32, threads), want_s, want_i, "f32 " + what);
                        check_same(run(q, cand, nq, sl, d, k, f16, threads), want_s16, want_i16, "f16 " + what);
                        check_same(run(q, cand, nq, sl, d, k, mixed, threads), want_sm, want_im, "mixed " + what);
                        check_same(run(q, cand, nq, sl, d, k, fetch, threads), want_s, want_i, "fetch " + what);
                    }
                }
            }
}

TEST(rerank_ties_go_to_the_lower_id_and_blocks_do_not_matter) {
    // Small integers: many exact ties. Enough queries for several blocks of kBlockSlots slots.
    const idx_t d = 4, n = 50, nq = 700, sl = 30;
    const int k = 12;
    const auto x = small_ints(n * d, 1, 5);
    const auto q = small_ints(nq * d, 1, 6);
    const auto cand = shortlists(nq, sl, n, 7);
    std::vector<float> want_s;
    std::vector<idx_t> want_i;
    reference(q, cand, nq, sl, x.data(), d, k, want_s, want_i);
    RowSource src;
    src.dim = d;
    src.segments.push_back({x.data(), 0, n, d * 4, RowType::f32});
    for (int threads : {1, 2, 3}) check_same(run(q, cand, nq, sl, d, k, src, threads), want_s, want_i, "ties");
}

TEST(rerank_refuses_bad_ids_and_shapes) {
    const idx_t d = 8, n = 20, nq = 3, sl = 4;
    const auto x = uniform(n * d, 1);
    const auto q = uniform(nq * d, 2);
    RowSource src;
    src.dim = d;
    src.segments.push_back({x.data(), 0, n, d * 4, RowType::f32});
    auto message = [&](std::vector<idx_t> cand, idx_t qd = 8, int k = 2) -> std::string {
        std::vector<float> s(nq * k);
        std::vector<idx_t> i(nq * k);
        try {
            rerank(MatrixView<const float>(q.data(), nq, qd), MatrixView<const idx_t>(cand.data(), nq, sl), k, src,
                   MatrixView<float>(s.data(), nq, k), MatrixView<idx_t>(i.data(), nq, k), 2);
        } catch (const Error& e) {
            return e.what();
        }
        return "";
    };
    std::vector<idx_t> ok(nq * sl, 3);
    CHECK_EQ(message(ok), std::string());
    auto bad = ok;
    bad[6] = 20;
    const std::string m1 = message(bad);
    CHECK(m1.find("candidates[1, 2] = 20 is out of range") != std::string::npos);
    CHECK(m1.find("20 rows") != std::string::npos);
    bad[6] = -2;
    CHECK(message(bad).find("= -2: ids must be >= 0") != std::string::npos);
    CHECK(message(ok, 8, 0).find("k must be >= 1") != std::string::npos);
    CHECK(message(ok, 4).find("queries have 4 dimensions, the source 8") != std::string::npos);
    // a NaN row is named when it is scored
    auto xn = x;
    xn[5 * d + 2] = NAN;
    src.segments[0].data = xn.data();
    auto five = ok;
    five[1] = 5;
    CHECK(message(five).find("source row 5") != std::string::npos);
}

int main(int argc, char** argv) { return mudg_test::run_all(argc, argv); }
