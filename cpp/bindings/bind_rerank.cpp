// rerank() bindings: a source is a list of (array, first id) segments (arrays, memory maps, .npy
// shard maps; kept alive by the caller for the call) or a Python callable ids -> rows, called
// with the GIL taken from whichever thread needs rows.
#include "common.hpp"
#include "mudg_fast/rerank.hpp"

#include <cstring>

namespace mudg_fast::py_bind {

namespace {

/// float32 -> f32, float16 -> f16; anything else is a TypeError naming `what`.
RowType row_type(const py::array& a, const char* what) {
    const py::dtype dt = a.dtype();
    if (dt.kind() == 'f' && dt.itemsize() == 4) return RowType::f32;
    if (dt.kind() == 'f' && dt.itemsize() == 2) return RowType::f16;
    throw py::type_error(std::string(what) + " must hold float32 or float16 rows, got " +
                         py::str(static_cast<py::object>(dt)).cast<std::string>() +
                         " (convert it with .astype(np.float32))");
}

RowSegment segment(const py::array& a, idx_t first, idx_t dim) {
    MUDG_CHECK(a.ndim() == 2, "source arrays must be 2-D, got %d dimensions", (int)a.ndim());
    MUDG_CHECK(a.shape(1) == dim, "the source has %lld dimensions, the queries %lld", (long long)a.shape(1),
               (long long)dim);
    RowSegment s;
    s.type = row_type(a, "the source");
    s.data = a.data();
    s.first = first;
    s.rows = a.shape(0);
    s.stride = a.shape(0) > 1 ? a.strides(0) : dim * a.itemsize();
    MUDG_CHECK(a.shape(1) <= 1 || a.strides(1) == a.itemsize(),
               "source rows must be contiguous in memory (pass np.ascontiguousarray(source))");
    MUDG_CHECK(s.stride >= dim * a.itemsize(), "source rows must not overlap (row stride %lld bytes)",
               (long long)s.stride);
    return s;
}

RowSource make_source(const py::object& source, idx_t dim) {
    RowSource src;
    src.dim = dim;
    if (py::isinstance<py::list>(source)) {
        idx_t next = 0;
        for (const py::handle item : source.cast<py::list>()) {
            const auto pair = item.cast<py::tuple>();
            const idx_t first = pair[1].cast<idx_t>();
            MUDG_CHECK(first == next, "source segments must be contiguous: expected first id %lld, got %lld",
                       (long long)next, (long long)first);
            src.segments.push_back(segment(pair[0].cast<py::array>(), first, dim));
            next += src.segments.back().rows;
        }
        return src;
    }
    MUDG_CHECK(PyCallable_Check(source.ptr()), "source must be a list of (array, first id) or a callable");
    // The callable is owned by the closure; copies of it (and its release) happen with the GIL.
    auto fn = std::shared_ptr<py::object>(new py::object(source), [](py::object* p) {
        py::gil_scoped_acquire gil;
        delete p;
    });
    src.fetch = [fn, dim](const idx_t* ids, idx_t n) {
        py::gil_scoped_acquire gil;
        py::array_t<std::int64_t> arg(static_cast<py::ssize_t>(n));
        std::memcpy(arg.mutable_data(), ids, static_cast<std::size_t>(n) * sizeof(idx_t));
        py::object got = (*fn)(arg);
        py::array rows = py::array::ensure(got);
        if (!rows) {
            PyErr_Clear();
            throw py::type_error("source(ids) must return an array of rows, got " +
                                 py::str(py::type::handle_of(got)).cast<std::string>());
        }
        const RowType type = row_type(rows, "the rows source(ids) returned");
        if (rows.ndim() != 2 || rows.shape(0) != n || rows.shape(1) != dim) {
            std::string shape = "(";
            for (py::ssize_t i = 0; i < rows.ndim(); ++i) shape += (i ? ", " : "") + std::to_string(rows.shape(i));
            shape += rows.ndim() == 1 ? ",)" : ")";
            MUDG_CHECK(false, "source returned shape %s for %lld ids; expected (%lld, %lld)", shape.c_str(),
                       (long long)n, (long long)n, (long long)dim);
        }
        rows = py::array::ensure(rows, py::array::c_style);
        FetchedRows out;
        out.data = rows.data();
        out.stride = dim * rows.itemsize();
        out.type = type;
        out.keep = std::shared_ptr<const void>(new py::object(rows), [](const void* p) {
            py::gil_scoped_acquire g;
            delete static_cast<const py::object*>(p);
        });
        return out;
    };
    return src;
}

py::tuple rerank_py(const F32& queries, const I64& candidates, int k, const py::object& source, int n_threads) {
    const auto q = as_view(queries, "queries");
    MUDG_CHECK(candidates.ndim() == 2, "candidates must be a 2-D array, got %d dimensions", (int)candidates.ndim());
    MUDG_CHECK(k >= 1, "k must be >= 1, got %d", k);
    const RowSource src = make_source(source, q.cols);
    const MatrixView<const idx_t> cand(reinterpret_cast<const idx_t*>(candidates.data()), candidates.shape(0),
                                       candidates.shape(1));
    auto scores = new_array<float>({q.rows, k});
    auto ids = new_array<std::int64_t>({q.rows, k});
    {
        py::gil_scoped_release nogil;
        rerank(q, cand, k, src, MatrixView<float>(scores.mutable_data(), q.rows, k),
               MatrixView<idx_t>(reinterpret_cast<idx_t*>(ids.mutable_data()), q.rows, k), n_threads);
    }
    return py::make_tuple(scores, ids);
}

}  // namespace

void bind_rerank(py::module_& m) {
    m.def("rerank", &rerank_py, py::arg("queries").noconvert(), py::arg("candidates").noconvert(), py::arg("k"),
          py::arg("source"), py::arg("n_threads") = 0,
          "Exact re-ranking of each query's candidate ids: (scores[nq, k] float32, ids[nq, k] int64), best "
          "first, padded with (-inf, -1). source: list of (float32/float16 array, first id) covering ids "
          "0..n-1, or a callable ids -> rows.");
}

}  // namespace mudg_fast::py_bind
