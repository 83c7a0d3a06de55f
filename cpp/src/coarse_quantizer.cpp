// TwoLevelQuantizer: training (k-means over the centroids), the cell-major batched search, and
// the extension record that stores it in an index file.
//
// Record payload (little-endian), tag "CQTL", required:
//   u32 kind (1: two-level)   u32 probe (>= 1)   u64 cells   u64 dim   u64 nlist
//   f32 cell centres [cells x dim]   u32 cell of each centroid [nlist] (< cells)
// The packed copy of the centroids is rebuilt from the index's centroids on load.
#include "mudg_fast/coarse_quantizer.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>

#include "bucket_work.hpp"
#include "mudg_fast/kmeans.hpp"
#include "mudg_fast/parallel.hpp"
#include "mudg_fast/simd.hpp"
#include "mudg_fast/topk.hpp"

namespace mudg_fast {

namespace {
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr idx_t kQueryChunk = 32768;  // queries per batch: bounds probes and per-thread state
constexpr idx_t kRowGroup = 192;      // queries per tile-kernel call (A panels stay in L2)
constexpr std::uint32_t kKindTwoLevel = 1;
constexpr int kCellIters = 20;        // k-means iterations of the cell centres

template <class T>
T* align64(T* p) {
    auto a = reinterpret_cast<std::uintptr_t>(p);
    return reinterpret_cast<T*>((a + 63) & ~std::uintptr_t{63});
}
}  // namespace

idx_t TwoLevelQuantizer::default_cells(idx_t nlist) noexcept {
    // Cost per vector is cells + probe * nlist / cells, which sqrt(nlist) cells balance. At nlist
    // 131072 on CLIP-like data, 724 cells score ~20 % fewer centroids than 362 for 97-98 % of the
    // exact top-8 lists of caption queries (benchmarks/explore_quantizer_spill.py): not enough to
    // change the default.
    return std::max<idx_t>(2, std::llround(std::sqrt(static_cast<double>(nlist))));
}

int TwoLevelQuantizer::default_probe(idx_t cells) noexcept {
    // 1/30 of the cells, at least 8: at nlist 131072 (362 cells, probe 13) it agrees with exact
    // assignment for 99.9 % of held-out images of the COCO-fitted generated corpus and finds 92 %
    // of the exact top-8 lists of its captions, scoring ~5 % of the centroids
    // (benchmarks/test_bench_two_level.py measures it; searches that need every top-8 list raise
    // the probe).
    return static_cast<int>(std::min<idx_t>(cells, std::max<idx_t>(8, (cells + 29) / 30)));
}

struct TwoLevelQuantizer::Panels {
    int mr = 0;
    std::vector<idx_t> offset;  // cell s: its panels start at data[offset[s]]; the cell centres' at offset[cells]
    std::vector<float> storage;
    float* data = nullptr;      // 64-byte aligned
};

struct TwoLevelQuantizer::Cache {
    std::mutex mutex;
    std::shared_ptr<const Panels> panels;
};

TwoLevelQuantizer::TwoLevelQuantizer(MatrixView<const float> centroids, std::vector<float> centres,
                                     std::vector<std::int32_t> cell_of, int probe)
    : dim_(centroids.cols), nlist_(centroids.rows), cells_(static_cast<idx_t>(centres.size()) / centroids.cols),
      probe_(probe), centres_(std::move(centres)), cell_of_(std::move(cell_of)), cache_(std::make_shared<Cache>()) {
    MUDG_ASSERT(static_cast<idx_t>(cell_of_.size()) == nlist_);
    start_.assign(static_cast<std::size_t>(cells_ + 1), 0);
    for (idx_t j = 0; j < nlist_; ++j) ++start_[cell_of_[j] + 1];
    for (idx_t s = 0; s < cells_; ++s) start_[s + 1] += start_[s];
    members_.resize(static_cast<std::size_t>(nlist_));
    std::vector<idx_t> fill(start_.begin(), start_.end() - 1);
    for (idx_t j = 0; j < nlist_; ++j) members_[fill[cell_of_[j]]++] = j;
    panels(centroids);  // for the active SIMD level
}

std::shared_ptr<const TwoLevelQuantizer::Panels> TwoLevelQuantizer::panels(MatrixView<const float> centroids) const {
    const int mr = kernels().mr;
    std::lock_guard<std::mutex> lock(cache_->mutex);
    if (cache_->panels && cache_->panels->mr == mr) return cache_->panels;
    auto p = std::make_shared<Panels>();
    p->mr = mr;
    p->offset.assign(static_cast<std::size_t>(cells_ + 1), 0);
    for (idx_t s = 0; s < cells_; ++s) p->offset[s + 1] = p->offset[s] + packed_rows_size(start_[s + 1] - start_[s], dim_, mr);
    p->storage.resize(static_cast<std::size_t>(p->offset[cells_] + packed_rows_size(cells_, dim_, mr) + 16));
    p->data = align64(p->storage.data());
    pack_rows(centres_.data(), dim_, nullptr, cells_, dim_, mr, nullptr, p->data + p->offset[cells_]);
    parallel_for(cells_, 16, 0, [&](idx_t s0, idx_t s1, int) {
        for (idx_t s = s0; s < s1; ++s)
            pack_rows(centroids.data, centroids.stride, members_.data() + start_[s], start_[s + 1] - start_[s], dim_, mr,
                      nullptr, p->data + p->offset[s]);
    });
    cache_->panels = p;
    return p;
}

TwoLevelQuantizer TwoLevelQuantizer::train(MatrixView<const float> centroids, idx_t cells, int probe,
                                           std::uint64_t seed, int n_threads) {
    const idx_t nlist = centroids.rows, d = centroids.cols;
    MUDG_CHECK(nlist >= kTwoLevelQuantizerMinNlist,
               "nlist=%lld is too small for a two-level quantizer (it needs at least %lld lists); use "
               "quantizer='flat'",
               (long long)nlist, (long long)kTwoLevelQuantizerMinNlist);
    MUDG_CHECK(cells >= 1 && cells <= nlist, "quantizer cells must be in [1, nlist=%lld], got %lld", (long long)nlist,
               (long long)cells);
    MUDG_CHECK(probe >= 1, "quantizer probe must be >= 1 (cells scanned per vector), got %d", probe);
    KMeansParams p;
    p.n_clusters = cells;
    p.max_iter = kCellIters;
    p.spherical = true;
    p.seed = seed;
    p.n_threads = n_threads;
    p.method = KMeansMethod::flat;
    std::vector<float> centres(static_cast<std::size_t>(cells * d));
    std::vector<idx_t> labels(static_cast<std::size_t>(nlist));
    KMeansData data;
    data.assign = centroids;
    data.update = centroids;
    kmeans_fit(data, p, MatrixView<float>(centres.data(), cells, d), labels.data());
    std::vector<std::int32_t> cell_of(labels.begin(), labels.end());
    return TwoLevelQuantizer(centroids, std::move(centres), std::move(cell_of), probe);
}

void TwoLevelQuantizer::set_probe(int probe) {
    MUDG_CHECK(probe >= 1, "quantizer probe must be >= 1 (cells scanned per vector), got %d", probe);
    probe_ = probe;
}

double TwoLevelQuantizer::expected_scores() const {
    // A vector lands in a cell with probability ~ its share of the centroids; it then scans
    // `probe` cells of the typical size seen from a centroid.
    double sq = 0;
    for (idx_t s = 0; s < cells_; ++s) {
        const double m = static_cast<double>(start_[s + 1] - start_[s]);
        sq += m * m;
    }
    const double seen = sq / static_cast<double>(nlist_);
    return static_cast<double>(cells_) + std::min<double>(static_cast<double>(nlist_), probe_ * seen);
}

namespace {

/// Per-thread best-k state of a batch: a running best for k == 1, heaps otherwise; both under
/// the total order (score, then lower id).
struct BestK {
    int k = 1;
    std::vector<float> best;
    std::vector<idx_t> best_id;
    TopkHeaps heaps;
    bool used = false;
    void reset(idx_t nq, int kk) {
        k = kk;
        if (k == 1) {
            best.assign(static_cast<std::size_t>(nq), kNegInf);
            best_id.assign(static_cast<std::size_t>(nq), -1);
        } else {
            heaps.reset(nq, k);
        }
        used = true;
    }
    void push(idx_t qi, float s, idx_t id) {
        if (k != 1) {
            heaps.push(qi, s, id);
        } else if (best_id[qi] < 0 || TopkHeaps::better(s, id, best[qi], best_id[qi])) {
            best[qi] = s;
            best_id[qi] = id;
        }
    }
    void merge_from(const BestK& o, idx_t nq, int n_threads) {
        if (k == 1) {
            for (idx_t i = 0; i < nq; ++i)
                if (o.best_id[i] >= 0) push(i, o.best[i], o.best_id[i]);
            return;
        }
        parallel_for(nq, 256, n_threads, [&](idx_t r0, idx_t r1, int) {
            for (idx_t r = r0; r < r1; ++r) heaps.merge_row(r, o.heaps, r);
        });
    }
};

constexpr idx_t kSlab = 240;  // centroid rows per kernel call: the score slab stays in L2

}  // namespace

void TwoLevelQuantizer::search(MatrixView<const float> centroids, MatrixView<const float> q, int k,
                               MatrixView<float> out_s, MatrixView<idx_t> out_i, int n_threads) const {
    MUDG_CHECK(k >= 1, "k must be >= 1, got %d", k);
    MUDG_CHECK(q.cols == dim_, "vectors have %lld dimensions, the quantizer %lld", (long long)q.cols, (long long)dim_);
    MUDG_ASSERT(centroids.rows == nlist_ && centroids.cols == dim_);
    const idx_t d = dim_;
    const int probe = static_cast<int>(std::min<idx_t>(probe_, cells_));
    const int kk = static_cast<int>(std::min<idx_t>(k, nlist_));
    const Kernels& K = kernels();
    const std::shared_ptr<const Panels> P = panels(centroids);
    const idx_t slab = kSlab / K.mr * K.mr;
    std::vector<idx_t> ci;
    for (idx_t q0 = 0; q0 < q.rows; q0 += kQueryChunk) {
        const idx_t nq = std::min(kQueryChunk, q.rows - q0);
        const MatrixView<const float> qc(q.row(q0), nq, d, q.stride);
        // 1. The probe best cells of each query (exact, over the cell centres; ties to the lower
        //    cell): the centres are the kernels' rows, a group of queries its columns.
        ci.resize(static_cast<std::size_t>(nq * probe));
        const idx_t group = std::max<idx_t>(kBlock, std::min<idx_t>(kRowGroup, (idx_t{1} << 20) / cells_ / kBlock * kBlock));
        parallel_for(nq, group, n_threads, [&](idx_t c0, idx_t c1, int) {
            const idx_t cols = c1 - c0;
            std::vector<float> qbuf(static_cast<std::size_t>(n_blocks(cols) * kBlock * d + 16)),
                sc(static_cast<std::size_t>(cells_ * cols)), v(static_cast<std::size_t>(cells_));
            std::vector<idx_t> order(static_cast<std::size_t>(cells_));
            float* qb = align64(qbuf.data());
            K.pack_blocks_f32(qc.row(c0), qc.stride, nullptr, cols, d, qb);
            for (idx_t r0 = 0; r0 < cells_; r0 += slab) {
                TileArgs t;
                t.a = P->data + P->offset[cells_] + r0 * d;
                t.n_rows = std::min(slab, cells_ - r0);
                t.b = qb;
                t.n_cols = cols;
                t.d = d;
                K.scores(t, sc.data() + r0 * cols, cols);
            }
            for (idx_t c = 0; c < cols; ++c) {
                for (idx_t j = 0; j < cells_; ++j) {
                    const float x = sc[j * cols + c];
                    v[j] = x == x ? x : kNegInf;  // NaN (overflowed inputs) ranks last
                    order[j] = j;
                }
                std::partial_sort(order.begin(), order.begin() + probe, order.end(),
                                  [&](idx_t a, idx_t b) { return v[a] > v[b] || (v[a] == v[b] && a < b); });
                std::copy(order.begin(), order.begin() + probe, ci.begin() + (c0 + c) * probe);
            }
        });
        // 2. Cell-major: the queries of every cell, ascending, in groups of kRowGroup.
        const BucketRows by_cell = invert_pairs(ci.data(), nq * probe, probe, cells_);
        const std::vector<BucketItem> items =
            cost_ordered_items(by_cell, kRowGroup, [&](idx_t s) { return start_[s + 1] - start_[s]; });

        // 3. Every (cell, query group): the cell's centroids are the kernel's rows, the queries its
        //    columns; each query's best among the column's scores goes into per-thread state.
        //    The states merge under the total order, so the split over threads cannot matter.
        const int nt = effective_threads(static_cast<idx_t>(items.size()), 1, n_threads);
        std::vector<BestK> st(nt);
        std::vector<std::vector<float>> blocks(nt), scores(nt);
        parallel_for(static_cast<idx_t>(items.size()), 1, n_threads, [&](idx_t b, idx_t e, int tid) {
            BestK& S = st[tid];
            if (!S.used) {
                S.reset(nq, kk);
                blocks[tid].resize(static_cast<std::size_t>(n_blocks(kRowGroup) * kBlock * d + 16));
                scores[tid].resize(static_cast<std::size_t>(slab * kRowGroup));
            }
            float* qb = align64(blocks[tid].data());
            float* sc = scores[tid].data();
            std::vector<float> cb(kRowGroup);   // per column: best score / heap threshold
            std::vector<idx_t> cr(kRowGroup);   // per column: best row
            for (idx_t w = b; w < e; ++w) {
                const BucketItem& it = items[w];
                const idx_t cols = it.r1 - it.r0, s = it.bucket, size = start_[s + 1] - start_[s];
                const idx_t* qids = by_cell.rows.data() + by_cell.start[s] + it.r0;
                const idx_t* ids = members_.data() + start_[s];
                K.pack_blocks_f32(qc.data, qc.stride, qids, cols, d, qb);
                for (idx_t r0 = 0; r0 < size; r0 += slab) {
                    const idx_t rows = std::min(slab, size - r0);
                    TileArgs t;
                    t.a = P->data + P->offset[s] + r0 * d;  // panels of mr rows: r0 is a multiple of mr
                    t.n_rows = rows;
                    t.b = qb;
                    t.n_cols = cols;
                    t.d = d;
                    K.scores(t, sc, cols);
                    if (kk == 1) {  // best row of each column, the first on ties (= the lowest id)
                        std::fill(cb.begin(), cb.begin() + cols, kNegInf);
                        std::fill(cr.begin(), cr.begin() + cols, idx_t{-1});
                        for (idx_t r = 0; r < rows; ++r) {
                            const float* row = sc + r * cols;
                            for (idx_t c = 0; c < cols; ++c)
                                if (row[c] > cb[c]) {
                                    cb[c] = row[c];
                                    cr[c] = r;
                                }
                        }
                        for (idx_t c = 0; c < cols; ++c)
                            if (cr[c] >= 0) S.push(qids[c], cb[c], ids[r0 + cr[c]]);
                    } else {
                        for (idx_t c = 0; c < cols; ++c) cb[c] = S.heaps.threshold(qids[c]);
                        for (idx_t r = 0; r < rows; ++r) {
                            const float* row = sc + r * cols;
                            for (idx_t c = 0; c < cols; ++c)
                                if (row[c] >= cb[c]) {
                                    S.heaps.push(qids[c], row[c], ids[r0 + r]);
                                    cb[c] = S.heaps.threshold(qids[c]);
                                }
                        }
                    }
                }
            }
        });
        // 4. Merge (thread order; the order cannot change the result) and write out.
        int first = -1;
        for (int t = 0; t < nt; ++t) {
            if (!st[t].used) continue;
            if (first < 0) {
                first = t;
                continue;
            }
            st[first].merge_from(st[t], nq, n_threads);
        }
        for (idx_t i = 0; i < nq; ++i) {
            float* os = out_s.row(q0 + i);
            idx_t* oi = out_i.row(q0 + i);
            for (int j = 0; j < k; ++j) {
                os[j] = kNegInf;
                oi[j] = -1;
            }
            if (first < 0) continue;
            if (kk == 1) {
                if (st[first].best_id[i] >= 0) {
                    os[0] = st[first].best[i];
                    oi[0] = st[first].best_id[i];
                }
            } else {
                st[first].heaps.extract(i, os, oi);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Extension record

std::vector<std::uint8_t> TwoLevelQuantizer::serialize() const {
    const std::size_t head = 4 + 4 + 8 + 8 + 8;
    std::vector<std::uint8_t> out(head + centres_.size() * 4 + cell_of_.size() * 4);
    std::uint8_t* p = out.data();
    auto put = [&p](const void* v, std::size_t n) {
        std::memcpy(p, v, n);
        p += n;
    };
    const std::uint32_t kind = kKindTwoLevel, probe = static_cast<std::uint32_t>(probe_);
    const std::uint64_t cells = static_cast<std::uint64_t>(cells_), dim = static_cast<std::uint64_t>(dim_),
                        nlist = static_cast<std::uint64_t>(nlist_);
    put(&kind, 4);
    put(&probe, 4);
    put(&cells, 8);
    put(&dim, 8);
    put(&nlist, 8);
    put(centres_.data(), centres_.size() * 4);
    put(cell_of_.data(), cell_of_.size() * 4);
    MUDG_ASSERT(p == out.data() + out.size());
    return out;
}

TwoLevelQuantizer TwoLevelQuantizer::deserialize(const std::vector<std::uint8_t>& payload,
                                                 MatrixView<const float> centroids) {
    const std::size_t head = 4 + 4 + 8 + 8 + 8;
    MUDG_CHECK(payload.size() >= head, "quantizer record of %llu bytes is truncated",
               (unsigned long long)payload.size());
    const std::uint8_t* p = payload.data();
    std::uint32_t kind, probe;
    std::uint64_t cells, dim, nlist;
    std::memcpy(&kind, p, 4);
    std::memcpy(&probe, p + 4, 4);
    std::memcpy(&cells, p + 8, 8);
    std::memcpy(&dim, p + 16, 8);
    std::memcpy(&nlist, p + 24, 8);
    MUDG_CHECK(kind == kKindTwoLevel, "unknown quantizer kind %u", kind);
    MUDG_CHECK(dim == static_cast<std::uint64_t>(centroids.cols) && nlist == static_cast<std::uint64_t>(centroids.rows),
               "quantizer record is for dim %llu, nlist %llu; the index has dim %lld, nlist %lld",
               (unsigned long long)dim, (unsigned long long)nlist, (long long)centroids.cols, (long long)centroids.rows);
    MUDG_CHECK(probe >= 1 && probe <= static_cast<std::uint32_t>(std::numeric_limits<int>::max()),
               "quantizer probe %u out of range", probe);
    MUDG_CHECK(cells >= 1 && cells <= nlist && nlist >= static_cast<std::uint64_t>(kTwoLevelQuantizerMinNlist),
               "quantizer cells %llu out of range for nlist %llu", (unsigned long long)cells, (unsigned long long)nlist);
    // dim < 2^24 and nlist < 2^31 (checked by the file reader): no product below can wrap.
    MUDG_CHECK(payload.size() == head + cells * dim * 4 + nlist * 4,
               "quantizer record has %llu bytes, expected %llu for %llu cells", (unsigned long long)payload.size(),
               (unsigned long long)(head + cells * dim * 4 + nlist * 4), (unsigned long long)cells);
    std::vector<float> centres(static_cast<std::size_t>(cells * dim));
    std::memcpy(centres.data(), p + head, centres.size() * 4);
    for (float v : centres) MUDG_CHECK(std::isfinite(v), "quantizer cell centres hold a NaN or infinite value");
    std::vector<std::int32_t> cell_of(static_cast<std::size_t>(nlist));
    std::memcpy(cell_of.data(), p + head + centres.size() * 4, cell_of.size() * 4);
    for (std::int32_t c : cell_of)
        MUDG_CHECK(c >= 0 && static_cast<std::uint64_t>(c) < cells, "quantizer cell %d out of range [0, %llu)", c,
                   (unsigned long long)cells);
    return TwoLevelQuantizer(centroids, std::move(centres), std::move(cell_of), static_cast<int>(probe));
}

}  // namespace mudg_fast
