// TwoLevelQuantizer: a fast coarse quantizer for IvfIndex with many lists (nlist 10^5 and more).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "mudg_fast/common.hpp"
#include "mudg_fast/ivf.hpp"

namespace mudg_fast {

/// IvfIndex's quantizer="auto" uses a two-level quantizer from this many lists. Below it the exact
/// (flat) coarse stage costs little next to the list scans (at nlist 8192, d 768: 6.3 million
/// multiply-adds per vector, about 100 microseconds on a core) and gives the exact nearest lists.
inline constexpr idx_t kTwoLevelQuantizerMinLists = 16384;
/// Fewest lists a two-level quantizer accepts (two cells of two centroids).
inline constexpr idx_t kTwoLevelQuantizerMinNlist = 4;

/// Two-level coarse quantizer over the IVF centroids.
///
/// The centroids are grouped into `cells` cells by a spherical k-means on the centroids
/// themselves (the cell centres are its centroids; every centroid joins the cell of its nearest
/// centre). A vector is scored against every cell centre, then against the centroids of its
/// `probe` best cells only: about cells + probe * nlist / cells inner products instead of nlist
/// (nlist 131072, cells 362, probe 12: about 6 300, 20x fewer). The answer is the exact top-k among
/// the centroids scanned; probe >= cells scans every centroid and equals exact assignment.
/// faiss expresses the same thing as an IndexIVFFlat over the centroids used as the quantizer
/// of an IVF index (its nprobe = probe).
///
/// Batches are scanned cell-major: the vectors probing a cell are scored against its centroids by
/// the tile kernels, so every centroid is read once per batch (the centroids are the kernels'
/// row panels, packed once per SIMD level; the vectors are packed into column blocks per cell).
/// Results are bit-identical at any thread count and SIMD level (fixed chunks, the total order
/// (score, then lower centroid id)). Several threads may search at once.
class TwoLevelQuantizer {
public:
    /// Trains a quantizer for `centroids` [nlist x d]: `cells` in [1, nlist] (nlist >=
    /// kTwoLevelQuantizerMinNlist), probe >= 1 (larger than cells means all of them).
    static TwoLevelQuantizer train(MatrixView<const float> centroids, idx_t cells, int probe, std::uint64_t seed,
                                   int n_threads = 0);
    /// Default number of cells for nlist lists: round(sqrt(nlist)), at least 2.
    static idx_t default_cells(idx_t nlist) noexcept;
    /// Default probe for `cells` cells: max(8, ceil(cells / 30)), at most cells (see the
    /// definition for how it was chosen).
    static int default_probe(idx_t cells) noexcept;

    idx_t dim() const noexcept { return dim_; }
    idx_t nlist() const noexcept { return nlist_; }
    idx_t cells() const noexcept { return cells_; }
    int probe() const noexcept { return probe_; }
    void set_probe(int probe);
    /// Cell centres [cells x dim], and the cell of every centroid [nlist].
    const std::vector<float>& cell_centres() const noexcept { return centres_; }
    const std::vector<std::int32_t>& cell_of() const noexcept { return cell_of_; }
    /// Centroids scored per vector on average (cells + probe best cells' sizes, for the
    /// centroid-count-weighted cell sizes).
    double expected_scores() const;

    /// Top-k centroids of each query among those of its `probe` best cells: out [q.rows x k],
    /// best first, padded with (-inf, -1) when fewer are scanned. Scores are inner products.
    /// `centroids` are the ones the quantizer was trained for (the owner keeps them).
    void search(MatrixView<const float> centroids, MatrixView<const float> q, int k, MatrixView<float> out_scores,
                MatrixView<idx_t> out_ids, int n_threads = 0) const;

    /// The state as an extension record payload (see coarse_quantizer.cpp), and back: `centroids`
    /// are the index's; throws Error for a malformed or inconsistent payload.
    std::vector<std::uint8_t> serialize() const;
    static TwoLevelQuantizer deserialize(const std::vector<std::uint8_t>& payload, MatrixView<const float> centroids);

private:
    TwoLevelQuantizer(MatrixView<const float> centroids, std::vector<float> centres, std::vector<std::int32_t> cell_of,
                      int probe);

    struct Panels;  // every cell's centroids as row panels of the kernels' height
    struct Cache;   // the Panels of the active SIMD level, built on first use
    std::shared_ptr<const Panels> panels(MatrixView<const float> centroids) const;

    idx_t dim_ = 0, nlist_ = 0, cells_ = 0;
    int probe_ = 1;
    std::vector<float> centres_;          // [cells x dim]
    std::vector<std::int32_t> cell_of_;   // [nlist]
    std::vector<idx_t> start_, members_;  // centroids of cell s: members_[start_[s] .. start_[s+1]), ascending
    std::shared_ptr<Cache> cache_;
};

}  // namespace mudg_fast
