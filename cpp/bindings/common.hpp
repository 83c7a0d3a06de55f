// Helpers shared by the bind_*.cpp files: strict array views (no silent copies) and GIL handling.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <optional>

#include "mudg_fast/common.hpp"

namespace mudg_fast::py_bind {

namespace py = pybind11;
using F32 = py::array_t<float, py::array::c_style>;
using I64 = py::array_t<std::int64_t, py::array::c_style>;
using U8 = py::array_t<std::uint8_t, py::array::c_style>;

/// 2-D float32 C-contiguous view; Python's as_matrix() has already converted and validated.
inline MatrixView<const float> as_view(const F32& a, const char* name, idx_t dim = -1) {
    MUDG_CHECK(a.ndim() == 2, "%s must be a 2-D array, got %d dimensions", name, (int)a.ndim());
    MUDG_CHECK(dim < 0 || a.shape(1) == dim, "%s must have %lld columns, got %lld", name, (long long)dim,
               (long long)a.shape(1));
    return MatrixView<const float>(a.data(), a.shape(0), a.shape(1));
}

template <class T>
py::array_t<T> new_array(std::initializer_list<idx_t> shape) {
    std::vector<py::ssize_t> s(shape.begin(), shape.end());
    return py::array_t<T>(s);
}

void bind_search(py::module_& m);
void bind_kmeans(py::module_& m);
void bind_index(py::module_& m);
void bind_select(py::module_& m);
void bind_rerank(py::module_& m);

}  // namespace mudg_fast::py_bind
