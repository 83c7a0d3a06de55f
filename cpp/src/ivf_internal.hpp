// Internal helpers shared by the IvfIndex translation units (ivf.cpp, ivf_codec.cpp,
// ivf_search.cpp). Not installed, not part of the public headers.
#pragma once

#include <cstdint>
#include <limits>
#include <vector>

#include "mudg_fast/ivf.hpp"

namespace mudg_fast {
namespace ivf_detail {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

template <class T>
T* align64(T* p) {
    auto a = reinterpret_cast<std::uintptr_t>(p);
    return reinterpret_cast<T*>((a + 63) & ~std::uintptr_t{63});
}

/// Scratch float buffer aligned to 64 bytes, reused across calls.
struct Scratch {
    std::vector<float> v;
    float* get(idx_t n) {
        if (static_cast<idx_t>(v.size()) < n + 16) v.assign(n + 16, 0.0f);
        return align64(v.data());
    }
};

}  // namespace ivf_detail
}  // namespace mudg_fast
