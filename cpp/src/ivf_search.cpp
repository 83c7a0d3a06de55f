// IvfIndex::search: coarse quantisation, then per-query or list-major scans of the probed lists.
#include <algorithm>
#include <atomic>
#include <memory>
#include <vector>

#include "bucket_work.hpp"
#include "ivf_internal.hpp"
#include "mudg_fast/parallel.hpp"
#include "mudg_fast/topk.hpp"

namespace mudg_fast {

using ivf_detail::kNegInf;
using ivf_detail::Scratch;

namespace {
constexpr idx_t kRowGroup = 192;     // queries per tile-kernel call in list-major search
constexpr idx_t kListMajorMin = 32;  // automatic mode: list-major from this many queries

/// SQ4 residual form: the score of a code in list l is fma(s_l, <q, r>, <q, c_l>). The second
/// term is computed here for packed query rows by the f32 tile kernel (one fma chain, the same
/// at every SIMD level) against blocks that hold the centroids of the lists.
struct CentroidTerm {
    Scratch block, out;
    bool zeroed = false;
    /// out[r * n + j] = <q_r, c_{lists[j]}> for the `rows` rows packed in `a` and n lists.
    const float* compute(const Kernels& K, const float* a, idx_t rows, const float* centroids, const idx_t* lists,
                         idx_t n, idx_t d) {
        float* blk = block.get(n_blocks(n) * kBlock * d);
        if (n == 1) {  // one list (list-major items): column 0 of a block kept zero elsewhere
            if (!zeroed) std::fill(blk, blk + kBlock * d, 0.0f);
            zeroed = true;
            const float* c = centroids + lists[0] * d;
            for (idx_t k = 0; k < d; ++k) blk[k * kBlock] = c[k];
        } else {
            K.pack_blocks_f32(centroids, d, lists, n, d, blk);
            zeroed = false;
        }
        float* o = out.get(rows * n);
        TileArgs t;
        t.a = a;
        t.n_rows = rows;
        t.b = blk;
        t.n_cols = n;
        t.d = d;
        K.scores(t, o, n);
        return o;
    }
};
}  // namespace

void IvfIndex::probe(MatrixView<const float> q, int nprobe, MatrixView<float> out_scores, MatrixView<idx_t> out_lists,
                     int n_threads) const {
    MUDG_CHECK(nprobe >= 1, "nprobe must be >= 1, got %d", nprobe);
    MUDG_CHECK(q.cols == dim_, "queries have %lld dimensions, the index %lld", (long long)q.cols, (long long)dim_);
    MUDG_CHECK(has_centroids(), "search() on an untrained index: call train() first");
    // The nprobe nearest centroids of every query by the coarse quantizer (padded with (-inf, -1)).
    coarse_search(q, nprobe, out_scores, out_lists, n_threads);
}

void IvfIndex::search(MatrixView<const float> q, int k, int nprobe, MatrixView<float> out_s,
                      MatrixView<idx_t> out_i, int n_threads, SearchMode mode) const {
    MUDG_CHECK(k >= 1, "k must be >= 1, got %d", k);
    MUDG_CHECK(nprobe >= 1, "nprobe must be >= 1, got %d", nprobe);
    MUDG_CHECK(q.cols == dim_, "queries have %lld dimensions, the index %lld", (long long)q.cols, (long long)dim_);
    MUDG_CHECK(has_centroids(), "search() on an untrained index: call train() first");
    const idx_t nq = q.rows;
    if (nq == 0 || ntotal_ == 0) {
        search_probed(q, k, MatrixView<const idx_t>(nullptr, nq, 0), out_s, out_i, n_threads, mode);
        return;
    }
    nprobe = static_cast<int>(std::min<idx_t>(nprobe, nlist_));
    // 1. Coarse stage, then 2. the scan of the probed lists.
    std::vector<float> cs(static_cast<std::size_t>(nq * nprobe));
    std::vector<idx_t> probes(static_cast<std::size_t>(nq * nprobe));
    probe(q, nprobe, MatrixView<float>(cs.data(), nq, nprobe), MatrixView<idx_t>(probes.data(), nq, nprobe),
          n_threads);
    search_probed(q, k, MatrixView<const idx_t>(probes.data(), nq, nprobe), out_s, out_i, n_threads, mode);
}

void IvfIndex::search_probed(MatrixView<const float> q, int k, MatrixView<const idx_t> probe_lists,
                             MatrixView<float> out_s, MatrixView<idx_t> out_i, int n_threads, SearchMode mode) const {
    search_probed_parts({this}, q, k, probe_lists, out_s, out_i, n_threads, mode);
}

void IvfIndex::search_probed_parts(const std::vector<const IvfIndex*>& parts, MatrixView<const float> q, int k,
                                   MatrixView<const idx_t> probe_lists, MatrixView<float> out_s,
                                   MatrixView<idx_t> out_i, int n_threads, SearchMode mode) {
    MUDG_CHECK(!parts.empty(), "search over parts needs at least one part");
    for (const IvfIndex* p : parts) MUDG_CHECK(p != nullptr, "a part is missing (null)");
    const IvfIndex& ix = *parts[0];  // the shared training: codec parameters, nlist, dim
    for (const IvfIndex* p : parts)
        MUDG_CHECK(p->dim_ == ix.dim_ && p->nlist_ == ix.nlist_ && p->codec_ == ix.codec_ && p->sq_a_ == ix.sq_a_ &&
                       p->sq_b_ == ix.sq_b_,
                   "parts differ in dim, nlist, codec or codec parameters: they were not trained together");
    const idx_t nlist = ix.nlist_;
    MUDG_CHECK(k >= 1, "k must be >= 1, got %d", k);
    MUDG_CHECK(q.cols == ix.dim_, "queries have %lld dimensions, the index %lld", (long long)q.cols,
               (long long)ix.dim_);
    MUDG_CHECK(probe_lists.rows == q.rows, "probes have %lld rows for %lld queries", (long long)probe_lists.rows,
               (long long)q.rows);
    const idx_t nq = q.rows, d = ix.dim_;
    const int nprobe = static_cast<int>(probe_lists.cols);
    std::vector<idx_t> row(static_cast<std::size_t>(nprobe));
    for (idx_t i = 0; i < nq; ++i) {
        for (idx_t j = 0; j < nprobe; ++j) {
            const idx_t l = probe_lists.row(i)[j];
            MUDG_CHECK(l >= -1 && l < nlist, "probe %lld of query %lld is list %lld, outside [-1, %lld)",
                       (long long)j, (long long)i, (long long)l, (long long)nlist);
            row[j] = l;
        }
        std::sort(row.begin(), row.end());  // a list probed twice would report its vectors twice
        for (idx_t j = 1; j < nprobe; ++j)
            MUDG_CHECK(row[j] < 0 || row[j] != row[j - 1], "query %lld probes list %lld more than once", (long long)i,
                       (long long)row[j]);
    }
    for (idx_t i = 0; i < nq; ++i)
        for (int j = 0; j < k; ++j) {
            out_s.row(i)[j] = kNegInf;
            out_i.row(i)[j] = -1;
        }
    idx_t ntotal = 0;
    for (const IvfIndex* p : parts) ntotal += p->ntotal_;
    if (nq == 0 || ntotal == 0 || nprobe == 0) return;
    // Vectors of list l over all parts (the cost of scanning it once).
    auto list_total = [&](idx_t l) {
        idx_t n = 0;
        for (const IvfIndex* p : parts) n += p->lists_[l].size;
        return n;
    };
    const Kernels& K = kernels();
    const int mr = K.mr;
    // A contiguous copy: the scans below index probes[qi * nprobe + p].
    std::vector<idx_t> probes(static_cast<std::size_t>(nq * nprobe));
    for (idx_t i = 0; i < nq; ++i) std::copy(probe_lists.row(i), probe_lists.row(i) + nprobe, probes.data() + i * nprobe);

    // SQ8 scores are <q * step, code> + <q, vmin>: the kernels see pre-scaled queries, the
    // per-query constant is added at the end (it does not change the ranking).
    const float* scale = ix.codec_ == Codec::sq8 ? ix.sq_b_.data() : nullptr;
    std::vector<double> bias;
    if (ix.codec_ == Codec::sq8) {
        bias.resize(nq);
        for (idx_t i = 0; i < nq; ++i) {
            double s = 0;
            for (idx_t t = 0; t < d; ++t) s += static_cast<double>(q.row(i)[t]) * ix.sq_a_[t];
            bias[i] = s;
        }
    }
    const float* lut = ix.codec_ == Codec::sq4 ? ix.sq_a_.data() : nullptr;
    const int kk = static_cast<int>(std::min<idx_t>(k, ntotal));
    auto finish_row = [&](const TopkHeaps& heaps, idx_t row, idx_t qi) {
        std::vector<float> s(kk);
        std::vector<idx_t> ids(kk);
        heaps.extract(row, s.data(), ids.data());
        for (int j = 0; j < kk; ++j) {
            out_s.row(qi)[j] = ids[j] >= 0 && !bias.empty() ? static_cast<float>(s[j] + bias[qi]) : s[j];
            out_i.row(qi)[j] = ids[j];
        }
    };
    TileArgs base;
    base.d = d;
    base.codec = ix.codec_;
    base.lut = lut;
    // SQ4 residual codes: each call adds <q, c_l> (row_bias) and scales by s_l (row_scale).
    const bool residual = ix.sq4_residual();

    if (mode == SearchMode::automatic) mode = nq >= kListMajorMin ? SearchMode::list_major : SearchMode::per_query;

    if (mode == SearchMode::per_query) {
        const int nt = effective_threads(nq, 1, n_threads);
        std::vector<Scratch> panel(nt);
        std::vector<TopkHeaps> heaps(nt);
        std::vector<CentroidTerm> cterm(nt);
        std::vector<std::vector<idx_t>> plist(nt, std::vector<idx_t>(nprobe));
        parallel_for(nq, 1, n_threads, [&](idx_t i0, idx_t i1, int tid) {
            float* a = panel[tid].get(packed_rows_size(1, d, mr));
            TopkHeaps& h = heaps[tid];
            for (idx_t qi = i0; qi < i1; ++qi) {
                pack_rows(q.row(qi), q.stride, nullptr, 1, d, mr, scale, a);
                h.reset(1, kk);
                const idx_t* lists = probes.data() + qi * nprobe;
                const float* cq = nullptr;
                if (residual) {  // <q, c_l> of all probed lists in one call (a -1 probe reads list 0)
                    idx_t* valid = plist[tid].data();
                    for (int p = 0; p < nprobe; ++p) valid[p] = lists[p] < 0 ? 0 : lists[p];
                    cq = cterm[tid].compute(K, a, 1, ix.centroids().data(), valid, nprobe, d);
                }
                for (int p = 0; p < nprobe; ++p) {
                    const idx_t l = lists[p];
                    if (l < 0) continue;
                    for (const IvfIndex* part : parts) {
                        const List& list = part->lists_[l];
                        if (!list.size) continue;
                        TileArgs t = base;
                        t.a = a;
                        t.n_rows = 1;
                        t.b = list.code_ptr();
                        t.n_cols = list.size;
                        if (residual) {
                            t.row_bias = cq + p;
                            t.row_scale = ix.sq_b_[l];
                        }
                        HeapSink ctx;
                        ctx.heaps = &h;
                        ctx.call_thresholds = h.thresholds();
                        ctx.col_ids = list.id_ptr();
                        K.topk(t, h.thresholds(), HeapSink::sink, &ctx);
                    }
                }
                finish_row(h, 0, qi);
            }
        });
        return;
    }

    // 2. List-major: invert (query, list) pairs into per-list query sets (ascending query ids).
    const BucketRows by_list = invert_pairs(probes.data(), nq * nprobe, nprobe, nlist);
    // Work items: (list, row group), largest first for load balance; an item scans list l of
    // every part with the same packed queries. The result does not depend on the order: every
    // reduction uses the total order (score, then lower id).
    const std::vector<BucketItem> items = cost_ordered_items(by_list, kRowGroup, list_total);

    const int nt = effective_threads(static_cast<idx_t>(items.size()), 1, n_threads);
    std::vector<TopkHeaps> heaps(nt);
    std::vector<char> used(nt, 0);
    std::vector<Scratch> panel(nt);
    std::vector<std::vector<float>> thr(nt);
    std::vector<CentroidTerm> cterm(nt);
    // Each query's highest threshold over the threads. A thread's threshold t for a query means
    // that the thread holds at least k candidates scoring >= t, so the query's final k-th best
    // scores >= t and a candidate scoring < t can never enter its top-k: every thread may drop
    // it. (Candidates scoring exactly t still reach the sink, which decides ties by id against
    // its own heap.) Read and written racily through relaxed atomics: a stale value prunes
    // less, never wrongly, so the result does not depend on the timing.
    std::unique_ptr<std::atomic<float>[]> shared(new std::atomic<float>[static_cast<std::size_t>(nq)]);
    for (idx_t i = 0; i < nq; ++i) shared[i].store(kNegInf, std::memory_order_relaxed);
    parallel_for(static_cast<idx_t>(items.size()), 1, n_threads, [&](idx_t b, idx_t e, int tid) {
        TopkHeaps& h = heaps[tid];
        if (!used[tid]) {
            h.reset(nq, kk);
            thr[tid].resize(kRowGroup);
            used[tid] = 1;
        }
        for (idx_t w = b; w < e; ++w) {
            const BucketItem& it = items[w];
            const idx_t rows = it.r1 - it.r0;
            const idx_t* qids = by_list.rows.data() + by_list.start[it.bucket] + it.r0;
            float* a = panel[tid].get(packed_rows_size(kRowGroup, d, mr));
            pack_rows(q.data, q.stride, qids, rows, d, mr, scale, a);
            float* t_thr = thr[tid].data();
            for (idx_t r = 0; r < rows; ++r)
                t_thr[r] = std::max(h.threshold(qids[r]), shared[qids[r]].load(std::memory_order_relaxed));
            // <q, c_l> of the group's rows: one call, shared by every part's list l.
            const float* cq = residual ? cterm[tid].compute(K, a, rows, ix.centroids().data(), &it.bucket, 1, d)
                                       : nullptr;
            for (const IvfIndex* part : parts) {
                const List& list = part->lists_[it.bucket];
                if (!list.size) continue;
                TileArgs t = base;
                t.a = a;
                t.n_rows = rows;
                t.b = list.code_ptr();
                t.n_cols = list.size;
                if (residual) {
                    t.row_bias = cq;
                    t.row_scale = ix.sq_b_[it.bucket];
                }
                HeapSink ctx;
                ctx.heaps = &h;
                ctx.call_thresholds = t_thr;  // the sink only raises them
                ctx.row_map = qids;
                ctx.col_ids = list.id_ptr();
                K.topk(t, t_thr, HeapSink::sink, &ctx);
            }
            for (idx_t r = 0; r < rows; ++r) {
                const float th = h.threshold(qids[r]);
                if (th > shared[qids[r]].load(std::memory_order_relaxed))
                    shared[qids[r]].store(th, std::memory_order_relaxed);
            }
        }
    });
    // 3. Merge the per-thread heaps (thread order; the result is order-independent anyway).
    int first = -1;
    for (int t = 0; t < nt; ++t)
        if (used[t]) {
            if (first < 0) {
                first = t;
                continue;
            }
            TopkHeaps& dst = heaps[first];
            const TopkHeaps& src = heaps[t];
            parallel_for(nq, 256, n_threads, [&](idx_t r0, idx_t r1, int) {
                for (idx_t r = r0; r < r1; ++r) dst.merge_row(r, src, r);
            });
        }
    if (first < 0) return;
    parallel_for(nq, 256, n_threads, [&](idx_t r0, idx_t r1, int) {
        for (idx_t r = r0; r < r1; ++r) finish_row(heaps[first], r, r);
    });
}

}  // namespace mudg_fast
