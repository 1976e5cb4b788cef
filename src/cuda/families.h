// Kernel families and their compiled variants: the one table (families.cpp).
//
// A family is a kernel design with its own sources, entry points and tile rules (fwd_sm80: the
// FlashAttention-2 algorithm on mma.sync; fwd_sm90: wgmma + TMA + warp specialisation, sm_90a
// only; decode: GQA-packed split-KV; kvcache: the rotary
// embedding and cache append before an attention over a KV cache, one variant per dtype). A variant is one
// compiled instance of a family: dtype, head dim, extras (softcap and ALiBi) and a tile shape per
// shared-memory class. Adding a family = one folder under src/kernels, one row in kFamilies
// (families.cpp), its variants in build_variants(), and its grid in launch.cpp; plan.cpp decides
// when it runs.
#pragma once

#include <string>
#include <vector>

#include "attnforge/attnforge.h"

namespace af::cuda {

enum FamilyId { kFamilyFwdSm80 = 0, kFamilyDecode = 1, kFamilyKvAppend = 2, kFamilyFwdSm90 = 3, kFamilyCount = 4 };

struct Family {
  FamilyId id;
  const char* name;           // "fwd_sm80", "decode"
  const char* entry;          // kernel entry point
  const char* combine_entry;  // merges split-key partial results (same module); null when none
};
const Family& family(FamilyId id);

// Tile shape of one variant: block_m query rows (decode: packed rows) and block_n keys per step.
struct TileConfig {
  int warps;
  int m_tiles;  // fwd_sm80: m16 tiles per warp (block_m = warps * 16 * m_tiles); decode, fwd_sm90: 1
  int block_n;
  int stages;  // K/V ring depth (fwd_sm80 1 to 3, decode 2 to 4, fwd_sm90 2 to 4)
  int block_m_rows;
  int q_buffers = 1;          // fwd_sm90: Q tiles in shared memory (2: the next tile's Q loads during this one)
  bool deferred_max = false;  // fwd_sm90: the main loop's block max after the exps (sm90_deferred_max)
  int block_m() const { return block_m_rows; }
  int threads() const { return warps * 32; }
};

// Shared memory one block may opt in to, which decides how large a tile can be and how many
// CTAs share an SM: 227 KB (sm_90, sm_100, sm_103, sm_110), 163 KB (sm_80, sm_87), 99 KB (the
// rest: sm_86, sm_89, sm_120...).
enum SharedMemoryClass { kSmem227K = 0, kSmem163K = 1, kSmem99K = 2, kSharedMemoryClasses = 3 };
SharedMemoryClass shared_memory_class(int arch);
// 80 for "sm_80", 90 for "sm_90a" / "compute_90"; 0 if there are no digits.
int target_arch(const std::string& target);

// fwd_sm90's main-loop schedules, each its own compiled variant (AF_SM90_SCHEDULE), chosen per plan
// from $ATTNFORGE_SM90_VARIANT (plan.cpp): v0 issues S = Q K^T, waits, softmax, then P V and waits;
// overlap (FlashAttention-3's intra-warpgroup overlap) issues the next block's S = Q K^T and this
// block's P V together and runs the softmax of the next block while P V is in flight; pingpong is
// overlap with the two consumer warpgroups taking turns to issue their wgmmas (named barriers), so
// one's softmax runs while the other's GEMMs do (FlashAttention-3's warpgroup ping-pong). The
// persistent forms of overlap and pingpong launch at most one wave of CTAs, each looping over work
// tiles (AF_SM90_PERSISTENT); their "-tma-store" forms also store O through shared memory with TMA
// (AF_SM90_TMA_STORE), overlapped with the next tile; their "-dynamic" forms (AF_SM90_DYNAMIC) take
// each next tile from a global counter (atomic) instead of striding statically over the tile list.
enum Sm90Schedule {
  kSm90V0 = 0,
  kSm90Overlap = 1,
  kSm90PingPong = 2,
  kSm90OverlapPersistent = 3,
  kSm90PingPongPersistent = 4,
  kSm90OverlapPersistentTmaStore = 5,
  kSm90PingPongPersistentTmaStore = 6,
  kSm90OverlapDynamic = 7,
  kSm90PingPongDynamic = 8,
  kSm90Schedules = 9
};
// "v0", "overlap", "pingpong", "overlap-persistent", "pingpong-persistent",
// "overlap-persistent-tma-store", "pingpong-persistent-tma-store", "overlap-dynamic", "pingpong-dynamic"
const char* sm90_schedule_name(Sm90Schedule s);
// The main loop of a schedule (kSm90V0, kSm90Overlap or kSm90PingPong: AF_SM90_SCHEDULE) and
// whether it is the persistent form.
Sm90Schedule sm90_main_loop(Sm90Schedule s);
bool sm90_persistent(Sm90Schedule s);
bool sm90_tma_store(Sm90Schedule s);
// Whether a persistent form takes its tiles from the tile counter in the workspace (kSm90*Dynamic).
bool sm90_dynamic(Sm90Schedule s);
// Whether a schedule has extras variants (a sliding window's left edge and softcap compiled in; 128-row
// tiles only): pingpong and pingpong-persistent (families.cpp).
bool sm90_has_extras(Sm90Schedule s);

// Dynamic shared memory one fwd_sm90 CTA may take: the 227 KB an sm_90 SM gives a block, less 1 KB for the
// kernel's static barriers.
constexpr int kSm90SmemLimit = 227 * 1024 - 1024;
// Whether fwd_sm90's TMA-store epilogue stages O in Q's buffer: when a staging tile of its own
// (block_m x head_dim) does not fit beside Q and the K/V ring (d256; d128 with 3 or more stages).
// The kernel's kOInQ (fwd_sm90/flash_fwd_sm90_config.cuh) is the same rule.
inline bool sm90_o_in_q(int head_dim, int block_m, int block_n, int stages) {
  return (2 * block_m + 2 * stages * block_n) * head_dim * 2 + 1024 > kSm90SmemLimit;
}
// fwd_sm90's dynamic shared memory in bytes: 1024 to align the tiles to the 128-byte swizzle's 1024-byte
// period, q_buffers Q tiles, the K/V ring, and with a TMA-store epilogue O's staging tile unless it is Q's buffer.
inline int sm90_smem_bytes(int head_dim, int block_m, int block_n, int stages, bool tma_store, int q_buffers = 1) {
  const bool o_tile = tma_store && !sm90_o_in_q(head_dim, block_m, block_n, stages);
  return (block_m * (q_buffers + (o_tile ? 1 : 0)) + 2 * stages * block_n) * head_dim * 2 + 1024;
}
// Q tiles of a fwd_sm90 variant: 2 in the persistent forms where a second one fits beside the first, the K/V
// ring and O's staging tile (d64 and d128 at 2 stages; not d256, whose 192 KB leave no room, nor a form that
// stages O in Q's buffer), so that the producer loads the next tile's Q (and then its first K/V blocks) while
// the consumers work on this one instead of after their last Q K^T of it; else 1. $ATTNFORGE_SM90_Q_BUFFERS=1
// keeps one (A/B runs; part of the compile options).
int sm90_q_buffers(int head_dim, const TileConfig& tile, Sm90Schedule schedule);
// Whether fwd_sm90's two-Q-tile variants compiled by NVRTC nvrtc_major.nvrtc_minor take the cross-tile pipeline (each
// tile's last P V issued with the next tile's first Q K^T; AF_CROSS_TILE): from 12.9. The ptxas inside NVRTC 12.1 to
// 12.8 serialises every wgmma of that kernel (C7515/C7516, checked for each of them), so those compile the two Q tiles
// without it.
bool sm90_cross_tile(int nvrtc_major, int nvrtc_minor);
// Whether a fwd_sm90 variant's overlap/pingpong main loop issues each step's P V before its S and runs the exps
// against the reference max first, taking the block max only where some row's sum of P passes 2^8 (AF_DEFERRED_MAX;
// softmax_deferred in fwd_sm90/flash_fwd_sm90.cuh): static SASS per unmasked key block d64 403 -> 331, d128 422 ->
// 351 (17-18% fewer), d256 315 -> 286 (nvcc 13.0); no spills or serialised wgmma with NVRTC 12.1 (without the
// cross-tile form, as it compiles there), 12.9, 13.0 and 13.5. On by default where it was timed and sanitized: the
// 128 x 128 tiles of d64 and d128 with the 2-stage ring, no extras, in the pingpong-persistent and pingpong-dynamic
// schedules (H200, bench/results/fwd-sm90-deferred-max-h200-2026-12-02.md call 4 and fwd-sm90-h200-2026-12-02-s13.md:
// d128 within +-2.5% of the block max first, median +0.6%; d64's 512-1k causal tiles level with the block max
// first's readings in other calls; compute-sanitizer clean). d256 measured no gain. $ATTNFORGE_SM90_DEFERRED_MAX=1
// turns it on for every 128-row variant, "0" off for all (A/B runs: bench/device/sm90_deferred_max_ab.sh; part of
// the compile options). The 192-row d64 tile's 160 registers do not hold S beside P; v0's loop has no such form.
bool sm90_deferred_max(int head_dim, bool extras, Sm90Schedule schedule, const TileConfig& tile);
// The same without the knob (the measured default above).
bool sm90_deferred_max_default(int head_dim, bool extras, Sm90Schedule schedule, const TileConfig& tile);

// Decode tiles by grid size (decode only): the default tile, and on the 227 KB class the wide-grid tiles for grids
// of more CTAs than one wave of it: 4 warps with a 3-block ring (two CTAs per SM at d128, four at d64) and, at
// d128, with a 2-block ring (three per SM); plan.cpp picks (decode_grid_tile).
enum DecodeTile { kDecodeTileDefault = 0, kDecodeTileWide = 1, kDecodeTileWide2Stage = 2 };

struct Variant {
  FamilyId family;
  af_dtype dtype;                               // AF_DTYPE_BFLOAT16 or AF_DTYPE_FLOAT16
  int head_dim;                                 // compiled head dim (kvcache: 0, any head dim)
  bool extras;                                  // fwd_sm80, decode: softcap and ALiBi compiled in; fwd_sm90:
                                                // softcap and a sliding window's left edge
  TileConfig tiles[kSharedMemoryClasses];       // indexed by SharedMemoryClass
  std::string name;                             // "fwd_sm80_bf16_d128" (+ "_extras"; fwd_sm90: + "_overlap"...)
  Sm90Schedule schedule = kSm90V0;              // fwd_sm90 only
  DecodeTile decode_tile = kDecodeTileDefault;  // decode only: which grid size its tile is for
  const TileConfig& tile_for(int arch) const { return tiles[shared_memory_class(arch)]; }
  // Dynamic shared memory: Q tile plus the K/V ring, 16-bit elements (fwd_sm90: sm90_smem_bytes).
  int smem_bytes(int arch) const {
    const TileConfig& t = tile_for(arch);
    if (family == kFamilyFwdSm90)
      return sm90_smem_bytes(head_dim, t.block_m(), t.block_n, t.stages, sm90_tma_store(schedule), t.q_buffers);
    return (t.block_m() + 2 * t.stages * t.block_n) * head_dim * 2;
  }
  // Dynamic and static shared memory of one CTA: the limits (per block and per SM) count both. Decode's static
  // part is its block-table head (one int per thread) and split counter (decode_fwd.cuh), with 16 bytes to spare.
  int total_smem_bytes(int arch) const {
    return smem_bytes(arch) + (family == kFamilyDecode ? tile_for(arch).threads() * 4 + 16 : 0);
  }
  // CTAs of it one SM of the arch's class holds: by shared memory (228 / 164 / 100 KB per SM, 1 KB of it reserved
  // per CTA) and by registers at 128 per thread (64K per SM; the decode tiles take 96-168 below d256), 1 to 8.
  // Measured: the
  // d64 8-warp 2-block tile (66 KB) held to three per SM by its launch bound ran at 85 registers, 0.81x cuDNN at
  // B32 x 4k-131k (bench/results/decode-h200-2026-12-01-v17.md) against 1.00x unbounded at two per SM
  // (decode-wide-tiles-h200-2026-12-01.md).
  int ctas_per_sm(int arch) const {
    static const int kSmBytes[kSharedMemoryClasses] = {228 << 10, 164 << 10, 100 << 10};
    const int by_smem = kSmBytes[shared_memory_class(arch)] / (total_smem_bytes(arch) + 1024);
    const int by_registers = 65536 / (tile_for(arch).threads() * 128);
    const int n = by_smem < by_registers ? by_smem : by_registers;
    return n < 1 ? 1 : (n > 8 ? 8 : n);
  }
  // Whether the variant compiles for an NVRTC target's arch (fwd_sm90: sm_90a only; a decode wide-grid tile:
  // the 227 KB class only, elsewhere it is the default tile, which its own variant compiles).
  bool compiles_for(const std::string& target) const {
    if (decode_tile != kDecodeTileDefault) return shared_memory_class(target_arch(target)) == kSmem227K;
    return family != kFamilyFwdSm90 || target == "sm_90a";
  }
};

// fwd_sm90's 128-row tile of a compiled head dim with the tuning knobs applied ($ATTNFORGE_SM90_STAGES, then
// $ATTNFORGE_SM90_BLOCK_N; families.cpp), and d64's 192-row tile (the stages knob only). variants() reads
// them once per process.
TileConfig sm90_tile_for(int head_dim);
TileConfig sm90_wide_tile();

// Every variant of every family, in a fixed order (index = variant id).
const std::vector<Variant>& variants();

// Smallest head dim >= d (d in 1..256) that the family compiles, or 0.
int compiled_head_dim(FamilyId family, int d);

// fwd_sm90's query rows per work tile: 128 (two consumer warpgroups) at every head dim, and at
// compiled head dim 64 also 192 (three consumer warpgroups, FlashAttention-3's d64 tile height; a
// variant of every schedule, "_m192" in its name).
constexpr int kSm90BlockM = 128;
constexpr int kSm90WideBlockM = 192;

// Index into variants() for a call, or -1 (schedule and sm90_block_m: fwd_sm90's; the other
// families have only v0 and their own tile heights; decode_tile: decode's tile by grid size).
int find_variant(FamilyId family, af_dtype dtype, int head_dim, bool extras, Sm90Schedule schedule = kSm90V0,
                 int sm90_block_m = kSm90BlockM, DecodeTile decode_tile = kDecodeTileDefault);

// The module text of a family (params, common helpers, the family's sources, combine).
const std::string& module_source(FamilyId family);

// NVRTC options for a variant and target ("sm_90a" -> -arch=sm_90a; "compute_90" for PTX), compiled by NVRTC
// nvrtc_major.nvrtc_minor (fwd_sm90's AF_CROSS_TILE depends on it: sm90_cross_tile).
std::vector<std::string> compile_options(const Variant& v, const std::string& target, int nvrtc_major, int nvrtc_minor);

}  // namespace af::cuda
