// exact_search() and nearest() against the brute-force oracle: every score bit and every id,
// at every SIMD level, with int8 screening off and on, for 1 and 2 threads; ties, k > n, one
// row, odd dimensions, strided views, the streaming (large database) path and the error paths.
#include <limits>

#include "check.hpp"
#include "mudg_fast/screen.hpp"
#include "mudg_fast/topk.hpp"

using namespace mudg_fast;
using namespace mudg_test;

namespace {

struct ScreeningGuard {
    int saved = screening_mode();
    ~ScreeningGuard() { set_screening(saved); }
};

/// Runs exact_search and compares it with the oracle bit for bit.
void expect_exact(const std::vector<float>& db, idx_t n, const std::vector<float>& q, idx_t nq, idx_t d, int k,
                  int n_threads, const char* what) {
    std::vector<float> want_s;
    std::vector<idx_t> want_i;
    brute_topk(db.data(), n, q.data(), nq, d, k, want_s, want_i);
    std::vector<float> s(static_cast<std::size_t>(nq * k), 123.0f);
    std::vector<idx_t> ids(static_cast<std::size_t>(nq * k), 123);
    exact_search(MatrixView<const float>(db.data(), n, d), MatrixView<const float>(q.data(), nq, d), k,
                 MatrixView<float>(s.data(), nq, k), MatrixView<idx_t>(ids.data(), nq, k), n_threads);
    for (std::size_t i = 0; i < s.size(); ++i) {
        if (ids[i] != want_i[i] || !same_bits(s[i], want_s[i]))
            fail(__FILE__, __LINE__,
                 std::string(what) + ": n=" + show(n) + " nq=" + show(nq) + " d=" + show(d) + " k=" + show(k) +
                     " threads=" + show(n_threads) + " level=" + simd_level_name(simd_level()) +
                     " screening=" + show(screening_mode()) + " slot " + show(i) + ": got (" + show(s[i]) + ", " +
                     show(ids[i]) + ") want (" + show(want_s[i]) + ", " + show(want_i[i]) + ")");
    }
}

}  // namespace

TEST(exact_search_equals_brute_force_at_every_level) {
    LevelGuard lg;
    ScreeningGuard sg;
    std::uint64_t seed = 1;
    for (SimdLevel level : available_levels()) {
        set_simd_level(level);
        for (int screen : {0, 1}) {
            set_screening(screen);
            for (idx_t d : {1, 3, 16, 17, 33, 100})
                for (idx_t n : {1, 5, 40, 300})
                    for (idx_t nq : {1, 7, 50})
                        for (int k : {1, 3, 10, 400}) {
                            const auto db = uniform(n * d, ++seed);
                            const auto q = uniform(nq * d, ++seed);
                            expect_exact(db, n, q, nq, d, k, 2, "uniform");
                        }
        }
    }
}

TEST(ties_go_to_the_lower_id) {
    LevelGuard lg;
    ScreeningGuard sg;
    std::uint64_t seed = 100;
    for (SimdLevel level : available_levels()) {
        set_simd_level(level);
        for (int screen : {0, 1}) {
            set_screening(screen);
            for (idx_t d : {1, 3, 17, 33})
                for (idx_t n : {16, 100, 257})
                    for (int k : {1, 2, 20, 64}) {
                        // Integers in [-1, 1]: a handful of distinct scores, many exact ties.
                        const auto db = small_ints(n * d, 1, ++seed);
                        const auto q = small_ints(9 * d, 1, ++seed);
                        expect_exact(db, n, q, 9, d, k, 1, "small ints");
                    }
            // Every row identical: the result is ids 0..k-1.
            const idx_t d = 20, n = 90;
            std::vector<float> db(n * d, 0.5f), q(3 * d, 0.25f);
            expect_exact(db, n, q, 3, d, 7, 2, "identical rows");
        }
    }
}

TEST(threads_do_not_change_the_result) {
    ScreeningGuard sg;
    for (int screen : {0, 1}) {
        set_screening(screen);
        const idx_t n = 700, d = 40, nq = 130;
        const auto db = uniform(n * d, 7), q = uniform(nq * d, 8);
        for (int k : {1, 5, 33}) {
            std::vector<float> s1(nq * k), s3(nq * k);
            std::vector<idx_t> i1(nq * k), i3(nq * k);
            exact_search(MatrixView<const float>(db.data(), n, d), MatrixView<const float>(q.data(), nq, d), k,
                         MatrixView<float>(s1.data(), nq, k), MatrixView<idx_t>(i1.data(), nq, k), 1);
            exact_search(MatrixView<const float>(db.data(), n, d), MatrixView<const float>(q.data(), nq, d), k,
                         MatrixView<float>(s3.data(), nq, k), MatrixView<idx_t>(i3.data(), nq, k), 3);
            CHECK(i1 == i3);
            for (std::size_t i = 0; i < s1.size(); ++i) CHECK_BITS(s1[i], s3[i]);
        }
    }
}

TEST(screening_on_and_off_give_identical_results) {
    ScreeningGuard sg;
    LevelGuard lg;
    // Shapes where screening applies (d >= 16, n >= 64, k <= 64), including a clustered
    // database whose int8 approximations are close together.
    const idx_t n = 1000, d = 64, nq = 40;
    auto db = uniform(n * d, 21);
    for (idx_t i = 0; i < n; ++i)
        for (idx_t t = 0; t < d; ++t) db[i * d + t] = 0.9f + 0.001f * db[i * d + t];
    const auto q = uniform(nq * d, 22);
    CHECK(use_screening(kernels_for(SimdLevel::scalar), d, n, 10) == (screening_mode() == 1));
    for (SimdLevel level : available_levels()) {  // each level's screening kernel and column range
        set_simd_level(level);
        for (int k : {1, 10, 64}) {
            std::vector<float> s0(nq * k), s1(nq * k);
            std::vector<idx_t> i0(nq * k), i1(nq * k);
            set_screening(0);
            exact_search(MatrixView<const float>(db.data(), n, d), MatrixView<const float>(q.data(), nq, d), k,
                         MatrixView<float>(s0.data(), nq, k), MatrixView<idx_t>(i0.data(), nq, k), 2);
            set_screening(1);
            CHECK(use_screening(kernels(), d, n, k));
            exact_search(MatrixView<const float>(db.data(), n, d), MatrixView<const float>(q.data(), nq, d), k,
                         MatrixView<float>(s1.data(), nq, k), MatrixView<idx_t>(i1.data(), nq, k), 2);
            CHECK(i0 == i1);
            for (std::size_t i = 0; i < s0.size(); ++i) CHECK_BITS(s0[i], s1[i]);
        }
    }
    set_screening(5);
    CHECK_EQ(screening_mode(), 1);
    set_screening(-7);
    CHECK_EQ(screening_mode(), -1);
    set_screening(0);
    CHECK(!use_screening(kernels(), 64, 1000, 10));
}

TEST(large_database_streams_and_matches_brute_force) {
    // n * d above the 16M-float packing limit: the database is packed chunk by chunk by the
    // worker threads and the per-thread states are merged.
    LevelGuard lg;
    ScreeningGuard sg;
    const idx_t d = 512, n = (idx_t{16} << 20) / d + 37, nq = 3;
    auto db = uniform(n * d, 31);
    // Duplicate rows far apart: ties across chunks must still go to the lower id.
    std::copy(db.begin() + 5 * d, db.begin() + 6 * d, db.begin() + (n - 2) * d);
    auto q = uniform(nq * d, 32);
    std::copy(db.begin() + 5 * d, db.begin() + 6 * d, q.begin());  // query 0 hits rows 5 and n-2
    set_simd_level(detected_simd_level());
    for (int screen : {0, 1}) {
        set_screening(screen);
        expect_exact(db, n, q, nq, d, 1, 2, "large k=1");
        expect_exact(db, n, q, nq, d, 6, 2, "large k=6");
    }
}

TEST(tiny_and_subnormal_magnitudes) {
    // Rows whose largest entry is subnormal (or whose quantisation step underflows) still give
    // exactly the brute-force result, with screening on and off.
    LevelGuard lg;
    ScreeningGuard sg;
    const idx_t n = 200, d = 24, nq = 20;
    for (float scale : {1e-30f, 1e-38f, 1e-41f, 1e-44f}) {
        auto db = uniform(n * d, 61);
        auto q = uniform(nq * d, 62);
        for (idx_t i = 0; i < n; ++i)
            for (idx_t t = 0; t < d; ++t) db[i * d + t] *= (i % 3 == 0) ? scale : 1.0f;  // mixed rows
        for (idx_t t = 0; t < d; ++t) q[t] *= scale;  // and a tiny query
        std::fill(db.begin() + 7 * d, db.begin() + 8 * d, 0.0f);  // an all-zero row
        for (SimdLevel level : available_levels()) {
            set_simd_level(level);
            for (int screen : {0, 1}) {
                set_screening(screen);
                for (int k : {1, 5}) expect_exact(db, n, q, nq, d, k, 2, "tiny");
            }
        }
    }
}

TEST(strided_views_and_padded_outputs) {
    // Queries and database inside wider matrices; outputs with stride > k: the gaps must not be
    // written.
    const idx_t n = 80, d = 19, nq = 11, ld_db = 24, ld_q = 31, k = 5, ld_out = 9;
    const auto wide_db = uniform(n * ld_db, 41), wide_q = uniform(nq * ld_q, 42);
    std::vector<float> db(n * d), q(nq * d);
    for (idx_t i = 0; i < n; ++i) std::copy(&wide_db[i * ld_db], &wide_db[i * ld_db] + d, &db[i * d]);
    for (idx_t i = 0; i < nq; ++i) std::copy(&wide_q[i * ld_q], &wide_q[i * ld_q] + d, &q[i * d]);
    std::vector<float> want_s;
    std::vector<idx_t> want_i;
    brute_topk(db.data(), n, q.data(), nq, d, k, want_s, want_i);
    std::vector<float> s(nq * ld_out, 7.0f);
    std::vector<idx_t> ids(nq * ld_out, 7);
    exact_search(MatrixView<const float>(wide_db.data(), n, d, ld_db), MatrixView<const float>(wide_q.data(), nq, d, ld_q),
                 k, MatrixView<float>(s.data(), nq, k, ld_out), MatrixView<idx_t>(ids.data(), nq, k, ld_out), 2);
    for (idx_t i = 0; i < nq; ++i)
        for (idx_t j = 0; j < ld_out; ++j) {
            if (j < k) {
                CHECK_BITS(s[i * ld_out + j], want_s[i * k + j]);
                CHECK_EQ(ids[i * ld_out + j], want_i[i * k + j]);
            } else {
                CHECK_EQ(s[i * ld_out + j], 7.0f);
                CHECK_EQ(ids[i * ld_out + j], idx_t{7});
            }
        }
}

TEST(empty_inputs_give_padding) {
    const idx_t d = 4;
    std::vector<float> q(2 * d, 1.0f), s(2 * 3, 0.0f);
    std::vector<idx_t> ids(2 * 3, 0);
    exact_search(MatrixView<const float>(nullptr, 0, d), MatrixView<const float>(q.data(), 2, d), 3,
                 MatrixView<float>(s.data(), 2, 3), MatrixView<idx_t>(ids.data(), 2, 3));
    for (int i = 0; i < 6; ++i) {
        CHECK(std::isinf(s[i]) && s[i] < 0);
        CHECK_EQ(ids[i], idx_t{-1});
    }
    // No queries: nothing to write, no error.
    exact_search(MatrixView<const float>(q.data(), 2, d), MatrixView<const float>(nullptr, 0, d), 3,
                 MatrixView<float>(nullptr, 0, 3), MatrixView<idx_t>(nullptr, 0, 3));
    float ns = 0;
    idx_t ni = 0;
    nearest(MatrixView<const float>(nullptr, 0, d), MatrixView<const float>(q.data(), 1, d), &ns, &ni);
    CHECK(std::isinf(ns) && ns < 0);
    CHECK_EQ(ni, idx_t{-1});
}

TEST(nearest_with_bias_and_query_ids) {
    LevelGuard lg;
    std::uint64_t seed = 50;
    for (SimdLevel level : available_levels()) {
        set_simd_level(level);
        for (idx_t d : {1, 3, 17, 33})
            for (idx_t n : {1, 15, 16, 17, 130}) {
                const idx_t nx = 60, nq = 45;
                const auto db = uniform(n * d, ++seed), x = uniform(nx * d, ++seed), bias = uniform(n, ++seed);
                std::vector<idx_t> qids(nq);
                Rng rng(++seed);
                for (auto& v : qids) v = static_cast<idx_t>(rng.below(nx));
                std::vector<float> q(nq * d);  // the rows qids point to, for the oracle
                for (idx_t i = 0; i < nq; ++i) std::copy(&x[qids[i] * d], &x[qids[i] * d] + d, &q[i * d]);
                for (bool with_bias : {false, true}) {
                    std::vector<float> want_s;
                    std::vector<idx_t> want_i;
                    brute_topk(db.data(), n, q.data(), nq, d, 1, want_s, want_i, with_bias ? bias.data() : nullptr);
                    std::vector<float> s(nq);
                    std::vector<idx_t> ids(nq);
                    nearest(MatrixView<const float>(db.data(), n, d), MatrixView<const float>(x.data(), nx, d), s.data(),
                            ids.data(), 2, with_bias ? bias.data() : nullptr, qids.data(), nq);
                    for (idx_t i = 0; i < nq; ++i) {
                        CHECK_EQ(ids[i], want_i[i]);
                        CHECK_BITS(s[i], want_s[i]);
                    }
                }
            }
    }
}

TEST(topk_heaps_keep_the_k_best_in_total_order) {
    Rng rng(5);
    for (int k : {1, 2, 7, 32, 300}) {
        TopkHeaps h;
        h.reset(3, k);
        std::vector<std::vector<std::pair<float, idx_t>>> all(3);
        for (int i = 0; i < 3000; ++i) {  // several selections per row
            const idx_t row = static_cast<idx_t>(rng.below(3));
            const float s = static_cast<float>(rng.below(10));  // many ties
            const idx_t id = static_cast<idx_t>(rng.below(1000));
            h.push(row, s, id);
            all[row].push_back({s, id});
        }
        for (idx_t row = 0; row < 3; ++row) {
            auto& v = all[row];
            std::sort(v.begin(), v.end(), BetterPair{});
            std::vector<float> s(k);
            std::vector<idx_t> ids(k);
            h.extract(row, s.data(), ids.data());
            for (int j = 0; j < k; ++j) {
                if (j < static_cast<int>(v.size())) {
                    CHECK_EQ(s[j], v[j].first);
                    CHECK_EQ(ids[j], v[j].second);
                } else {
                    CHECK_EQ(ids[j], idx_t{-1});
                }
            }
            // the threshold is a lower bound of the k-th best (exact after a selection)
            if (static_cast<int>(v.size()) >= k) CHECK(h.threshold(row) <= v[k - 1].first);
            if (static_cast<int>(v.size()) < k) CHECK_EQ(h.threshold(row), -INFINITY);
        }
        // merge_row: row 0 of a fresh heap absorbs rows 1 and 2.
        TopkHeaps m;
        m.reset(1, k);
        m.merge_row(0, h, 1);
        m.merge_row(0, h, 2);
        std::vector<std::pair<float, idx_t>> both(all[1].begin(), all[1].begin() + std::min<std::size_t>(k, all[1].size()));
        both.insert(both.end(), all[2].begin(), all[2].begin() + std::min<std::size_t>(k, all[2].size()));
        std::sort(both.begin(), both.end(), BetterPair{});
        std::vector<float> s(k);
        std::vector<idx_t> ids(k);
        m.extract(0, s.data(), ids.data());
        for (int j = 0; j < k && j < static_cast<int>(both.size()); ++j) CHECK_EQ(ids[j], both[j].second);
    }
}

namespace {

using Pair = std::pair<float, idx_t>;

/// The k best of v in the total order, padded with (-inf, -1).
std::vector<Pair> reference_topk(std::vector<Pair> v, int k) {
    std::sort(v.begin(), v.end(), BetterPair{});
    v.resize(static_cast<std::size_t>(k), Pair{-INFINITY, idx_t{-1}});
    return v;
}

void expect_row(const TopkHeaps& h, idx_t row, const std::vector<Pair>& pushed, const std::string& what) {
    const int k = h.k();
    const std::vector<Pair> want = reference_topk(pushed, k);
    std::vector<float> s(k);
    std::vector<idx_t> ids(k);
    h.extract(row, s.data(), ids.data());
    for (int j = 0; j < k; ++j)
        if (ids[j] != want[j].second || !same_bits(s[j], want[j].first))
            fail(__FILE__, __LINE__, what + " k=" + show(k) + " slot " + show(j) + ": got (" + show(s[j]) + ", " +
                                         show(ids[j]) + ") want (" + show(want[j].first) + ", " +
                                         show(want[j].second) + ")");
}

/// Score streams that take the selection's different paths: spread scores (the sampled pivot),
/// few distinct values and a single value (ties: the exact selection, ids decide), the same
/// (score, id) pushed again and again, and rising / falling streams (a selection every few
/// pushes / thresholds that settle at once).
enum class Stream { spread, few_values, one_value, repeats, rising, falling };

Pair draw(Rng& rng, Stream st, int i) {
    switch (st) {
        case Stream::spread: return {static_cast<float>(rng.uniform()), static_cast<idx_t>(rng.below(1u << 20))};
        case Stream::few_values: return {static_cast<float>(rng.below(4)), static_cast<idx_t>(rng.below(5000))};
        case Stream::one_value: return {0.5f, static_cast<idx_t>(rng.below(100000))};
        case Stream::repeats: return {static_cast<float>(rng.below(3)), static_cast<idx_t>(rng.below(40))};
        case Stream::rising: return {static_cast<float>(i) * 0.25f, static_cast<idx_t>(rng.below(1000))};
        case Stream::falling: return {-static_cast<float>(i) * 0.25f, static_cast<idx_t>(rng.below(1000))};
    }
    return {};
}

}  // namespace

TEST(topk_buffer_selections_match_a_sorted_reference) {
    Rng rng(11);
    const Stream streams[] = {Stream::spread, Stream::few_values, Stream::one_value,
                              Stream::repeats, Stream::rising, Stream::falling};
    for (int k : {1, 3, 10, 100, 300, 1000}) {
        const int n_push = 6 * TopkHeaps::capacity_for(k);  // several selections per row
        for (Stream st : streams) {
            const std::string what = "stream " + show(static_cast<int>(st));
            constexpr idx_t kRows = 8;  // many selections: rare sample pivots get their turn
            TopkHeaps h;
            h.reset(kRows, k);
            std::vector<Pair> pushed[kRows];
            for (int i = 0; i < kRows * n_push; ++i) {
                const idx_t row = i % kRows;
                const Pair p = draw(rng, st, i / kRows);
                // As the tile kernels do: only scores >= the threshold reach push().
                const float thr = h.threshold(row);
                pushed[row].push_back(p);
                if (p.first >= thr) h.push(row, p.first, p.second);
                // The threshold never decreases and, when it moves, at least k of the scores
                // pushed so far reach it: it is at most the k-th best, so it never prunes a
                // member of the final top-k.
                const float now = h.threshold(row);
                CHECK(now >= thr);
                if (now != thr) {
                    int reach = 0;
                    for (const Pair& q : pushed[row]) reach += q.first >= now;
                    CHECK(reach >= k);
                }
            }
            for (idx_t row = 0; row < kRows; ++row) expect_row(h, row, pushed[row], what);
        }
    }
}

TEST(topk_merge_and_a_threshold_shared_between_instances) {
    // Two instances fed disjoint candidates of the same rows, the second pruning with the first's
    // threshold as list-major search shares it between threads; merged, they hold exactly the
    // k best of everything.
    Rng rng(12);
    for (int k : {1, 10, 100, 300}) {
        for (int few : {0, 1}) {
            TopkHeaps a, b;
            a.reset(3, k);
            b.reset(3, k);
            std::vector<Pair> all[3];
            const int n = 5 * TopkHeaps::capacity_for(k);
            for (int i = 0; i < 3 * n; ++i) {
                const idx_t row = static_cast<idx_t>(rng.below(3));
                const float s = few ? static_cast<float>(rng.below(6)) : static_cast<float>(rng.uniform());
                const Pair p{s, static_cast<idx_t>(i)};
                all[row].push_back(p);
                if (rng.below(2)) {
                    if (s >= a.threshold(row)) a.push(row, s, p.second);
                } else if (s >= std::max(a.threshold(row), b.threshold(row))) {
                    b.push(row, s, p.second);
                }
            }
            for (idx_t row = 0; row < 3; ++row) {
                TopkHeaps m;  // a fresh instance absorbs both, as the merge after the threads does
                m.reset(1, k);
                m.merge_row(0, a, row);
                m.merge_row(0, b, row);
                expect_row(m, 0, all[row], "merged k=" + show(k) + " few=" + show(few));
                b.merge_row(row, a, row);  // and merging into a used row
                expect_row(b, row, all[row], "merged into b, few=" + show(few));
            }
        }
    }
}

TEST(bad_arguments_throw_error) {
    std::vector<float> db(10 * 4, 1.0f), q(2 * 3, 1.0f), s(2 * 2);
    std::vector<idx_t> ids(2 * 2);
    CHECK_THROWS(exact_search(MatrixView<const float>(db.data(), 10, 4), MatrixView<const float>(q.data(), 2, 4), 0,
                              MatrixView<float>(s.data(), 2, 2), MatrixView<idx_t>(ids.data(), 2, 2)),
                 Error, "k must be >= 1, got 0");
    CHECK_THROWS(exact_search(MatrixView<const float>(db.data(), 10, 4), MatrixView<const float>(q.data(), 2, 3), 2,
                              MatrixView<float>(s.data(), 2, 2), MatrixView<idx_t>(ids.data(), 2, 2)),
                 Error, "queries have 3 dimensions but the database has 4");
    CHECK_THROWS(nearest(MatrixView<const float>(db.data(), 10, 4), MatrixView<const float>(q.data(), 2, 3), s.data(),
                         ids.data()),
                 Error, "dimensions");
}

int main(int argc, char** argv) { return mudg_test::run_all(argc, argv); }
