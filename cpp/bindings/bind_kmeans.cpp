// k-means bindings.
#include "common.hpp"
#include "mudg_fast/kmeans.hpp"

namespace mudg_fast::py_bind {

namespace {

KMeansInit parse_init(const std::string& s) {
    if (s == "k-means++") return KMeansInit::kmeans_pp;
    if (s == "random") return KMeansInit::random;
    if (s == "given") return KMeansInit::given;
    MUDG_CHECK(false, "init must be 'k-means++', 'random' or an array of centroids, got '%s'", s.c_str());
}

KMeansMethod parse_method(const std::string& s) {
    if (s == "flat") return KMeansMethod::flat;
    if (s == "two_level") return KMeansMethod::two_level;
    if (s == "auto") return KMeansMethod::automatic;
    MUDG_CHECK(false, "method must be 'flat', 'two_level' or 'auto', got '%s'", s.c_str());
}

py::dict kmeans_fit(const F32& assign, std::optional<I64> assign_ids, const F32& update, idx_t n_clusters,
                    int max_iter, bool spherical, const std::string& init, std::optional<F32> init_centroids,
                    std::uint64_t seed, idx_t max_points_per_centroid, int n_threads, bool verbose,
                    const std::string& method, idx_t n_coarse) {
    KMeansData data;
    data.update = as_view(update, "update");
    data.assign = as_view(assign, "assign", data.update.cols);
    if (assign_ids) {
        MUDG_CHECK(assign_ids->ndim() == 1 && assign_ids->shape(0) == data.update.rows,
                   "assign_ids must have shape (%lld,)", (long long)data.update.rows);
        data.assign_ids = reinterpret_cast<const idx_t*>(assign_ids->data());
    }
    KMeansParams p;
    p.n_clusters = n_clusters;
    p.max_iter = max_iter;
    p.spherical = spherical;
    p.init = parse_init(init);
    p.seed = seed;
    p.max_points_per_centroid = max_points_per_centroid;
    p.n_threads = n_threads;
    p.verbose = verbose;
    p.method = parse_method(method);
    p.n_coarse = n_coarse;
    const idx_t d = data.update.cols, n = data.update.rows;
    MUDG_CHECK(n_clusters >= 1, "n_clusters must be >= 1, got %lld", (long long)n_clusters);
    auto centroids = new_array<float>({n_clusters, d});
    if (p.init == KMeansInit::given) {
        MUDG_CHECK(init_centroids.has_value(), "init='given' needs init_centroids");
        const auto c0 = as_view(*init_centroids, "init", d);
        MUDG_CHECK(c0.rows == n_clusters, "init has %lld rows but n_clusters is %lld", (long long)c0.rows,
                   (long long)n_clusters);
        std::copy(c0.data, c0.data + n_clusters * d, centroids.mutable_data());
    }
    auto labels = new_array<std::int64_t>({n});
    KMeansResult r;
    {
        py::gil_scoped_release nogil;
        r = mudg_fast::kmeans_fit(data, p, MatrixView<float>(centroids.mutable_data(), n_clusters, d),
                                  reinterpret_cast<idx_t*>(labels.mutable_data()));
    }
    py::dict out;
    out["centroids"] = centroids;
    out["labels"] = labels;
    out["inertia"] = r.inertia;
    out["objective"] = r.objective;
    out["iteration_seconds"] = r.iteration_seconds;
    out["n_iter"] = r.n_iter;
    out["method"] = resolve_kmeans_method(p.method, n_clusters) == KMeansMethod::two_level ? "two_level" : "flat";
    if (!r.coarse_counts.empty()) {
        const idx_t k1 = static_cast<idx_t>(r.coarse_counts.size());
        auto cc = new_array<float>({k1, d});
        std::copy(r.coarse_centroids.begin(), r.coarse_centroids.end(), cc.mutable_data());
        auto counts = new_array<std::int64_t>({k1});
        auto sizes = new_array<std::int64_t>({k1});
        std::copy(r.coarse_counts.begin(), r.coarse_counts.end(), counts.mutable_data());
        std::copy(r.coarse_sizes.begin(), r.coarse_sizes.end(), sizes.mutable_data());
        out["coarse_centroids"] = cc;
        out["coarse_counts"] = counts;
        out["coarse_sizes"] = sizes;
        py::dict stages;
        stages["coarse"] = r.coarse_seconds;
        stages["fine"] = r.fine_seconds;
        stages["labels"] = r.label_seconds;
        out["stage_seconds"] = stages;
    }
    return out;
}

py::tuple kmeans_assign(const F32& x, const F32& centroids, bool spherical, int n_threads) {
    const auto c = as_view(centroids, "centroids");
    const auto xv = as_view(x, "x", c.cols);
    auto labels = new_array<std::int64_t>({xv.rows});
    auto scores = new_array<float>({xv.rows});
    {
        py::gil_scoped_release nogil;
        mudg_fast::kmeans_assign(xv, c, spherical, reinterpret_cast<idx_t*>(labels.mutable_data()),
                                 scores.mutable_data(), n_threads);
    }
    return py::make_tuple(labels, scores);
}

}  // namespace

void bind_kmeans(py::module_& m) {
    m.def("kmeans_fit", &kmeans_fit, py::arg("assign").noconvert(), py::arg("assign_ids").noconvert(),
          py::arg("update").noconvert(), py::arg("n_clusters"), py::arg("max_iter"), py::arg("spherical"),
          py::arg("init"), py::arg("init_centroids").noconvert(), py::arg("seed"),
          py::arg("max_points_per_centroid"), py::arg("n_threads"), py::arg("verbose"), py::arg("method") = "flat",
          py::arg("n_coarse") = 0);
    m.def("allot_sub_clusters", [](const std::vector<idx_t>& sizes, idx_t k) { return allot_sub_clusters(sizes, k); },
          py::arg("sizes"), py::arg("k"),
          "Two-level k-means: centroids per coarse cluster (proportional to sizes, sum k, >= 1 when non-empty).");
    m.attr("two_level_min_clusters") = kTwoLevelMinClusters;
    m.def("kmeans_assign", &kmeans_assign, py::arg("x").noconvert(), py::arg("centroids").noconvert(),
          py::arg("spherical"), py::arg("n_threads") = 0,
          "Nearest centroid of every row: (labels int64, inner products float32).");
}

}  // namespace mudg_fast::py_bind
