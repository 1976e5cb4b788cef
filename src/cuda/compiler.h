// NVRTC compilation of kernel variants, through the on-disk cache.
#pragma once

#include <string>
#include <vector>

#include "attnforge/attnforge.h"
#include "cuda/families.h"

namespace af::cuda {

struct CompiledKernel {
  std::vector<char> binary;  // cubin, or NUL-terminated PTX when is_cubin is false
  bool is_cubin = true;
  bool from_cache = false;
  double seconds = 0;  // compile (or cache read) wall time
  std::string log;     // NVRTC log (ptxas resource report included), empty from cache
  int registers = -1;  // from the ptxas report; -1 when unknown (cache hit, PTX)
  int stack_bytes = -1;
  int spill_store_bytes = -1;
  int spill_load_bytes = -1;
};

// NVRTC target for a device of compute capability major.minor: "sm_90a" on Hopper, "sm_XY"
// when NVRTC knows the arch, else "compute_XY" (PTX) for the newest arch NVRTC knows below it.
// Empty when NVRTC knows nothing at or below it.
std::string target_for_device(int major, int minor);

// Turns "sm_80" / "sm_90a" / "80" into a target this NVRTC can compile; "" if unknown.
std::string normalise_target(const std::string& arch);

// Compiles v for target (cache first unless use_cache is false; stores what it compiles).
af_status compile_variant(const Variant& v, const std::string& target, bool use_cache, CompiledKernel* out);

}  // namespace af::cuda
