// The compiled kernel variants of the forward kernel, listed once (variants.cpp).
#pragma once

#include <string>
#include <vector>

#include "attnforge/attnforge.h"

namespace af::cuda {

// Tile shape of one variant: kWarps * 16 * m_tiles query rows per CTA, block_n keys per step.
struct TileConfig {
  int warps;
  int m_tiles;
  int block_n;
  int stages;  // K/V buffers: 1 (K and V loads interleaved with compute) or a ring of 2 or 3 blocks
  int block_m() const { return warps * 16 * m_tiles; }
  int threads() const { return warps * 32; }
};

// Shared memory one block may opt in to, which decides how large a tile can be and how many
// CTAs share an SM: 227 KB (sm_90, sm_100, sm_103, sm_110), 163 KB (sm_80, sm_87), 99 KB (the
// rest: sm_86, sm_89, sm_120...).
enum SharedMemoryClass { kSmem227K = 0, kSmem163K = 1, kSmem99K = 2, kSharedMemoryClasses = 3 };
SharedMemoryClass shared_memory_class(int arch);

struct Variant {
  af_dtype dtype;  // AF_DTYPE_BFLOAT16 or AF_DTYPE_FLOAT16
  int head_dim;    // compiled head dim: 32, 64, 96, 128, 192 or 256
  bool extras;     // softcap and ALiBi compiled in
  TileConfig tiles[kSharedMemoryClasses];  // indexed by SharedMemoryClass
  std::string name;                         // "flash_fwd_bf16_d128" (+ "_extras")
  const TileConfig& tile_for(int arch) const { return tiles[shared_memory_class(arch)]; }
  int smem_bytes(int arch) const {
    const TileConfig& t = tile_for(arch);
    return (t.block_m() + 2 * t.stages * t.block_n) * head_dim * 2;
  }
};

// 80 for "sm_80", 90 for "sm_90a" / "compute_90"; 0 if there are no digits.
int target_arch(const std::string& target);

// Every variant, in a fixed order (index = variant id).
const std::vector<Variant>& variants();

// Smallest compiled head dim >= d (d in 1..256), or 0.
int compiled_head_dim(int d);

// Index into variants() for a call, or -1.
int find_variant(af_dtype dtype, int head_dim, bool extras);

// Kernel source text (params header + kernel), embedded at build time.
const std::string& kernel_source();

// NVRTC options for a variant and target ("sm_90a" -> -arch=sm_90a; "compute_90" for PTX).
std::vector<std::string> compile_options(const Variant& v, const std::string& target);

constexpr const char* kKernelName = "af_flash_fwd";
constexpr const char* kCombineKernelName = "af_flash_combine";  // merges split-key partial results

}  // namespace af::cuda
