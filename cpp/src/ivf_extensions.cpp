// IvfIndex extension records (file format version 2) and the fingerprint that says whether two
// indexes were trained together.
//
// A component that keeps state in the index file (the user metadata and the SQ4 residual form
// here; a coarse quantizer elsewhere) adds a record in extension_records() and restores it in
// apply_extension(). Records that change where vectors go or how they are encoded are
// `required` and enter the fingerprint; a reader that does not know a required tag refuses
// the file instead of searching it wrongly.
#include <algorithm>
#include <cstring>

#include "mudg_fast/coarse_quantizer.hpp"
#include "mudg_fast/ivf.hpp"

namespace mudg_fast {

namespace {
constexpr std::uint32_t kTagMetadata = fourcc("META");
/// SQ4 residual form (required): u32 form (1: codes of (x - c_l) / s_l), u32 0, then nlist
/// float32 list scales s_l. Absent: the direct form (codes of x).
constexpr std::uint32_t kTagSq4Residual = fourcc("SQ4R");
constexpr std::uint32_t kSq4FormResidual = 1;
constexpr std::uint32_t kTagQuantizer = fourcc("CQTL");  // the two-level coarse quantizer
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
    if (sq4_residual()) {
        std::vector<std::uint8_t> p(8 + 4 * sq_b_.size(), 0);
        std::memcpy(p.data(), &kSq4FormResidual, 4);
        std::memcpy(p.data() + 8, sq_b_.data(), 4 * sq_b_.size());
        out.push_back({kTagSq4Residual, true, std::move(p)});
    }
    if (quantizer_) out.push_back({kTagQuantizer, true, quantizer_->serialize()});
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
    if (rec.tag == kTagSq4Residual) {
        MUDG_CHECK(rec.required, "the sq4 residual record is not marked required");
        MUDG_CHECK(codec_ == Codec::sq4, "an sq4 residual record in an index of another codec");
        MUDG_CHECK(!sq_a_.empty() && sq_b_.empty(), "an sq4 residual record without sq4 levels, or a second one");
        const std::uint64_t n = static_cast<std::uint64_t>(nlist_);
        std::uint32_t form = 0, zero = 0;
        MUDG_CHECK(rec.payload.size() == 8 + 4 * n, "the sq4 residual record holds %llu bytes, expected %llu",
                   (unsigned long long)rec.payload.size(), (unsigned long long)(8 + 4 * n));
        std::memcpy(&form, rec.payload.data(), 4);
        std::memcpy(&zero, rec.payload.data() + 4, 4);
        MUDG_CHECK(form == kSq4FormResidual && zero == 0, "unknown sq4 form %u (flags %u)", form, zero);
        std::vector<float> scales(static_cast<std::size_t>(n));
        std::memcpy(scales.data(), rec.payload.data() + 8, 4 * n);
        set_codec_params(sq_a_, std::move(scales));
        return true;
    }
    if (rec.tag == kTagQuantizer) {
        MUDG_CHECK(rec.required, "the quantizer record is not marked required");
        quantizer_ = std::make_unique<TwoLevelQuantizer>(
            TwoLevelQuantizer::deserialize(rec.payload, MatrixView<const float>(centroids().data(), nlist_, dim_)));
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
