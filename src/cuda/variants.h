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

struct Variant {
  af_dtype dtype;     // AF_DTYPE_BFLOAT16 or AF_DTYPE_FLOAT16
  int head_dim;       // compiled head dim: 32, 64, 96, 128, 192 or 256
  bool extras;        // softcap and ALiBi compiled in
  TileConfig tile;        // for GPUs with >= 160 KB shared memory per block (sm_80, sm_87, sm_90, sm_100...)
  TileConfig tile_small;  // for GPUs with about 99 KB (sm_86, sm_89, sm_120...)
  std::string name;       // "flash_fwd_bf16_d128" (+ "_extras")
  const TileConfig& tile_for(int arch) const { return large_shared_memory(arch) ? tile : tile_small; }
  int smem_bytes(int arch) const {
    const TileConfig& t = tile_for(arch);
    return (t.block_m() + 2 * t.stages * t.block_n) * head_dim * 2;
  }
  static bool large_shared_memory(int arch) {
    return arch == 80 || arch == 87 || arch == 90 || arch == 100 || arch == 103 || arch == 110;
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

}  // namespace af::cuda
