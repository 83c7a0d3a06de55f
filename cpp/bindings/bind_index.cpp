// IVF index bindings (filled in by the index work).
#include "common.hpp"

namespace mudg_fast::py_bind {
void bind_index(py::module_&) {}
}  // namespace mudg_fast::py_bind
