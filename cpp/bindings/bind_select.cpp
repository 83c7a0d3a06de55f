// Retrieval combination and selection bindings.
#include "common.hpp"
#include "mudg_fast/select.hpp"

namespace mudg_fast::py_bind {

namespace {

py::tuple combine(const I64& ids, std::optional<F32> scores, std::uint64_t seed, int n_threads) {
    MUDG_CHECK(ids.ndim() == 3, "ids must have shape (m, C, K), got %d dimensions", (int)ids.ndim());
    const idx_t m = ids.shape(0), c = ids.shape(1), k = ids.shape(2);
    if (scores)
        MUDG_CHECK(scores->ndim() == 3 && scores->shape(0) == m && scores->shape(1) == c && scores->shape(2) == k,
                   "scores must have the same shape as ids");
    CombinedRetrieval r;
    {
        py::gil_scoped_release nogil;
        r = combine_retrievals(reinterpret_cast<const idx_t*>(ids.data()), scores ? scores->data() : nullptr, m, c,
                               k, seed, n_threads);
    }
    const idx_t n = static_cast<idx_t>(r.ids.size());
    auto out_ids = new_array<std::int64_t>({n});
    auto out_lab = new_array<std::int64_t>({n});
    auto out_votes = new_array<double>({n});
    auto out_score = new_array<float>({n});
    auto out_tied = new_array<std::int64_t>({n});
    std::copy(r.ids.begin(), r.ids.end(), out_ids.mutable_data());
    std::copy(r.labels.begin(), r.labels.end(), out_lab.mutable_data());
    std::copy(r.votes.begin(), r.votes.end(), out_votes.mutable_data());
    std::copy(r.best_score.begin(), r.best_score.end(), out_score.mutable_data());
    std::copy(r.n_tied.begin(), r.n_tied.end(), out_tied.mutable_data());
    return py::make_tuple(out_ids, out_lab, out_votes, out_score, out_tied);
}

py::array_t<float> similarity(const F32& x, const I64& labels, const F32& prototypes, int n_threads) {
    const auto pv = as_view(prototypes, "prototypes");
    const auto xv = as_view(x, "embeddings", pv.cols);
    MUDG_CHECK(labels.ndim() == 1 && labels.shape(0) == xv.rows, "labels must have shape (%lld,)",
               (long long)xv.rows);
    auto out = new_array<float>({xv.rows});
    float* o = out.mutable_data();
    const auto* lab = labels.data();
    py::gil_scoped_release nogil;
    similarity_to_prototypes(xv, lab, pv, o, n_threads);
    return out;
}

py::array_t<std::int64_t> select(const F32& x, const I64& labels, idx_t k_per_class, const std::string& strategy,
                                 std::uint64_t seed, int max_iter, bool spherical, int n_threads) {
    const auto xv = as_view(x, "embeddings");
    MUDG_CHECK(labels.ndim() == 1 && labels.shape(0) == xv.rows, "labels must have shape (%lld,)",
               (long long)xv.rows);
    SelectionParams p;
    p.k_per_class = k_per_class;
    MUDG_CHECK(strategy == "random" || strategy == "nearest", "strategy must be 'random' or 'nearest', got '%s'",
               strategy.c_str());
    p.strategy = strategy == "random" ? PickStrategy::random : PickStrategy::nearest;
    p.seed = seed;
    p.max_iter = max_iter;
    p.spherical = spherical;
    p.n_threads = n_threads;
    std::vector<idx_t> r;
    {
        py::gil_scoped_release nogil;
        r = select_by_clustering(xv, labels.data(), p);
    }
    auto out = new_array<std::int64_t>({static_cast<idx_t>(r.size())});
    std::copy(r.begin(), r.end(), out.mutable_data());
    return out;
}

}  // namespace

void bind_select(py::module_& m) {
    m.def("combine_retrievals", &combine, py::arg("ids").noconvert(), py::arg("scores").noconvert(), py::arg("seed"),
          py::arg("n_threads") = 0,
          "Rank voting: (ids, labels, votes, best_score, n_tied) for the unique ids, ascending.");
    m.def("similarity_to_prototypes", &similarity, py::arg("embeddings").noconvert(), py::arg("labels").noconvert(),
          py::arg("prototypes").noconvert(), py::arg("n_threads") = 0);
    m.def("select_by_clustering", &select, py::arg("embeddings").noconvert(), py::arg("labels").noconvert(),
          py::arg("k_per_class"), py::arg("strategy"), py::arg("seed"), py::arg("max_iter"), py::arg("spherical"),
          py::arg("n_threads") = 0, "Selected row indices, ascending.");
}

}  // namespace mudg_fast::py_bind
