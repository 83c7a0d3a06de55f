// Rank voting (combine_retrievals), similarity to prototypes and per-class selection: hand-made
// cases with known answers, a map-based oracle on random input, invariance to thread count and
// the error paths.
#include <map>
#include <set>

#include "check.hpp"
#include "mudg_fast/select.hpp"

using namespace mudg_fast;
using namespace mudg_test;

namespace {

CombinedRetrieval combine(const std::vector<idx_t>& ids, const std::vector<float>* scores, idx_t m, idx_t c, idx_t k,
                          std::uint64_t seed = 0, int threads = 0) {
    return combine_retrievals(ids.data(), scores ? scores->data() : nullptr, m, c, k, seed, threads);
}

void check_same(const CombinedRetrieval& a, const CombinedRetrieval& b) {
    CHECK(a.ids == b.ids);
    CHECK(a.labels == b.labels);
    CHECK(a.votes == b.votes);
    CHECK(a.n_tied == b.n_tied);
    CHECK_EQ(a.best_score.size(), b.best_score.size());
    for (std::size_t i = 0; i < a.best_score.size(); ++i) CHECK_BITS(a.best_score[i], b.best_score[i]);
}

}  // namespace

TEST(combine_hand_made_case) {
    // m = 2 augmentations, C = 2 classes, K = 3 neighbours; vote of rank r is K - r.
    //   aug 0: class 0 -> [7, 8, 9]    class 1 -> [9, 5, -1]
    //   aug 1: class 0 -> [8, -1, -1]  class 1 -> [9, 7, 6]
    // id 5: class 1 gets 2                       -> label 1
    // id 6: class 1 gets 1                       -> label 1
    // id 7: class 0 gets 3, class 1 gets 2       -> label 0
    // id 8: class 0 gets 2 + 3 = 5               -> label 0
    // id 9: class 0 gets 1, class 1 gets 3 + 3   -> label 1
    const std::vector<idx_t> ids = {7, 8, 9, 9, 5, -1, 8, -1, -1, 9, 7, 6};
    const std::vector<float> scores = {0.9f, 0.8f, 0.7f, 0.95f, 0.5f, 0.0f, 0.85f, 0.0f, 0.0f, 0.6f, 0.55f, 0.4f};
    const auto r = combine(ids, &scores, 2, 2, 3);
    CHECK((r.ids == std::vector<idx_t>{5, 6, 7, 8, 9}));
    CHECK((r.labels == std::vector<std::int64_t>{1, 1, 0, 0, 1}));
    CHECK((r.votes == std::vector<double>{2, 1, 3, 5, 6}));
    CHECK((r.n_tied == std::vector<std::int64_t>{1, 1, 1, 1, 1}));
    // best score: the id's highest score among its label's queries
    CHECK((r.best_score == std::vector<float>{0.5f, 0.4f, 0.9f, 0.85f, 0.95f}));
    // Without scores the scores are reported as 0.
    const auto r0 = combine(ids, nullptr, 2, 2, 3);
    CHECK(r0.labels == r.labels);
    CHECK((r0.best_score == std::vector<float>(5, 0.0f)));
    // All padding: nothing.
    const auto none = combine(std::vector<idx_t>(12, -1), nullptr, 2, 2, 3);
    CHECK(none.ids.empty());
}

TEST(combine_ties_are_broken_by_a_seeded_draw) {
    // id 4 is rank 0 for both classes: a tie, broken by an RNG seeded from (seed, id).
    const std::vector<idx_t> ids = {4, 1, 4, 2};
    std::map<std::int64_t, int> seen;
    for (std::uint64_t seed = 0; seed < 64; ++seed) {
        const auto r = combine(ids, nullptr, 1, 2, 2, seed);
        CHECK((r.ids == std::vector<idx_t>{1, 2, 4}));
        CHECK_EQ(r.n_tied[2], std::int64_t{2});
        CHECK_EQ(r.votes[2], 2.0);
        ++seen[r.labels[2]];
        check_same(r, combine(ids, nullptr, 1, 2, 2, seed, 1));
    }
    CHECK_EQ(seen.size(), std::size_t{2});  // both classes win for some seed
}

TEST(combine_matches_map_oracle_and_thread_count) {
    const idx_t m = 4, c = 100, k = 400;  // 160000 entries: sorted in 65536-entry chunks, then merged
    Rng rng(9);
    std::vector<idx_t> ids(m * c * k);
    std::vector<float> scores(m * c * k);
    for (std::size_t i = 0; i < ids.size(); ++i) {
        ids[i] = rng.below(10) == 0 ? -1 : static_cast<idx_t>(rng.below(30000));
        scores[i] = static_cast<float>(rng.uniform());
    }
    const auto r = combine(ids, &scores, m, c, k, 5, 1);
    for (int threads : {2, 3}) check_same(r, combine(ids, &scores, m, c, k, 5, threads));
    {  // the order of the augmentations does not matter either
        std::vector<idx_t> rids(ids.size());
        std::vector<float> rsc(ids.size());
        for (idx_t a = 0; a < m; ++a) {
            std::copy(ids.begin() + a * c * k, ids.begin() + (a + 1) * c * k, rids.begin() + (m - 1 - a) * c * k);
            std::copy(scores.begin() + a * c * k, scores.begin() + (a + 1) * c * k, rsc.begin() + (m - 1 - a) * c * k);
        }
        check_same(r, combine(rids, &rsc, m, c, k, 5, 2));
    }
    std::map<idx_t, std::map<std::int64_t, std::pair<std::int64_t, float>>> votes;  // id -> class -> (vote, best)
    for (idx_t a = 0; a < m; ++a)
        for (idx_t cl = 0; cl < c; ++cl)
            for (idx_t rank = 0; rank < k; ++rank) {
                const idx_t off = (a * c + cl) * k + rank;
                if (ids[off] < 0) continue;
                auto& e = votes[ids[off]][cl];
                if (e.first == 0) e.second = -INFINITY;
                e.first += k - rank;
                e.second = std::max(e.second, scores[off]);
            }
    CHECK_EQ(r.ids.size(), votes.size());
    std::size_t i = 0;
    for (const auto& [id, per_class] : votes) {
        CHECK_EQ(r.ids[i], id);
        std::int64_t best = -1, n_best = 0;
        for (const auto& [cl, v] : per_class) {
            if (v.first > best) {
                best = v.first;
                n_best = 1;
            } else if (v.first == best) {
                ++n_best;
            }
        }
        CHECK_EQ(r.votes[i], static_cast<double>(best));
        CHECK_EQ(r.n_tied[i], n_best);
        const auto it = per_class.find(r.labels[i]);
        CHECK(it != per_class.end());
        CHECK_EQ(it->second.first, best);
        CHECK_EQ(r.best_score[i], it->second.second);
        ++i;
    }
}

TEST(combine_rejects_empty_shapes) {
    const std::vector<idx_t> ids(4, 1);
    CHECK_THROWS(combine(ids, nullptr, 0, 2, 2), Error, "shape (m, C, K)");
    CHECK_THROWS(combine(ids, nullptr, 1, 0, 2), Error, "shape (m, C, K)");
    CHECK_THROWS(combine(ids, nullptr, 1, 2, 0), Error, "shape (m, C, K)");
}

TEST(similarity_to_prototypes_matches_double_dot) {
    const idx_t n = 300, d = 17, c = 5;
    const auto x = uniform(n * d, 1), protos = uniform(c * d, 2);
    std::vector<std::int64_t> labels(n);
    for (idx_t i = 0; i < n; ++i) labels[i] = i % c;
    std::vector<float> sim(n), sim1(n);
    similarity_to_prototypes(MatrixView<const float>(x.data(), n, d), labels.data(),
                             MatrixView<const float>(protos.data(), c, d), sim.data(), 2);
    similarity_to_prototypes(MatrixView<const float>(x.data(), n, d), labels.data(),
                             MatrixView<const float>(protos.data(), c, d), sim1.data(), 1);
    CHECK(sim == sim1);
    for (idx_t i = 0; i < n; ++i) {
        double s = 0;
        for (idx_t t = 0; t < d; ++t) s += static_cast<double>(x[i * d + t]) * protos[labels[i] * d + t];
        CHECK_EQ(sim[i], static_cast<float>(s));
    }
    labels[7] = c;
    CHECK_THROWS(similarity_to_prototypes(MatrixView<const float>(x.data(), n, d), labels.data(),
                                          MatrixView<const float>(protos.data(), c, d), sim.data()),
                 Error, "label 5 out of range [0, 5)");
    labels[7] = -1;
    CHECK_THROWS(similarity_to_prototypes(MatrixView<const float>(x.data(), n, d), labels.data(),
                                          MatrixView<const float>(protos.data(), c, d), sim.data()),
                 Error, "label -1 out of range");
    CHECK_THROWS(similarity_to_prototypes(MatrixView<const float>(x.data(), n, d), labels.data(),
                                          MatrixView<const float>(protos.data(), c, 4), sim.data()),
                 Error, "embeddings have 17 dimensions, prototypes 4");
}

TEST(select_by_clustering_invariants) {
    // Class sizes 3, 0 (absent), 40, 200 and 1; k_per_class 10.
    const idx_t d = 6;
    std::vector<std::int64_t> labels;
    for (int i = 0; i < 3; ++i) labels.push_back(0);
    for (int i = 0; i < 40; ++i) labels.push_back(2);
    for (int i = 0; i < 200; ++i) labels.push_back(3);
    labels.push_back(4);
    Rng rng(3);  // shuffle the rows
    for (std::size_t i = labels.size() - 1; i > 0; --i) std::swap(labels[i], labels[rng.below(i + 1)]);
    const idx_t n = static_cast<idx_t>(labels.size());
    auto x = uniform(n * d, 4);
    normalize(x, d);
    for (PickStrategy strategy : {PickStrategy::random, PickStrategy::nearest})
        for (bool spherical : {true, false}) {
            SelectionParams p;
            p.k_per_class = 10;
            p.strategy = strategy;
            p.spherical = spherical;
            p.seed = 8;
            p.n_threads = 1;
            const auto sel = select_by_clustering(MatrixView<const float>(x.data(), n, d), labels.data(), p);
            CHECK(std::is_sorted(sel.begin(), sel.end()));
            CHECK(std::adjacent_find(sel.begin(), sel.end()) == sel.end());
            std::map<std::int64_t, int> per_class;
            for (idx_t i : sel) {
                CHECK(i >= 0 && i < n);
                ++per_class[labels[i]];
            }
            CHECK_EQ(per_class[0], 3);  // small classes are kept whole
            CHECK_EQ(per_class[4], 1);
            CHECK(per_class[2] >= 1 && per_class[2] <= 10);
            CHECK(per_class[3] >= 1 && per_class[3] <= 10);
            CHECK_EQ(per_class.count(1), std::size_t{0});
            for (int threads : {2, 4}) {
                p.n_threads = threads;
                CHECK(select_by_clustering(MatrixView<const float>(x.data(), n, d), labels.data(), p) == sel);
            }
        }
    SelectionParams p;
    p.k_per_class = 0;
    CHECK_THROWS(select_by_clustering(MatrixView<const float>(x.data(), n, d), labels.data(), p), Error,
                 "k_per_class must be >= 1, got 0");
    p.k_per_class = 2;
    labels[3] = -2;
    CHECK_THROWS(select_by_clustering(MatrixView<const float>(x.data(), n, d), labels.data(), p), Error,
                 "labels must be >= 0, got -2");
    // No rows: nothing selected.
    CHECK(select_by_clustering(MatrixView<const float>(nullptr, 0, d), nullptr, p).empty());
}

int main(int argc, char** argv) { return mudg_test::run_all(argc, argv); }
