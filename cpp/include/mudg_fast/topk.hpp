// Exact search: blocked brute-force top-k by inner product, the oracle for every search test.
#pragma once

#include <algorithm>
#include <limits>
#include <vector>

#include "mudg_fast/common.hpp"
#include "mudg_fast/simd.hpp"

namespace mudg_fast {

/// Per-row bounded top-k under the total order "higher score first, then lower id". Each row
/// appends the candidates that beat its threshold to a buffer of capacity_for(k) entries; when
/// the buffer is full, a selection keeps the k best (or, on a fast path, a few more than k) and
/// raises the threshold. That is amortised O(1) per candidate where a heap costs O(log k), so a
/// top-k of a few hundred costs little more than k = 10.
///
/// thresholds() is what the tile kernels compare against (they pass score >= threshold on): a
/// lower bound of the row's final k-th best score, -inf until the first selection. The row
/// always holds at least k entries scoring >= its threshold once it is finite, so the threshold
/// of one instance bounds the final top-k of any union of instances that contains it.
class TopkHeaps {
public:
    void reset(idx_t n_rows, int k);
    idx_t n_rows() const noexcept { return n_rows_; }
    int k() const noexcept { return k_; }
    float* thresholds() noexcept { return thr_.data(); }
    float threshold(idx_t row) const noexcept { return thr_[row]; }
    void push(idx_t row, float score, idx_t id) noexcept {
        if (!better(score, id, thr_[row], thr_id_[row])) return;
        int& n = size_[row];
        const idx_t at = row * cap_ + n;
        scores_[at] = score;
        ids_[at] = id;
        if (++n == cap_) compact(row);
    }
    /// Writes row's k best entries best first into scores/ids[0..k), padding with (-inf, -1).
    void extract(idx_t row, float* scores, idx_t* ids) const;
    /// Pushes every entry of other's row src into this row dst.
    void merge_row(idx_t dst, const TopkHeaps& other, idx_t src) noexcept;

    static bool better(float s, idx_t id, float s2, idx_t id2) noexcept {
        return s > s2 || (s == s2 && id < id2);
    }
    /// Buffer entries per row for a top-k: k plus the slack that amortises a selection. k/2 was
    /// measured against k/4 and k (list-major sq4 search, k = 100 and 300): less slack selects
    /// too often, more lets the threshold lag behind the k-th best and admits more candidates.
    static int capacity_for(int k) noexcept {
        const idx_t cap = static_cast<idx_t>(k) + std::max(kMinSlack, k / 2);
        return static_cast<int>(std::min<idx_t>(cap, std::numeric_limits<int>::max()));
    }

private:
    static constexpr int kMinSlack = 16;
    /// Drops entries of a full row so that at least k remain, and raises its threshold.
    void compact(idx_t row) noexcept;

    idx_t n_rows_ = 0;
    int k_ = 0, cap_ = 0;
    std::vector<float> scores_;  ///< [n_rows x cap_], entries [0, size_[row]) of each row in use
    std::vector<idx_t> ids_;
    std::vector<float> thr_;     ///< a pushed entry must beat (thr_, thr_id_) in the total order
    std::vector<idx_t> thr_id_;
    std::vector<int> size_;
};

/// Context for the tile kernels' CandidateSink that feeds TopkHeaps.
struct HeapSink {
    TopkHeaps* heaps = nullptr;
    float* call_thresholds = nullptr;  ///< the array handed to the kernel (indexed by call row)
    const idx_t* row_map = nullptr;    ///< call row -> heap row; null: row_base + row
    idx_t row_base = 0;
    const idx_t* col_ids = nullptr;    ///< call column -> id; null: col_base + column
    idx_t col_base = 0;

    static void sink(void* ctx, idx_t row, idx_t col, float score);
};

/// Exact top-k by inner product (higher is better). Writes [queries.rows x k] best first;
/// slots beyond the database size get (-inf, -1); ties go to the lower id. Memory stays bounded
/// for any database size (the database is packed block by block). k == 1 uses the argmax kernel.
void exact_search(MatrixView<const float> database, MatrixView<const float> queries, int k,
                  MatrixView<float> out_scores, MatrixView<idx_t> out_ids, int n_threads = 0);

/// Nearest column for each query: out_scores[i] = max_j <q_i, db_j> + bias[j] (bias optional),
/// out_ids[i] = lowest such j. Equivalent to exact_search with k = 1.
void nearest(MatrixView<const float> database, MatrixView<const float> queries, float* out_scores,
             idx_t* out_ids, int n_threads = 0, const float* col_bias = nullptr,
             const idx_t* query_ids = nullptr, idx_t n_query_ids = 0);

}  // namespace mudg_fast
