// Exact search bindings.
#include "common.hpp"
#include "mudg_fast/parallel.hpp"
#include "mudg_fast/topk.hpp"

#include <cstring>

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

/// out[i] = x[ids[i]] for float32 rows: parallel row copies (numpy's fancy indexing is
/// single-threaded and element-wise). Works on memory maps too (page faults in parallel).
py::array_t<float> gather_rows(const py::array_t<float, py::array::c_style>& x, const I64& ids, int n_threads) {
    MUDG_CHECK(x.ndim() == 2, "x must be 2-D");
    MUDG_CHECK(ids.ndim() == 1, "ids must be 1-D");
    const idx_t n = x.shape(0), d = x.shape(1), m = ids.shape(0);
    const auto* idp = reinterpret_cast<const idx_t*>(ids.data());
    for (idx_t i = 0; i < m; ++i)
        MUDG_CHECK(idp[i] >= 0 && idp[i] < n, "id %lld out of range [0, %lld)", (long long)idp[i], (long long)n);
    auto out = new_array<float>({m, d});
    float* o = out.mutable_data();
    const float* src = x.data();
    {
        py::gil_scoped_release nogil;
        parallel_for(m, 1024, n_threads, [&](idx_t b, idx_t e, int) {
            for (idx_t i = b; i < e; ++i) std::memcpy(o + i * d, src + idp[i] * d, static_cast<std::size_t>(d) * 4);
        });
    }
    return out;
}

}  // namespace

void bind_search(py::module_& m) {
    m.def("knn", &knn, py::arg("queries").noconvert(), py::arg("database").noconvert(), py::arg("k"),
          py::arg("n_threads") = 0,
          "Exact top-k by inner product: (scores[nq, k] float32, ids[nq, k] int64), best first, padded "
          "with (-inf, -1).");
    m.def("gather_rows", &gather_rows, py::arg("x").noconvert(), py::arg("ids").noconvert(), py::arg("n_threads") = 0,
          "x[ids] for a C-contiguous float32 matrix, copied in parallel.");
}

}  // namespace mudg_fast::py_bind
