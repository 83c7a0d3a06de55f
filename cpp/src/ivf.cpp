#include "mudg_fast/ivf.hpp"

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <numeric>

#ifdef __linux__
#include <sys/mman.h>
#endif

#include "mudg_fast/parallel.hpp"
#include "mudg_fast/topk.hpp"

namespace mudg_fast {

namespace {
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr idx_t kAddChunk = 65536;   // rows assigned and appended per step of add()
constexpr idx_t kRowGroup = 192;     // queries per tile-kernel call in list-major search
constexpr idx_t kListMajorMin = 32;  // automatic mode: list-major from this many queries

template <class T>
T* align64(T* p) {
    auto a = reinterpret_cast<std::uintptr_t>(p);
    return reinterpret_cast<T*>((a + 63) & ~std::uintptr_t{63});
}

/// Scratch float buffer aligned to 64 bytes, reused across calls.
struct Scratch {
    std::vector<float> v;
    float* get(idx_t n) {
        if (static_cast<idx_t>(v.size()) < n + 16) v.assign(n + 16, 0.0f);
        return align64(v.data());
    }
};

std::uint8_t sq8_code(float v, float vmin, float inv_step) {
    float t = (v - vmin) * inv_step + 0.5f;
    // NaN (0 * inf when 1 / step overflows) goes to 0: converting NaN to an integer is undefined.
    t = t > 0.0f ? (t < 255.0f ? t : 255.0f) : 0.0f;
    return static_cast<std::uint8_t>(t);
}

/// Code of v among 16 levels given the 15 sorted midpoints m: #{j : m[j] < v}, branch-free.
int sq4_code(float v, const float* m) {
    int c = v > m[7] ? 8 : 0;
    c += v > m[c + 3] ? 4 : 0;
    c += v > m[c + 1] ? 2 : 0;
    c += v > m[c] ? 1 : 0;
    return c;
}
}  // namespace

// ---------------------------------------------------------------------------------------------
// AlignedBuffer

// Large buffers live in their own anonymous mappings and grow with mremap (Linux): no copy, no
// fragmentation, and the geometric spare capacity is never touched, so it costs address space
// but not memory (the streaming build's peak stays at index + one batch). Small buffers use the
// allocator.
namespace {
constexpr std::size_t kMapThreshold = std::size_t{64} << 10;
// Linux refuses more than vm.max_map_count (65530 by default) mappings per process: past this
// many live mapped buffers, new ones come from the allocator instead.
constexpr long kMaxMappings = 30000;
std::atomic<long> g_mappings{0};
}

AlignedBuffer& AlignedBuffer::operator=(const AlignedBuffer& o) {
    if (this != &o) {
        AlignedBuffer tmp;
        tmp.resize(o.size_);
        if (o.size_) std::memcpy(tmp.data_, o.data_, o.size_);
        swap(tmp);
    }
    return *this;
}

AlignedBuffer::~AlignedBuffer() {
    if (!data_) return;
#ifdef __linux__
    if (mapped_) {
        ::munmap(data_, capacity_);
        g_mappings.fetch_sub(1);
        return;
    }
#endif
    std::free(data_);
}

void AlignedBuffer::swap(AlignedBuffer& o) noexcept {
    std::swap(data_, o.data_);
    std::swap(size_, o.size_);
    std::swap(capacity_, o.capacity_);
    std::swap(mapped_, o.mapped_);
}

void AlignedBuffer::resize(std::size_t n) {
    if (n <= size_) return;
    if (n > capacity_) {
        std::size_t cap = std::max<std::size_t>(n, capacity_ + capacity_ / 2);
        cap = (cap + 4095) / 4096 * 4096;
#ifdef __linux__
        if (cap >= kMapThreshold && (mapped_ || g_mappings.load() < kMaxMappings)) {
            cap = std::max(cap, 2 * capacity_);  // spare pages are untouched: grow generously
            void* p;
            if (mapped_) {
                p = ::mremap(data_, capacity_, cap, MREMAP_MAYMOVE);
            } else {
                p = ::mmap(nullptr, cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
                if (p != MAP_FAILED) {
                    if (size_) std::memcpy(p, data_, size_);
                    std::free(data_);
                    g_mappings.fetch_add(1);
                }
            }
            if (p != MAP_FAILED) {
                data_ = static_cast<std::uint8_t*>(p);  // page aligned; new pages read as zero
                capacity_ = cap;
                mapped_ = true;
                size_ = n;
                return;
            }
            if (mapped_) throw std::bad_alloc();
            // a fresh mapping was refused: fall through to the allocator
        }
#endif
        void* p = nullptr;
        if (posix_memalign(&p, 64, cap) != 0 || !p) throw std::bad_alloc();
        if (size_) std::memcpy(p, data_, size_);
        std::free(data_);
        data_ = static_cast<std::uint8_t*>(p);
        capacity_ = cap;
    }
    // Bytes past size_ of a mapped buffer were never written: still the kernel's zero pages.
    if (!mapped_) std::memset(data_ + size_, 0, n - size_);
    size_ = n;
}

// ---------------------------------------------------------------------------------------------
// IvfIndex: construction, training

IvfIndex::IvfIndex(idx_t dim, idx_t nlist, Codec codec) : dim_(dim), nlist_(nlist), codec_(codec) {
    MUDG_CHECK(dim >= 1, "dim must be >= 1, got %lld", (long long)dim);
    MUDG_CHECK(dim <= kMaxDim, "dim %lld is too large (at most %lld)", (long long)dim, (long long)kMaxDim);
    MUDG_CHECK(nlist >= 1, "nlist must be >= 1, got %lld", (long long)nlist);
    MUDG_CHECK(nlist <= kMaxNlist, "nlist %lld is too large (at most %lld)", (long long)nlist, (long long)kMaxNlist);
    lists_.resize(static_cast<std::size_t>(nlist));
}

IvfIndex::~IvfIndex() = default;

void IvfIndex::set_centroids(MatrixView<const float> c) {
    MUDG_CHECK(ntotal_ == 0, "centroids can only be set on an empty index (it holds %lld vectors)",
               (long long)ntotal_);
    MUDG_CHECK(c.rows == nlist_ && c.cols == dim_, "centroids must have shape (%lld, %lld), got (%lld, %lld)",
               (long long)nlist_, (long long)dim_, (long long)c.rows, (long long)c.cols);
    centroids_.resize(static_cast<std::size_t>(nlist_ * dim_));
    for (idx_t i = 0; i < nlist_; ++i) std::copy(c.row(i), c.row(i) + dim_, centroids_.data() + i * dim_);
}

void IvfIndex::set_codec_params(std::vector<float> a, std::vector<float> b) {
    const idx_t d = dim_;
    if (codec_ == Codec::sq8) {
        MUDG_CHECK(static_cast<idx_t>(a.size()) == d && static_cast<idx_t>(b.size()) == d,
                   "SQ8 parameters must be two arrays of %lld values", (long long)d);
        // Decoded values must stay within the magnitude every float32 input is held to, so that
        // scores against them cannot overflow.
        const double limit = magnitude_limit(d);
        for (idx_t k = 0; k < d; ++k) {
            MUDG_CHECK(std::isfinite(a[k]) && std::isfinite(b[k]) && b[k] > 0,
                       "invalid SQ8 parameters for dimension %lld: vmin=%g, step=%g (need finite, step > 0)",
                       (long long)k, (double)a[k], (double)b[k]);
            const double top = static_cast<double>(a[k]) + 255.0 * b[k];
            MUDG_CHECK(std::fabs(a[k]) <= limit && std::fabs(top) <= limit,
                       "SQ8 parameters for dimension %lld decode to values beyond +-%g", (long long)k, limit);
        }
    } else if (codec_ == Codec::sq4) {
        MUDG_CHECK(static_cast<idx_t>(a.size()) == d * 16, "SQ4 parameters must hold %lld levels",
                   (long long)(d * 16));
        for (idx_t k = 0; k < d; ++k)
            for (int j = 0; j < 16; ++j) {
                MUDG_CHECK(std::isfinite(a[k * 16 + j]) && std::fabs(a[k * 16 + j]) <= magnitude_limit(d),
                           "invalid SQ4 level %g for dimension %lld (need finite, within +-%g)",
                           (double)a[k * 16 + j], (long long)k, magnitude_limit(d));
                MUDG_CHECK(j == 0 || a[k * 16 + j] >= a[k * 16 + j - 1], "SQ4 levels must be sorted");
            }
        sq4_mid_.assign(static_cast<std::size_t>(d * 15), 0.0f);
        for (idx_t k = 0; k < d; ++k)
            for (int j = 0; j < 15; ++j)
                sq4_mid_[k * 15 + j] = 0.5f * (a[k * 16 + j] + a[k * 16 + j + 1]);
        b.clear();
    } else {
        MUDG_CHECK(a.empty() && b.empty(), "codec '%s' has no parameters", codec_ == Codec::f32 ? "f32" : "f16");
    }
    sq_a_ = std::move(a);
    sq_b_ = std::move(b);
}

void IvfIndex::train_codec(MatrixView<const float> sample) {
    MUDG_CHECK(ntotal_ == 0, "the codec can only be trained on an empty index");
    if (codec_ == Codec::f32 || codec_ == Codec::f16) return;
    MUDG_CHECK(sample.cols == dim_, "training sample has %lld dimensions, the index %lld", (long long)sample.cols,
               (long long)dim_);
    MUDG_CHECK(sample.rows >= 2, "need at least 2 training vectors for the scalar quantiser, got %lld",
               (long long)sample.rows);
    const idx_t n = sample.rows, d = dim_;
    std::vector<float> a, b;
    if (codec_ == Codec::sq8) {
        a.resize(d);
        b.resize(d);
    } else {
        a.resize(d * 16);
    }
    parallel_for(d, 8, 0, [&](idx_t k0, idx_t k1, int) {
        std::vector<float> col(n);
        std::vector<double> prefix(n + 1);
        for (idx_t k = k0; k < k1; ++k) {
            for (idx_t i = 0; i < n; ++i) col[i] = sample.row(i)[k];
            std::sort(col.begin(), col.end());
            auto quantile = [&](double q) {
                const double pos = q * static_cast<double>(n - 1);
                const idx_t i = static_cast<idx_t>(pos);
                const double f = pos - static_cast<double>(i);
                return i + 1 < n ? (1 - f) * col[i] + f * col[i + 1] : static_cast<double>(col[n - 1]);
            };
            if (codec_ == Codec::sq8) {
                // The sample's full range: with 256 levels the step is already fine, and the
                // extreme values are the ones that decide the top neighbours, so clipping them
                // (a trimmed range) costs more recall than the finer step gains.
                const double lo = col[0], hi = col[n - 1];
                // A subnormal step would have an infinite reciprocal: floor it at the smallest
                // normal float.
                const double step = hi > lo ? std::max((hi - lo) / 255.0, double{FLT_MIN}) : 1e-12;
                a[k] = static_cast<float>(lo);
                b[k] = static_cast<float>(step);
                continue;
            }
            // SQ4: 16 levels minimising squared error (1-D Lloyd-Max), started at the centres of
            // 16 equal-mass bins. Sorted data + prefix sums make each iteration O(16 log n).
            prefix[0] = 0;
            for (idx_t i = 0; i < n; ++i) prefix[i + 1] = prefix[i] + col[i];
            double lv[16];
            for (int j = 0; j < 16; ++j) lv[j] = quantile((j + 0.5) / 16.0);
            for (int it = 0; it < 30; ++it) {
                idx_t start = 0;
                for (int j = 0; j < 16; ++j) {
                    idx_t end = n;
                    if (j < 15) {
                        const float mid = static_cast<float>(0.5 * (lv[j] + lv[j + 1]));
                        end = std::upper_bound(col.begin() + start, col.end(), mid) - col.begin();
                    }
                    if (end > start) lv[j] = (prefix[end] - prefix[start]) / static_cast<double>(end - start);
                    start = end;
                }
                std::sort(lv, lv + 16);
            }
            for (int j = 0; j < 16; ++j) a[k * 16 + j] = static_cast<float>(lv[j]);
        }
    });
    set_codec_params(std::move(a), std::move(b));
}

// ---------------------------------------------------------------------------------------------
// Encoding

void IvfIndex::encode_block(const float* blk, std::uint8_t* out) const {
    const idx_t d = dim_;
    switch (codec_) {
        case Codec::f32:
            std::memcpy(out, blk, static_cast<std::size_t>(d * kBlock * sizeof(float)));
            break;
        case Codec::f16:
            kernels().f32_to_f16(blk, d * kBlock, reinterpret_cast<std::uint16_t*>(out));
            break;
        case Codec::sq8:
            for (idx_t k = 0; k < d; ++k) {
                const float vmin = sq_a_[k], inv = 1.0f / sq_b_[k];
                for (int j = 0; j < kBlock; ++j) out[k * kBlock + j] = sq8_code(blk[k * kBlock + j], vmin, inv);
            }
            break;
        case Codec::sq4:
            kernels().encode_sq4(blk, d, sq4_mid_.data(), out);
            break;
    }
}

void IvfIndex::encode_slot(const float* v, std::uint8_t* blk, int slot) const {
    const idx_t d = dim_;
    switch (codec_) {
        case Codec::f32: {
            auto* o = reinterpret_cast<float*>(blk);
            for (idx_t k = 0; k < d; ++k) o[k * kBlock + slot] = v[k];
            break;
        }
        case Codec::f16: {
            auto* o = reinterpret_cast<std::uint16_t*>(blk);
            for (idx_t k = 0; k < d; ++k) o[k * kBlock + slot] = float_to_half(v[k]);
            break;
        }
        case Codec::sq8:
            for (idx_t k = 0; k < d; ++k) blk[k * kBlock + slot] = sq8_code(v[k], sq_a_[k], 1.0f / sq_b_[k]);
            break;
        case Codec::sq4:
            for (idx_t k = 0; k < d; ++k) {
                const int c = sq4_code(v[k], sq4_mid_.data() + k * 15);
                std::uint8_t& byte = blk[k * 8 + (slot & 7)];
                byte = slot < 8 ? static_cast<std::uint8_t>((byte & 0xF0) | c)
                                : static_cast<std::uint8_t>((byte & 0x0F) | (c << 4));
            }
            break;
    }
}

void IvfIndex::decode(const List& list, idx_t pos, float* out) const {
    const idx_t d = dim_;
    const std::uint8_t* blk = list.code_ptr() + (pos / kBlock) * block_bytes(codec_, d);
    const int slot = static_cast<int>(pos % kBlock);
    for (idx_t k = 0; k < d; ++k) {
        switch (codec_) {
            case Codec::f32: out[k] = reinterpret_cast<const float*>(blk)[k * kBlock + slot]; break;
            case Codec::f16: out[k] = half_to_float(reinterpret_cast<const std::uint16_t*>(blk)[k * kBlock + slot]); break;
            case Codec::sq8: out[k] = sq_a_[k] + static_cast<float>(blk[k * kBlock + slot]) * sq_b_[k]; break;
            case Codec::sq4: {
                const std::uint8_t byte = blk[k * 8 + (slot & 7)];
                out[k] = sq_a_[k * 16 + (slot < 8 ? (byte & 0x0F) : (byte >> 4))];
                break;
            }
        }
    }
}

void IvfIndex::make_owned(List& list) const {
    if (!list.ext_codes) return;
    const std::size_t nbytes = static_cast<std::size_t>(n_blocks(list.size) * block_bytes(codec_, dim_));
    AlignedBuffer codes;
    codes.resize(nbytes);
    if (nbytes) std::memcpy(codes.data(), list.ext_codes, nbytes);
    list.codes.swap(codes);
    list.ids.assign(list.ext_ids, list.ext_ids + list.size);
    list.ext_codes = nullptr;
    list.ext_ids = nullptr;
}

void IvfIndex::append(List& list, MatrixView<const float> x, const idx_t* rows, idx_t m, const idx_t* new_ids,
                      float* scratch) const {
    if (m == 0) return;
    make_owned(list);
    const idx_t d = dim_;
    const idx_t bbytes = block_bytes(codec_, d);
    idx_t pos = list.size;
    list.codes.resize(static_cast<std::size_t>(n_blocks(pos + m) * bbytes));
    idx_t i = 0;
    auto block_at = [&](idx_t p) { return list.codes.data() + (p / kBlock) * bbytes; };
    for (; i < m && pos % kBlock != 0; ++i, ++pos)  // fill the open block slot by slot
        encode_slot(x.row(rows[i]), block_at(pos), static_cast<int>(pos % kBlock));
    for (; m - i >= kBlock; i += kBlock, pos += kBlock) {  // whole blocks: transpose, then encode
        if (codec_ == Codec::f32) {  // f32 blocks are the transposed rows themselves
            kernels().pack_blocks_f32(x.data, x.stride, rows + i, kBlock, d, reinterpret_cast<float*>(block_at(pos)));
            continue;
        }
        kernels().pack_blocks_f32(x.data, x.stride, rows + i, kBlock, d, scratch);
        encode_block(scratch, block_at(pos));
    }
    for (; i < m; ++i, ++pos) encode_slot(x.row(rows[i]), block_at(pos), static_cast<int>(pos % kBlock));
    list.ids.insert(list.ids.end(), new_ids, new_ids + m);
    list.size = pos;
}

// ---------------------------------------------------------------------------------------------
// add

void IvfIndex::add(MatrixView<const float> x, const idx_t* ids, int n_threads, const ProgressFn& progress) {
    MUDG_CHECK(has_centroids(), "add() before the index has centroids: call train(), train_paired() or set_centroids()");
    MUDG_CHECK(codec_trained(), "add() before the scalar quantiser is trained: call train() or train_codec()");
    MUDG_CHECK(x.cols == dim_, "vectors have %lld dimensions, the index %lld", (long long)x.cols, (long long)dim_);
    const idx_t n = x.rows;
    if (n == 0) return;
    id_map_valid_ = false;
    // All or nothing: an exception (Ctrl-C, a failing progress callback, out of memory) rolls
    // every list back to its size before the call, so a failed add() leaves the index as it was.
    // Slots past a list's size are never read, so cutting the size back is enough.
    std::vector<idx_t> size_before(static_cast<std::size_t>(nlist_));
    for (idx_t l = 0; l < nlist_; ++l) size_before[l] = lists_[l].size;
    const idx_t ntotal_before = ntotal_;
    try {
        add_chunks(x, ids, n_threads, progress);
    } catch (...) {
        for (idx_t l = 0; l < nlist_; ++l) {
            List& list = lists_[l];
            if (list.size == size_before[l]) continue;
            list.size = size_before[l];
            list.ids.resize(static_cast<std::size_t>(size_before[l]));
        }
        ntotal_ = ntotal_before;
        throw;
    }
}

void IvfIndex::add_chunks(MatrixView<const float> x, const idx_t* ids, int n_threads, const ProgressFn& progress) {
    const idx_t n = x.rows;
    const MatrixView<const float> cent(centroids_.data(), nlist_, dim_);
    const int nt = resolve_threads(n_threads);
    std::vector<Scratch> scratch(nt);
    std::vector<idx_t> assign(std::min(n, kAddChunk)), order(std::min(n, kAddChunk)), gen_ids;
    std::vector<float> score(std::min(n, kAddChunk));
    std::vector<idx_t> offsets(nlist_ + 1);
    using clock = std::chrono::steady_clock;
    auto last_report = clock::now();
    for (idx_t c0 = 0; c0 < n; c0 += kAddChunk) {
        const idx_t m = std::min(kAddChunk, n - c0);
        const MatrixView<const float> xc(x.row(c0), m, dim_, x.stride);
        nearest(cent, xc, score.data(), assign.data(), n_threads);
        // Counting sort by list, stable: each list receives its rows in input order.
        std::fill(offsets.begin(), offsets.end(), 0);
        for (idx_t i = 0; i < m; ++i) ++offsets[assign[i] + 1];
        for (idx_t l = 0; l < nlist_; ++l) offsets[l + 1] += offsets[l];
        {
            std::vector<idx_t> fill(offsets.begin(), offsets.end() - 1);
            for (idx_t i = 0; i < m; ++i) order[fill[assign[i]]++] = i;
        }
        const idx_t* chunk_ids = nullptr;
        if (ids) {
            chunk_ids = ids + c0;
        } else {
            gen_ids.resize(m);
            std::iota(gen_ids.begin(), gen_ids.end(), ntotal_);
            chunk_ids = gen_ids.data();
        }
        parallel_for(nlist_, 4, n_threads, [&](idx_t l0, idx_t l1, int tid) {
            float* buf = scratch[tid].get(kBlock * dim_);
            std::vector<idx_t> lid;
            for (idx_t l = l0; l < l1; ++l) {
                const idx_t cnt = offsets[l + 1] - offsets[l];
                if (!cnt) continue;
                lid.resize(cnt);
                for (idx_t j = 0; j < cnt; ++j) lid[j] = chunk_ids[order[offsets[l] + j]];
                append(lists_[l], xc, order.data() + offsets[l], cnt, lid.data(), buf);
            }
        });
        ntotal_ += m;
        if (progress && (c0 == 0 || clock::now() - last_report > std::chrono::milliseconds(100) || c0 + m == n)) {
            progress(c0 + m, n);
            last_report = clock::now();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// search

void IvfIndex::search(MatrixView<const float> q, int k, int nprobe, MatrixView<float> out_s,
                      MatrixView<idx_t> out_i, int n_threads, SearchMode mode) const {
    MUDG_CHECK(k >= 1, "k must be >= 1, got %d", k);
    MUDG_CHECK(nprobe >= 1, "nprobe must be >= 1, got %d", nprobe);
    MUDG_CHECK(q.cols == dim_, "queries have %lld dimensions, the index %lld", (long long)q.cols, (long long)dim_);
    MUDG_CHECK(has_centroids(), "search() on an untrained index: call train() first");
    const idx_t nq = q.rows, d = dim_;
    for (idx_t i = 0; i < nq; ++i)
        for (int j = 0; j < k; ++j) {
            out_s.row(i)[j] = kNegInf;
            out_i.row(i)[j] = -1;
        }
    if (nq == 0 || ntotal_ == 0) return;
    nprobe = static_cast<int>(std::min<idx_t>(nprobe, nlist_));
    const Kernels& K = kernels();
    const int mr = K.mr;

    // 1. Coarse quantiser: the nprobe nearest centroids of every query (exact).
    std::vector<float> cs(static_cast<std::size_t>(nq * nprobe));
    std::vector<idx_t> probes(static_cast<std::size_t>(nq * nprobe));
    exact_search(MatrixView<const float>(centroids_.data(), nlist_, d), q, nprobe,
                 MatrixView<float>(cs.data(), nq, nprobe), MatrixView<idx_t>(probes.data(), nq, nprobe), n_threads);

    // SQ8 scores are <q * step, code> + <q, vmin>: the kernels see pre-scaled queries, the
    // per-query constant is added at the end (it does not change the ranking).
    const float* scale = codec_ == Codec::sq8 ? sq_b_.data() : nullptr;
    std::vector<double> bias;
    if (codec_ == Codec::sq8) {
        bias.resize(nq);
        for (idx_t i = 0; i < nq; ++i) {
            double s = 0;
            for (idx_t t = 0; t < d; ++t) s += static_cast<double>(q.row(i)[t]) * sq_a_[t];
            bias[i] = s;
        }
    }
    const float* lut = codec_ == Codec::sq4 ? sq_a_.data() : nullptr;
    const int kk = static_cast<int>(std::min<idx_t>(k, ntotal_));
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
    base.codec = codec_;
    base.lut = lut;

    if (mode == SearchMode::automatic) mode = nq >= kListMajorMin ? SearchMode::list_major : SearchMode::per_query;

    if (mode == SearchMode::per_query) {
        const int nt = effective_threads(nq, 1, n_threads);
        std::vector<Scratch> panel(nt);
        std::vector<TopkHeaps> heaps(nt);
        parallel_for(nq, 1, n_threads, [&](idx_t i0, idx_t i1, int tid) {
            float* a = panel[tid].get(packed_rows_size(1, d, mr));
            TopkHeaps& h = heaps[tid];
            for (idx_t qi = i0; qi < i1; ++qi) {
                pack_rows(q.row(qi), q.stride, nullptr, 1, d, mr, scale, a);
                h.reset(1, kk);
                for (int p = 0; p < nprobe; ++p) {
                    const idx_t l = probes[qi * nprobe + p];
                    if (l < 0) continue;
                    const List& list = lists_[l];
                    if (!list.size) continue;
                    TileArgs t = base;
                    t.a = a;
                    t.n_rows = 1;
                    t.b = list.code_ptr();
                    t.n_cols = list.size;
                    HeapSink ctx;
                    ctx.heaps = &h;
                    ctx.call_thresholds = h.thresholds();
                    ctx.col_ids = list.id_ptr();
                    K.topk(t, h.thresholds(), HeapSink::sink, &ctx);
                }
                finish_row(h, 0, qi);
            }
        });
        return;
    }

    // 2. List-major: invert (query, list) pairs into per-list query sets (ascending query ids).
    std::vector<idx_t> start(nlist_ + 1, 0), members(static_cast<std::size_t>(nq * nprobe));
    for (idx_t i = 0; i < nq * nprobe; ++i)
        if (probes[i] >= 0) ++start[probes[i] + 1];
    for (idx_t l = 0; l < nlist_; ++l) start[l + 1] += start[l];
    {
        std::vector<idx_t> fill(start.begin(), start.end() - 1);
        for (idx_t i = 0; i < nq * nprobe; ++i)
            if (probes[i] >= 0) members[fill[probes[i]]++] = i / nprobe;
    }
    // Work items: (list, row group), largest first for load balance. The result does not depend
    // on the order: every reduction uses the total order (score, then lower id).
    struct Item { idx_t list, r0, r1; double cost; };
    std::vector<Item> items;
    for (idx_t l = 0; l < nlist_; ++l) {
        const idx_t m = start[l + 1] - start[l];
        if (!m || !lists_[l].size) continue;
        for (idx_t r0 = 0; r0 < m; r0 += kRowGroup) {
            const idx_t r1 = std::min(m, r0 + kRowGroup);
            items.push_back({l, r0, r1, static_cast<double>(r1 - r0) * static_cast<double>(lists_[l].size)});
        }
    }
    std::stable_sort(items.begin(), items.end(), [](const Item& a, const Item& b) { return a.cost > b.cost; });

    const int nt = effective_threads(static_cast<idx_t>(items.size()), 1, n_threads);
    std::vector<TopkHeaps> heaps(nt);
    std::vector<char> used(nt, 0);
    std::vector<Scratch> panel(nt);
    std::vector<std::vector<float>> thr(nt);
    parallel_for(static_cast<idx_t>(items.size()), 1, n_threads, [&](idx_t b, idx_t e, int tid) {
        TopkHeaps& h = heaps[tid];
        if (!used[tid]) {
            h.reset(nq, kk);
            thr[tid].resize(kRowGroup);
            used[tid] = 1;
        }
        for (idx_t w = b; w < e; ++w) {
            const Item& it = items[w];
            const List& list = lists_[it.list];
            const idx_t rows = it.r1 - it.r0;
            const idx_t* qids = members.data() + start[it.list] + it.r0;
            float* a = panel[tid].get(packed_rows_size(kRowGroup, d, mr));
            pack_rows(q.data, q.stride, qids, rows, d, mr, scale, a);
            float* t_thr = thr[tid].data();
            for (idx_t r = 0; r < rows; ++r) t_thr[r] = h.threshold(qids[r]);
            TileArgs t = base;
            t.a = a;
            t.n_rows = rows;
            t.b = list.code_ptr();
            t.n_cols = list.size;
            HeapSink ctx;
            ctx.heaps = &h;
            ctx.call_thresholds = t_thr;
            ctx.row_map = qids;
            ctx.col_ids = list.id_ptr();
            K.topk(t, t_thr, HeapSink::sink, &ctx);
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

// ---------------------------------------------------------------------------------------------
// reconstruct, sizes, merge

void IvfIndex::build_id_map() const {
    id_map_.clear();
    id_map_.reserve(static_cast<std::size_t>(ntotal_));
    for (idx_t l = 0; l < nlist_; ++l) {
        const List& list = lists_[l];
        const idx_t* ids = list.id_ptr();
        for (idx_t p = 0; p < list.size; ++p) id_map_.emplace_back(ids[p], (l << 32) | p);
    }
    // Stable sort keeps the first stored copy first when ids repeat.
    std::stable_sort(id_map_.begin(), id_map_.end(),
                     [](const auto& a, const auto& b) { return a.first < b.first; });
    id_map_valid_.store(true, std::memory_order_release);
}

void IvfIndex::reconstruct(const idx_t* ids, idx_t n, float* out) const {
    if (!id_map_valid_.load(std::memory_order_acquire)) {
        std::lock_guard<std::mutex> lock(id_map_mutex_);
        if (!id_map_valid_.load(std::memory_order_relaxed)) build_id_map();
    }
    for (idx_t i = 0; i < n; ++i) {
        auto it = std::lower_bound(id_map_.begin(), id_map_.end(), ids[i],
                                   [](const auto& e, idx_t v) { return e.first < v; });
        MUDG_CHECK(it != id_map_.end() && it->first == ids[i], "id %lld is not in the index", (long long)ids[i]);
        const idx_t l = it->second >> 32, p = it->second & 0xFFFFFFFF;
        decode(lists_[l], p, out + i * dim_);
    }
}

std::vector<idx_t> IvfIndex::list_sizes() const {
    std::vector<idx_t> s(nlist_);
    for (idx_t l = 0; l < nlist_; ++l) s[l] = lists_[l].size;
    return s;
}

std::vector<idx_t> IvfIndex::list_ids(idx_t l) const {
    MUDG_CHECK(l >= 0 && l < nlist_, "list %lld out of range [0, %lld)", (long long)l, (long long)nlist_);
    const List& list = lists_[l];
    return std::vector<idx_t>(list.id_ptr(), list.id_ptr() + list.size);
}

std::size_t IvfIndex::memory_bytes() const {
    std::size_t b = 0;
    for (const List& l : lists_)
        b += static_cast<std::size_t>(n_blocks(l.size) * block_bytes(codec_, dim_) + l.size * sizeof(idx_t));
    return b;
}

void IvfIndex::merge_from(const IvfIndex& o) {
    MUDG_CHECK(&o != this, "cannot merge an index into itself");
    MUDG_CHECK(o.dim_ == dim_ && o.nlist_ == nlist_ && o.codec_ == codec_,
               "indexes differ in dim, nlist or codec and cannot be merged");
    MUDG_CHECK(o.centroids_ == centroids_,
               "indexes have different centroids: merge needs indexes trained together (same centroids)");
    MUDG_CHECK(o.sq_a_ == sq_a_ && o.sq_b_ == sq_b_, "indexes have different codec parameters and cannot be merged");
    const idx_t bbytes = block_bytes(codec_, dim_);
    std::vector<float> tmp(static_cast<std::size_t>(dim_));
    for (idx_t l = 0; l < nlist_; ++l) {
        const List& src = o.lists_[l];
        if (!src.size) continue;
        List& dst = lists_[l];
        make_owned(dst);
        if (dst.size % kBlock == 0) {  // block aligned: copy codes wholesale
            const std::size_t off = static_cast<std::size_t>(n_blocks(dst.size) * bbytes);
            const std::size_t nbytes = static_cast<std::size_t>(n_blocks(src.size) * bbytes);
            dst.codes.resize(off + nbytes);
            std::memcpy(dst.codes.data() + off, src.code_ptr(), nbytes);
            dst.ids.insert(dst.ids.end(), src.id_ptr(), src.id_ptr() + src.size);
            dst.size += src.size;
        } else {  // re-encoding a decoded code gives the same code for every codec
            for (idx_t p = 0; p < src.size; ++p) {
                o.decode(src, p, tmp.data());
                const idx_t row = 0, id = src.id_ptr()[p];
                append(dst, MatrixView<const float>(tmp.data(), 1, dim_), &row, 1, &id, nullptr);
            }
        }
    }
    ntotal_ += o.ntotal_;
    id_map_valid_ = false;
}

}  // namespace mudg_fast
