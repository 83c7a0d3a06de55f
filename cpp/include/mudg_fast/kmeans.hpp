// k-means and paired k-means (Lloyd iterations on the fused assign kernel).
#pragma once

#include <cstdint>
#include <vector>

#include "mudg_fast/common.hpp"

namespace mudg_fast {

enum class KMeansInit : int { kmeans_pp = 0, random = 1, given = 2 };

/// flat: Lloyd iterations over all k centroids. two_level: a coarse k-means with n_coarse
/// clusters, then one k-means per coarse cluster with a share of the k centroids proportional to
/// its size (faiss's two-level clustering; about sqrt(k) / 2 times fewer distance computations
/// than flat for n_coarse = sqrt(k)). automatic: two_level from kTwoLevelMinClusters clusters.
enum class KMeansMethod : int { flat = 0, two_level = 1, automatic = 2 };

/// method == automatic picks two-level k-means from this many clusters. Below it a flat fit is
/// cheap enough (n = 256 k training points, the usual sample, at k = 4096 and d = 768 are
/// 1.3e13 multiply-adds per iteration: minutes) and keeps the small quality edge of exact
/// assignment; above it the flat cost grows as k^2 and the two-level fit is >= 30x cheaper.
inline constexpr idx_t kTwoLevelMinClusters = 4096;

/// Plain struct; every field has a documented default. All randomness comes from `seed`.
struct KMeansParams {
    idx_t n_clusters = 8;
    int max_iter = 20;            ///< Lloyd iterations (assign + update); stops early at a fixed point
    bool spherical = true;        ///< inner-product assignment, L2-normalised centroids
    KMeansInit init = KMeansInit::kmeans_pp;
    std::uint64_t seed = 0;
    idx_t max_points_per_centroid = 0;  ///< > 0: train on a seeded sample of k * this many points
    int n_threads = 0;            ///< <= 0: all available
    bool verbose = false;         ///< one line per iteration on stderr (two-level: per stage)
    KMeansMethod method = KMeansMethod::flat;
    idx_t n_coarse = 0;           ///< two-level: coarse clusters in [1, n_clusters]; 0: round(sqrt(n_clusters))
};

/// The training data of one k-means run. Point i is assigned with row assign_ids[i] of `assign`
/// (row i when assign_ids is null) and contributes row i of `update` to its centroid.
/// Standard k-means: assign == update, no ids. Paired k-means (docs/method.rst §1): assign =
/// images, assign_ids = q(p) (the image nearest to caption i), update = captions.
struct KMeansData {
    MatrixView<const float> assign;
    const idx_t* assign_ids = nullptr;
    MatrixView<const float> update;
};

struct KMeansResult {
    double inertia = 0;                 ///< sum of squared distances to the assigned centroid
    std::vector<double> objective;      ///< per iteration: sum of assignment scores (spherical: <x, c>;
                                        ///< otherwise -||x - c||^2 / 2 up to a constant); never decreases
    std::vector<double> iteration_seconds;
    int n_iter = 0;

    // Two-level fits only (empty for flat ones). The centroids are grouped by coarse cluster:
    // coarse cluster c owns the coarse_counts[c] centroids after those of clusters 0..c-1.
    // objective[t] / iteration_seconds[t] are summed over the per-cluster fits (a fit that
    // stopped early counts with its last value / 0 s); n_iter is their maximum.
    std::vector<float> coarse_centroids;   ///< [n_coarse x d]
    std::vector<idx_t> coarse_sizes;       ///< training points per coarse cluster
    std::vector<idx_t> coarse_counts;      ///< centroids per coarse cluster; sums to n_clusters
    double coarse_seconds = 0, fine_seconds = 0, label_seconds = 0;
};

/// Runs k-means. centroids [n_clusters x d] is OUT (IN as well for init == given);
/// labels [n] is OUT: the nearest centroid of every point for the returned centroids (two-level:
/// the nearest among the centroids of the point's nearest coarse centroid, the assignment the
/// fit itself uses). Empty clusters are re-seeded deterministically: the largest cluster is
/// split by moving the empty centroid onto its worst-fitting member. Same seed -> bit-identical
/// output for any thread count and SIMD level.
///
/// Two-level: the training points (all, or the flat fit's sample of n_clusters *
/// max_points_per_centroid) are clustered into n_coarse coarse clusters (a flat fit with the same
/// parameters on at most 1024 of them per coarse cluster), each non-empty coarse cluster receives its share of the n_clusters
/// centroids (allot_sub_clusters) and is clustered on its own with seed ^ (c * 0x9E3779B97F4A7C15).
/// Paired data is paired at both levels. With n_coarse = 1 the result equals the flat fit.
/// Needs init != given.
KMeansResult kmeans_fit(const KMeansData& data, const KMeansParams& params, MatrixView<float> centroids,
                        idx_t* labels);

/// `method`, with automatic resolved for n_clusters.
KMeansMethod resolve_kmeans_method(KMeansMethod method, idx_t n_clusters) noexcept;

/// Two-level k-means: centroids per coarse cluster for k centroids in all. Proportional to the
/// cluster sizes (largest remainders), summing exactly to k, at least 1 for every non-empty
/// cluster and at most its size, 0 for an empty one. Needs sum(sizes) >= k >= (non-empty
/// clusters). Ties go to the lower cluster index.
std::vector<idx_t> allot_sub_clusters(const std::vector<idx_t>& sizes, idx_t k);

/// Nearest centroid of every row (inner product when spherical, L2 otherwise).
/// scores[i] is the inner product with the assigned centroid (may be null).
void kmeans_assign(MatrixView<const float> x, MatrixView<const float> centroids, bool spherical,
                   idx_t* labels, float* scores, int n_threads = 0);

/// k-means++ seeding (Arthur & Vassilvitskii, 2007) on rows of x: writes k row indices.
void kmeans_pp_seed(MatrixView<const float> x, idx_t k, std::uint64_t seed, idx_t* chosen, int n_threads = 0);

}  // namespace mudg_fast
