// rerank(): exact scores of each query's shortlist, from the original vectors, best k kept.
//
// Queries are taken in blocks of about kBlockSlots shortlist slots, one block per task. A fetch
// callback gets each block's distinct candidate ids once, in ascending order. Each query's rows
// are then scored by the SIMD row kernels (query broadcast, rows transposed in registers: one fma
// chain per score, dimensions in increasing order) while the next query's rows are prefetched,
// and its best k are selected under (score descending, id ascending); an id repeated in a
// shortlist has the same score each time and is kept once. Blocks are independent, so the
// result does not depend on the thread count; the scores do not depend on the SIMD level.
#include "mudg_fast/rerank.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "mudg_fast/parallel.hpp"
#include "mudg_fast/simd.hpp"

namespace mudg_fast {

idx_t RowSource::size() const noexcept {
    if (fetch) return -1;
    return segments.empty() ? 0 : segments.back().first + segments.back().rows;
}

namespace {

constexpr idx_t kBlockSlots = 8192;  // shortlist slots per block of queries (memory per thread)
constexpr idx_t kPrefetchBytes = 256;  // per row, ahead of use: the hardware prefetcher follows
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

struct Scored {
    float score;
    idx_t id;
};

inline bool better(const Scored& a, const Scored& b) {
    return a.score > b.score || (a.score == b.score && a.id < b.id);
}

/// One query's candidates: ids with their row addresses, split by element type.
struct QueryRows {
    std::vector<const float*> p32;
    std::vector<const std::uint16_t*> p16;
    std::vector<idx_t> id32, id16;

    void clear() {
        p32.clear();
        p16.clear();
        id32.clear();
        id16.clear();
    }
    void add(idx_t id, const char* row, RowType type) {
        if (type == RowType::f16) {
            p16.push_back(reinterpret_cast<const std::uint16_t*>(row));
            id16.push_back(id);
        } else {
            p32.push_back(reinterpret_cast<const float*>(row));
            id32.push_back(id);
        }
    }
    void prefetch(idx_t d) const {
        const idx_t b32 = std::min<idx_t>(kPrefetchBytes, 4 * d), b16 = std::min<idx_t>(kPrefetchBytes, 2 * d);
        for (const float* p : p32)
            for (idx_t off = 0; off < b32; off += 64) __builtin_prefetch(reinterpret_cast<const char*>(p) + off, 0, 1);
        for (const std::uint16_t* p : p16)
            for (idx_t off = 0; off < b16; off += 64) __builtin_prefetch(reinterpret_cast<const char*>(p) + off, 0, 1);
    }
};

/// Per-thread buffers, reused from block to block.
struct Scratch {
    QueryRows rows[2];                // the current query's and the next one's
    std::vector<idx_t> uniq;          // fetch sources: the block's distinct ids, ascending
    std::vector<float> s32, s16;
    std::vector<Scored> scored;
};

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

/// Writes the best k of `scored` (distinct ids, or repeats with equal scores) to out, best first.
void select_best(std::vector<Scored>& scored, int k, float* out_s, idx_t* out_i) {
    const auto m = static_cast<idx_t>(scored.size());
    idx_t take = std::min<idx_t>(k, m);
    std::partial_sort(scored.begin(), scored.begin() + take, scored.end(), better);
    // A repeated id has the same score each time, so its copies sit next to each other.
    bool repeats = false;
    for (idx_t j = 1; j < take && !repeats; ++j) repeats = scored[j].id == scored[j - 1].id;
    if (repeats) {  // rare: sort everything, keep one of each
        std::sort(scored.begin(), scored.end(), better);
        scored.erase(std::unique(scored.begin(), scored.end(), [](const Scored& a, const Scored& b) { return a.id == b.id; }),
                     scored.end());
        take = std::min<idx_t>(k, static_cast<idx_t>(scored.size()));
    }
    for (idx_t j = 0; j < take; ++j) {
        out_s[j] = scored[j].score;
        out_i[j] = scored[j].id;
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
    std::vector<Scratch> scratch(nt);
    const bool fetching = static_cast<bool>(source.fetch);
    // Segment starts for the id -> row lookup (ascending; empty segments never match).
    std::vector<idx_t> seg_end;
    for (const RowSegment& s : source.segments) seg_end.push_back(s.first + s.rows);

    parallel_for(nq, block, n_threads, [&](idx_t q0, idx_t q1, int tid) {
        Scratch& w = scratch[tid];
        // A fetch source gets the block's distinct ids once, ascending.
        FetchedRows fetched;
        if (fetching) {
            w.uniq.clear();
            for (idx_t i = q0; i < q1; ++i)
                for (idx_t j = 0; j < short_len; ++j)
                    if (candidates.row(i)[j] >= 0) w.uniq.push_back(candidates.row(i)[j]);
            std::sort(w.uniq.begin(), w.uniq.end());
            w.uniq.erase(std::unique(w.uniq.begin(), w.uniq.end()), w.uniq.end());
            if (!w.uniq.empty()) fetched = source.fetch(w.uniq.data(), static_cast<idx_t>(w.uniq.size()));
        }
        auto gather = [&](idx_t i, QueryRows& r) {
            r.clear();
            const idx_t* c = candidates.row(i);
            std::size_t s = 0;
            for (idx_t j = 0; j < short_len; ++j) {
                const idx_t id = c[j];
                if (id < 0) continue;
                if (fetching) {
                    const idx_t u = std::lower_bound(w.uniq.begin(), w.uniq.end(), id) - w.uniq.begin();
                    r.add(id, static_cast<const char*>(fetched.data) + u * fetched.stride, fetched.type);
                    continue;
                }
                if (id >= seg_end[s] || (s > 0 && id < seg_end[s - 1]))
                    s = std::upper_bound(seg_end.begin(), seg_end.end(), id) - seg_end.begin();
                const RowSegment& seg = source.segments[s];
                r.add(id, static_cast<const char*>(seg.data) + (id - seg.first) * seg.stride, seg.type);
            }
        };
        int cur = 0;
        gather(q0, w.rows[cur]);
        w.rows[cur].prefetch(d);
        for (idx_t i = q0; i < q1; ++i) {
            if (i + 1 < q1) {  // the next query's rows start loading while this one is scored
                gather(i + 1, w.rows[1 - cur]);
                w.rows[1 - cur].prefetch(d);
            }
            const QueryRows& r = w.rows[cur];
            const float* q = queries.row(i);
            w.s32.resize(r.p32.size());
            w.s16.resize(r.p16.size());
            K.dot_rows_f32(q, r.p32.data(), static_cast<idx_t>(r.p32.size()), d, w.s32.data());
            K.dot_rows_f16(q, r.p16.data(), static_cast<idx_t>(r.p16.size()), d, w.s16.data());
            w.scored.clear();
            for (std::size_t j = 0; j < w.s32.size(); ++j) w.scored.push_back({w.s32[j], r.id32[j]});
            for (std::size_t j = 0; j < w.s16.size(); ++j) w.scored.push_back({w.s16[j], r.id16[j]});
            for (const Scored& s : w.scored)
                MUDG_CHECK(std::isfinite(s.score),
                           "the score of query %lld with source row %lld is %g: that row holds NaN or infinite "
                           "values (or values so large that the inner product overflows)",
                           (long long)i, (long long)s.id, (double)s.score);
            select_best(w.scored, k, out_scores.row(i), out_ids.row(i));
            cur = 1 - cur;
        }
    });
}

}  // namespace mudg_fast
