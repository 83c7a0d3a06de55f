// IvfIndex: an inverted-file index over 16-vector blocks with f32 / f16 / SQ8 / SQ4 codes.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "mudg_fast/common.hpp"
#include "mudg_fast/simd.hpp"

namespace mudg_fast {

/// How a batch of queries is scanned. list_major groups queries by probed list so that every
/// list is read once per batch by the tile kernels; per_query scans each query's lists on its
/// own. Both return identical results; auto picks list_major for batches of 32 queries or more.
enum class SearchMode : int { automatic = 0, list_major = 1, per_query = 2 };

/// Called from the calling thread with the number of rows done so far (rate-limited).
using ProgressFn = std::function<void(idx_t done, idx_t total)>;

/// Owned, 64-byte aligned, zero-initialised growable byte buffer.
class AlignedBuffer {
public:
    AlignedBuffer() = default;
    AlignedBuffer(const AlignedBuffer& o) { *this = o; }
    AlignedBuffer& operator=(const AlignedBuffer& o);
    AlignedBuffer(AlignedBuffer&& o) noexcept { swap(o); }
    AlignedBuffer& operator=(AlignedBuffer&& o) noexcept { swap(o); return *this; }
    ~AlignedBuffer();
    void swap(AlignedBuffer& o) noexcept;
    /// Grows to at least n bytes (geometric), new bytes zeroed.
    void resize(std::size_t n);
    std::uint8_t* data() noexcept { return data_; }
    const std::uint8_t* data() const noexcept { return data_; }
    std::size_t size() const noexcept { return size_; }

private:
    std::uint8_t* data_ = nullptr;
    std::size_t size_ = 0, capacity_ = 0;
    bool mapped_ = false;  ///< an anonymous mapping grown with mremap (Linux, large buffers)
};

/// A read-only view of a file mapped into memory (or read into memory when mapping is off).
class FileMapping;
/// The fast coarse quantizer for large nlist (coarse_quantizer.hpp).
class TwoLevelQuantizer;

/// Four-character tag of a file extension record, e.g. fourcc("META").
constexpr std::uint32_t fourcc(const char (&s)[5]) noexcept {
    return static_cast<std::uint32_t>(static_cast<unsigned char>(s[0])) |
           static_cast<std::uint32_t>(static_cast<unsigned char>(s[1])) << 8 |
           static_cast<std::uint32_t>(static_cast<unsigned char>(s[2])) << 16 |
           static_cast<std::uint32_t>(static_cast<unsigned char>(s[3])) << 24;
}

/// One extension record of the file format (version 2, see ivf_io.cpp): a tagged payload stored
/// with the index. A reader that meets a `required` record it does not know refuses the file
/// (the record changes how vectors are assigned or encoded); other unknown records are kept
/// as they are and written back on save.
struct IvfExtension {
    std::uint32_t tag = 0;
    bool required = false;
    std::vector<std::uint8_t> payload;
};

/// Largest user metadata text an index stores.
inline constexpr std::size_t kMaxMetadataBytes = std::size_t{1} << 20;

class IvfIndex {
public:
    IvfIndex(idx_t dim, idx_t nlist, Codec codec);
    ~IvfIndex();
    IvfIndex(const IvfIndex&) = delete;
    IvfIndex& operator=(const IvfIndex&) = delete;

    idx_t dim() const noexcept { return dim_; }
    idx_t nlist() const noexcept { return nlist_; }
    Codec codec() const noexcept { return codec_; }
    idx_t ntotal() const noexcept { return ntotal_; }
    bool has_centroids() const noexcept { return centroids_ && !centroids_->empty(); }
    bool codec_trained() const noexcept { return codec_ == Codec::f32 || codec_ == Codec::f16 || !sq_a_.empty(); }
    bool is_trained() const noexcept { return has_centroids() && codec_trained(); }

    /// centroids [nlist x dim]; allowed only while the index is empty. Resets the coarse
    /// quantizer to flat (a two-level one belongs to the centroids it was trained on).
    void set_centroids(MatrixView<const float> centroids);
    /// The centroids [nlist x dim] (empty before training). Parts of one index loaded with
    /// load(..., trained_like) share one copy.
    const std::vector<float>& centroids() const noexcept;

    /// The coarse quantizer decides which list add() puts a vector in and which lists probe() /
    /// search() visit. Flat (the default): every centroid is scored, the exact nearest lists.
    /// Two-level (TwoLevelQuantizer): trained here on the current centroids with `cells` cells
    /// and `probe` cells scanned per vector; its state is saved with the index (a required
    /// extension record) and enters the fingerprint. Either may be set at any time: vectors added
    /// before stay in their lists.
    void set_two_level_quantizer(idx_t cells, int probe, std::uint64_t seed, int n_threads = 0);
    void set_flat_quantizer() noexcept;
    /// The two-level quantizer's accuracy: cells scanned per vector (>= 1; at least its number
    /// of cells means all: exact). Not while another thread searches or adds.
    void set_quantizer_probe(int probe);
    /// The two-level quantizer, or null for flat.
    const TwoLevelQuantizer* quantizer() const noexcept { return quantizer_.get(); }
    /// The k nearest lists of each row of x by the quantizer (inner product, best first, padded
    /// with (-inf, -1)): exact with the flat quantizer.
    void coarse_search(MatrixView<const float> x, int k, MatrixView<float> out_scores, MatrixView<idx_t> out_lists,
                       int n_threads = 0) const;

    /// Trains the scalar quantiser on `sample` (SQ8: 256 levels over each dimension's sample
    /// range; SQ4: 16 per-dimension levels by 1-D Lloyd-Max from quantile starts).
    /// f32 / f16 need no training. Allowed only while the index is empty.
    ///
    /// SQ4 has two forms. The residual form (the default, `sq4_residual`) encodes each vector's
    /// residual to its list centroid divided by the list's scale: x = c_l + s_l * r, and the
    /// levels are fitted to the pooled r of the sample (each row assigned to its nearest
    /// centroid, as add() assigns, s_l the list's RMS residual norm relative to the sample's,
    /// shrunk towards 1 for lists with few sample rows); it needs the centroids. The direct form
    /// (`sq4_residual` false, and every file written before the residual form existed) encodes
    /// x itself.
    void train_codec(MatrixView<const float> sample, bool sq4_residual = true, int n_threads = 0);
    /// Codec parameters: SQ8 (a = vmin[d], b = step[d]); SQ4 (a = levels[d*16], b = list
    /// scales[nlist] in the residual form, empty in the direct form).
    const std::vector<float>& codec_a() const noexcept { return sq_a_; }
    const std::vector<float>& codec_b() const noexcept { return sq_b_; }
    void set_codec_params(std::vector<float> a, std::vector<float> b);
    /// SQ4 in the residual form (codes relative to the list centroid and scale).
    bool sq4_residual() const noexcept { return codec_ == Codec::sq4 && !sq_b_.empty(); }

    /// Assigns every row to its nearest centroid (inner product) and appends its code.
    /// ids: null -> ntotal, ntotal+1, ...
    void add(MatrixView<const float> x, const idx_t* ids, int n_threads = 0, const ProgressFn& progress = {});

    /// Top-k by (approximate, code-based) inner product over the nprobe nearest lists.
    /// out_[scores|ids] are [q.rows x k], best first, padded with (-inf, -1).
    /// A score is the inner product of the query with the decoded vector, computed as one fma
    /// chain over the dimensions; SQ8 adds the per-query <q, vmin> at the end, SQ4 in the
    /// residual form computes fma(s_l, <q, r>, <q, c_l>) from the two chains. It equals the
    /// inner product with reconstruct(id) up to float rounding (reconstruct rounds
    /// c_l + s_l * r per value); the ranking uses exactly the reported scores.
    void search(MatrixView<const float> q, int k, int nprobe, MatrixView<float> out_scores,
                MatrixView<idx_t> out_ids, int n_threads = 0, SearchMode mode = SearchMode::automatic) const;

    /// The coarse stage of search(): the nprobe lists nearest to each query, best first.
    /// out_scores / out_lists are [q.rows x nprobe], padded with (-inf, -1) past nlist.
    void probe(MatrixView<const float> q, int nprobe, MatrixView<float> out_scores, MatrixView<idx_t> out_lists,
               int n_threads = 0) const;

    /// The scan stage of search() over given lists: probes [q.rows x nprobe] holds list numbers
    /// (-1 entries are skipped). search() == probe() + search_probed(); indexes sharing
    /// centroids (parts of one index) can share one probe() and merge their results.
    void search_probed(MatrixView<const float> q, int k, MatrixView<const idx_t> probes, MatrixView<float> out_scores,
                       MatrixView<idx_t> out_ids, int n_threads = 0, SearchMode mode = SearchMode::automatic) const;

    /// search_probed() over the parts of one index: indexes trained together (equal
    /// fingerprints; the caller checks them, this checks dim, nlist, codec and its parameters)
    /// that hold disjoint ids. The result is identical, scores and ids, to search_probed() on one
    /// index holding every part's vectors. List-major batches scan list l of every part with
    /// the same packed queries and heaps, so the parts cost one scan of the union.
    static void search_probed_parts(const std::vector<const IvfIndex*>& parts, MatrixView<const float> q, int k,
                                    MatrixView<const idx_t> probes, MatrixView<float> out_scores,
                                    MatrixView<idx_t> out_ids, int n_threads = 0,
                                    SearchMode mode = SearchMode::automatic);

    /// Decoded vectors for ids (out [n x dim]); throws Error for an id not in the index.
    void reconstruct(const idx_t* ids, idx_t n, float* out) const;
    std::vector<idx_t> list_sizes() const;
    /// Ids of list l, in storage order.
    std::vector<idx_t> list_ids(idx_t l) const;

    /// Appends every vector of `other` (same dim, nlist, codec, centroids and codec params),
    /// keeping its ids as they are.
    void merge_from(const IvfIndex& other);

    /// Writes the versioned binary format (see docs in ivf_io.cpp) to `path` (not atomic by
    /// itself: the Python layer writes a temporary file and renames it).
    void save(const std::string& path) const;
    /// Reads a file written by save(). mmap: list data stays in the mapped file until a list is
    /// modified. verify: check every checksum (header and directory are always checked).
    /// trained_like: another part of the same index; the file's centroids must equal its
    /// centroids (else Error), and the two indexes then share them in memory.
    static std::unique_ptr<IvfIndex> load(const std::string& path, bool mmap, bool verify,
                                          const IvfIndex* trained_like = nullptr);

    /// Writes one index file at `path` holding every vector of the index files `parts` (parts
    /// of one index: equal fingerprints), in the given order, with `metadata` as its user
    /// metadata and part 0's other extension records. The file equals, byte for byte, the
    /// save() of one index that added the parts' vectors in that order (a list's vectors are
    /// re-packed into its 16-vector blocks when a part's share does not end on a block). It is
    /// written list by list: memory stays bounded by the largest merged list plus buffers, not
    /// by the index. Each part's list data is checked against its checksum as it is read; a
    /// damaged part is named in the Error. Not atomic by itself (the Python layer renames).
    /// batch_bytes: merged lists assembled per step (at least one list).
    static void merge_files(const std::vector<std::string>& parts, const std::string& path,
                            const std::string& metadata, int n_threads = 0,
                            std::uint64_t batch_bytes = std::uint64_t{64} << 20);

    /// Bytes of list storage (codes + ids).
    std::size_t memory_bytes() const;

    /// User metadata: UTF-8 text (the Python layer stores JSON), at most kMaxMetadataBytes. Saved
    /// with the index; not part of the fingerprint.
    const std::string& metadata() const noexcept { return metadata_; }
    void set_metadata(std::string text);

    /// 64-bit fingerprint of everything that decides which list a vector joins and how it is
    /// encoded: dim, nlist, codec, the centroids, the codec parameters and every required
    /// extension record. Indexes with equal fingerprints were trained together: they can be
    /// merged, and searched together as parts of one index.
    std::uint64_t fingerprint() const;

private:
    struct List {
        AlignedBuffer codes;             // owned blocks
        std::vector<idx_t> ids;          // owned ids
        const std::uint8_t* ext_codes = nullptr;  // or: inside a mapped file
        const idx_t* ext_ids = nullptr;
        idx_t size = 0;
        const std::uint8_t* code_ptr() const { return ext_codes ? ext_codes : codes.data(); }
        const idx_t* id_ptr() const { return ext_ids ? ext_ids : ids.data(); }
    };

    void make_owned(List& list) const;
    void add_chunks(MatrixView<const float> x, const idx_t* ids, int n_threads, const ProgressFn& progress);
    void append(idx_t l, MatrixView<const float> x, const idx_t* rows, idx_t m, const idx_t* new_ids,
                float* scratch);
    /// What the codes of list l encode: x itself, or the scaled residual (x - c_l) / s_l
    /// (SQ4 residual form), written to out [d].
    const float* code_input(idx_t l, const float* x, float* out) const;
    void encode_block(const float* block_f32, std::uint8_t* out) const;
    void encode_slot(const float* v, std::uint8_t* block, int slot) const;
    /// Copies the code of slot `from` of block `src` into slot `to` of block `dst`.
    void copy_slot(const std::uint8_t* src, int from, std::uint8_t* dst, int to) const;
    void decode(idx_t l, idx_t pos, float* out) const;
    /// Nearest list of every row, as add() assigns them.
    void assign_lists(MatrixView<const float> x, idx_t* lists, int n_threads) const;
    void build_id_map() const;
    /// Extension records written by save(), sorted by tag: the metadata, the state of optional
    /// components, and unknown records kept from the loaded file.
    std::vector<IvfExtension> extension_records() const;
    /// Restores a record read by load(); returns false when this version does not know its tag.
    bool apply_extension(const IvfExtension& rec);

    idx_t dim_, nlist_;
    Codec codec_;
    idx_t ntotal_ = 0;
    std::shared_ptr<const std::vector<float>> centroids_;  // shared by the parts of one index
    std::vector<float> sq_a_, sq_b_;   // codec parameters (SQ4 residual form: sq_b_ = list scales)
    std::vector<float> sq4_mid_;       // SQ4 decision thresholds [d][15], derived from levels
    std::vector<List> lists_;
    std::shared_ptr<FileMapping> mapping_;
    std::string metadata_;
    std::vector<IvfExtension> unknown_extensions_;  // optional records of a newer version, kept
    std::unique_ptr<TwoLevelQuantizer> quantizer_;  // null: flat
    // id -> (list, position), built lazily by the first reconstruct(); concurrent readers
    // (several Python threads) build it once, under the mutex.
    mutable std::vector<std::pair<idx_t, std::int64_t>> id_map_;
    mutable std::atomic<bool> id_map_valid_{false};
    mutable std::mutex id_map_mutex_;

    friend struct IvfIo;
};

/// 64-bit checksum used by the file format (own design, xxHash-style lanes; documented in
/// ivf_io.cpp). Stable across platforms.
std::uint64_t checksum64(const void* data, std::size_t n, std::uint64_t seed = 0) noexcept;

}  // namespace mudg_fast
