// Retrieval combination and selection bindings (filled in by the pipeline work).
#include "common.hpp"

namespace mudg_fast::py_bind {
void bind_select(py::module_&) {}
}  // namespace mudg_fast::py_bind
