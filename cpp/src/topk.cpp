#include "mudg_fast/topk.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>

#include "mudg_fast/parallel.hpp"
#include "mudg_fast/screen.hpp"

namespace mudg_fast {

namespace {
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

/// 64-byte aligned float buffer (blocks and panels are read with full-width loads).
struct AlignedFloats {
    std::vector<float> storage;
    float* ptr = nullptr;
    void resize(idx_t n) {  // grows only; contents are not preserved
        if (static_cast<idx_t>(storage.size()) < n + 16) storage = std::vector<float>(n + 16);
        auto addr = reinterpret_cast<std::uintptr_t>(storage.data());
        ptr = storage.data() + ((64 - addr % 64) % 64) / sizeof(float);
    }
};
}  // namespace

// ---------------------------------------------------------------------------------------------
// TopkHeaps

void TopkHeaps::reset(idx_t n_rows, int k) {
    MUDG_ASSERT(k >= 1);
    n_rows_ = n_rows;
    k_ = k;
    cap_ = capacity_for(k);
    MUDG_ASSERT(cap_ > k);
    // Only entries [0, size) of a row are ever read: no need to fill the buffers.
    scores_.resize(static_cast<size_t>(n_rows * cap_));
    ids_.resize(static_cast<size_t>(n_rows * cap_));
    thr_.assign(static_cast<size_t>(n_rows), kNegInf);
    thr_id_.assign(static_cast<size_t>(n_rows), std::numeric_limits<idx_t>::max());
    size_.assign(static_cast<size_t>(n_rows), 0);
}

void TopkHeaps::compact(idx_t row) noexcept {
    float* hs = scores_.data() + row * cap_;
    idx_t* hi = ids_.data() + row * cap_;
    const int n = size_[row], k = k_;
    // Fast path: a pivot p taken from an evenly spaced sample of the buffer, aimed so that a
    // little more than k entries score >= p; keep exactly those. At least k kept entries score
    // >= p, so the row's final k-th best does too and p is a valid threshold. Entries scoring
    // exactly p are kept and later ones accepted whatever their id (thr_id_ = max): the total
    // order among them is settled by a later selection or by extract().
    constexpr int kSample = 64;
    if (n >= 2 * kSample) {
        float sample[kSample];
        for (int i = 0; i < kSample; ++i) sample[i] = hs[static_cast<idx_t>(i) * n / kSample];
        const int target = k + (n - k) / 4;  // keep about k and a quarter of the slack
        const int j = static_cast<int>(std::min<idx_t>(kSample - 1, static_cast<idx_t>(target) * kSample / n));
        std::nth_element(sample, sample + j, sample + kSample, std::greater<float>());
        const float p = sample[j];
        int count = 0;
        for (int i = 0; i < n; ++i) count += hs[i] >= p;
        // Accept the pivot if it keeps k and frees at least half the slack (a selection is then
        // amortised over as many pushes); otherwise (a bad sample, heavy ties) select exactly.
        if (count >= k && count <= k + (n - k) / 2 && p > thr_[row]) {
            int m = 0;
            for (int i = 0; i < n; ++i) {  // branch-free compaction
                hs[m] = hs[i];
                hi[m] = hi[i];
                m += hs[i] >= p;
            }
            size_[row] = m;
            thr_[row] = p;
            thr_id_[row] = std::numeric_limits<idx_t>::max();
            return;
        }
    }
    // Exact: tau, the k-th largest score; keep every entry above it and, of those equal to it,
    // the ones with the lowest ids: k in all. The k-th kept entry, (tau, tie_max), becomes the
    // threshold: whatever does not beat it cannot enter the top-k.
    thread_local std::vector<float> tmp;
    tmp.assign(hs, hs + n);
    std::nth_element(tmp.begin(), tmp.begin() + (k - 1), tmp.end(), std::greater<float>());
    const float tau = tmp[k - 1];
    int above = 0;
    for (int i = 0; i < n; ++i) above += hs[i] > tau;
    thread_local std::vector<idx_t> tie;
    tie.clear();
    for (int i = 0; i < n; ++i)
        if (hs[i] == tau) tie.push_back(hi[i]);
    const int need = k - above;  // >= 1: tau is the k-th largest
    std::nth_element(tie.begin(), tie.begin() + (need - 1), tie.end());
    const idx_t tie_max = tie[need - 1];
    // Of the tied entries, keep those with an id below tie_max and as many copies of tie_max as
    // fill k (the same id can be pushed more than once, e.g. merged from another instance).
    int at_max = need - static_cast<int>(std::count_if(tie.begin(), tie.begin() + need,
                                                         [&](idx_t v) { return v < tie_max; }));
    int m = 0;
    for (int i = 0; i < n; ++i) {
        bool keep = hs[i] > tau || (hs[i] == tau && hi[i] < tie_max);
        if (hs[i] == tau && hi[i] == tie_max && at_max > 0) {
            keep = true;
            --at_max;
        }
        hs[m] = hs[i];
        hi[m] = hi[i];
        m += keep;
    }
    MUDG_ASSERT(m == k);
    size_[row] = m;
    thr_[row] = tau;
    thr_id_[row] = tie_max;
}

void TopkHeaps::extract(idx_t row, float* scores, idx_t* ids) const {
    struct Entry {
        float s;
        idx_t id;
    };
    thread_local std::vector<Entry> e;
    const int n = size_[row];
    e.resize(static_cast<std::size_t>(n));
    const float* hs = scores_.data() + row * cap_;
    const idx_t* hi = ids_.data() + row * cap_;
    for (int i = 0; i < n; ++i) e[i] = {hs[i], hi[i]};
    auto by = [](const Entry& a, const Entry& b) { return better(a.s, a.id, b.s, b.id); };
    const int m = std::min(n, k_);
    if (m < n) std::nth_element(e.begin(), e.begin() + (m - 1), e.end(), by);
    std::sort(e.begin(), e.begin() + m, by);
    for (int i = 0; i < m; ++i) {
        scores[i] = e[i].s;
        ids[i] = e[i].id;
    }
    for (int i = m; i < k_; ++i) {
        scores[i] = kNegInf;
        ids[i] = -1;
    }
}

void TopkHeaps::merge_row(idx_t dst, const TopkHeaps& other, idx_t src) noexcept {
    const float* hs = other.scores_.data() + src * other.cap_;
    const idx_t* hi = other.ids_.data() + src * other.cap_;
    for (int i = 0; i < other.size_[src]; ++i) push(dst, hs[i], hi[i]);
}

void HeapSink::sink(void* ctx, idx_t row, idx_t col, float score) {
    auto& c = *static_cast<HeapSink*>(ctx);
    const idx_t hr = c.row_map ? c.row_map[row] : c.row_base + row;
    c.heaps->push(hr, score, c.col_ids ? c.col_ids[col] : c.col_base + col);
    // Only ever raised: the call's threshold may already be higher than the row's own (a bound
    // shared from another instance, see list-major search).
    const float th = c.heaps->threshold(hr);
    if (th > c.call_thresholds[row]) c.call_thresholds[row] = th;
}

// ---------------------------------------------------------------------------------------------
// Blocked search driver.
//
// Rows ("queries") are packed into the ISA's A panels, columns ("database") into 16-wide blocks.
// Small databases are packed once and the work is split over row groups: each query is owned by
// one task, nothing to merge. Large databases are streamed: queries are taken a chunk at a time,
// the database is split into chunks packed by whichever thread takes them, each thread keeps its
// own per-query state, and the states are merged in thread order. Because every reduction uses
// the same total order (score, then lower id), the result does not depend on which thread saw
// which chunk.

namespace {

constexpr idx_t kDbChunk = 256;                 // database rows packed per task (large mode)
constexpr idx_t kRowGroup = 96;                 // query rows per kernel call (L2 resident)
constexpr idx_t kScreenRowGroup = 480;          // screened: more rows share each verified block
constexpr idx_t kSmallDbFloats = idx_t{16} << 20;  // pack the whole database below this

/// k == 1: running best per row.
struct BestState {
    std::vector<float> best;
    std::vector<idx_t> ids;
    std::vector<std::uint32_t> lanes;
    int k() const { return 1; }
    void reset(idx_t rows, int mr) {
        best.assign(rows, kNegInf);
        ids.assign(rows, -1);
        lanes.resize(static_cast<size_t>(32 * ((kRowGroup + mr - 1) / mr * mr)));
    }
    void run(const Kernels& K, TileArgs& t, idx_t row0, idx_t col_base) {
        K.argmax(t, col_base, best.data() + row0, ids.data() + row0, lanes.data());
    }
    float threshold(idx_t r) const { return best[r]; }
    void push(idx_t r, float s, idx_t id) {
        if (s > best[r] || (s == best[r] && (ids[r] < 0 || id < ids[r]))) {
            best[r] = s;
            ids[r] = id;
        }
    }
    void merge_into(BestState& dst, idx_t rows) const {
        for (idx_t r = 0; r < rows; ++r)
            if (ids[r] >= 0) dst.push(r, best[r], ids[r]);
    }
    void write(idx_t row, float* s, idx_t* i) const {
        *s = best[row];
        *i = ids[row];
    }
};

struct HeapState {
    int kk = 1;
    TopkHeaps heaps;
    int k() const { return kk; }
    void reset(idx_t rows, int) { heaps.reset(rows, kk); }
    void run(const Kernels& K, TileArgs& t, idx_t row0, idx_t col_base) {
        HeapSink ctx;
        ctx.heaps = &heaps;
        ctx.call_thresholds = heaps.thresholds() + row0;
        ctx.row_base = row0;
        ctx.col_base = col_base;
        K.topk(t, ctx.call_thresholds, HeapSink::sink, &ctx);
    }
    float threshold(idx_t r) const { return heaps.threshold(r); }
    void push(idx_t r, float s, idx_t id) { heaps.push(r, s, id); }
    void merge_into(HeapState& dst, idx_t rows) const {
        for (idx_t r = 0; r < rows; ++r) dst.heaps.merge_row(r, heaps, r);
    }
    void write(idx_t row, float* s, idx_t* i) const { heaps.extract(row, s, i); }
};

/// Per-thread buffers of the screening path.
struct ScreenScratch {
    std::vector<float> z, kth, exact;
    std::vector<std::int32_t> cand;
    std::vector<idx_t> pair_key, pair_row, pair_col, order, key_start, fill;
    std::vector<const float*> vecs;
};

/// Where the exact re-scoring finds the vectors of a screened call. Either the columns are packed
/// in fp32 blocks (col_blocks: block c0/16 of the call first) and the rows are read in place, or
/// the rows are packed (row_blocks: 16-row blocks, block r0/16 first) and the columns are read in
/// place from `db`. A score is the same fma chain either way (fma(a, b, c) == fma(b, a, c)); the
/// second form spares packing a large database that is streamed once.
struct Rescore {
    const float* col_blocks = nullptr;
    const float* row_blocks = nullptr;
    MatrixView<const float> db;  ///< the columns (row_blocks form)
};

/// Screened search of rows [r0, r0+rows) of `qr` (state rows st_row0 + i) against columns
/// [c0, c0+ncols) of `qc` (ids col_base + c; in the database `db` at row col_base + c). Candidates
/// are re-scored exactly with the fp32 tile kernel on 16-wide blocks of packed vectors, grouped so
/// that each block is read once for all the vectors of the other side that need it.
template <class State>
void screened_call(const Kernels& K, State& st, idx_t st_row0, const QuantRows& qr, idx_t r0, idx_t rows,
                   MatrixView<const float> q, const idx_t* qids, idx_t q_row0, const QuantCols& qc, idx_t c0,
                   idx_t ncols, const Rescore& rs, idx_t col_base, idx_t d, ScreenScratch& w) {
    const int k = st.k();
    w.z.resize(static_cast<std::size_t>(rows * ncols));
    K.i8_scores(qr.panels.data() + ((r0) / kMr8) * qr.d4 * 4 * kMr8, rows, qc.blocks.data() + (c0 / 16) * qc.d4 * 64,
                ncols, qr.d4, qr.scale.data() + r0, qc.scale.data() + c0, qc.corr.data() + c0, w.z.data(), ncols);
    const bool by_col_block = rs.col_blocks != nullptr;
    w.cand.resize(ncols);
    w.pair_key.clear();
    w.pair_row.clear();
    w.pair_col.clear();
    for (idx_t r = 0; r < rows; ++r) {
        const float* zr = w.z.data() + r * ncols;
        const double e = screen_error(qr, r0 + r, qc, d);
        double bound = st.threshold(st_row0 + r);
        if (bound == -HUGE_VAL && ncols >= k) {  // nothing exact yet: the k-th largest z minus E
            double kth;
            if (k == 1) {
                kth = K.max_value(zr, ncols);
            } else {
                w.kth.assign(zr, zr + ncols);
                std::nth_element(w.kth.begin(), w.kth.begin() + (k - 1), w.kth.end(), std::greater<float>());
                kth = w.kth[k - 1];
            }
            bound = kth - e;
        }
        const double tau = bound - e;
        float tau_f = static_cast<float>(tau);  // rounded down: no column with z >= tau is missed
        if (static_cast<double>(tau_f) > tau) tau_f = std::nextafter(tau_f, -HUGE_VALF);
        const idx_t m = K.collect_ge(zr, ncols, tau_f, w.cand.data());
        for (idx_t i = 0; i < m; ++i) {
            w.pair_key.push_back(by_col_block ? w.cand[i] / kBlock : r / kBlock);
            w.pair_row.push_back(r);
            w.pair_col.push_back(w.cand[i]);
        }
    }
    const idx_t n_pairs = static_cast<idx_t>(w.pair_row.size());
    if (!n_pairs) return;
    // Group the pairs by the block that is packed (stable: within a block, pairs stay ordered by
    // row, then column).
    const idx_t nkeys = n_blocks(by_col_block ? ncols : rows);
    w.key_start.assign(nkeys + 1, 0);
    for (idx_t i = 0; i < n_pairs; ++i) ++w.key_start[w.pair_key[i] + 1];
    for (idx_t b = 0; b < nkeys; ++b) w.key_start[b + 1] += w.key_start[b];
    w.order.resize(n_pairs);
    w.fill.assign(w.key_start.begin(), w.key_start.end() - 1);
    for (idx_t i = 0; i < n_pairs; ++i) w.order[w.fill[w.pair_key[i]]++] = i;
    for (idx_t b = 0; b < nkeys; ++b) {
        const idx_t p0 = w.key_start[b], p1 = w.key_start[b + 1];
        if (p0 == p1) continue;
        if (by_col_block) {
            // Distinct rows, ascending (one output row each, even when two rows are the same
            // source vector), read in place against column block b.
            w.vecs.clear();
            idx_t last = -1;
            for (idx_t i = p0; i < p1; ++i) {
                const idx_t r = w.pair_row[w.order[i]];
                if (r == last) continue;
                last = r;
                const idx_t qrow = q_row0 + r0 + r;
                w.vecs.push_back(q.data + (qids ? qids[qrow] : qrow) * q.stride);
            }
            const idx_t nv = static_cast<idx_t>(w.vecs.size());
            const idx_t bcols = std::min<idx_t>(kBlock, ncols - b * kBlock);
            w.exact.resize(static_cast<std::size_t>(nv * kBlock));
            K.scores_rows(w.vecs.data(), nv, rs.col_blocks + (c0 / kBlock + b) * kBlock * d, bcols, d, w.exact.data(),
                          kBlock);
            idx_t vi = -1;
            last = -1;
            for (idx_t i = p0; i < p1; ++i) {
                const idx_t pi = w.order[i];
                const idx_t r = w.pair_row[pi];
                if (r != last) {
                    ++vi;
                    last = r;
                }
                const idx_t c = w.pair_col[pi];
                st.push(st_row0 + r, w.exact[vi * kBlock + (c - b * kBlock)], col_base + c0 + c);
            }
        } else {
            // Distinct columns of the pairs of row block b, ascending, read in place against the
            // packed rows: exact[v * 16 + j] = score(row 16 b + j, column v).
            w.cand.clear();
            for (idx_t i = p0; i < p1; ++i) w.cand.push_back(static_cast<std::int32_t>(w.pair_col[w.order[i]]));
            std::sort(w.cand.begin(), w.cand.end());
            w.cand.erase(std::unique(w.cand.begin(), w.cand.end()), w.cand.end());
            w.vecs.clear();
            for (std::int32_t c : w.cand) w.vecs.push_back(rs.db.row(col_base + c0 + c));
            const idx_t nv = static_cast<idx_t>(w.vecs.size());
            const idx_t brows = std::min<idx_t>(kBlock, rows - b * kBlock);
            w.exact.resize(static_cast<std::size_t>(nv * kBlock));
            K.scores_rows(w.vecs.data(), nv, rs.row_blocks + ((r0 / kBlock) + b) * kBlock * d, brows, d,
                          w.exact.data(), kBlock);
            for (idx_t i = p0; i < p1; ++i) {
                const idx_t pi = w.order[i];
                const idx_t r = w.pair_row[pi], c = w.pair_col[pi];
                const idx_t v = std::lower_bound(w.cand.begin(), w.cand.end(), static_cast<std::int32_t>(c)) -
                                w.cand.begin();
                st.push(st_row0 + r, w.exact[v * kBlock + (r - b * kBlock)], col_base + c0 + c);
            }
        }
    }
}

template <class State>
void search_driver(MatrixView<const float> db, MatrixView<const float> q, const idx_t* qids, idx_t nq,
                   const float* col_bias, State proto, int n_threads,
                   const std::function<void(idx_t, const State&, idx_t)>& emit) {
    const Kernels& K = kernels();
    const idx_t n = db.rows, d = db.cols;
    const int mr = K.mr;
    const bool screen = !col_bias && use_screening(K, d, n, proto.k());

    if (n * d <= kSmallDbFloats) {
        AlignedFloats packed;
        QuantCols qc;
        if (screen) qc.quantize(db.data, db.stride, n, d, n_threads);
        packed.resize(n_blocks(n) * kBlock * d);
        parallel_for(n_blocks(n), 64, n_threads, [&](idx_t b0, idx_t b1, int) {
            const idx_t r0 = b0 * kBlock, r1 = std::min(n, b1 * kBlock);
            K.pack_blocks_f32(db.data + r0 * db.stride, db.stride, nullptr, r1 - r0, d, packed.ptr + b0 * kBlock * d);
        });
        const idx_t group = screen ? kScreenRowGroup : kRowGroup;
        const int nt = effective_threads(nq, group, n_threads);
        std::vector<AlignedFloats> bufs(nt);
        std::vector<State> states(nt, proto);
        std::vector<QuantRows> qrows(nt);
        std::vector<ScreenScratch> scratch(screen ? nt : 0);
        parallel_for(nq, group, n_threads, [&](idx_t i0, idx_t i1, int tid) {
            const idx_t rows = i1 - i0;
            State& st = states[tid];
            st.reset(rows, mr);
            // Column chunks keep one call's blocks within a few MB.
            const idx_t col_chunk = std::max<idx_t>(kBlock, (idx_t{1} << 20) / d / kBlock * kBlock);
            if (screen) {
                QuantRows& qr = qrows[tid];
                qr.quantize(q.data + (qids ? 0 : i0 * q.stride), q.stride, qids ? qids + i0 : nullptr, rows, d);
                Rescore rs;
                rs.col_blocks = packed.ptr;
                for (idx_t c0 = 0; c0 < n; c0 += col_chunk)
                    screened_call(K, st, 0, qr, 0, rows, q, qids, i0, qc, c0, std::min(col_chunk, n - c0), rs, 0, d,
                                  scratch[tid]);
            } else {
                AlignedFloats& a = bufs[tid];
                a.resize(packed_rows_size(kRowGroup, d, mr));
                pack_rows(qids ? q.data : q.data + i0 * q.stride, q.stride, qids ? qids + i0 : nullptr, rows, d, mr,
                          nullptr, a.ptr);
                TileArgs t;
                t.a = a.ptr;
                t.n_rows = rows;
                t.d = d;
                for (idx_t c0 = 0; c0 < n; c0 += col_chunk) {
                    t.b = packed.ptr + c0 * d;
                    t.n_cols = std::min(col_chunk, n - c0);
                    t.col_bias = col_bias ? col_bias + c0 : nullptr;
                    st.run(K, t, 0, c0);
                }
            }
            for (idx_t r = 0; r < rows; ++r) emit(i0 + r, st, r);
        });
        return;
    }

    // Large database: stream it chunk by chunk for each chunk of queries. Screened, the database
    // is only quantised (a chunk at a time) and its candidates re-scored in place against the
    // packed queries.
    const int nt = resolve_threads(n_threads);
    const idx_t q_chunk = std::min<idx_t>(nq, 8192);
    static_assert(kScreenRowGroup % kBlock == 0 && kScreenRowGroup % kMr8 == 0, "row groups start on a block");
    AlignedFloats a;
    QuantRows qr;
    for (idx_t q0 = 0; q0 < nq; q0 += q_chunk) {
        const idx_t rows = std::min(q_chunk, nq - q0);
        if (screen) {
            qr.quantize(q.data + (qids ? 0 : q0 * q.stride), q.stride, qids ? qids + q0 : nullptr, rows, d);
            a.resize(n_blocks(rows) * kBlock * d);
            parallel_for(n_blocks(rows), 16, n_threads, [&](idx_t b0, idx_t b1, int) {
                const idx_t r0 = b0 * kBlock, r1 = std::min(rows, b1 * kBlock);
                K.pack_blocks_f32(q.data + (qids ? 0 : (q0 + r0) * q.stride), q.stride,
                                  qids ? qids + q0 + r0 : nullptr, r1 - r0, d, a.ptr + b0 * kBlock * d);
            });
        } else {
            a.resize(packed_rows_size(rows, d, mr));
            parallel_for(rows, kRowGroup, n_threads, [&](idx_t r0, idx_t r1, int) {
                pack_rows(q.data + (qids ? 0 : (q0 + r0) * q.stride), q.stride, qids ? qids + q0 + r0 : nullptr,
                          r1 - r0, d, mr, nullptr, a.ptr + r0 * d);
            });
        }
        std::vector<State> states(nt, proto);
        std::vector<char> used(nt, 0);
        std::vector<AlignedFloats> bufs(nt);
        std::vector<QuantCols> qcols(nt);
        std::vector<ScreenScratch> scratch(screen ? nt : 0);
        parallel_for(n, kDbChunk, n_threads, [&](idx_t c0, idx_t c1, int tid) {
            State& st = states[tid];
            if (!used[tid]) {
                st.reset(rows, mr);
                used[tid] = 1;
            }
            if (screen) {
                QuantCols& qc = qcols[tid];
                qc.quantize(db.data + c0 * db.stride, db.stride, c1 - c0, d, 1);
                Rescore rs;
                rs.row_blocks = a.ptr;
                rs.db = db;
                for (idx_t r0 = 0; r0 < rows; r0 += kScreenRowGroup)
                    screened_call(K, st, r0, qr, r0, std::min(kScreenRowGroup, rows - r0), q, qids, q0, qc, 0,
                                  c1 - c0, rs, c0, d, scratch[tid]);
                return;
            }
            AlignedFloats& buf = bufs[tid];
            buf.resize(kDbChunk * d);
            K.pack_blocks_f32(db.data + c0 * db.stride, db.stride, nullptr, c1 - c0, d, buf.ptr);
            TileArgs t;
            t.b = buf.ptr;
            t.n_cols = c1 - c0;
            t.d = d;
            t.col_bias = col_bias ? col_bias + c0 : nullptr;
            for (idx_t r0 = 0; r0 < rows; r0 += kRowGroup) {
                t.a = a.ptr + r0 * d;
                t.n_rows = std::min(kRowGroup, rows - r0);
                st.run(K, t, r0, c0);
            }
        });
        State total = proto;
        total.reset(rows, mr);
        for (int tid = 0; tid < nt; ++tid)
            if (used[tid]) states[tid].merge_into(total, rows);
        for (idx_t r = 0; r < rows; ++r) emit(q0 + r, total, r);
    }
}

}  // namespace

void exact_search(MatrixView<const float> database, MatrixView<const float> queries, int k,
                  MatrixView<float> out_scores, MatrixView<idx_t> out_ids, int n_threads) {
    MUDG_CHECK(k >= 1, "k must be >= 1, got %d", k);
    MUDG_CHECK(database.cols == queries.cols, "queries have %lld dimensions but the database has %lld",
               (long long)queries.cols, (long long)database.cols);
    for (idx_t i = 0; i < queries.rows; ++i)
        for (int j = 0; j < k; ++j) {
            out_scores.row(i)[j] = kNegInf;
            out_ids.row(i)[j] = -1;
        }
    if (database.rows == 0 || queries.rows == 0) return;
    if (k == 1) {
        std::vector<float> s(queries.rows);
        std::vector<idx_t> ids(queries.rows);
        nearest(database, queries, s.data(), ids.data(), n_threads);
        for (idx_t i = 0; i < queries.rows; ++i) {
            out_scores.row(i)[0] = s[i];
            out_ids.row(i)[0] = ids[i];
        }
        return;
    }
    HeapState proto;
    proto.kk = static_cast<int>(std::min<idx_t>(k, database.rows));
    search_driver<HeapState>(database, queries, nullptr, queries.rows, nullptr, proto, n_threads,
                             [&](idx_t qi, const HeapState& st, idx_t r) {
                                 std::vector<float> s(proto.kk);
                                 std::vector<idx_t> ids(proto.kk);
                                 st.write(r, s.data(), ids.data());
                                 std::copy(s.begin(), s.end(), out_scores.row(qi));
                                 std::copy(ids.begin(), ids.end(), out_ids.row(qi));
                             });
}

void nearest(MatrixView<const float> database, MatrixView<const float> queries, float* out_scores,
             idx_t* out_ids, int n_threads, const float* col_bias, const idx_t* query_ids,
             idx_t n_query_ids) {
    MUDG_CHECK(database.cols == queries.cols, "queries have %lld dimensions but the database has %lld",
               (long long)queries.cols, (long long)database.cols);
    const idx_t nq = query_ids ? n_query_ids : queries.rows;
    for (idx_t i = 0; i < nq; ++i) {
        out_scores[i] = kNegInf;
        out_ids[i] = -1;
    }
    if (database.rows == 0 || nq == 0) return;
    search_driver<BestState>(database, queries, query_ids, nq, col_bias, BestState{}, n_threads,
                             [&](idx_t qi, const BestState& st, idx_t r) { st.write(r, out_scores + qi, out_ids + qi); });
}

}  // namespace mudg_fast
