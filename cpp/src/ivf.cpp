// IvfIndex: list storage (AlignedBuffer), construction, add, reconstruct and merge. Codecs live in
// ivf_codec.cpp, search in ivf_search.cpp, the file format in ivf_io.cpp.
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

#include "ivf_internal.hpp"
#include "mudg_fast/coarse_quantizer.hpp"
#include "mudg_fast/parallel.hpp"
#include "mudg_fast/topk.hpp"

namespace mudg_fast {

using ivf_detail::Scratch;

namespace {
constexpr idx_t kAddChunk = 65536;   // rows assigned and appended per step of add()
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
    auto cent = std::make_shared<std::vector<float>>(static_cast<std::size_t>(nlist_ * dim_));
    for (idx_t i = 0; i < nlist_; ++i) std::copy(c.row(i), c.row(i) + dim_, cent->data() + i * dim_);
    centroids_ = std::move(cent);
    quantizer_.reset();
}

const std::vector<float>& IvfIndex::centroids() const noexcept {
    static const std::vector<float> none;
    return centroids_ ? *centroids_ : none;
}

void IvfIndex::set_two_level_quantizer(idx_t cells, int probe, std::uint64_t seed, int n_threads) {
    MUDG_CHECK(has_centroids(), "a two-level quantizer is trained on the centroids: train the index (or set its "
               "centroids) first");
    auto q = std::make_unique<TwoLevelQuantizer>(TwoLevelQuantizer::train(
        MatrixView<const float>(centroids().data(), nlist_, dim_), cells, probe, seed, n_threads));
    quantizer_ = std::move(q);
}

void IvfIndex::set_flat_quantizer() noexcept { quantizer_.reset(); }

void IvfIndex::set_quantizer_probe(int probe) {
    MUDG_CHECK(quantizer_, "the index has a flat quantizer (it scores every centroid): there is no probe to set");
    quantizer_->set_probe(probe);
}

void IvfIndex::coarse_search(MatrixView<const float> x, int k, MatrixView<float> out_s, MatrixView<idx_t> out_l,
                             int n_threads) const {
    MUDG_CHECK(has_centroids(), "the index has no centroids: train it first");
    MUDG_CHECK(x.cols == dim_, "vectors have %lld dimensions, the index %lld", (long long)x.cols, (long long)dim_);
    if (quantizer_) {
        quantizer_->search(MatrixView<const float>(centroids().data(), nlist_, dim_), x, k, out_s, out_l, n_threads);
        return;
    }
    const MatrixView<const float> cent(centroids().data(), nlist_, dim_);
    if (k == 1) {  // nearest(): the argmax path with int8 screening
        std::vector<float> s(static_cast<std::size_t>(x.rows));
        std::vector<idx_t> l(static_cast<std::size_t>(x.rows));
        nearest(cent, x, s.data(), l.data(), n_threads);
        for (idx_t i = 0; i < x.rows; ++i) {
            out_s.row(i)[0] = s[i];
            out_l.row(i)[0] = l[i];
        }
        return;
    }
    exact_search(cent, x, k, out_s, out_l, n_threads);
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

void IvfIndex::append(idx_t l, MatrixView<const float> x, const idx_t* rows, idx_t m, const idx_t* new_ids,
                      float* scratch) {
    if (m == 0) return;
    List& list = lists_[l];
    make_owned(list);
    const idx_t d = dim_;
    const idx_t bbytes = block_bytes(codec_, d);
    idx_t pos = list.size;
    list.codes.resize(static_cast<std::size_t>(n_blocks(pos + m) * bbytes));
    idx_t i = 0;
    auto block_at = [&](idx_t p) { return list.codes.data() + (p / kBlock) * bbytes; };
    // What the codes encode: the rows themselves, or their scaled residuals (SQ4 residual form),
    // prepared in `res` (kBlock rows of d) after the block transposed in `scratch`.
    const bool residual = sq4_residual();
    float* res = scratch + kBlock * d;
    for (; i < m && pos % kBlock != 0; ++i, ++pos)  // fill the open block slot by slot
        encode_slot(code_input(l, x.row(rows[i]), res), block_at(pos), static_cast<int>(pos % kBlock));
    for (; m - i >= kBlock; i += kBlock, pos += kBlock) {  // whole blocks: transpose, then encode
        if (codec_ == Codec::f32) {  // f32 blocks are the transposed rows themselves
            kernels().pack_blocks_f32(x.data, x.stride, rows + i, kBlock, d, reinterpret_cast<float*>(block_at(pos)));
            continue;
        }
        if (residual) {
            for (int j = 0; j < kBlock; ++j) code_input(l, x.row(rows[i + j]), res + j * d);
            kernels().pack_blocks_f32(res, d, nullptr, kBlock, d, scratch);
        } else {
            kernels().pack_blocks_f32(x.data, x.stride, rows + i, kBlock, d, scratch);
        }
        encode_block(scratch, block_at(pos));
    }
    for (; i < m; ++i, ++pos) encode_slot(code_input(l, x.row(rows[i]), res), block_at(pos), static_cast<int>(pos % kBlock));
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
    const int nt = resolve_threads(n_threads);
    std::vector<Scratch> scratch(nt);
    std::vector<idx_t> assign(std::min(n, kAddChunk)), order(std::min(n, kAddChunk)), gen_ids;
    std::vector<idx_t> offsets(nlist_ + 1);
    using clock = std::chrono::steady_clock;
    auto last_report = clock::now();
    for (idx_t c0 = 0; c0 < n; c0 += kAddChunk) {
        const idx_t m = std::min(kAddChunk, n - c0);
        const MatrixView<const float> xc(x.row(c0), m, dim_, x.stride);
        assign_lists(xc, assign.data(), n_threads);
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
            float* buf = scratch[tid].get(2 * kBlock * dim_);
            std::vector<idx_t> lid;
            for (idx_t l = l0; l < l1; ++l) {
                const idx_t cnt = offsets[l + 1] - offsets[l];
                if (!cnt) continue;
                lid.resize(cnt);
                for (idx_t j = 0; j < cnt; ++j) lid[j] = chunk_ids[order[offsets[l] + j]];
                append(l, xc, order.data() + offsets[l], cnt, lid.data(), buf);
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
        decode(l, p, out + i * dim_);
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
    MUDG_CHECK(o.centroids_ == centroids_ || o.centroids() == centroids(),
               "indexes have different centroids: merge needs indexes trained together (same centroids)");
    MUDG_CHECK(o.sq_a_ == sq_a_ && o.sq_b_ == sq_b_, "indexes have different codec parameters and cannot be merged");
    MUDG_CHECK(o.fingerprint() == fingerprint(),
               "indexes were trained differently (their extension state differs) and cannot be merged");
    const idx_t bbytes = block_bytes(codec_, dim_);
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
        } else {  // slot by slot: the same codes (same centroids and codec), shifted
            dst.codes.resize(static_cast<std::size_t>(n_blocks(dst.size + src.size) * bbytes));
            for (idx_t p = 0; p < src.size; ++p) {
                const idx_t to = dst.size + p;
                copy_slot(src.code_ptr() + (p / kBlock) * bbytes, static_cast<int>(p % kBlock),
                          dst.codes.data() + (to / kBlock) * bbytes, static_cast<int>(to % kBlock));
            }
        }
        dst.ids.insert(dst.ids.end(), src.id_ptr(), src.id_ptr() + src.size);
        dst.size += src.size;
    }
    ntotal_ += o.ntotal_;
    id_map_valid_ = false;
}

}  // namespace mudg_fast
