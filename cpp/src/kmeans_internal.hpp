// Internal k-means pieces shared by kmeans.cpp (flat Lloyd) and kmeans_two_level.cpp. Not
// installed, not part of the public headers.
#pragma once

#include <vector>

#include "mudg_fast/kmeans.hpp"

namespace mudg_fast {
namespace kmeans_detail {

/// Flat Lloyd k-means on the points `points[0..n)` (update rows, ascending; null: rows 0..n-1)
/// of `data`: point i is assigned with its assign row and updates with its update row.
/// centroids [k x d] contiguous (IN for init == given), labels [n] per point. Parameters are
/// validated by the caller; p.method is ignored. with_inertia = false leaves result.inertia at 0
/// (a pass over every point that a caller with no use for it skips).
KMeansResult lloyd_fit(const KMeansData& data, const idx_t* points, idx_t n, const KMeansParams& p, float* centroids,
                       idx_t* labels, bool with_inertia = true);

/// Two-level fit (see kmeans_fit); the same contract as lloyd_fit over all points.
KMeansResult two_level_fit(const KMeansData& data, const KMeansParams& p, float* centroids, idx_t* labels);

/// The flat fit's training sample of n points: a seeded sample of n_clusters *
/// max_points_per_centroid positions, ascending; empty when every point trains.
std::vector<idx_t> training_sample(idx_t n, const KMeansParams& p);

/// Nearest of k centroids c [k x d] (inner product when spherical, L2 otherwise) for rows
/// `rows[0..count)` of x (rows null: rows 0..count-1); ties to the lower index. scores may be
/// null. Throws Error when a point has no finite score.
void assign_to(const float* c, idx_t k, idx_t d, bool spherical, MatrixView<const float> x, const idx_t* rows,
               idx_t count, idx_t* labels, int n_threads, float* scores = nullptr);

/// sum ||assign row of point i - centroids[labels[i]]||^2 over points[0..n).
double inertia(const KMeansData& data, const idx_t* points, idx_t n, const float* centroids, const idx_t* labels,
               int n_threads);

/// Seed of the fit of coarse cluster c: seed itself for c = 0 (so a single coarse cluster
/// reproduces the flat fit).
inline std::uint64_t sub_cluster_seed(std::uint64_t seed, idx_t c) noexcept {
    return seed ^ (static_cast<std::uint64_t>(c) * 0x9E3779B97F4A7C15ull);
}

}  // namespace kmeans_detail
}  // namespace mudg_fast
