// Exact re-ranking: each query against its own shortlist of candidate ids, scored exactly from the
// original float32 / float16 vectors, best k kept under the total order (score, then lower id).
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "mudg_fast/common.hpp"

namespace mudg_fast {

/// Element type of source rows.
enum class RowType : int { f32 = 0, f16 = 1 };

/// Rows of consecutive ids [first, first + rows): row i at (char*)data + i * stride bytes, `dim`
/// values of `type` each (e.g. one array, or one memory-mapped .npy shard).
struct RowSegment {
    const void* data = nullptr;
    idx_t first = 0;
    idx_t rows = 0;
    idx_t stride = 0;  ///< bytes between rows
    RowType type = RowType::f32;
};

/// Rows produced by a fetch callback for a list of ids: row j at (char*)data + j * stride bytes.
/// `keep` owns whatever holds them and is released once they have been scored.
struct FetchedRows {
    const void* data = nullptr;
    idx_t stride = 0;
    RowType type = RowType::f32;
    std::shared_ptr<const void> keep;
};

/// Where the original vectors come from: a callback that fetches rows for ascending, distinct ids
/// when `fetch` is set, otherwise memory-resident segments covering ids [0, size()) (arrays,
/// memory maps; none for an empty source).
struct RowSource {
    idx_t dim = 0;
    std::vector<RowSegment> segments;  ///< ascending, contiguous from id 0
    /// Called with ascending distinct ids; may be called from several threads at once.
    std::function<FetchedRows(const idx_t* ids, idx_t n)> fetch;

    /// Number of ids the segments cover; -1 for a fetch callback (ids are not checked here).
    idx_t size() const noexcept;
};

/// For every query i: the exact inner products <queries_i, row(id)> for the distinct ids of
/// candidates row i (-1 marks an empty slot; repeated ids count once), and the best k of them
/// under (score descending, id ascending) into out_scores / out_ids row i, padded with (-inf, -1).
///
/// Scores are one fma chain over the dimensions in increasing order (float16 rows converted
/// exactly first), so they equal the f32 index's and the exact search's scores for the same pair,
/// at every SIMD level and thread count. Queries are processed in blocks (a fetch callback is
/// called once per block with its distinct ids, ascending); memory is bounded by the block size,
/// whatever the number of queries. Raises Error for an id outside the source (naming it) and for
/// a row whose score is not finite (NaN / inf in the source).
void rerank(MatrixView<const float> queries, MatrixView<const idx_t> candidates, int k, const RowSource& source,
            MatrixView<float> out_scores, MatrixView<idx_t> out_ids, int n_threads = 0);

}  // namespace mudg_fast
