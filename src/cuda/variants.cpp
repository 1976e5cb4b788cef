// The one list of forward-kernel variants and their tile shapes.
//
// Variants: {bf16, fp16} x head dim {32, 64, 96, 128, 192, 256} x {plain, extras}. Causal,
// windows, GQA, varlen and LSE are run-time flags (masks cost only on the tiles that cross a
// mask edge); softcap and ALiBi touch every score, so they get their own variants and the
// common case pays nothing. Head dims in between are zero-filled up to the next one.
//
// Tiles: every shape below compiles without spills for sm_80, sm_86, sm_89 and sm_90a
// (checked by the cuda_compile test). $ATTNFORGE_TILE="D:warps,m_tiles,block_n;..." overrides
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

TileConfig default_tile(int head_dim, bool extras) {
  switch (head_dim) {
    case 32: return {4, 2, 64, 2};
    case 64: return extras ? TileConfig{8, 1, 64, 2} : TileConfig{4, 2, 64, 2};  // 4x2 spills on sm_90a with extras
    case 96: return {4, 1, 64, 2};
    case 128: return {4, 1, 64, 2};
    case 192: return {4, 1, 32, 2};
    default: return {8, 1, 32, 1};
  }
}

// Parses "128:4,1,64,2;64:4,2,64,2" (head dim: warps, m tiles, block n, stages); malformed
// entries are ignored.
TileConfig tile_for(int head_dim, bool extras) {
  TileConfig tile = default_tile(head_dim, extras);
  const char* text = std::getenv("ATTNFORGE_TILE");
  if (text == nullptr) return tile;
  const char* p = text;
  while (*p != 0) {
    int d = 0, w = 0, m = 0, n = 0, stages = 0;
    if (std::sscanf(p, "%d:%d,%d,%d,%d", &d, &w, &m, &n, &stages) == 5 && d == head_dim && (w == 4 || w == 8) &&
        (m == 1 || m == 2) && (n == 32 || n == 64 || n == 128) && (stages == 1 || stages == 2))
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
        list.push_back({dtype, d, extras, tile_for(d, extras), name});
      }
  return list;
}

}  // namespace

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

std::vector<std::string> compile_options(const Variant& v, const std::string& target) {
  return {"-arch=" + target,
          "--std=c++17",
          "-default-device",
          "--ptxas-options=-v",
          "-DAF_HEAD_DIM=" + std::to_string(v.head_dim),
          std::string("-DAF_BF16=") + (v.dtype == AF_DTYPE_BFLOAT16 ? "1" : "0"),
          "-DAF_WARPS=" + std::to_string(v.tile.warps),
          "-DAF_M_TILES=" + std::to_string(v.tile.m_tiles),
          "-DAF_BLOCK_N=" + std::to_string(v.tile.block_n),
          "-DAF_KV_STAGES=" + std::to_string(v.tile.stages),
          "-DAF_MIN_BLOCKS=1",
          std::string("-DAF_EXTRAS=") + (v.extras ? "1" : "0")};
}

}  // namespace af::cuda
