// Exact search bindings.
#include "common.hpp"
#include "mudg_fast/topk.hpp"

namespace mudg_fast::py_bind {

namespace {

py::tuple knn(const F32& queries, const F32& database, int k, int n_threads) {
    const auto q = as_view(queries, "queries");
    const auto db = as_view(database, "database", q.cols);
    MUDG_CHECK(k >= 1, "k must be >= 1, got %d", k);
    auto scores = new_array<float>({q.rows, k});
    auto ids = new_array<std::int64_t>({q.rows, k});
    MatrixView<float> sv(scores.mutable_data(), q.rows, k);
    MatrixView<idx_t> iv(reinterpret_cast<idx_t*>(ids.mutable_data()), q.rows, k);
    {
        py::gil_scoped_release nogil;
        exact_search(db, q, k, sv, iv, n_threads);
    }
    return py::make_tuple(scores, ids);
}

}  // namespace

void bind_search(py::module_& m) {
    m.def("knn", &knn, py::arg("queries").noconvert(), py::arg("database").noconvert(), py::arg("k"),
          py::arg("n_threads") = 0,
          "Exact top-k by inner product: (scores[nq, k] float32, ids[nq, k] int64), best first, padded "
          "with (-inf, -1).");
}

}  // namespace mudg_fast::py_bind
