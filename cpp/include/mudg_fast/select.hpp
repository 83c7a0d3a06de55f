// Retrieval combination (rank voting) and per-class selection (docs/method.rst §3-§5).
#pragma once

#include <cstdint>
#include <vector>

#include "mudg_fast/common.hpp"
#include "mudg_fast/kmeans.hpp"

namespace mudg_fast {

struct CombinedRetrieval {
    std::vector<idx_t> ids;         ///< unique source ids, ascending
    std::vector<std::int64_t> labels;  ///< class of the highest vote per id
    std::vector<double> votes;      ///< that class's vote: sum over appearances of (K - rank)
    std::vector<float> best_score;  ///< highest retrieval score of the id among that class's queries
    std::vector<std::int64_t> n_tied;  ///< number of classes tied at the top vote (1 = no tie)
};

/// ids / scores: [m][C][K] (m augmentations, C classes, K neighbours, rank 0 = best); ids < 0
/// are padding and ignored. An id retrieved for several classes gets the class with the highest
/// sum of (K - rank); ties are broken uniformly at random by an RNG seeded from (seed, id), so
/// the result does not depend on thread count or input order.
CombinedRetrieval combine_retrievals(const idx_t* ids, const float* scores, idx_t m, idx_t n_classes, idx_t k,
                                     std::uint64_t seed, int n_threads = 0);

/// out_sim[i] = <x_i, prototypes[labels[i]]>; keep[i] = out_sim[i] > threshold.
void similarity_to_prototypes(MatrixView<const float> x, const std::int64_t* labels,
                              MatrixView<const float> prototypes, float* out_sim, int n_threads = 0);

enum class PickStrategy : int { random = 0, nearest = 1 };

struct SelectionParams {
    idx_t k_per_class = 48;
    PickStrategy strategy = PickStrategy::random;
    std::uint64_t seed = 0;
    int max_iter = 20;
    bool spherical = true;
    int n_threads = 0;
};

/// For each class: if it has more than k_per_class members, k-means them into k_per_class
/// clusters and keep one member per non-empty cluster (a seeded random member, or the member
/// nearest its centroid); otherwise keep every member. Classes run in parallel, each k-means on
/// one thread with a seed derived from (seed, class), so the output is the same for any thread
/// count. Returns the selected row indices in ascending order.
std::vector<idx_t> select_by_clustering(MatrixView<const float> x, const std::int64_t* labels,
                                        const SelectionParams& params);

}  // namespace mudg_fast
