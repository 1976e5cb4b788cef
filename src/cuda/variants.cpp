// The one list of forward-kernel variants and their tile shapes.
//
// Variants: {bf16, fp16} x head dim {32, 64, 96, 128, 192, 256} x {plain, extras}. Causal,
// windows, GQA, varlen and LSE are run-time flags (masks cost only on the tiles that cross a
// mask edge); softcap and ALiBi touch every score, so they get their own variants and the
// common case pays nothing. Head dims in between are zero-filled up to the next one.
//
// Tiles: every shape below compiles without spills for sm_80, sm_86, sm_89 and sm_90a
// (checked by the cuda_compile test). $ATTNFORGE_TILE="D:warps,m_tiles,block_n,stages;..." overrides
// a head dim's shape for tuning runs (the override is part of the compile options, so it gets
// its own cache entries).
#include "cuda/variants.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace af::cuda {

extern const char kFlashFwdParamsSource[];  // generated from src/kernels/flash_fwd_params.cuh
extern const char kFlashFwdSource[];        // generated from src/kernels/flash_fwd.cuh

namespace {

const int kHeadDims[] = {32, 64, 96, 128, 192, 256};

// Measured on H100 (bench/device/tune.sh runs, bench/results/tune-h100-*): 128x64 tiles with
// 4 warps for head dim <= 64; for 128, 128x64 with 4 warps (two m16 tiles per warp, K/V
// fragments reused) and a 2-block K/V ring, 96 KB, where two CTAs still fit an SM (227 KB
// class), else 128x32 (64 KB); 128x32 with 8 warps for 192 (4 warps spill with extras); for 256,
// 64x64 with 4 warps and one K/V block (96 KB, two CTAs per SM) on the 227 KB class, 128x64 with
// 8 warps (128 KB) on A100 and 128x32 on ~99 KB GPUs. Extras variants keep fewer accumulators
// live where the plain tile would spill. Only the 227 KB tiles are measured; the others are
// compile-checked (no spills).
TileConfig default_tile(int head_dim, bool extras, SharedMemoryClass smem) {
  switch (head_dim) {
    case 32: return {4, 2, 64, 2};
    case 64: return extras ? TileConfig{8, 1, 64, 2} : TileConfig{4, 2, 64, 2};
    case 96: return {4, 1, 64, 2};
    case 128: return smem == kSmem227K ? TileConfig{4, 2, 64, 2} : TileConfig{4, 2, 32, 2};
    case 192: return {8, 1, 32, 2};
    default:
      return smem == kSmem227K ? TileConfig{4, 1, 64, 1}
                               : (smem == kSmem163K ? TileConfig{8, 1, 64, 1} : TileConfig{8, 1, 32, 1});
  }
}

// Parses "128:4,1,64,2;64:4,2,64,2" (head dim: warps, m tiles, block n, stages); malformed
// entries are ignored.
TileConfig tile_for(int head_dim, bool extras, SharedMemoryClass smem) {
  TileConfig tile = default_tile(head_dim, extras, smem);
  const char* text = std::getenv("ATTNFORGE_TILE");
  if (text == nullptr) return tile;
  const char* p = text;
  while (*p != 0) {
    int d = 0, w = 0, m = 0, n = 0, stages = 0;
    if (std::sscanf(p, "%d:%d,%d,%d,%d", &d, &w, &m, &n, &stages) == 5 && d == head_dim && (w == 4 || w == 8) &&
        (m == 1 || m == 2) && (n == 32 || n == 64 || n == 128) && (stages >= 1 && stages <= 3))
      tile = {w, m, n, stages};
    const char* next = std::strchr(p, ';');
    if (next == nullptr) break;
    p = next + 1;
  }
  return tile;
}

std::vector<Variant> build_variants() {
  std::vector<Variant> list;
  for (af_dtype dtype : {AF_DTYPE_BFLOAT16, AF_DTYPE_FLOAT16})
    for (int d : kHeadDims)
      for (bool extras : {false, true}) {
        std::string name = std::string("flash_fwd_") + (dtype == AF_DTYPE_BFLOAT16 ? "bf16" : "fp16") + "_d" +
                           std::to_string(d) + (extras ? "_extras" : "");
        list.push_back({dtype, d, extras,
                        {tile_for(d, extras, kSmem227K), tile_for(d, extras, kSmem163K), tile_for(d, extras, kSmem99K)},
                        name});
      }
  return list;
}

}  // namespace

SharedMemoryClass shared_memory_class(int arch) {
  if (arch == 90 || arch == 100 || arch == 103 || arch == 110) return kSmem227K;
  if (arch == 80 || arch == 87) return kSmem163K;
  return kSmem99K;
}

const std::vector<Variant>& variants() {
  static const std::vector<Variant> list = build_variants();
  return list;
}

int compiled_head_dim(int d) {
  for (int h : kHeadDims)
    if (d >= 1 && d <= h) return h;
  return 0;
}

int find_variant(af_dtype dtype, int head_dim, bool extras) {
  const int d = compiled_head_dim(head_dim);
  if (d == 0 || (dtype != AF_DTYPE_BFLOAT16 && dtype != AF_DTYPE_FLOAT16)) return -1;
  const int dtype_index = dtype == AF_DTYPE_BFLOAT16 ? 0 : 1;
  int d_index = 0;
  while (kHeadDims[d_index] != d) ++d_index;
  return (dtype_index * 6 + d_index) * 2 + (extras ? 1 : 0);
}

const std::string& kernel_source() {
  static const std::string source = std::string(kFlashFwdParamsSource) + "\n" + kFlashFwdSource;
  return source;
}

int target_arch(const std::string& target) {
  std::string digits;
  for (char c : target)
    if (c >= '0' && c <= '9') digits += c;
  return digits.empty() ? 0 : std::atoi(digits.c_str());
}

std::vector<std::string> compile_options(const Variant& v, const std::string& target) {
  const TileConfig& tile = v.tile_for(target_arch(target));
  return {"-arch=" + target,
          "--std=c++17",
          "-default-device",
          "--ptxas-options=-v",
          "-DAF_HEAD_DIM=" + std::to_string(v.head_dim),
          std::string("-DAF_BF16=") + (v.dtype == AF_DTYPE_BFLOAT16 ? "1" : "0"),
          "-DAF_WARPS=" + std::to_string(tile.warps),
          "-DAF_M_TILES=" + std::to_string(tile.m_tiles),
          "-DAF_BLOCK_N=" + std::to_string(tile.block_n),
          "-DAF_KV_STAGES=" + std::to_string(tile.stages),
          "-DAF_MIN_BLOCKS=1",
          std::string("-DAF_EXTRAS=") + (v.extras ? "1" : "0")};
}

}  // namespace af::cuda
