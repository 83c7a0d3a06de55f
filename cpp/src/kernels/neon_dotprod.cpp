// NEON + the ARMv8.2 dot-product extension (sdot): the neon table with the int8 screening kernel on
// sdot (6 rows x 16 columns = 24 accumulators; each sdot adds 16 byte products). Built with the
// dot-product flag (+dotprod); only the screening kernel differs from neon.cpp, so the table copies
// the neon one and swaps it in.
#include <arm_neon.h>

#include <cstdint>
#include <cstring>

#include "mudg_fast/simd.hpp"

#define MUDG_NEON_DOTPROD 1

namespace mudg_fast {
namespace neon_dotprod {
namespace {

#include "i8_neon_impl.hpp"

}  // namespace

const Kernels& table() {
    static const Kernels t = [] {
        Kernels k = neon::table();
        k.level = SimdLevel::neon_dotprod;
        k.screening = true;  // a quarter of the fp32 instructions per dimension (see README, "ARM")
        k.i8_scores = k_i8_scores_neon;
        return k;
    }();
    return t;
}

}  // namespace neon_dotprod
}  // namespace mudg_fast
