// The one table of kernel families and their variants, with tile shapes and compile options.
//
// fwd_sm80 variants: {bf16, fp16} x head dim {32, 64, 96, 128, 192, 256} x {plain, extras}.
// Causal, windows, GQA, varlen and LSE are run-time flags (masks cost only on the tiles that
// cross a mask edge); softcap and ALiBi touch every score, so they get their own variants and
// the common case pays nothing. Head dims in between are zero-filled up to the next one.
// decode variants: {bf16, fp16} x head dim {64, 128, 256} x {plain, extras}, and wide-grid tiles: two of d128's
// and one of d64's plain ones (see wide_grid_decode_tile): decode is bound by the bytes of K and V, and
// zero-filled dims are never read, so smaller head dims share these.
// fwd_sm90 variants: {bf16, fp16} x head dim {64, 128, 256} x schedule {v0, overlap, pingpong,
// overlap-persistent, pingpong-persistent, overlap-persistent-tma-store,
// pingpong-persistent-tma-store, overlap-dynamic, pingpong-dynamic}; sm_90a only
// ($ATTNFORGE_FWD_SM90=0 turns it off, see plan.cpp); plus at head dim 64 every schedule's 192-row
// form ($ATTNFORGE_SM90_BLOCK_M=192, see plan.cpp). Causal and a window's right edge are run-time
// flags there. Extras (a sliding window's left edge and softcap; ALiBi stays with fwd_sm80) in
// 128-row tiles of two schedules only, kSm90ExtrasSchedules: 12 variants rather than 72.
//
// Tiles: every shape below compiles without spills for sm_80, sm_86, sm_89 and sm_90a
// (checked by the cuda_compile test). $ATTNFORGE_TILE="D:warps,m_tiles,block_n,stages;..."
// overrides a fwd_sm80 head dim's shape for tuning runs, $ATTNFORGE_DECODE_TILE a decode one,
// $ATTNFORGE_SM90_STAGES a fwd_sm90 one's ring depth, $ATTNFORGE_SM90_BLOCK_N its 128-row tile's key-block
// width, $ATTNFORGE_SM90_Q_BUFFERS=1 its persistent forms' Q tiles, $ATTNFORGE_SM90_DEFERRED_MAX (0/1) its softmax's
// order (each override is part of the compile options, so it gets its own cache entries).
#include "cuda/families.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace af::cuda {

// Generated from src/kernels/**/*.cuh by cmake/areas/kernels.cmake.
extern const char kAttentionParamsSource[];
extern const char kPtxSource[];
extern const char kSwizzleSource[];
extern const char kSequenceSource[];
extern const char kCombineSource[];
extern const char kFlashFwdConfigSource[];
extern const char kFlashFwdSource[];
extern const char kDecodeConfigSource[];
extern const char kDecodeFwdSource[];
extern const char kKvcacheAppendSource[];
extern const char kFlashFwdSm90ConfigSource[];
extern const char kSm90PtxSource[];
extern const char kFlashFwdSm90Source[];

namespace {

const Family kFamilies[kFamilyCount] = {
    {kFamilyFwdSm80, "fwd_sm80", "af_flash_fwd", "af_flash_combine"},
    {kFamilyDecode, "decode", "af_decode_fwd", nullptr},  // merges its own split shares
    {kFamilyKvAppend, "kvcache", "af_kvcache_append", nullptr},
    {kFamilyFwdSm90, "fwd_sm90", "af_flash_fwd_sm90", nullptr},
};

const int kSm80HeadDims[] = {32, 64, 96, 128, 192, 256};
const int kDecodeHeadDims[] = {64, 128, 256};
const int kSm90HeadDims[] = {64, 128, 256};

TileConfig sm80_tile(int warps, int m_tiles, int block_n, int stages) {
  return {warps, m_tiles, block_n, stages, warps * 16 * m_tiles};
}
TileConfig decode_tile(int warps, int stages) { return {warps, 1, warps * 16, stages, 16}; }

// fwd_sm90's extras variants (sliding windows' left edge, softcap): the one-CTA-per-tile pingpong,
// for a causal-like mask (right edge only) of unequal tiles from 8k keys or above d128, and the
// persistent pingpong for the rest (default_sm90_schedule and sm90_extras_schedule in plan.cpp). Not
// measured.
const Sm90Schedule kSm90ExtrasSchedules[] = {kSm90PingPong, kSm90PingPongPersistent};

// fwd_sm90: 12 warps (a producer and two consumer warpgroups), 128 query rows, a 2-stage K/V
// ring; 128-key blocks at d64 (80 KB) and d128 (160 KB: FlashAttention-3's causal d128 tile; its
// non-causal 128x176 and deeper rings are tuning knobs, sm90_tile_for), 64-key blocks at d256
// (192 KB; FlashAttention-3 uses 128x80 there, at the shared-memory limit). Not yet measured.
// block_m 128 (AF_BLOCK_M, kBlockM in fwd_sm90/flash_fwd_sm90_config.cuh: two consumer warpgroups
// of 64 rows; sm90_wide_tile: 192); launch.cpp sizes the Q tensor map's box from it.
TileConfig sm90_tile(int head_dim) { return {12, 1, head_dim == 256 ? 64 : 128, 2, 128}; }

}  // namespace

// $ATTNFORGE_SM90_STAGES="D:stages;..." deepens a fwd_sm90 head dim's K/V ring for tuning runs (2 to 4
// stages); then $ATTNFORGE_SM90_BLOCK_N="D:N;..." sets its key-block width (N a multiple of 16 from 64 to
// 192: the S wgmma's N, P V's k16 steps), checked against the ring depth the first one left. Both stay
// within the 227 KB an SM gives one CTA (sm90_smem_bytes without an O staging tile: the TMA-store forms
// stage O in Q's buffer when their own one does not fit); malformed or oversized entries are ignored.
// E.g. 128:176 (FlashAttention-3's non-causal d128 tile: 209 KB at 2 stages), 256:80 (its d256 tile:
// 225 KB; 128 keys at d256 would take 320 KB with 2 stages).
TileConfig sm90_tile_for(int head_dim) {
  TileConfig tile = sm90_tile(head_dim);
  const char* text = std::getenv("ATTNFORGE_SM90_STAGES");
  for (const char* p = text; p != nullptr && *p != 0;) {
    int d = 0, stages = 0;
    if (std::sscanf(p, "%d:%d", &d, &stages) == 2 && d == head_dim && stages >= 2 && stages <= 4 &&
        sm90_smem_bytes(head_dim, tile.block_m(), tile.block_n, stages, false) <= kSm90SmemLimit)
      tile.stages = stages;
    p = std::strchr(p, ';');
    if (p != nullptr) ++p;
  }
  text = std::getenv("ATTNFORGE_SM90_BLOCK_N");
  for (const char* p = text; p != nullptr && *p != 0;) {
    int d = 0, n = 0;
    if (std::sscanf(p, "%d:%d", &d, &n) == 2 && d == head_dim && n % 16 == 0 && n >= 64 && n <= 192 &&
        sm90_smem_bytes(head_dim, tile.block_m(), n, tile.stages, false) <= kSm90SmemLimit)
      tile.block_n = n;
    p = std::strchr(p, ';');
    if (p != nullptr) ++p;
  }
  return tile;
}

int sm90_q_buffers(int head_dim, const TileConfig& tile, Sm90Schedule schedule) {
  const char* text = std::getenv("ATTNFORGE_SM90_Q_BUFFERS");
  if (!sm90_persistent(schedule) || (text != nullptr && std::strcmp(text, "1") == 0)) return 1;
  const bool tma_store = sm90_tma_store(schedule);
  if (tma_store && sm90_o_in_q(head_dim, tile.block_m(), tile.block_n, tile.stages)) return 1;
  return sm90_smem_bytes(head_dim, tile.block_m(), tile.block_n, tile.stages, tma_store, 2) <= kSm90SmemLimit ? 2 : 1;
}

bool sm90_deferred_max_default(int head_dim, bool extras, Sm90Schedule schedule, const TileConfig& tile) {
  return (head_dim == 64 || head_dim == 128) && tile.block_m() == kSm90BlockM && tile.block_n == 128 &&
         tile.stages == 2 && !extras && (schedule == kSm90PingPongPersistent || schedule == kSm90PingPongDynamic);
}

bool sm90_deferred_max(int head_dim, bool extras, Sm90Schedule schedule, const TileConfig& tile) {
  if (tile.block_m() != kSm90BlockM || schedule == kSm90V0) return false;
  const char* text = std::getenv("ATTNFORGE_SM90_DEFERRED_MAX");
  if (text != nullptr && std::strcmp(text, "0") == 0) return false;
  if (text != nullptr && std::strcmp(text, "1") == 0) return true;
  return sm90_deferred_max_default(head_dim, extras, schedule, tile);
}

bool sm90_cross_tile(int nvrtc_major, int nvrtc_minor) {
  return nvrtc_major > 12 || (nvrtc_major == 12 && nvrtc_minor >= 9);
}

// The 192-row d64 tile: d64's tile with a third consumer warpgroup (16 warps), FlashAttention-3's
// d64 tile height (its 192 x 128 under a causal mask). Q 24 KB + 32 KB per K/V stage: 88 KB at d64's
// 2 stages, 152 KB at 4 ($ATTNFORGE_SM90_STAGES's d64 entry applies, $ATTNFORGE_SM90_BLOCK_N's does not).
// Not yet measured.
TileConfig sm90_wide_tile() {
  TileConfig t = sm90_tile_for(64);
  t.block_n = sm90_tile(64).block_n;
  t.warps = 16;
  t.block_m_rows = kSm90WideBlockM;
  return t;
}

namespace {

// Measured on H100 (bench/device/tune.sh runs, bench/results/tune-h100-*): 128x64 tiles with
// 4 warps for head dim <= 64; for 128, 128x64 with 4 warps (two m16 tiles per warp, K/V
// fragments reused) and a 2-block K/V ring, 96 KB, where two CTAs still fit an SM (227 KB
// class), else 128x32 (64 KB); 128x32 with 8 warps for 192 (4 warps spill with extras); for 256,
// 64x64 with 4 warps and one K/V block (96 KB, two CTAs per SM) on the 227 KB class, 128x64 with
// 8 warps (128 KB) on A100 and 128x32 on ~99 KB GPUs. Extras variants keep fewer accumulators
// live where the plain tile would spill. Only the 227 KB tiles are measured; the others are
// compile-checked (no spills).
TileConfig default_sm80_tile(int head_dim, bool extras, SharedMemoryClass smem) {
  switch (head_dim) {
    case 32: return sm80_tile(4, 2, 64, 2);
    case 64: return extras ? sm80_tile(8, 1, 64, 2) : sm80_tile(4, 2, 64, 2);
    case 96: return sm80_tile(4, 1, 64, 2);
    case 128: return smem == kSmem227K ? sm80_tile(4, 2, 64, 2) : sm80_tile(4, 2, 32, 2);
    case 192: return sm80_tile(8, 1, 32, 2);
    default:
      return smem == kSmem227K ? sm80_tile(4, 1, 64, 1)
                               : (smem == kSmem163K ? sm80_tile(8, 1, 64, 1) : sm80_tile(8, 1, 32, 1));
  }
}

// Decode keeps several K/V blocks in flight per SM (memory-bound: bytes in flight hide the
// latency). Measured on H200 (bench/results/tune-decode-h200-*, bf16 32/8 heads, d128, batch 1 and
// 32, 4k and 32k keys): 8 warps (128-key blocks) and a 3-block ring (200 KB, one CTA per SM) beat
// 4 warps with 3 blocks (102 KB, two CTAs per SM) by 4-16% at batch 1 and match it at batch 32;
// 4 warps with 4 blocks was 18% slower at batch 32. d64 takes the same 8-warp shape (98 KB); d256
// keeps 4 warps and 2 blocks (139 KB); on ~99 KB GPUs d64/d128 keep 4 warps with 4/2 blocks and
// d256 uses 2 warps (32-key blocks). Only the 227 KB d128 tile is measured.
TileConfig default_decode_tile(int head_dim, SharedMemoryClass smem) {
  switch (head_dim) {
    case 64: return smem == kSmem99K ? decode_tile(4, 4) : decode_tile(8, 3);
    case 128: return smem == kSmem99K ? decode_tile(4, 2) : (smem == kSmem227K ? decode_tile(8, 3) : decode_tile(4, 3));
    default: return smem == kSmem99K ? decode_tile(2, 2) : decode_tile(4, 2);
  }
}

// Wide grids (more CTAs than the default tile runs in one wave: plan.cpp) on the 227 KB class, at d128
// and at d64 without extras: 4 warps and a 3-block ring (d128 102 KB, two CTAs per SM instead of one), so
// one CTA's ring fills while the other streams, and twice the CTAs run in one wave. Measured on H200
// (bench/results/decode-b128-h200-2026-11-30-s6.md, B 128, 1k-32k keys, five head configurations): 1-5% faster than the
// 8-warp tile at every point (B128 x 1k bf16 32/8: 132.8 against 138.8 us, SDPA cuDNN 131.6), while at batch 1 the
// 8-warp tile is 4-16% faster (tune-decode-h200-*). The same 4-warp tile at d64 (50 KB: four CTAs per SM
// instead of two) ran B32 x 16 MHA heads x 1k keys 3-5% faster (37.2-38.4 against 39.2-39.4 us; H200,
// bench/results/decode-d64-wide-h200-2026-12-01.md), from 4k 0.3-1.4% slower (plan.cpp takes it for caches
// of up to 2k keys). d64 has it without extras only: that form spills 4 bytes on sm_90a with NVRTC 12.1
// (96 registers; not with 13.0 since the decode prologue's divisions went); the plain one compiles without
// spills since then on 12.1 to 13.5 (12.1 spilled 4 bytes in it before). Elsewhere the wide-grid variant
// keeps the default tile.
// The 2-block ring at d128 (68 KB, three CTAs per SM): for grids that it runs in as few waves as the 3-block
// one, or one (plan.cpp). Measured on H200 (bench/results/decode-wide-tiles-h200-2026-12-01.md, bf16 32/8 heads,
// cuDNN / attnforge on the same cache, two rounds): B48 x 1k-8k (384 CTAs: 1.45 waves of the 3-block tile, one of
// this one) 1.04-1.05x against 0.92-0.94x; B32 x 4k-32k 1.00-1.01x against 0.98-0.99x, x 1k 1.00 against 1.00;
// B96 x 1k-4k 1.00 against 0.99; at B64 (1.29 waves against 1.94) 0.88-0.90x against 0.99x.
TileConfig wide_grid_decode_tile(int head_dim, SharedMemoryClass smem, DecodeTile kind) {
  if (smem != kSmem227K || kind == kDecodeTileDefault) return default_decode_tile(head_dim, smem);
  if (kind == kDecodeTileWide2Stage) return head_dim == 128 ? decode_tile(4, 2) : default_decode_tile(head_dim, smem);
  return head_dim == 64 || head_dim == 128 ? decode_tile(4, 3) : default_decode_tile(head_dim, smem);
}

// $ATTNFORGE_DECODE_TILE="D:warps,stages;..." overrides a decode head dim's tile for tuning runs
// (warps 2, 4 or 8, 16 keys each per block; stages 2 to 4); malformed entries are ignored.
TileConfig decode_tile_for(int head_dim, SharedMemoryClass smem, DecodeTile kind) {
  TileConfig tile = wide_grid_decode_tile(head_dim, smem, kind);
  const char* text = std::getenv("ATTNFORGE_DECODE_TILE");
  for (const char* p = text; p != nullptr && *p != 0;) {
    int d = 0, w = 0, stages = 0;
    if (std::sscanf(p, "%d:%d,%d", &d, &w, &stages) == 3 && d == head_dim && (w == 2 || w == 4 || w == 8) &&
        stages >= 2 && stages <= 4)
      tile = decode_tile(w, stages);
    p = std::strchr(p, ';');
    if (p != nullptr) ++p;
  }
  return tile;
}

// Parses "128:4,1,64,2;64:4,2,64,2" (head dim: warps, m tiles, block n, stages); malformed
// entries are ignored.
TileConfig sm80_tile_for(int head_dim, bool extras, SharedMemoryClass smem) {
  TileConfig tile = default_sm80_tile(head_dim, extras, smem);
  const char* text = std::getenv("ATTNFORGE_TILE");
  if (text == nullptr) return tile;
  const char* p = text;
  while (*p != 0) {
    int d = 0, w = 0, m = 0, n = 0, stages = 0;
    if (std::sscanf(p, "%d:%d,%d,%d,%d", &d, &w, &m, &n, &stages) == 5 && d == head_dim && (w == 4 || w == 8) &&
        (m == 1 || m == 2) && (n == 32 || n == 64 || n == 128) && (stages >= 1 && stages <= 3))
      tile = sm80_tile(w, m, n, stages);
    const char* next = std::strchr(p, ';');
    if (next == nullptr) break;
    p = next + 1;
  }
  return tile;
}

std::vector<Variant> build_variants() {
  std::vector<Variant> list;
  for (FamilyId id : {kFamilyFwdSm80, kFamilyDecode})
    for (af_dtype dtype : {AF_DTYPE_BFLOAT16, AF_DTYPE_FLOAT16}) {
      const bool sm80 = id == kFamilyFwdSm80;
      for (int d : sm80 ? std::vector<int>(std::begin(kSm80HeadDims), std::end(kSm80HeadDims))
                        : std::vector<int>(std::begin(kDecodeHeadDims), std::end(kDecodeHeadDims)))
        for (bool extras : {false, true})
          for (DecodeTile kind : {kDecodeTileDefault, kDecodeTileWide, kDecodeTileWide2Stage}) {
            // Decode d128 (both wide-grid tiles), and d64 without extras (the 3-block one): wide_grid_decode_tile.
            if (kind != kDecodeTileDefault && (sm80 || d == 256 || (d == 64 && (extras || kind != kDecodeTileWide))))
              continue;
            Variant v{id, dtype, d, extras, {}, ""};
            v.decode_tile = kind;
            for (int c = 0; c < kSharedMemoryClasses; ++c)
              v.tiles[c] = sm80 ? sm80_tile_for(d, extras, SharedMemoryClass(c))
                                : decode_tile_for(d, SharedMemoryClass(c), kind);
            v.name = std::string(kFamilies[id].name) + (dtype == AF_DTYPE_BFLOAT16 ? "_bf16" : "_fp16") + "_d" +
                     std::to_string(d) + (extras ? "_extras" : "") +
                     (kind == kDecodeTileDefault ? ""
                      : kind == kDecodeTileWide  ? "_wide"
                                                 : "_wide2s");
            list.push_back(v);
          }
    }
  for (int s = 0; s < kSm90Schedules; ++s)
    for (af_dtype dtype : {AF_DTYPE_BFLOAT16, AF_DTYPE_FLOAT16})
      for (int d : kSm90HeadDims)
        for (int block_m : {kSm90BlockM, kSm90WideBlockM})
          for (bool extras : {false, true}) {
            const Sm90Schedule schedule = Sm90Schedule(s);
            if (block_m == kSm90WideBlockM && d != 64) continue;
            if (extras && (block_m != kSm90BlockM || !sm90_has_extras(schedule))) continue;
            Variant v{kFamilyFwdSm90, dtype, d, extras, {}, "", schedule};
            for (TileConfig& t : v.tiles) {
              t = block_m == kSm90WideBlockM ? sm90_wide_tile() : sm90_tile_for(d);
              t.q_buffers = sm90_q_buffers(d, t, schedule);
              t.deferred_max = sm90_deferred_max(d, extras, schedule, t);
            }
            v.name = std::string("fwd_sm90") + (dtype == AF_DTYPE_BFLOAT16 ? "_bf16" : "_fp16") + "_d" +
                     std::to_string(d) + (block_m == kSm90WideBlockM ? "_m192" : "") + (extras ? "_extras" : "") +
                     (schedule == kSm90V0 ? "" : std::string("_") + sm90_schedule_name(schedule));
            list.push_back(v);
          }
  // kvcache: no shared memory, 4 warps (one (row, head) vector each), any head dim.
  for (af_dtype dtype : {AF_DTYPE_BFLOAT16, AF_DTYPE_FLOAT16}) {
    Variant v{kFamilyKvAppend, dtype, 0,
              false,           {},    std::string("kvcache_") + (dtype == AF_DTYPE_BFLOAT16 ? "bf16" : "fp16")};
    for (TileConfig& t : v.tiles) t = {4, 0, 0, 0, 0};
    list.push_back(v);
  }
  return list;
}

}  // namespace

const Family& family(FamilyId id) { return kFamilies[id]; }

const char* sm90_schedule_name(Sm90Schedule s) {
  switch (s) {
    case kSm90Overlap: return "overlap";
    case kSm90PingPong: return "pingpong";
    case kSm90OverlapPersistent: return "overlap-persistent";
    case kSm90PingPongPersistent: return "pingpong-persistent";
    case kSm90OverlapPersistentTmaStore: return "overlap-persistent-tma-store";
    case kSm90PingPongPersistentTmaStore: return "pingpong-persistent-tma-store";
    case kSm90OverlapDynamic: return "overlap-dynamic";
    case kSm90PingPongDynamic: return "pingpong-dynamic";
    default: return "v0";
  }
}

Sm90Schedule sm90_main_loop(Sm90Schedule s) {
  if (s == kSm90OverlapPersistent || s == kSm90OverlapPersistentTmaStore || s == kSm90OverlapDynamic)
    return kSm90Overlap;
  if (s == kSm90PingPongPersistent || s == kSm90PingPongPersistentTmaStore || s == kSm90PingPongDynamic)
    return kSm90PingPong;
  return s;
}

bool sm90_persistent(Sm90Schedule s) { return s >= kSm90OverlapPersistent && s < kSm90Schedules; }

bool sm90_tma_store(Sm90Schedule s) {
  return s == kSm90OverlapPersistentTmaStore || s == kSm90PingPongPersistentTmaStore;
}

bool sm90_dynamic(Sm90Schedule s) { return s == kSm90OverlapDynamic || s == kSm90PingPongDynamic; }

bool sm90_has_extras(Sm90Schedule s) {
  for (Sm90Schedule e : kSm90ExtrasSchedules)
    if (e == s) return true;
  return false;
}

SharedMemoryClass shared_memory_class(int arch) {
  if (arch == 90 || arch == 100 || arch == 103 || arch == 110) return kSmem227K;
  if (arch == 80 || arch == 87) return kSmem163K;
  return kSmem99K;
}

const std::vector<Variant>& variants() {
  static const std::vector<Variant> list = build_variants();
  return list;
}

int compiled_head_dim(FamilyId family, int d) {
  if (family == kFamilyKvAppend) return 0;
  if (family == kFamilyFwdSm80) {
    for (int h : kSm80HeadDims)
      if (d >= 1 && d <= h) return h;
  } else if (family == kFamilyFwdSm90) {
    for (int h : kSm90HeadDims)
      if (d >= 1 && d <= h) return h;
  } else {
    for (int h : kDecodeHeadDims)
      if (d >= 1 && d <= h) return h;
  }
  return 0;
}

int find_variant(FamilyId family, af_dtype dtype, int head_dim, bool extras, Sm90Schedule schedule, int sm90_block_m,
                 DecodeTile decode_tile) {
  const int d = compiled_head_dim(family, head_dim);
  if (d == 0 && family != kFamilyKvAppend) return -1;
  const std::vector<Variant>& list = variants();
  for (size_t i = 0; i < list.size(); ++i)
    if (list[i].family == family && list[i].dtype == dtype && list[i].head_dim == d && list[i].extras == extras &&
        list[i].schedule == schedule && list[i].decode_tile == decode_tile &&
        (family != kFamilyFwdSm90 || list[i].tiles[kSmem227K].block_m() == sm90_block_m))
      return int(i);
  return -1;
}

const std::string& module_source(FamilyId family) {
  // Each attention family's module: the params, the PTX helpers, the family's constants, the
  // swizzle and sequence helpers (which read those constants), the family's kernel (fwd_sm80: and
  // the combine kernel); the kvcache module is the params, the PTX helpers and its kernel; fwd_sm90
  // has its own swizzle (TMA's) and no combine.
  static const std::string sources[kFamilyCount] = {
      std::string(kAttentionParamsSource) + kPtxSource + kFlashFwdConfigSource + kSwizzleSource + kSequenceSource +
          kFlashFwdSource + kCombineSource,
      std::string(kAttentionParamsSource) + kPtxSource + kDecodeConfigSource + kSwizzleSource + kSequenceSource +
          kDecodeFwdSource,
      std::string(kAttentionParamsSource) + kPtxSource + kKvcacheAppendSource,
      std::string(kAttentionParamsSource) + kPtxSource + kFlashFwdSm90ConfigSource + kSm90PtxSource + kSequenceSource +
          kFlashFwdSm90Source,
  };
  return sources[family];
}

int target_arch(const std::string& target) {
  std::string digits;
  for (char c : target)
    if (c >= '0' && c <= '9') digits += c;
  return digits.empty() ? 0 : std::atoi(digits.c_str());
}

std::vector<std::string> compile_options(const Variant& v, const std::string& target, int nvrtc_major,
                                         int nvrtc_minor) {
  const TileConfig& tile = v.tile_for(target_arch(target));
  std::vector<std::string> options = {"-arch=" + target,
                                      "--std=c++17",
                                      "-default-device",
                                      "--ptxas-options=-v",
                                      "-DAF_HEAD_DIM=" + std::to_string(v.head_dim),
                                      std::string("-DAF_BF16=") + (v.dtype == AF_DTYPE_BFLOAT16 ? "1" : "0"),
                                      "-DAF_WARPS=" + std::to_string(tile.warps),
                                      "-DAF_KV_STAGES=" + std::to_string(tile.stages),
                                      std::string("-DAF_EXTRAS=") + (v.extras ? "1" : "0")};
  if (v.family == kFamilyFwdSm90) {
    options.push_back("-DAF_BLOCK_M=" + std::to_string(tile.block_m()));
    options.push_back("-DAF_BLOCK_N=" + std::to_string(tile.block_n));
    options.push_back("-DAF_SM90_SCHEDULE=" + std::to_string(int(sm90_main_loop(v.schedule))));
    options.push_back(std::string("-DAF_SM90_PERSISTENT=") + (sm90_persistent(v.schedule) ? "1" : "0"));
    options.push_back(std::string("-DAF_SM90_TMA_STORE=") + (sm90_tma_store(v.schedule) ? "1" : "0"));
    options.push_back(std::string("-DAF_SM90_DYNAMIC=") + (sm90_dynamic(v.schedule) ? "1" : "0"));
    options.push_back("-DAF_Q_BUFFERS=" + std::to_string(tile.q_buffers));
    options.push_back(std::string("-DAF_CROSS_TILE=") + (sm90_cross_tile(nvrtc_major, nvrtc_minor) ? "1" : "0"));
    options.push_back(std::string("-DAF_DEFERRED_MAX=") + (tile.deferred_max ? "1" : "0"));
  }
  // Decode: the launch bound's minimum CTAs per SM is what the tile's shared memory and 128 registers per thread
  // allow (Variant::ctas_per_sm), so that ptxas allocates registers for that occupancy rather than by its own
  // estimate (without it, NVRTC 13.0 and 13.5 held the d64 4-warp tile to 96 registers and spilled 4 bytes).
  if (v.family == kFamilyDecode)
    options.push_back("-DAF_MIN_BLOCKS=" + std::to_string(v.ctas_per_sm(target_arch(target))));
  if (v.family == kFamilyFwdSm80) {
    options.push_back("-DAF_M_TILES=" + std::to_string(tile.m_tiles));
    options.push_back("-DAF_BLOCK_N=" + std::to_string(tile.block_n));
    options.push_back("-DAF_MIN_BLOCKS=1");
  }
  return options;
}

}  // namespace af::cuda
