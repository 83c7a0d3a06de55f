// IvfIndex persistence: a versioned, checksummed, mmap-friendly binary format.
//
// File format, version 2 (all integers little-endian; offsets are from the start of the file).
// Version 1 is the same without extension records (header field 112 reserved, written 0 and
// ignored); readers accept both, writers write version 2.
//
//   Header, 128 bytes
//     0  char[8] magic "MUDGIVF\0"
//     8  u32     format version (2)
//    12  u32     header size (128)
//    16  i64     dim
//    24  i64     nlist
//    32  i64     ntotal
//    40  u32     codec: 0 f32, 1 f16, 2 sq8, 3 sq4
//    44  u32     metric: 0 inner product
//    48  u64     centroids offset: nlist * dim float32, row-major
//    56  u64     codec parameter offset: float32 values (sq8: vmin[dim] then step[dim];
//                sq4: levels[dim][16]; f32/f16: none)
//    64  u64     codec parameter count
//    72  u64     directory offset: nlist entries of (u64 codes offset, i64 size, u64 ids offset)
//    80  u64     data offset: start of the list data
//    88  u64     file size
//    96  u64     checksum of bytes [centroids offset, data offset) (centroids, parameters,
//                extension records, directory)
//   104  u64     data checksum: checksum64 of the 2*nlist u64 values (checksum of list l's code
//                bytes, checksum of its id bytes) for l = 0..nlist-1
//   112  u64     extension bytes: size of the extension section (version 1: reserved)
//   120  u64     checksum of header bytes [0, 120)
//   Centroids at 128, codec parameters right after them, the extension section at the next
//     multiple of 8, the directory right after it (at the next multiple of 8 in version 1), the
//     list data at the next multiple of 64 after the directory; gaps are zero.
//   Extension section: records back to back, sorted by tag, tags unique. Record: u32 tag (four
//     ASCII characters, e.g. "META"), u32 flags (bit 0: required; other bits 0), u64 payload
//     length, the payload, zero padding to a multiple of 8. A reader refuses a required record
//     it does not know (it changes how vectors are assigned or encoded) and keeps other unknown
//     records as they are. Known records: META (optional) user metadata, UTF-8 text (JSON from
//     the Python layer); SQ4R (required) the SQ4 residual form: u32 form (1), u32 0, then nlist
//     float32 list scales s_l; the codes of list l encode (x - c_l) / s_l against the levels
//     (without it, SQ4 codes encode x: the direct form of files written before it existed);
//     CQTL (required) the two-level coarse quantizer: cell centres, the cell
//     of every centroid and the cells scanned per vector (layout in coarse_quantizer.cpp).
//   List data: for each list, ceil(size/16) code blocks (the in-memory block layout, see
//     simd.hpp) starting on a 64-byte boundary, then `size` int64 ids on an 8-byte boundary;
//     the gaps before the code blocks and before the ids are zero. The last list's ids end
//     where the footer starts.
//   Footer, 16 bytes at file size - 16: char[8] "MUDGEND\0", u64 file size.
//
// checksum64 is an xxHash64-style construction (four 64-bit lanes over 32-byte stripes, then
// 8-byte words and single bytes, final avalanche), defined by the code below.
//
// File safety. Readers accept exactly the layout above: every offset in the header and the
// directory must equal the one the layout gives for (dim, nlist, codec, list sizes), the list
// sizes must sum to ntotal, and the file size must match the header and the footer. What is
// checked on load:
//   always             magic, header checksum, version and header size, file size, footer (magic
//                      and size), value ranges (1 <= dim < 2^24, 1 <= nlist < 2^31, codec,
//                      metric, 0 <= ntotal <= file size / 8), the layout, the meta checksum
//                      (centroids, codec parameters, extension records, directory and the gaps
//                      between them), finite centroids, valid codec parameters, well-formed
//                      extension records (each one validated by its owner);
//   only with verify   the list data: code blocks and ids (data checksum) and the zero gaps
//                      between lists. These are the bulk of the file: verify=false does not
//                      checksum them, and with mmap does not even read them until used.
// So verify=true detects a change to any byte of the file (up to checksum collisions, 2^-64).
// verify=false skips the list data: damage there loads silently and can change search results,
// reconstructed vectors and ids (NaN scores, ids that were never added), but the index stays
// safe to search, reconstruct, extend and save, because everything that sizes or locates memory
// has been checked. A mapped file must not be modified in place while an index uses it (a
// file shortened underneath a mapping faults on access); save() replaces files by rename, which
// leaves open mappings intact.
#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "mudg_fast/ivf.hpp"
#include "mudg_fast/parallel.hpp"

#if defined(__unix__) || defined(__APPLE__)
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#define MUDG_HAVE_MMAP 1
#endif

namespace mudg_fast {

static_assert(sizeof(idx_t) == 8, "ids are 64-bit");
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the IVF file format is little-endian; big-endian hosts are not supported"
#endif

namespace {

constexpr std::uint64_t P1 = 0x9E3779B185EBCA87ull, P2 = 0xC2B2AE3D27D4EB4Full, P3 = 0x165667B19E3779F9ull;
constexpr std::uint64_t P4 = 0x85EBCA77C2B2AE63ull, P5 = 0x27D4EB2F165667C5ull;
inline std::uint64_t rotl(std::uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
inline std::uint64_t load64(const std::uint8_t* p) {
    std::uint64_t v;
    std::memcpy(&v, p, 8);
    return v;
}
inline std::uint64_t round64(std::uint64_t acc, std::uint64_t w) { return rotl(acc + w * P2, 31) * P1; }
inline std::uint64_t merge64(std::uint64_t h, std::uint64_t v) { return (h ^ round64(0, v)) * P1 + P4; }

constexpr char kMagic[8] = {'M', 'U', 'D', 'G', 'I', 'V', 'F', '\0'};
constexpr char kEndMagic[8] = {'M', 'U', 'D', 'G', 'E', 'N', 'D', '\0'};
constexpr std::uint32_t kVersion = 2;
constexpr std::uint32_t kRecordRequired = 1;
constexpr std::uint64_t kHeaderSize = 128, kFooterSize = 16;

struct Header {
    char magic[8];
    std::uint32_t version, header_size;
    std::int64_t dim, nlist, ntotal;
    std::uint32_t codec, metric;
    std::uint64_t centroids_offset, params_offset, params_count, directory_offset, data_offset, file_size;
    std::uint64_t meta_checksum, data_checksum, ext_bytes, header_checksum;
};
static_assert(sizeof(Header) == kHeaderSize, "header layout");

struct DirEntry {
    std::uint64_t codes_offset;
    std::int64_t size;
    std::uint64_t ids_offset;
};
static_assert(sizeof(DirEntry) == 24, "directory layout");

std::uint64_t align_up(std::uint64_t x, std::uint64_t a) { return (x + a - 1) / a * a; }

constexpr std::uint64_t kRecordHeader = 16;

/// The extension section's bytes: records back to back, each padded to 8 bytes.
std::vector<std::uint8_t> serialize_records(const std::vector<IvfExtension>& recs) {
    std::vector<std::uint8_t> out;
    for (const IvfExtension& r : recs) {
        const std::uint64_t len = r.payload.size();
        const std::size_t at = out.size();
        out.resize(at + static_cast<std::size_t>(kRecordHeader + align_up(len, 8)), 0);
        const std::uint32_t flags = r.required ? kRecordRequired : 0;
        std::memcpy(out.data() + at, &r.tag, 4);
        std::memcpy(out.data() + at + 4, &flags, 4);
        std::memcpy(out.data() + at + 8, &len, 8);
        if (len) std::memcpy(out.data() + at + kRecordHeader, r.payload.data(), static_cast<std::size_t>(len));
    }
    return out;
}

std::string tag_text(std::uint32_t tag) {
    std::string t;
    for (int i = 0; i < 4; ++i) {
        const char c = static_cast<char>((tag >> (8 * i)) & 0xFF);
        t += (c >= 0x20 && c < 0x7F) ? c : '?';
    }
    return t;
}

struct Writer {
    std::FILE* f;
    std::string path;
    std::uint64_t pos = 0;
    void write(const void* p, std::size_t n) {
        if (n && std::fwrite(p, 1, n, f) != n)
            MUDG_CHECK(false, "cannot write '%s': %s", path.c_str(), std::strerror(errno));
        pos += n;
    }
    void pad_to(std::uint64_t off) {
        static const std::uint8_t zeros[64] = {};
        while (pos < off) write(zeros, static_cast<std::size_t>(std::min<std::uint64_t>(64, off - pos)));
    }
};

}  // namespace

std::uint64_t checksum64(const void* data, std::size_t n, std::uint64_t seed) noexcept {
    const auto* p = static_cast<const std::uint8_t*>(data);
    const std::uint8_t* end = p + n;
    std::uint64_t h;
    if (n >= 32) {
        std::uint64_t v1 = seed + P1 + P2, v2 = seed + P2, v3 = seed, v4 = seed - P1;
        for (; p + 32 <= end; p += 32) {
            v1 = round64(v1, load64(p));
            v2 = round64(v2, load64(p + 8));
            v3 = round64(v3, load64(p + 16));
            v4 = round64(v4, load64(p + 24));
        }
        h = rotl(v1, 1) + rotl(v2, 7) + rotl(v3, 12) + rotl(v4, 18);
        h = merge64(h, v1);
        h = merge64(h, v2);
        h = merge64(h, v3);
        h = merge64(h, v4);
    } else {
        h = seed + P5;
    }
    h += static_cast<std::uint64_t>(n);
    for (; p + 8 <= end; p += 8) h = rotl(h ^ round64(0, load64(p)), 27) * P1 + P4;
    for (; p < end; ++p) h = rotl(h ^ (*p * P5), 11) * P1;
    h ^= h >> 33;
    h *= P2;
    h ^= h >> 29;
    h *= P3;
    h ^= h >> 32;
    return h;
}

/// The whole file, mapped read-only (or read into memory). Only regular files are accepted: a
/// directory, FIFO or device is refused before anything is read from it (opening a FIFO without
/// O_NONBLOCK would wait for a writer forever).
class FileMapping {
public:
    FileMapping(const std::string& path, bool use_mmap) : path_(path) {
        const char* p = path.c_str();
#ifdef MUDG_HAVE_MMAP
        const int fd = ::open(p, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
        MUDG_CHECK(fd >= 0, "cannot open '%s': %s", p, std::strerror(errno));
        struct stat st;
        if (::fstat(fd, &st) != 0) {
            const int err = errno;
            ::close(fd);
            MUDG_CHECK(false, "cannot stat '%s': %s", p, std::strerror(err));
        }
        if (!S_ISREG(st.st_mode)) {
            ::close(fd);
            MUDG_CHECK(false, "'%s' is not a regular file (a directory, pipe or device): not a mudg_fast IVF index file",
                       p);
        }
        size_ = static_cast<std::size_t>(st.st_size);
        if (use_mmap && size_ > 0) {
            void* m = ::mmap(nullptr, size_, PROT_READ, MAP_SHARED, fd, 0);
            const int err = errno;
            ::close(fd);
            MUDG_CHECK(m != MAP_FAILED, "cannot map '%s': %s", p, std::strerror(err));
            data_ = static_cast<const std::uint8_t*>(m);
            mapped_ = true;
            return;
        }
        buffer_.resize(size_);
        std::size_t got = 0;
        int err = 0;
        while (got < size_) {  // read() may return less than asked, or be interrupted
            const ssize_t r = ::read(fd, buffer_.data() + got, size_ - got);
            if (r < 0 && errno == EINTR) continue;
            if (r < 0) err = errno;
            if (r <= 0) break;
            got += static_cast<std::size_t>(r);
        }
        ::close(fd);
        MUDG_CHECK(got == size_, "cannot read '%s' (%llu of %llu bytes): %s", p, (unsigned long long)got,
                   (unsigned long long)size_, err ? std::strerror(err) : "the file shrank while reading");
#else
        std::FILE* f = std::fopen(p, "rb");
        MUDG_CHECK(f, "cannot open '%s': %s", p, std::strerror(errno));
        std::fseek(f, 0, SEEK_END);
        const long len = std::ftell(f);
        std::fseek(f, 0, SEEK_SET);
        if (len < 0) {
            std::fclose(f);
            MUDG_CHECK(false, "'%s' is not a regular file: not a mudg_fast IVF index file", p);
        }
        size_ = static_cast<std::size_t>(len);
        buffer_.resize(size_);
        const std::size_t got = size_ ? std::fread(buffer_.data(), 1, size_, f) : 0;
        std::fclose(f);
        MUDG_CHECK(got == size_, "cannot read '%s'", p);
#endif
        data_ = buffer_.data();
    }
    ~FileMapping() {
#ifdef MUDG_HAVE_MMAP
        if (mapped_) ::munmap(const_cast<std::uint8_t*>(data_), size_);
#endif
    }
    const std::uint8_t* data() const { return data_; }
    std::size_t size() const { return size_; }
    /// Drops the mapped pages of [0, end) from this process's resident memory (they stay in the
    /// page cache and are read again on access): a streaming reader's memory stays bounded.
    void release_until(std::uint64_t end) {
#ifdef MUDG_HAVE_MMAP
        if (!mapped_) return;
        const std::uint64_t page = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
        end = std::min<std::uint64_t>(end, size_) / page * page;
        if (end > released_) {
            ::madvise(const_cast<std::uint8_t*>(data_) + released_, static_cast<std::size_t>(end - released_),
                      MADV_DONTNEED);
            released_ = end;
        }
#else
        (void)end;
#endif
    }

private:
    std::uint64_t released_ = 0;
    std::string path_;
    const std::uint8_t* data_ = nullptr;
    std::size_t size_ = 0;
    bool mapped_ = false;
    AlignedBuffer buffer_;
};

/// Code blocks and ids of one list, as written (valid until the next list is asked for).
struct ListBytes {
    const std::uint8_t* codes;
    const idx_t* ids;
};

struct IvfIo {
    static void save(const IvfIndex& ix, const std::string& path);
    static std::unique_ptr<IvfIndex> load(const std::string& path, bool mmap, bool verify, const IvfIndex* like);
    static void merge_files(const std::vector<std::string>& parts, const std::string& path,
                            const std::string& metadata, int n_threads, std::uint64_t batch_bytes);
    /// Writes the file of an index with ix's training (dim, nlist, codec, centroids, codec
    /// parameters), the extension records `records` and lists of `sizes` vectors; fetch(l) gives
    /// list l's bytes and is called for l = 0, 1, ... in order. The list data is written first
    /// (checksummed as it goes), then the header and the meta region in front of it.
    static void write_file(const IvfIndex& ix, const std::vector<IvfExtension>& records,
                           const std::vector<idx_t>& sizes, const std::function<ListBytes(idx_t)>& fetch,
                           const std::string& path);
};

void IvfIo::save(const IvfIndex& ix, const std::string& path) {
    MUDG_CHECK(ix.has_centroids(), "cannot save an index without centroids: train it first");
    write_file(ix, ix.extension_records(), ix.list_sizes(),
               [&ix](idx_t l) { return ListBytes{ix.lists_[l].code_ptr(), ix.lists_[l].id_ptr()}; }, path);
}

void IvfIo::write_file(const IvfIndex& ix, const std::vector<IvfExtension>& records, const std::vector<idx_t>& sizes,
                       const std::function<ListBytes(idx_t)>& fetch, const std::string& path) {
    const idx_t d = ix.dim_, nlist = ix.nlist_;
    MUDG_ASSERT(static_cast<idx_t>(sizes.size()) == nlist);
    const std::uint64_t bbytes = static_cast<std::uint64_t>(block_bytes(ix.codec_, d));
    // The parameter section: SQ8 vmin and step, SQ4 levels (its list scales live in a record).
    std::vector<float> params(ix.sq_a_);
    if (ix.codec_ == Codec::sq8) params.insert(params.end(), ix.sq_b_.begin(), ix.sq_b_.end());
    const std::vector<std::uint8_t> ext = serialize_records(records);

    Header h{};
    std::memcpy(h.magic, kMagic, 8);
    h.version = kVersion;
    h.header_size = kHeaderSize;
    h.dim = d;
    h.nlist = nlist;
    h.ntotal = 0;
    for (idx_t n : sizes) h.ntotal += n;
    h.codec = static_cast<std::uint32_t>(ix.codec_);
    h.metric = 0;
    h.centroids_offset = kHeaderSize;
    h.params_offset = h.centroids_offset + static_cast<std::uint64_t>(nlist * d) * 4;
    h.params_count = params.size();
    const std::uint64_t ext_offset = align_up(h.params_offset + params.size() * 4, 8);
    h.ext_bytes = ext.size();
    h.directory_offset = ext_offset + h.ext_bytes;
    h.data_offset = align_up(h.directory_offset + static_cast<std::uint64_t>(nlist) * sizeof(DirEntry), 64);

    // Layout of the list data.
    std::vector<DirEntry> dir(static_cast<std::size_t>(nlist));
    std::uint64_t off = h.data_offset;
    for (idx_t l = 0; l < nlist; ++l) {
        const std::uint64_t cbytes = static_cast<std::uint64_t>(n_blocks(sizes[l])) * bbytes;
        dir[l].codes_offset = align_up(off, 64);
        dir[l].size = sizes[l];
        dir[l].ids_offset = align_up(dir[l].codes_offset + cbytes, 8);
        off = dir[l].ids_offset + static_cast<std::uint64_t>(sizes[l]) * 8;
    }
    h.file_size = off + kFooterSize;

    Writer w{std::fopen(path.c_str(), "wb"), path};
    MUDG_CHECK(w.f, "cannot create '%s': %s", path.c_str(), std::strerror(errno));
    try {
        // 1. The lists (the header and meta region in front are filled in at the end).
        MUDG_CHECK(std::fseek(w.f, static_cast<long>(h.data_offset), SEEK_SET) == 0, "cannot write '%s': %s",
                   path.c_str(), std::strerror(errno));
        w.pos = h.data_offset;
        std::vector<std::uint64_t> list_sums(static_cast<std::size_t>(2 * nlist));
        for (idx_t l = 0; l < nlist; ++l) {
            const ListBytes b = fetch(l);
            const std::size_t cbytes = static_cast<std::size_t>(n_blocks(sizes[l]) * bbytes);
            const std::size_t ibytes = static_cast<std::size_t>(sizes[l] * 8);
            list_sums[2 * l] = checksum64(b.codes, cbytes);
            list_sums[2 * l + 1] = checksum64(b.ids, ibytes);
            w.pad_to(dir[l].codes_offset);
            w.write(b.codes, cbytes);
            w.pad_to(dir[l].ids_offset);
            w.write(b.ids, ibytes);
        }
        w.write(kEndMagic, 8);
        w.write(&h.file_size, 8);
        MUDG_ASSERT(w.pos == h.file_size);
        h.data_checksum = checksum64(list_sums.data(), list_sums.size() * 8);

        // 2. The meta region, assembled in memory so that its checksum covers exactly what is
        //    written, and the header.
        std::vector<std::uint8_t> meta(static_cast<std::size_t>(h.data_offset - h.centroids_offset), 0);
        std::memcpy(meta.data(), ix.centroids().data(), static_cast<std::size_t>(nlist * d) * 4);
        if (!params.empty())
            std::memcpy(meta.data() + (h.params_offset - kHeaderSize), params.data(), params.size() * 4);
        if (!ext.empty()) std::memcpy(meta.data() + (ext_offset - kHeaderSize), ext.data(), ext.size());
        std::memcpy(meta.data() + (h.directory_offset - kHeaderSize), dir.data(), dir.size() * sizeof(DirEntry));
        h.meta_checksum = checksum64(meta.data(), meta.size());
        h.header_checksum = checksum64(&h, offsetof(Header, header_checksum));
        MUDG_CHECK(std::fseek(w.f, 0, SEEK_SET) == 0, "cannot write '%s': %s", path.c_str(), std::strerror(errno));
        w.pos = 0;
        w.write(&h, sizeof(h));
        w.write(meta.data(), meta.size());
        MUDG_CHECK(std::fflush(w.f) == 0, "cannot write '%s': %s", path.c_str(), std::strerror(errno));
#ifdef MUDG_HAVE_MMAP
        // The data must be on disk before the caller renames the file into place; file systems
        // without fsync (EINVAL, EROFS) have nothing to flush.
        const int rc = ::fsync(fileno(w.f));
        MUDG_CHECK(rc == 0 || errno == EINVAL || errno == EROFS, "cannot write '%s' to disk (fsync): %s", path.c_str(),
                   std::strerror(errno));
#endif
    } catch (...) {
        std::fclose(w.f);
        throw;
    }
    MUDG_CHECK(std::fclose(w.f) == 0, "cannot close '%s': %s", path.c_str(), std::strerror(errno));
}

namespace {
bool all_zero(const std::uint8_t* p, std::uint64_t n) {
    for (std::uint64_t i = 0; i < n; ++i)
        if (p[i]) return false;
    return true;
}
const char* codec_name(std::uint32_t c) {
    static const char* names[] = {"f32", "f16", "sq8", "sq4"};
    return c < 4 ? names[c] : "?";
}
}  // namespace

// Every value read from the file is checked before it is used: the header against its checksum
// and then against sane ranges (which bound every size computed from it far below 2^64, so no
// arithmetic below can wrap), every offset against the documented layout and the file size, and
// the list sizes against ntotal. A file that passes these checks is safe to use even with
// verify=false: damage in the list data can then change results, never memory safety.
std::unique_ptr<IvfIndex> IvfIo::load(const std::string& path, bool mmap, bool verify, const IvfIndex* like) {
    auto map = std::make_shared<FileMapping>(path, mmap);
    const std::uint8_t* base = map->data();
    const std::uint64_t size = map->size();
    const char* p = path.c_str();
    using ull = unsigned long long;

    // 1. What kind of file this is, and whether it can hold a header and a footer.
    MUDG_CHECK(size > 0, "'%s' is empty (0 bytes): not a mudg_fast IVF index file", p);
    MUDG_CHECK(std::memcmp(base, kMagic, static_cast<std::size_t>(std::min<std::uint64_t>(size, 8))) == 0,
               "'%s' is not a mudg_fast IVF index file (it does not start with the MUDGIVF magic)", p);
    MUDG_CHECK(size >= kHeaderSize + kFooterSize, "'%s' is truncated (%llu bytes, less than a header and a footer)",
               p, (ull)size);
    Header h;
    std::memcpy(&h, base, sizeof(h));

    // 2. The header's own checksum; a version we cannot read is named as such.
    const bool header_ok = checksum64(&h, offsetof(Header, header_checksum)) == h.header_checksum;
    if (h.version > kVersion) {
        MUDG_CHECK(!header_ok,
                   "'%s' uses file format version %u, newer than this mudg_fast supports (%u): upgrade mudg_fast", p,
                   h.version, kVersion);
        MUDG_CHECK(false,
                   "'%s' is corrupted (header checksum mismatch) or was written by a newer mudg_fast (its header names "
                   "file format version %u, newer than the version %u this one reads)",
                   p, h.version, kVersion);
    }
    MUDG_CHECK(header_ok, "'%s' is corrupted (header checksum mismatch)", p);
    MUDG_CHECK((h.version == 1 || h.version == kVersion) && h.header_size == kHeaderSize,
               "'%s' has an invalid header (format version %u, header size %u)", p, h.version, h.header_size);

    // 3. Size and footer: truncated, extended or overwritten tails.
    MUDG_CHECK(h.file_size == size, "'%s' is truncated or damaged: the header says %llu bytes, the file has %llu", p,
               (ull)h.file_size, (ull)size);
    std::uint64_t footer_size;
    std::memcpy(&footer_size, base + size - 8, 8);
    MUDG_CHECK(std::memcmp(base + size - kFooterSize, kEndMagic, 8) == 0 && footer_size == size,
               "'%s' is corrupted (bad footer)", p);

    // 4. Header values in range: dim < 2^24, nlist < 2^31 and ntotal <= size / 8 keep every
    //    product below (at most 2^60) exact.
    MUDG_CHECK(h.dim >= 1 && h.dim < (idx_t{1} << 24) && h.nlist >= 1 && h.nlist < (idx_t{1} << 31) && h.codec <= 3 &&
                   h.metric == 0,
               "'%s' has an invalid header (dim %lld, nlist %lld, codec %u, metric %u)", p, (long long)h.dim,
               (long long)h.nlist, h.codec, h.metric);
    MUDG_CHECK(h.ntotal >= 0 && static_cast<std::uint64_t>(h.ntotal) <= size / 8,
               "'%s' has an invalid header (ntotal %lld for a file of %llu bytes)", p, (long long)h.ntotal, (ull)size);
    const std::uint64_t d = static_cast<std::uint64_t>(h.dim), nlist = static_cast<std::uint64_t>(h.nlist);
    const auto codec = static_cast<Codec>(h.codec);
    const std::uint64_t want_params = codec == Codec::sq8 ? 2 * d : codec == Codec::sq4 ? 16 * d : 0;

    // 5. Section offsets: exactly the documented layout, inside the file.
    const std::uint64_t params_offset = kHeaderSize + nlist * d * 4;
    const std::uint64_t ext_offset = align_up(params_offset + 4 * want_params, 8);
    const std::uint64_t ext_bytes = h.version >= 2 ? h.ext_bytes : 0;  // version 1: reserved, ignored
    MUDG_CHECK(ext_bytes % 8 == 0 && ext_bytes <= size,
               "'%s' has an invalid header (extension section of %llu bytes in a file of %llu)", p, (ull)ext_bytes,
               (ull)size);
    const std::uint64_t directory_offset = ext_offset + ext_bytes;
    const std::uint64_t data_offset = align_up(directory_offset + nlist * sizeof(DirEntry), 64);
    MUDG_CHECK(h.centroids_offset == kHeaderSize && h.params_offset == params_offset && h.params_count == want_params &&
                   h.directory_offset == directory_offset && h.data_offset == data_offset,
               "'%s' has an inconsistent layout (section offsets do not match dim %lld, nlist %lld, codec %s)", p,
               (long long)h.dim, (long long)h.nlist, codec_name(h.codec));
    const std::uint64_t data_end = size - kFooterSize;
    MUDG_CHECK(data_offset <= data_end,
               "'%s' is truncated or has an inconsistent layout: its header and directory need %llu bytes, the file "
               "has %llu",
               p, (ull)(data_offset + kFooterSize), (ull)size);
    MUDG_CHECK(checksum64(base + kHeaderSize, data_offset - kHeaderSize) == h.meta_checksum,
               "'%s' is corrupted (centroid/directory checksum mismatch)", p);

    // 6. Centroids and codec parameters (their sizes are bounded by the file size now). A part
    //    loaded like another shares that one's centroids when they are the same.
    const auto* centroids = reinterpret_cast<const float*>(base + kHeaderSize);
    auto ix = std::make_unique<IvfIndex>(h.dim, h.nlist, codec);
    if (like) {
        MUDG_CHECK(like->has_centroids() && like->dim_ == h.dim && like->nlist_ == h.nlist && like->codec_ == codec,
                   "'%s' does not belong with the index it is loaded with: it has dim %lld, nlist %lld, codec %s "
                   "(the other: dim %lld, nlist %lld, codec %s); parts of one index share one training",
                   p, (long long)h.dim, (long long)h.nlist, codec_name(h.codec), (long long)like->dim_,
                   (long long)like->nlist_, codec_name(static_cast<std::uint32_t>(like->codec_)));
        MUDG_CHECK(std::memcmp(centroids, like->centroids().data(), static_cast<std::size_t>(nlist * d * 4)) == 0,
                   "'%s' was trained differently from the index it is loaded with (its centroids differ); parts "
                   "of one index share one training",
                   p);
        ix->centroids_ = like->centroids_;
    } else {
        for (std::uint64_t i = 0; i < nlist * d; ++i)
            MUDG_CHECK(std::isfinite(centroids[i]), "'%s' is corrupted (centroid %llu holds a NaN or infinite value)",
                       p, (ull)(i / d));
        ix->set_centroids(MatrixView<const float>(centroids, h.nlist, h.dim));
    }
    const auto* params = reinterpret_cast<const float*>(base + params_offset);
    try {
        if (codec == Codec::sq8)
            ix->set_codec_params(std::vector<float>(params, params + d), std::vector<float>(params + d, params + 2 * d));
        else if (codec == Codec::sq4)
            ix->set_codec_params(std::vector<float>(params, params + 16 * d), {});
    } catch (const Error& e) {
        MUDG_CHECK(false, "'%s' is corrupted (invalid codec parameters: %s)", p, e.what());
    }

    // 6b. Extension records: well formed, sorted and unique, each one accepted by its owner.
    {
        const std::uint8_t* at = base + ext_offset;
        std::uint64_t left = ext_bytes;
        std::uint32_t prev_tag = 0;
        bool first = true;
        while (left > 0) {
            MUDG_CHECK(left >= kRecordHeader, "'%s' is corrupted (truncated extension record)", p);
            IvfExtension rec;
            std::uint32_t flags;
            std::uint64_t len;
            std::memcpy(&rec.tag, at, 4);
            std::memcpy(&flags, at + 4, 4);
            std::memcpy(&len, at + 8, 8);
            MUDG_CHECK((flags & ~kRecordRequired) == 0, "'%s' is corrupted (extension record '%s' has flags %u)", p,
                       tag_text(rec.tag).c_str(), flags);
            MUDG_CHECK(first || rec.tag > prev_tag,
                       "'%s' is corrupted (extension records out of order or repeated at '%s')", p,
                       tag_text(rec.tag).c_str());
            MUDG_CHECK(len <= left - kRecordHeader && align_up(len, 8) <= left - kRecordHeader,
                       "'%s' is corrupted (extension record '%s' of %llu bytes overruns its section)", p,
                       tag_text(rec.tag).c_str(), (ull)len);
            const std::uint64_t padded = align_up(len, 8);
            MUDG_CHECK(all_zero(at + kRecordHeader + len, padded - len),
                       "'%s' is corrupted (non-zero padding after extension record '%s')", p, tag_text(rec.tag).c_str());
            rec.required = (flags & kRecordRequired) != 0;
            rec.payload.assign(at + kRecordHeader, at + kRecordHeader + len);
            bool known = false;
            try {
                known = ix->apply_extension(rec);
            } catch (const Error& e) {
                MUDG_CHECK(false, "'%s' is corrupted (invalid extension record '%s': %s)", p, tag_text(rec.tag).c_str(),
                           e.what());
            }
            MUDG_CHECK(known,
                       "'%s' needs a newer mudg_fast: it holds a required extension record '%s' that this version "
                       "does not know (upgrade mudg_fast)",
                       p, tag_text(rec.tag).c_str());
            prev_tag = rec.tag;
            first = false;
            at += kRecordHeader + padded;
            left -= kRecordHeader + padded;
        }
    }

    // 7. Directory: each list where the layout puts it, sizes summing to ntotal. Sizes are
    //    compared by division, so that n_blocks * block bytes cannot wrap.
    const std::uint64_t bbytes = static_cast<std::uint64_t>(block_bytes(codec, h.dim));
    std::vector<std::uint64_t> list_sums(verify ? 2 * nlist : 0);
    std::uint64_t pos = data_offset;  // end of the previous list; always <= data_end
    std::int64_t total = 0;
    bool padding_ok = true;
    for (std::uint64_t l = 0; l < nlist; ++l) {
        DirEntry e;
        std::memcpy(&e, base + directory_offset + l * sizeof(DirEntry), sizeof(DirEntry));
        MUDG_CHECK(e.size >= 0 && e.size <= h.ntotal - total,
                   "'%s' has an invalid directory entry for list %llu (size %lld; the lists before it hold %lld of "
                   "ntotal %lld vectors)",
                   p, (ull)l, (long long)e.size, (long long)total, (long long)h.ntotal);
        const std::uint64_t n = static_cast<std::uint64_t>(e.size);
        const std::uint64_t codes_offset = align_up(pos, 64);
        const std::uint64_t nb = static_cast<std::uint64_t>(n_blocks(e.size));
        bool ok = e.codes_offset == codes_offset && codes_offset <= data_end && nb <= (data_end - codes_offset) / bbytes;
        const std::uint64_t codes_end = ok ? codes_offset + nb * bbytes : 0;
        const std::uint64_t ids_offset = align_up(codes_end, 8);
        ok = ok && e.ids_offset == ids_offset && ids_offset <= data_end && n <= (data_end - ids_offset) / 8;
        MUDG_CHECK(ok,
                   "'%s' has an invalid directory entry for list %llu (codes at %llu, ids at %llu, %lld vectors: "
                   "outside the file or not where the layout puts them)",
                   p, (ull)l, (ull)e.codes_offset, (ull)e.ids_offset, (long long)e.size);
        if (verify) {
            padding_ok = padding_ok && all_zero(base + pos, codes_offset - pos) &&
                         all_zero(base + codes_end, ids_offset - codes_end);
            list_sums[2 * l] = checksum64(base + codes_offset, static_cast<std::size_t>(codes_end - codes_offset));
            list_sums[2 * l + 1] = checksum64(base + ids_offset, static_cast<std::size_t>(8 * n));
        }
        auto& L = ix->lists_[l];
        L.ext_codes = base + codes_offset;
        L.ext_ids = reinterpret_cast<const idx_t*>(base + ids_offset);
        L.size = e.size;
        total += e.size;
        pos = ids_offset + 8 * n;
    }
    MUDG_CHECK(total == h.ntotal, "'%s' is inconsistent: lists hold %lld vectors, the header says %lld", p,
               (long long)total, (long long)h.ntotal);
    MUDG_CHECK(pos == data_end, "'%s' has an inconsistent layout (%llu unexpected bytes between the lists and the footer)",
               p, (ull)(data_end - pos));
    if (verify) {
        MUDG_CHECK(padding_ok, "'%s' is corrupted (non-zero padding between the lists)", p);
        MUDG_CHECK(checksum64(list_sums.data(), list_sums.size() * 8) == h.data_checksum,
                   "'%s' is corrupted (list data checksum mismatch)", p);
    }
    ix->ntotal_ = h.ntotal;
    // Everything before the list data has been copied out: its pages need not stay resident.
    map->release_until(data_offset);
    ix->mapping_ = std::move(map);
    return ix;
}

void IvfIndex::save(const std::string& path) const { IvfIo::save(*this, path); }

std::unique_ptr<IvfIndex> IvfIndex::load(const std::string& path, bool mmap, bool verify,
                                         const IvfIndex* trained_like) {
    return IvfIo::load(path, mmap, verify, trained_like);
}

void IvfIndex::merge_files(const std::vector<std::string>& parts, const std::string& path,
                           const std::string& metadata, int n_threads, std::uint64_t batch_bytes) {
    IvfIo::merge_files(parts, path, metadata, n_threads, batch_bytes);
}

// ---------------------------------------------------------------------------------------------
// Merging part files

namespace {

/// Copies the code of slot `s` of block `src` into slot `t` of block `dst` (the code bits as
/// they are, so the merged list holds exactly the codes the parts computed).
void copy_slot(Codec codec, idx_t d, const std::uint8_t* src, int s, std::uint8_t* dst, int t) {
    switch (codec) {
        case Codec::f32:
            for (idx_t k = 0; k < d; ++k) std::memcpy(dst + 4 * (k * kBlock + t), src + 4 * (k * kBlock + s), 4);
            break;
        case Codec::f16:
            for (idx_t k = 0; k < d; ++k) std::memcpy(dst + 2 * (k * kBlock + t), src + 2 * (k * kBlock + s), 2);
            break;
        case Codec::sq8:
            for (idx_t k = 0; k < d; ++k) dst[k * kBlock + t] = src[k * kBlock + s];
            break;
        case Codec::sq4:
            for (idx_t k = 0; k < d; ++k) {
                const std::uint8_t in = src[k * 8 + (s & 7)];
                const std::uint8_t c = s < 8 ? (in & 0x0F) : (in >> 4);
                std::uint8_t& out = dst[k * 8 + (t & 7)];
                out = t < 8 ? static_cast<std::uint8_t>((out & 0xF0) | c) : static_cast<std::uint8_t>((out & 0x0F) | (c << 4));
            }
            break;
    }
}

}  // namespace

void IvfIo::merge_files(const std::vector<std::string>& paths, const std::string& path, const std::string& metadata,
                        int n_threads, std::uint64_t batch_bytes) {
    MUDG_CHECK(!paths.empty(), "merging needs at least one part");
    MUDG_CHECK(metadata.size() <= kMaxMetadataBytes, "metadata is %llu bytes, at most %llu are stored",
               (unsigned long long)metadata.size(), (unsigned long long)kMaxMetadataBytes);
    // 1. Open the parts (mapped; list data is checked below, as it is read) and check that they
    //    were trained together.
    std::vector<std::unique_ptr<IvfIndex>> parts;
    parts.push_back(load(paths[0], true, false, nullptr));
    const IvfIndex& first = *parts[0];
    const std::uint64_t fp = first.fingerprint();
    for (std::size_t i = 1; i < paths.size(); ++i) {
        parts.push_back(load(paths[i], true, false, &first));
        const std::uint64_t fi = parts[i]->fingerprint();
        MUDG_CHECK(fi == fp,
                   "'%s' was trained differently from '%s' (fingerprints %016llx and %016llx): parts of one index "
                   "share one training",
                   paths[i].c_str(), paths[0].c_str(), (unsigned long long)fi, (unsigned long long)fp);
    }
    const std::size_t np = parts.size();
    const idx_t nlist = first.nlist_, d = first.dim_;
    const Codec codec = first.codec_;
    const std::uint64_t bbytes = static_cast<std::uint64_t>(block_bytes(codec, d));
    std::vector<idx_t> sizes(static_cast<std::size_t>(nlist), 0);
    idx_t ntotal = 0;
    for (const auto& p : parts) {
        MUDG_CHECK(p->ntotal_ <= std::numeric_limits<std::int64_t>::max() / 2 - ntotal, "the parts hold too many vectors");
        ntotal += p->ntotal_;
        for (idx_t l = 0; l < nlist; ++l) sizes[l] += p->lists_[l].size;
    }
    // The output's extension records: part 0's (the state of every component that keeps some),
    // with the metadata replaced.
    std::vector<IvfExtension> records;
    for (IvfExtension& r : first.extension_records())
        if (r.tag != fourcc("META")) records.push_back(std::move(r));
    if (!metadata.empty())
        records.push_back({fourcc("META"), false, std::vector<std::uint8_t>(metadata.begin(), metadata.end())});
    std::sort(records.begin(), records.end(),
              [](const IvfExtension& a, const IvfExtension& b) { return a.tag < b.tag; });

    // 2. Batches of consecutive lists, assembled in parallel and written in order.
    std::vector<std::vector<std::uint64_t>> part_sums(np, std::vector<std::uint64_t>(static_cast<std::size_t>(2 * nlist)));
    std::vector<std::uint64_t> code_at(static_cast<std::size_t>(nlist)), id_at(static_cast<std::size_t>(nlist));
    std::vector<std::uint8_t> codes;
    std::vector<idx_t> ids;
    idx_t batch_begin = 0, batch_end = 0;
    auto assemble = [&](idx_t l0) {
        // The batch: lists from l0 while they fit in batch_bytes (at least one list).
        std::uint64_t cbytes = 0, nids = 0;
        idx_t l1 = l0;
        while (l1 < nlist) {
            const std::uint64_t c = static_cast<std::uint64_t>(n_blocks(sizes[l1])) * bbytes;
            const std::uint64_t n = static_cast<std::uint64_t>(sizes[l1]);
            if (l1 > l0 && cbytes + c + 8 * (nids + n) > batch_bytes) break;
            code_at[l1] = cbytes;
            id_at[l1] = nids;
            cbytes += c;
            nids += n;
            ++l1;
        }
        codes.assign(static_cast<std::size_t>(cbytes), 0);
        ids.resize(static_cast<std::size_t>(nids));
        parallel_for(l1 - l0, 1, n_threads, [&](idx_t a, idx_t b, int) {
            for (idx_t l = l0 + a; l < l0 + b; ++l) {
                std::uint8_t* out = codes.data() + code_at[l];
                idx_t* out_ids = ids.data() + id_at[l];
                idx_t pos = 0;
                for (std::size_t p = 0; p < np; ++p) {
                    const IvfIndex::List& src = parts[p]->lists_[l];
                    const std::size_t src_bytes = static_cast<std::size_t>(n_blocks(src.size) * bbytes);
                    part_sums[p][2 * l] = checksum64(src.code_ptr(), src_bytes);
                    part_sums[p][2 * l + 1] = checksum64(src.id_ptr(), static_cast<std::size_t>(src.size * 8));
                    if (pos % kBlock == 0) {  // block aligned: the blocks as they are
                        if (src_bytes) std::memcpy(out + (pos / kBlock) * bbytes, src.code_ptr(), src_bytes);
                    } else {
                        for (idx_t j = 0; j < src.size; ++j) {
                            const idx_t t = pos + j;
                            copy_slot(codec, d, src.code_ptr() + (j / kBlock) * bbytes, static_cast<int>(j % kBlock),
                                      out + (t / kBlock) * bbytes, static_cast<int>(t % kBlock));
                        }
                    }
                    std::copy(src.id_ptr(), src.id_ptr() + src.size, out_ids + pos);
                    pos += src.size;
                }
            }
        });
        // The parts' pages read so far need not stay resident.
        for (std::size_t p = 0; p < np; ++p) {
            const IvfIndex::List& last = parts[p]->lists_[l1 - 1];
            if (last.ext_ids)
                parts[p]->mapping_->release_until(
                    static_cast<std::uint64_t>(reinterpret_cast<const std::uint8_t*>(last.ext_ids + last.size) -
                                               parts[p]->mapping_->data()));
        }
        batch_begin = l0;
        batch_end = l1;
    };
    write_file(first, records, sizes,
               [&](idx_t l) {
                   if (l >= batch_end) assemble(l);
                   MUDG_ASSERT(l >= batch_begin && l < batch_end);
                   return ListBytes{codes.data() + code_at[l], ids.data() + id_at[l]};
               },
               path);

    // 3. Every part's list data against the checksum in its header.
    for (std::size_t p = 0; p < np; ++p) {
        Header h;
        std::memcpy(&h, parts[p]->mapping_->data(), sizeof(h));
        MUDG_CHECK(checksum64(part_sums[p].data(), part_sums[p].size() * 8) == h.data_checksum,
                   "'%s' is corrupted (list data checksum mismatch): the merged file is not valid", paths[p].c_str());
    }
}

}  // namespace mudg_fast
