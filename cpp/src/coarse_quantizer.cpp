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
    return std::max<idx_t>(2, std::llround(2.0 * std::sqrt(static_cast<double>(nlist))));
}

int TwoLevelQuantizer::default_probe(idx_t cells) noexcept {
    // About 1/16 of the cells (at least 8), so that each vector scores ~1/16 of the centroids.
    return static_cast<int>(std::min<idx_t>(cells, std::max<idx_t>(8, (cells + 15) / 16)));
}

TwoLevelQuantizer::TwoLevelQuantizer(MatrixView<const float> centroids, std::vector<float> centres,
                                     std::vector<std::int32_t> cell_of, int probe)
    : dim_(centroids.cols), nlist_(centroids.rows), cells_(static_cast<idx_t>(centres.size()) / centroids.cols),
      probe_(probe), centres_(std::move(centres)), cell_of_(std::move(cell_of)) {
    MUDG_ASSERT(static_cast<idx_t>(cell_of_.size()) == nlist_);
    const idx_t d = dim_;
    start_.assign(static_cast<std::size_t>(cells_ + 1), 0);
    for (idx_t j = 0; j < nlist_; ++j) ++start_[cell_of_[j] + 1];
    for (idx_t s = 0; s < cells_; ++s) start_[s + 1] += start_[s];
    members_.resize(static_cast<std::size_t>(nlist_));
    {
        std::vector<idx_t> fill(start_.begin(), start_.end() - 1);
        for (idx_t j = 0; j < nlist_; ++j) members_[fill[cell_of_[j]]++] = j;
    }
    block_start_.assign(static_cast<std::size_t>(cells_ + 1), 0);
    for (idx_t s = 0; s < cells_; ++s) block_start_[s + 1] = block_start_[s] + n_blocks(start_[s + 1] - start_[s]);
    packed_.resize(static_cast<std::size_t>(block_start_[cells_] * kBlock * d) * sizeof(float));
    float* out = reinterpret_cast<float*>(packed_.data());
    for (idx_t s = 0; s < cells_; ++s)
        kernels().pack_blocks_f32(centroids.data, centroids.stride, members_.data() + start_[s], start_[s + 1] - start_[s],
                                  d, out + block_start_[s] * kBlock * d);
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

void TwoLevelQuantizer::search(MatrixView<const float> q, int k, MatrixView<float> out_s, MatrixView<idx_t> out_i,
                               int n_threads) const {
    MUDG_CHECK(k >= 1, "k must be >= 1, got %d", k);
    MUDG_CHECK(q.cols == dim_, "vectors have %lld dimensions, the quantizer %lld", (long long)q.cols, (long long)dim_);
    const idx_t d = dim_;
    const int probe = static_cast<int>(std::min<idx_t>(probe_, cells_));
    const int kk = static_cast<int>(std::min<idx_t>(k, nlist_));
    const Kernels& K = kernels();
    const int mr = K.mr;
    const float* packed = reinterpret_cast<const float*>(packed_.data());
    std::vector<float> cs;
    std::vector<idx_t> ci, cstart, qlist;
    for (idx_t q0 = 0; q0 < q.rows; q0 += kQueryChunk) {
        const idx_t nq = std::min(kQueryChunk, q.rows - q0);
        const MatrixView<const float> qc(q.row(q0), nq, d, q.stride);
        // 1. The probe best cells of each query (exact, over the cell centres).
        cs.resize(static_cast<std::size_t>(nq * probe));
        ci.resize(static_cast<std::size_t>(nq * probe));
        exact_search(MatrixView<const float>(centres_.data(), cells_, d), qc, probe,
                     MatrixView<float>(cs.data(), nq, probe), MatrixView<idx_t>(ci.data(), nq, probe), n_threads);
        // 2. Cell-major: the queries of every cell, ascending.
        cstart.assign(static_cast<std::size_t>(cells_ + 1), 0);
        for (idx_t i = 0; i < nq * probe; ++i)
            if (ci[i] >= 0) ++cstart[ci[i] + 1];
        for (idx_t s = 0; s < cells_; ++s) cstart[s + 1] += cstart[s];
        qlist.resize(static_cast<std::size_t>(cstart[cells_]));
        {
            std::vector<idx_t> fill(cstart.begin(), cstart.end() - 1);
            for (idx_t i = 0; i < nq * probe; ++i)
                if (ci[i] >= 0) qlist[fill[ci[i]]++] = i / probe;
        }
        struct Item { idx_t cell, r0, r1; double cost; };
        std::vector<Item> items;
        for (idx_t s = 0; s < cells_; ++s) {
            const idx_t m = cstart[s + 1] - cstart[s], size = start_[s + 1] - start_[s];
            if (!m || !size) continue;
            for (idx_t r0 = 0; r0 < m; r0 += kRowGroup) {
                const idx_t r1 = std::min(m, r0 + kRowGroup);
                items.push_back({s, r0, r1, static_cast<double>(r1 - r0) * static_cast<double>(size)});
            }
        }
        std::stable_sort(items.begin(), items.end(), [](const Item& a, const Item& b) { return a.cost > b.cost; });

        // 3. Every (cell, row group) scored by the tile kernels into per-thread state; the
        //    states merge under the total order, so the split over threads cannot matter.
        const int nt = effective_threads(static_cast<idx_t>(items.size()), 1, n_threads);
        struct State {
            std::vector<float> best;     // k == 1
            std::vector<idx_t> best_id;
            TopkHeaps heaps;             // k > 1
            std::vector<float> panel, lanes, lbest, thr;
            std::vector<idx_t> lid;
            bool used = false;
        };
        std::vector<State> st(nt);
        parallel_for(static_cast<idx_t>(items.size()), 1, n_threads, [&](idx_t b, idx_t e, int tid) {
            State& S = st[tid];
            if (!S.used) {
                if (kk == 1) {
                    S.best.assign(static_cast<std::size_t>(nq), kNegInf);
                    S.best_id.assign(static_cast<std::size_t>(nq), -1);
                    S.lanes.resize(static_cast<std::size_t>(32 * ((kRowGroup + mr - 1) / mr * mr)));
                    S.lbest.resize(kRowGroup);
                    S.lid.resize(kRowGroup);
                } else {
                    S.heaps.reset(nq, kk);
                    S.thr.resize(kRowGroup);
                }
                S.panel.resize(static_cast<std::size_t>(packed_rows_size(kRowGroup, d, mr) + 16));
                S.used = true;
            }
            for (idx_t w = b; w < e; ++w) {
                const Item& it = items[w];
                const idx_t rows = it.r1 - it.r0, s = it.cell;
                const idx_t* qids = qlist.data() + cstart[s] + it.r0;
                float* a = align64(S.panel.data());
                pack_rows(qc.data, qc.stride, qids, rows, d, mr, nullptr, a);
                TileArgs t;
                t.a = a;
                t.n_rows = rows;
                t.b = packed + block_start_[s] * kBlock * d;
                t.n_cols = start_[s + 1] - start_[s];
                t.d = d;
                const idx_t* ids = members_.data() + start_[s];
                if (kk == 1) {
                    std::fill(S.lbest.begin(), S.lbest.begin() + rows, kNegInf);
                    std::fill(S.lid.begin(), S.lid.begin() + rows, idx_t{-1});
                    K.argmax(t, 0, S.lbest.data(), S.lid.data(), S.lanes.data());
                    for (idx_t r = 0; r < rows; ++r) {
                        if (S.lid[r] < 0) continue;
                        const idx_t qi = qids[r], id = ids[S.lid[r]];
                        const float v = S.lbest[r];
                        if (TopkHeaps::better(v, id, S.best[qi], S.best_id[qi] < 0 ? std::numeric_limits<idx_t>::max()
                                                                                     : S.best_id[qi])) {
                            S.best[qi] = v;
                            S.best_id[qi] = id;
                        }
                    }
                } else {
                    for (idx_t r = 0; r < rows; ++r) S.thr[r] = S.heaps.threshold(qids[r]);
                    HeapSink ctx;
                    ctx.heaps = &S.heaps;
                    ctx.call_thresholds = S.thr.data();
                    ctx.row_map = qids;
                    ctx.col_ids = ids;
                    K.topk(t, S.thr.data(), HeapSink::sink, &ctx);
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
            State& dst = st[first];
            const State& src = st[t];
            if (kk == 1) {
                for (idx_t i = 0; i < nq; ++i)
                    if (src.best_id[i] >= 0 &&
                        (dst.best_id[i] < 0 || TopkHeaps::better(src.best[i], src.best_id[i], dst.best[i], dst.best_id[i]))) {
                        dst.best[i] = src.best[i];
                        dst.best_id[i] = src.best_id[i];
                    }
            } else {
                parallel_for(nq, 256, n_threads, [&](idx_t r0, idx_t r1, int) {
                    for (idx_t r = r0; r < r1; ++r) dst.heaps.merge_row(r, src.heaps, r);
                });
            }
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
                os[0] = st[first].best[i];
                oi[0] = st[first].best_id[i];
                if (oi[0] < 0) os[0] = kNegInf;
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
