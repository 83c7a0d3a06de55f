// rerank(): exact scores of each query's shortlist, from the original vectors, best k kept.
//
// Queries are taken in blocks of about kBlockSlots shortlist slots. Per block, the (id, query)
// pairs are sorted by id and de-duplicated, so that the source is visited in ascending id order
// (a fetch callback gets each distinct id once; memory maps and shards are read front to back)
// and a repeated id of one query counts once. Each query's rows are then scored by the SIMD
// row kernels (query broadcast, rows transposed in registers: one fma chain per score, dimensions
// in increasing order), with the next query's rows prefetched, and its best k selected under
// (score descending, id ascending). Blocks are independent, so the result does not depend on the
// thread count; the scores do not depend on the SIMD level.
#include "mudg_fast/rerank.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "mudg_fast/parallel.hpp"
#include "mudg_fast/simd.hpp"

namespace mudg_fast {

idx_t RowSource::size() const noexcept {
    if (segments.empty()) return fetch ? -1 : 0;
    return segments.back().first + segments.back().rows;
}

namespace {

constexpr idx_t kBlockSlots = 8192;  // shortlist slots per block of queries (memory per thread)
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

struct Pair {
    idx_t id;
    idx_t q;  // query within the block
};

struct Scored {
    float score;
    idx_t id;
};

inline bool better(const Scored& a, const Scored& b) {
    return a.score > b.score || (a.score == b.score && a.id < b.id);
}

/// Per-thread buffers, reused from block to block.
struct BlockScratch {
    std::vector<Pair> pairs;          // the block's (id, query) pairs, sorted, distinct
    std::vector<idx_t> uniq;          // distinct ids of the block, ascending
    std::vector<idx_t> pair_row;      // pair -> index into uniq
    std::vector<const char*> row;     // uniq index -> row address
    std::vector<RowType> type;        // uniq index -> element type
    std::vector<idx_t> q_start;       // query -> first entry of by_query
    std::vector<idx_t> by_query;      // pair indices grouped by query, ascending id within
    std::vector<const float*> p32;
    std::vector<const std::uint16_t*> p16;
    std::vector<idx_t> id32, id16;
    std::vector<float> s32, s16;
    std::vector<Scored> scored;
};

/// Brings a row's cache lines towards the core ahead of its use.
inline void prefetch_row(const char* p, idx_t bytes) {
    for (idx_t off = 0; off < bytes; off += 64) __builtin_prefetch(p + off, 0, 1);
}

void check_ids(MatrixView<const idx_t> cand, idx_t size) {
    for (idx_t i = 0; i < cand.rows; ++i) {
        const idx_t* c = cand.row(i);
        for (idx_t j = 0; j < cand.cols; ++j) {
            const idx_t id = c[j];
            MUDG_CHECK(id >= -1, "candidates[%lld, %lld] = %lld: ids must be >= 0 (-1 marks an empty slot)",
                       (long long)i, (long long)j, (long long)id);
            MUDG_CHECK(size < 0 || id < size,
                       "candidates[%lld, %lld] = %lld is out of range: the source holds %lld rows (ids 0 to %lld)",
                       (long long)i, (long long)j, (long long)id, (long long)size, (long long)size - 1);
        }
    }
}

}  // namespace

void rerank(MatrixView<const float> queries, MatrixView<const idx_t> candidates, int k, const RowSource& source,
            MatrixView<float> out_scores, MatrixView<idx_t> out_ids, int n_threads) {
    MUDG_CHECK(k >= 1, "k must be >= 1, got %d", k);
    MUDG_CHECK(source.dim >= 1, "the source has no dimension");
    MUDG_CHECK(queries.cols == source.dim, "queries have %lld dimensions, the source %lld", (long long)queries.cols,
               (long long)source.dim);
    MUDG_CHECK(candidates.rows == queries.rows, "candidates have %lld rows for %lld queries; give one shortlist per query",
               (long long)candidates.rows, (long long)queries.rows);
    MUDG_CHECK(!source.segments.empty() || source.fetch, "the source has neither rows nor a fetch function");
    idx_t expect = 0;
    for (const RowSegment& s : source.segments) {
        MUDG_ASSERT(s.first == expect && s.rows >= 0 && (s.rows == 0 || s.data));
        expect += s.rows;
    }
    const idx_t nq = queries.rows, short_len = candidates.cols, d = source.dim;
    for (idx_t i = 0; i < nq; ++i)
        for (int j = 0; j < k; ++j) {
            out_scores.row(i)[j] = kNegInf;
            out_ids.row(i)[j] = -1;
        }
    if (nq == 0 || short_len == 0) return;
    check_ids(candidates, source.size());

    const Kernels& K = kernels();
    const idx_t block = std::max<idx_t>(1, kBlockSlots / short_len);
    const int nt = effective_threads(nq, block, n_threads);
    std::vector<BlockScratch> scratch(nt);
    const bool mapped = !source.segments.empty();

    parallel_for(nq, block, n_threads, [&](idx_t q0, idx_t q1, int tid) {
        BlockScratch& w = scratch[tid];
        const idx_t nb = q1 - q0;
        // 1. The block's pairs, sorted by id, without repeats.
        w.pairs.clear();
        for (idx_t i = q0; i < q1; ++i) {
            const idx_t* c = candidates.row(i);
            for (idx_t j = 0; j < short_len; ++j)
                if (c[j] >= 0) w.pairs.push_back({c[j], i - q0});
        }
        std::sort(w.pairs.begin(), w.pairs.end(),
                  [](const Pair& a, const Pair& b) { return a.id < b.id || (a.id == b.id && a.q < b.q); });
        w.pairs.erase(std::unique(w.pairs.begin(), w.pairs.end(),
                                  [](const Pair& a, const Pair& b) { return a.id == b.id && a.q == b.q; }),
                      w.pairs.end());
        const idx_t np = static_cast<idx_t>(w.pairs.size());
        w.uniq.clear();
        w.pair_row.resize(np);
        for (idx_t p = 0; p < np; ++p) {
            if (w.uniq.empty() || w.uniq.back() != w.pairs[p].id) w.uniq.push_back(w.pairs[p].id);
            w.pair_row[p] = static_cast<idx_t>(w.uniq.size()) - 1;
        }
        const idx_t nu = static_cast<idx_t>(w.uniq.size());

        // 2. Where each distinct row lives, in ascending id order.
        w.row.resize(nu);
        w.type.resize(nu);
        FetchedRows fetched;
        if (mapped) {
            std::size_t s = 0;
            for (idx_t u = 0; u < nu; ++u) {
                const idx_t id = w.uniq[u];
                while (id >= source.segments[s].first + source.segments[s].rows) ++s;
                const RowSegment& seg = source.segments[s];
                w.row[u] = static_cast<const char*>(seg.data) + (id - seg.first) * seg.stride;
                w.type[u] = seg.type;
            }
        } else if (nu) {
            fetched = source.fetch(w.uniq.data(), nu);
            for (idx_t u = 0; u < nu; ++u) {
                w.row[u] = static_cast<const char*>(fetched.data) + u * fetched.stride;
                w.type[u] = fetched.type;
            }
        }

        // 3. Pairs grouped by query (a stable counting sort keeps ascending ids within a query).
        w.q_start.assign(nb + 1, 0);
        for (idx_t p = 0; p < np; ++p) ++w.q_start[w.pairs[p].q + 1];
        for (idx_t i = 0; i < nb; ++i) w.q_start[i + 1] += w.q_start[i];
        w.by_query.resize(np);
        {
            std::vector<idx_t>& fill = w.id32;  // borrowed as the fill cursor
            fill.assign(w.q_start.begin(), w.q_start.end() - 1);
            for (idx_t p = 0; p < np; ++p) w.by_query[fill[w.pairs[p].q]++] = p;
        }

        // 4. Score each query's rows, keep its best k.
        auto row_bytes = [&](idx_t u) { return d * (w.type[u] == RowType::f16 ? 2 : 4); };
        auto prefetch_query = [&](idx_t i) {
            for (idx_t e = w.q_start[i]; e < w.q_start[i + 1]; ++e) {
                const idx_t u = w.pair_row[w.by_query[e]];
                prefetch_row(w.row[u], row_bytes(u));
            }
        };
        if (nb) prefetch_query(0);
        for (idx_t i = 0; i < nb; ++i) {
            if (i + 1 < nb) prefetch_query(i + 1);
            w.p32.clear();
            w.p16.clear();
            w.id32.clear();
            w.id16.clear();
            for (idx_t e = w.q_start[i]; e < w.q_start[i + 1]; ++e) {
                const idx_t p = w.by_query[e];
                const idx_t u = w.pair_row[p];
                if (w.type[u] == RowType::f16) {
                    w.p16.push_back(reinterpret_cast<const std::uint16_t*>(w.row[u]));
                    w.id16.push_back(w.pairs[p].id);
                } else {
                    w.p32.push_back(reinterpret_cast<const float*>(w.row[u]));
                    w.id32.push_back(w.pairs[p].id);
                }
            }
            const float* q = queries.row(q0 + i);
            w.s32.resize(w.p32.size());
            w.s16.resize(w.p16.size());
            K.dot_rows_f32(q, w.p32.data(), static_cast<idx_t>(w.p32.size()), d, w.s32.data());
            K.dot_rows_f16(q, w.p16.data(), static_cast<idx_t>(w.p16.size()), d, w.s16.data());
            w.scored.clear();
            for (std::size_t j = 0; j < w.s32.size(); ++j) w.scored.push_back({w.s32[j], w.id32[j]});
            for (std::size_t j = 0; j < w.s16.size(); ++j) w.scored.push_back({w.s16[j], w.id16[j]});
            for (const Scored& s : w.scored)
                MUDG_CHECK(std::isfinite(s.score),
                           "the score of query %lld with source row %lld is %g: that row holds NaN or infinite "
                           "values (or values so large that the inner product overflows)",
                           (long long)(q0 + i), (long long)s.id, (double)s.score);
            const auto m = static_cast<idx_t>(w.scored.size());
            const idx_t take = std::min<idx_t>(k, m);
            std::partial_sort(w.scored.begin(), w.scored.begin() + take, w.scored.end(), better);
            for (idx_t j = 0; j < take; ++j) {
                out_scores.row(q0 + i)[j] = w.scored[j].score;
                out_ids.row(q0 + i)[j] = w.scored[j].id;
            }
        }
    });
}

}  // namespace mudg_fast
