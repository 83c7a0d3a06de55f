// k-means and paired k-means (Lloyd iterations on the fused assign kernel).
#pragma once

#include <cstdint>
#include <vector>

#include "mudg_fast/common.hpp"

namespace mudg_fast {

enum class KMeansInit : int { kmeans_pp = 0, random = 1, given = 2 };

/// Plain struct; every field has a documented default. All randomness comes from `seed`.
struct KMeansParams {
    idx_t n_clusters = 8;
    int max_iter = 20;            ///< Lloyd iterations (assign + update); stops early at a fixed point
    bool spherical = true;        ///< inner-product assignment, L2-normalised centroids
    KMeansInit init = KMeansInit::kmeans_pp;
    std::uint64_t seed = 0;
    idx_t max_points_per_centroid = 0;  ///< > 0: train on a seeded sample of k * this many points
    int n_threads = 0;            ///< <= 0: all available
    bool verbose = false;         ///< one line per iteration on stderr
};

/// The training data of one k-means run. Point i is assigned with row assign_ids[i] of `assign`
/// (row i when assign_ids is null) and contributes row i of `update` to its centroid.
/// Standard k-means: assign == update, no ids. Paired k-means (SPEC §1): assign = images,
/// assign_ids = q(p) (the image nearest to caption i), update = captions.
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
};

/// Runs k-means. centroids [n_clusters x d] is OUT (IN as well for init == given);
/// labels [n] is OUT (the nearest centroid of every point for the returned centroids).
/// Empty clusters are re-seeded deterministically: the largest cluster is split by moving the
/// empty centroid onto its worst-fitting member. Same seed -> bit-identical output for any
/// thread count and SIMD level.
KMeansResult kmeans_fit(const KMeansData& data, const KMeansParams& params, MatrixView<float> centroids,
                        idx_t* labels);

/// Nearest centroid of every row (inner product when spherical, L2 otherwise).
/// scores[i] is the inner product with the assigned centroid (may be null).
void kmeans_assign(MatrixView<const float> x, MatrixView<const float> centroids, bool spherical,
                   idx_t* labels, float* scores, int n_threads = 0);

/// k-means++ seeding (Arthur & Vassilvitskii, 2007) on rows of x: writes k row indices.
void kmeans_pp_seed(MatrixView<const float> x, idx_t k, std::uint64_t seed, idx_t* chosen, int n_threads = 0);

}  // namespace mudg_fast
