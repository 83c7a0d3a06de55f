// Bucket-major batches: the (row, bucket) pairs of a batch inverted into per-bucket row sets, and
// those sets cut into cost-ordered work items. Used where many queries each visit a few buckets
// (IVF lists in a list-major search, quantizer cells in the two-level coarse stage) and every
// bucket is best read once for all the queries that visit it; with one bucket per row it is the
// stable grouping of points by label (two-level k-means).
#pragma once

#include <algorithm>
#include <vector>

#include "mudg_fast/common.hpp"

namespace mudg_fast {

/// The rows visiting each bucket: rows[start[b] .. start[b + 1]), ascending.
struct BucketRows {
    std::vector<idx_t> start, rows;
};

/// Pair i belongs to row i / per_row and visits bucket bucket_of[i] (< 0: none); buckets are in
/// [0, n_buckets). A counting sort, so each bucket's rows come out ascending.
inline BucketRows invert_pairs(const idx_t* bucket_of, idx_t n_pairs, idx_t per_row, idx_t n_buckets) {
    BucketRows out;
    out.start.assign(static_cast<std::size_t>(n_buckets + 1), 0);
    for (idx_t i = 0; i < n_pairs; ++i)
        if (bucket_of[i] >= 0) ++out.start[bucket_of[i] + 1];
    for (idx_t b = 0; b < n_buckets; ++b) out.start[b + 1] += out.start[b];
    out.rows.resize(static_cast<std::size_t>(out.start[n_buckets]));
    std::vector<idx_t> fill(out.start.begin(), out.start.end() - 1);
    for (idx_t i = 0; i < n_pairs; ++i)
        if (bucket_of[i] >= 0) out.rows[fill[bucket_of[i]]++] = i / per_row;
    return out;
}

/// Rows [r0, r1) of a bucket's row set, and their cost (rows x bucket size).
struct BucketItem {
    idx_t bucket, r0, r1;
    double cost;
};

/// Every bucket's rows cut into groups of at most `group`, largest cost first (stable: equal
/// costs keep bucket order), so that threads taking items in turn finish together. size(b) is
/// bucket b's size; empty buckets and buckets without rows give no item. Callers' results must
/// not depend on the order (every reduction uses a total order).
template <class SizeOf>
std::vector<BucketItem> cost_ordered_items(const BucketRows& br, idx_t group, SizeOf&& size) {
    std::vector<BucketItem> items;
    const idx_t n_buckets = static_cast<idx_t>(br.start.size()) - 1;
    for (idx_t b = 0; b < n_buckets; ++b) {
        const idx_t m = br.start[b + 1] - br.start[b];
        if (!m) continue;
        const idx_t s = size(b);
        if (!s) continue;
        for (idx_t r0 = 0; r0 < m; r0 += group) {
            const idx_t r1 = std::min(m, r0 + group);
            items.push_back({b, r0, r1, static_cast<double>(r1 - r0) * static_cast<double>(s)});
        }
    }
    std::stable_sort(items.begin(), items.end(),
                     [](const BucketItem& a, const BucketItem& b) { return a.cost > b.cost; });
    return items;
}

}  // namespace mudg_fast
