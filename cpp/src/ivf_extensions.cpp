// IvfIndex extension records (file format version 2) and the fingerprint that says whether two
// indexes were trained together.
//
// A component that keeps state in the index file (the user metadata here; a coarse quantizer or
// a codec variant elsewhere) adds a record in extension_records() and restores it in
// apply_extension(). Records that change where vectors go or how they are encoded are
// `required` and enter the fingerprint; a reader that does not know a required tag refuses
// the file instead of searching it wrongly.
#include <algorithm>
#include <cstring>

#include "mudg_fast/ivf.hpp"

namespace mudg_fast {

namespace {
constexpr std::uint32_t kTagMetadata = fourcc("META");
}  // namespace

void IvfIndex::set_metadata(std::string text) {
    MUDG_CHECK(text.size() <= kMaxMetadataBytes, "metadata is %llu bytes, at most %llu are stored",
               (unsigned long long)text.size(), (unsigned long long)kMaxMetadataBytes);
    metadata_ = std::move(text);
}

std::vector<IvfExtension> IvfIndex::extension_records() const {
    std::vector<IvfExtension> out = unknown_extensions_;
    if (!metadata_.empty())
        out.push_back({kTagMetadata, false, std::vector<std::uint8_t>(metadata_.begin(), metadata_.end())});
    std::sort(out.begin(), out.end(), [](const IvfExtension& a, const IvfExtension& b) { return a.tag < b.tag; });
    for (std::size_t i = 1; i < out.size(); ++i) MUDG_ASSERT(out[i - 1].tag != out[i].tag);
    return out;
}

bool IvfIndex::apply_extension(const IvfExtension& rec) {
    if (rec.tag == kTagMetadata) {
        MUDG_CHECK(!rec.required, "the metadata record is marked required");
        set_metadata(std::string(rec.payload.begin(), rec.payload.end()));
        return true;
    }
    if (rec.required) return false;
    unknown_extensions_.push_back(rec);
    return true;
}

std::uint64_t IvfIndex::fingerprint() const {
    MUDG_CHECK(has_centroids(), "an index without centroids has no fingerprint: train it first");
    std::vector<std::uint64_t> parts = {static_cast<std::uint64_t>(dim_), static_cast<std::uint64_t>(nlist_),
                                        static_cast<std::uint64_t>(codec_)};
    parts.push_back(checksum64(centroids().data(), centroids().size() * sizeof(float)));
    parts.push_back(checksum64(sq_a_.data(), sq_a_.size() * sizeof(float)));
    parts.push_back(checksum64(sq_b_.data(), sq_b_.size() * sizeof(float)));
    for (const IvfExtension& rec : extension_records()) {
        if (!rec.required) continue;
        parts.push_back(rec.tag);
        parts.push_back(checksum64(rec.payload.data(), rec.payload.size()));
    }
    return checksum64(parts.data(), parts.size() * sizeof(std::uint64_t));
}

}  // namespace mudg_fast
