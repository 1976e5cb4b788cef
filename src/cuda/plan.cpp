#include "cuda/plan.h"

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "common/error.h"
#include "cuda/compiler.h"
#include "cuda/cuda_backend.h"
#include "cuda/tensor_map.h"

namespace af::cuda {

namespace {

bool fits_int(int64_t x) { return x >= 0 && x <= INT_MAX; }

// A tuning override from the environment: its value when it is an integer in [lo, hi], else 0.
int env_int(const char* name, long lo, long hi) {
  const char* text = std::getenv(name);
  if (text == nullptr || *text == 0) return 0;
  char* end = nullptr;
  const long value = std::strtol(text, &end, 10);
  return *end == 0 && value >= lo && value <= hi ? int(value) : 0;
}

// Packed rows (query rows x query heads per KV head) up to which the decode family runs: its
// 16-row tiles then read each K/V block at most 4 times (through L2), where fwd_sm80's 64- or
// 128-row tiles would read it once per query head and leave most of each tile empty.
constexpr int64_t kDecodeMaxPackedRows = 64;
// Packed rows of one decode CTA (decode_config.cuh kBlockM).
constexpr int64_t kDecodeTileRows = 16;

// (batch, head) pairs per CTA scheduling group (see tile_index in fwd_sm80/flash_fwd.cuh).
// Without a mask every tile costs the same: one pair per group, so the CTAs running at once share
// K/V in L2. With a causal mask or a window, groups of about one wave run longest-first.
// $ATTNFORGE_PAIR_GROUP (a positive number) overrides this for tuning runs.
int pair_group(int pairs, int m_blocks, int wave_ctas, bool masked) {
  static const int forced = env_int("ATTNFORGE_PAIR_GROUP", 1, 65535);
  const int group = std::max(1, std::min(forced > 0 ? forced : (masked ? wave_ctas / m_blocks : 1), pairs));
  return std::max(group, (pairs + 65534) / 65535);  // gridDim.z (groups) is at most 65535
}

// A forced key-split count, if any: the caller's num_splits (FlashAttention's semantics: 1 none,
// N forced), else $ATTNFORGE_NUM_SPLITS (tuning runs and tests); 0 when the plan decides.
int forced_splits(int requested) {
  static const int forced = env_int("ATTNFORGE_NUM_SPLITS", 1, 256);
  return requested > 0 ? requested : forced;
}

// fwd_sm80: when the query tiles fill at most half of one wave, each tile's key blocks are
// shared out among enough CTAs to fill about a wave, at least 4 key blocks each, at most 64.
// The busy fraction of `slots` CTA slots over the waves `ctas` CTAs take: ctas / (waves x slots), waves rounded up.
double wave_fill(int64_t ctas, int64_t slots) {
  const int64_t waves = (ctas + slots - 1) / slots;
  return double(ctas) / double(waves * slots);
}

int sm80_splits(int requested, int ctas, int key_blocks, int wave_ctas) {
  if (forced_splits(requested) > 0) return forced_splits(requested);
  if (2 * ctas > wave_ctas) return 1;
  return std::max(1, std::min({wave_ctas / ctas, key_blocks / 4, 64}));
}

}  // namespace

// decode: a step is bound by memory bandwidth, and one CTA per SM draws an SM's share of it (two
// CTAs of a d64 tile on one SM do not read faster: measured on the H200, B 8 x 16 MHA heads x 1k
// keys took 13.8 us unsplit and 16.5 us in 2 splits). So keys are split only while the CTAs
// occupy fewer than half the SMs. The global merge (partials through L2, an atomic, the last CTA
// reads them back) takes the smallest count whose SM efficiency (CTAs over whole multiples of the
// SM count) is within 95% of the best over 1..128 splits of at least 2 key blocks (128 keys) each,
// so that batch 1 at long context reads K/V with every SM; below 2 blocks a split's partial
// results cost more than its parallelism gains. The cluster merge (one thread-block cluster per
// query tile, shares merged through distributed shared memory) has no global round trip, so it
// splits down to 1 key block each (B1 1k keys: 8 splits of 128 keys, the best forced count of the
// H200 sweep, where the global rule chose 4), over the cluster sizes whose clusters are all
// resident at once (max_clusters[n] >= ctas: one wave, as the efficiency assumes); it runs when
// its count's efficiency is within 95% of the global count's, or while its CTAs read at most
// kLatencyBoundBlocks key blocks each (B1 4k keys without 16-CTA clusters: 8 splits in clusters
// beat 16 merged globally); with longer shares the global merge's extra SMs win. A forced count (FlashAttention's
// num_splits > 1, or $ATTNFORGE_NUM_SPLITS) merges in a cluster when a cluster of that many CTAs
// can launch at all (max_clusters[n] > 0), else globally. For tiles of which an SM holds several (d64)
// the heuristic takes clusters of at most kSharedSmClusterCtas, and only latency-bound ones: there
// clusters of 8 ran 10-13% slower than the same 8 splits merged globally at B1 x 4k-32k (H200,
// bench/results/decode-cluster-h200-2026-11-30.md), presumably because a cluster's CTAs are placed
// within one GPC, two to an SM, so fewer SMs stream; while clusters of 4 won where each CTA reads
// few blocks (bench/results/decode-ab-h200-2026-12-01.md, interleaved rounds, 16/16 heads d64 B1:
// 1k keys 6.5 us in 4-CTA clusters against 7.4 for the global 4 and 7.2 for clusters of 8; 2k 8.8
// against 9.1 for the global 8; at 4k, 8 blocks per CTA, the global 8 led, 10.9 against 11.8), and
// only while their CTAs fill at most three quarters of the SMs: beyond that two of them share an SM
// (d64 1k keys, bench/results/decode-d64-clusters-h200-2026-12-01.md: B2 in clusters of 4, 128 CTAs,
// 9.2-9.3 us against 8.4 in clusters of 3; B3 in clusters of 2, 96 CTAs, 9.2 us, the fastest; B4 in
// clusters of 3, 192 CTAs, 11.4-11.6 against 10.3 for the global merge).
// Shares of at most this many key blocks per CTA keep a split decode step latency-bound: the cluster
// merge's saved round trip through L2 outweighs the SMs the global merge adds (H200, B1 4k at 32/8 and
// 64/8 heads: 8 splits merged in clusters 12.9/13.1 us, 16 merged globally 13.9/14.8; at 16k keys,
// 16 blocks per CTA, the global 16 led, 26.6 against 27.9 us; bench/results/decode-splits-h200-*).
constexpr int kLatencyBoundBlocks = 4;
constexpr int kSharedSmClusterCtas = 4;

DecodeSplits decode_splits(int forced, int ctas, int key_blocks, int sm_count,
                           const int (&max_clusters)[kMaxClusterCtas + 1], int ctas_per_sm) {
  if (forced > 0) return {forced, forced >= 2 && forced <= kMaxClusterCtas && max_clusters[forced] > 0};
  if (2 * ctas >= sm_count) return {1, false};
  auto efficiency = [&](int s) { return wave_fill(int64_t(ctas) * s, sm_count); };
  // The smallest count in 1..limit (those allowed by `usable`) within 95% of the best; 0 if none.
  auto smallest_near_best = [&](int limit, auto usable) {
    double best = 0;
    for (int s = 1; s <= limit; ++s)
      if (usable(s)) best = std::max(best, efficiency(s));
    for (int s = 1; s <= limit; ++s)
      if (usable(s) && efficiency(s) >= 0.95 * best) return s;
    return 0;
  };
  const int global = smallest_near_best(std::max(1, std::min(128, key_blocks / 2)), [](int) { return true; });
  // A cluster size counts only if it shortens the longest share (key blocks per CTA) over one CTA less:
  // 9 CTAs on 16 blocks read 2 blocks each at most, as 8 do (40/8 heads B1 2k: 11.1 against 10.6 us).
  const auto longest = [&](int s) { return (key_blocks + s - 1) / s; };
  if (ctas_per_sm != 1) {  // the largest latency-bound cluster of at most kSharedSmClusterCtas on 3/4 of the SMs
    for (int s = std::min(kSharedSmClusterCtas, key_blocks); s >= 2; --s)
      if (max_clusters[s] >= ctas && longest(s) <= kLatencyBoundBlocks && longest(s) < longest(s - 1) &&
          4 * ctas * s <= 3 * sm_count)
        return {s, true};
    return {global, false};
  }
  const int cluster = smallest_near_best(std::min(kMaxClusterCtas, key_blocks), [&](int s) {
    return s >= 2 && max_clusters[s] >= ctas && longest(s) < longest(s - 1);
  });
  if (cluster >= 2 && (efficiency(cluster) >= 0.95 * efficiency(global) || longest(cluster) <= kLatencyBoundBlocks))
    return {cluster, true};
  return {global, false};
}

// Decode grids of more CTAs than the default tile runs in one wave take a wide-grid tile where there is
// one (families.cpp's wide_grid_decode_tile): else such a grid takes two waves or more, the last one
// partly idle (B32 x 8 KV heads at d128: 256 CTAs on 132 SMs, 1.94 waves; 0.93x cuDNN at 1k keys in the
// session-6 table). Of the two at d128, the 2-block ring (three CTAs per SM) wherever its grid's last
// wave is filled at least 98% as well as the 3-block ring's (two per SM), a grid of one wave counting as
// full, since all its CTAs are resident from the start: measured on H200
// (bench/results/decode-wide-tiles-h200-2026-12-01.md), the 2-block ring at B24-B48 and B96 x 8 KV heads
// (192-384 CTAs, one wave of it; 768, 1.94 waves against 2.91) 1.00-1.05x cuDNN against 0.92-1.00x,
// while at B64 (512 CTAs, 1.29 waves) and B128 x 4k (2.59 waves against 3.88) it was 0.88-0.99x against
// 0.99x. Where the call has one wide-grid tile (d64: the 4-warp one, up to 2k keys), that one.
DecodeTile decode_grid_tile(int64_t ctas, int sm_count, const int (&per_sm)[3]) {
  if (sm_count <= 0 || ctas <= int64_t(per_sm[kDecodeTileDefault]) * sm_count) return kDecodeTileDefault;
  // With one wide-grid tile, that one.
  if (per_sm[kDecodeTileWide2Stage] == 0) return per_sm[kDecodeTileWide] > 0 ? kDecodeTileWide : kDecodeTileDefault;
  if (per_sm[kDecodeTileWide] == 0) return kDecodeTileWide2Stage;
  auto last_wave_fill = [&](int holds) {
    const int64_t slots = int64_t(holds) * sm_count;
    return ctas <= slots ? 1.0 : wave_fill(ctas, slots);
  };
  return last_wave_fill(per_sm[kDecodeTileWide2Stage]) >= 0.98 * last_wave_fill(per_sm[kDecodeTileWide])
             ? kDecodeTileWide2Stage
             : kDecodeTileWide;
}

bool decode_cluster_enabled() {
  const char* text = std::getenv("ATTNFORGE_DECODE_CLUSTER");
  return text == nullptr || text[0] != '0' || text[1] != 0;
}

bool decode_prefetch_enabled() {
  const char* text = std::getenv("ATTNFORGE_DECODE_PREFETCH");
  return text == nullptr || text[0] != '0' || text[1] != 0;
}

// Grids of more than one wave: each CTA prefetches its successor's first K/V blocks into L2 (decode_fwd.cuh,
// prefetch_successor), where their addresses need no loads: keys from row 0 of an unpadded, unpaged cache, and
// the kernel's linear CTA index plus a wave within 32 bits.
int decode_successor(const AttentionProblem& p, int64_t ctas, int splits, int wave_ctas) {
  const bool keys_from_row_0 =
      !p.paged && !p.varlen && p.leftpad_k == nullptr && p.kv_batch_idx == nullptr && window_left_in_effect(p) < 0;
  const bool several_waves = wave_ctas > 0 && ctas > wave_ctas && ctas + wave_ctas <= INT_MAX;
  return splits == 1 && several_waves && keys_from_row_0 && decode_prefetch_enabled() ? wave_ctas : 0;
}

Sm90Tensors sm90_tensors(const AttentionProblem& p) {
  // Varlen: one batch of the packed rows (the batch strides are 0, the kernel adds cu_seqlens).
  const int64_t batch = p.varlen ? 1 : p.batch;
  const int64_t q_rows = p.varlen ? p.total_q : p.seqlen_q, k_rows = p.varlen ? p.total_k : p.seqlen_k;
  return {
      {p.q, batch, q_rows, p.heads_q, p.head_dim, p.q_batch_stride, p.q_row_stride, p.q_head_stride},
      {p.k, batch, k_rows, p.heads_kv, p.head_dim, p.k_batch_stride, p.k_row_stride, p.k_head_stride},
      {p.v, batch, k_rows, p.heads_kv, p.head_dim, p.v_batch_stride, p.v_row_stride, p.v_head_stride},
      {p.out, batch, q_rows, p.heads_q, p.head_dim, p.out_batch_stride, p.out_row_stride, p.out_head_stride},
  };
}

bool fwd_sm90_enabled() {
  const char* text = std::getenv("ATTNFORGE_FWD_SM90");
  return text == nullptr || text[0] != '0' || text[1] != 0;
}

Sm90Schedule default_sm90_schedule(int64_t head_dim, bool causal, int64_t seqlen_k) {
  // Measured on the H200 (bench/results/fwd-sm90-h200-2026-11-30.md; three A/B runs and two full sweeps):
  // the persistent pingpong was fastest or within 1-3% at every d64/d128 shape up to 4k keys (by 10-46% at
  // 512-1k and at 64/8 GQA 4k) and at every non-causal one; under a causal mask from 8k keys the
  // one-CTA-per-tile pingpong led it by 6-13% (and the dynamic tile scheduler by 2-4%). At d256 without a
  // mask the persistent pingpong led below 8k keys and overlap tied it from 8k; under a causal mask the
  // one-CTA-per-tile pingpong led (0.74x / 0.92x cuDNN at 1k / 4k against 0.69-0.76x for overlap and the
  // persistent forms). Up to 1k keys at d64/d128 the TMA-store epilogue (O leaves through shared memory while
  // the next tile starts) added 7-16% in two A/B runs (session 5, and forms_check.sh in session 6:
  // bench/results/fwd-sm90-forms-h200-2026-11-30.log), with memcheck, racecheck and synccheck clean; from 2k
  // it was within noise of the register epilogue (-7% to +3%), and at d256 it loses 2-7%.
  // At d64 the same holds without a mask (with 192-row tiles since the m192 A/B), but under a causal mask
  // up to 1k keys the TMA-store form was 4-5% slower than the register epilogue there (three shapes),
  // and from 4k the persistent 192-row form beat the one-CTA-per-tile pingpong by ~9% (default_sm90_block_m).
  // Since the dynamic form takes the static form's L2 pair groups (size_sm90_persistent; session 10 A/B,
  // bench/results/fwd-sm90-short-causal-h200-2026-12-01.md, 16k tokens per call): under a causal mask it led at
  // d128 2k-4k (504 / 569 TFLOP/s against the static form's 473 / 528 and the one-CTA-per-tile pingpong's 483 /
  // 547; 64/8 GQA 4k 611 against 578 / 593) and at d256 up to 2k (512: 287 against pingpong's 258, 1k: 452
  // against 414, 2k: 542 against 541); the one-CTA-per-tile pingpong still led at d256 4k (635 against 617) and
  // at d128 8k-16k (627 / 633 against 612 / 617), the TMA-store form up to 1k at d128 (328 / 438 against 286 /
  // 404). At d64 under a causal mask (bench/results/fwd-sm90-d64-causal-h200-2026-12-01.md) the dynamic form
  // on 192-row tiles led from 2k (2k 394 against the static form's 366 on 128 rows and 385 on 192; 4k 445
  // against 426 on 192 rows; 8k / 16k 488 / 510 against 472 / 472), the static form on 128 rows up to 1k.
  // Since the persistent forms up to d128 carry each tile's last P V into the next tile (session 11, three
  // rounds, bench/results/fwd-sm90-schedules-h200-2026-12-01.md): under a causal mask at d128 the dynamic form
  // led the one-CTA-per-tile pingpong at 8k too (16 heads 610-629 against 591-605 TFLOP/s, 64/8 GQA 611-612
  // against 595-599) and tied or led it at 16k (625-639 against 626-634; 64/8 632-633 against 623-629).
  const bool long_keys = seqlen_k >= 8192;
  const bool d64 = head_dim <= 64;
  if (d64 && causal) return seqlen_k <= 1024 ? kSm90PingPongPersistent : kSm90PingPongDynamic;
  if (seqlen_k <= 1024 && head_dim <= 128) return kSm90PingPongPersistentTmaStore;
  if (causal) return head_dim > 128 && seqlen_k >= 4096 ? kSm90PingPong : kSm90PingPongDynamic;
  if (head_dim > 128 && long_keys) return kSm90Overlap;
  return kSm90PingPongPersistent;
}

bool sm90_schedule_from_env(int64_t head_dim, bool causal, int64_t seqlen_k, Sm90Schedule* schedule) {
  const char* text = std::getenv("ATTNFORGE_SM90_VARIANT");
  if (text == nullptr || *text == 0) {
    *schedule = default_sm90_schedule(head_dim, causal, seqlen_k);
    return true;
  }
  for (int s = 0; s < kSm90Schedules; ++s)
    if (std::strcmp(text, sm90_schedule_name(Sm90Schedule(s))) == 0) {
      *schedule = Sm90Schedule(s);
      return true;
    }
  return false;
}

int default_sm90_block_m(int64_t head_dim, bool causal, int64_t seqlen_k) {
  // Measured on the H200 (bench/results/fwd-sm90-m192-h200-2026-11-30.md, 16 d64 shapes): the 192-row
  // tile was 1.03-1.11x cuDNN without a mask from 2k keys (the 128-row one 0.92-0.95x) and 0.93-0.99x at
  // 512-1k (0.86-0.96x), and under a causal mask 1.04-1.08x from 4k at 64/8 GQA and 8k-16k (0.94-0.98x),
  // but below the 128-row tile under a causal mask up to 2k (0.80-0.91x against 0.90-0.98x): short causal
  // tiles waste more of a 192-row tile on the diagonal. Session 10's A/B (the dynamic form the causal default
  // from 2k; bench/results/fwd-sm90-d64-causal-h200-2026-12-01.md) had 192 rows ahead at 2k (394 TFLOP/s in the
  // dynamic form, 385 static, against 366 static on 128 rows) and behind up to 1k (1k 284-288 against 316).
  if (compiled_head_dim(kFamilyFwdSm90, int(head_dim)) != 64) return kSm90BlockM;
  return causal && seqlen_k <= 1024 ? kSm90BlockM : kSm90WideBlockM;
}

bool sm90_block_m_from_env(int64_t head_dim, bool causal, int64_t seqlen_k, int* block_m) {
  const char* text = std::getenv("ATTNFORGE_SM90_BLOCK_M");
  if (text == nullptr || *text == 0) {
    *block_m = default_sm90_block_m(head_dim, causal, seqlen_k);
    return true;
  }
  if (std::strcmp(text, "128") == 0) {
    *block_m = kSm90BlockM;
    return true;
  }
  if (std::strcmp(text, "192") != 0) return false;
  *block_m = compiled_head_dim(kFamilyFwdSm90, int(head_dim)) == 64 ? kSm90WideBlockM : kSm90BlockM;
  return true;
}

int64_t window_left_in_effect(const AttentionProblem& p) {
  return p.window_left < 0 || p.window_left >= p.seqlen_k ? -1 : p.window_left;
}

int64_t window_right_in_effect(const AttentionProblem& p) {
  if (p.causal) return 0;
  return p.window_right < 0 || p.window_right >= p.seqlen_q ? -1 : p.window_right;
}

bool sm90_extras(const AttentionProblem& p) { return p.softcap > 0 || window_left_in_effect(p) >= 0; }

bool sm90_triangular(const AttentionProblem& p) {
  return window_right_in_effect(p) >= 0 && window_left_in_effect(p) < 0;
}

Sm90Schedule sm90_extras_schedule(Sm90Schedule s, int64_t head_dim, int64_t seqlen_k) {
  if (sm90_has_extras(s)) return s;
  const bool pingpong = head_dim > 128 || (head_dim > 64 && seqlen_k >= 8192);
  return s == kSm90PingPongDynamic && pingpong ? kSm90PingPong : kSm90PingPongPersistent;
}

std::string fwd_sm90_refusal(const AttentionProblem& p, int block_m) {
  if (p.dtype != AF_DTYPE_BFLOAT16 && p.dtype != AF_DTYPE_FLOAT16) return "fwd_sm90 takes bfloat16 and float16";
  if (p.head_dim % 8 != 0) return "fwd_sm90 takes head_dim a multiple of 8 (TMA rows of 16-byte multiples)";
  if (p.paged || p.kv_batch_idx != nullptr) return "fwd_sm90 does not take paged caches or kv_batch_idx";
  if (p.alibi_slopes != nullptr) return "fwd_sm90 does not take ALiBi yet";
  if (p.num_splits > 1) return "fwd_sm90 does not split keys (num_splits > 1)";
  if (p.seqlen_k < 1) return "fwd_sm90 needs at least one key";
  if (p.heads_q > 65535 || p.batch > 65535) return "fwd_sm90's grid takes at most 65535 heads and 65535 sequences";
  // The tile's shape (the extras variants' is the plain ones' of the same block_m).
  const int index = find_variant(kFamilyFwdSm90, p.dtype, int(p.head_dim), false, kSm90V0, block_m);
  if (index < 0)
    return "fwd_sm90 has no " + std::to_string(block_m) + "-row tile at head_dim " + std::to_string(p.head_dim);
  const TileConfig& tile = variants()[index].tile_for(90);
  const Sm90Tensors t = sm90_tensors(p);
  const std::string refusals[] = {
      tile_map_refusal("q", t.q, unsigned(tile.block_m())),
      tile_map_refusal("k", t.k, unsigned(tile.block_n)),
      tile_map_refusal("v", t.v, unsigned(tile.block_n)),
      tile_map_refusal("out", t.out, kSm90StoreBoxRows),
  };
  for (const std::string& r : refusals)
    if (!r.empty()) return "fwd_sm90: " + r;
  return "";
}

af_status choose(const AttentionProblem& p, Choice* choice) {
  if (p.device_type != AF_DEVICE_CUDA) return fail(AF_ERR_DEVICE, "cuda backend: tensors are not in CUDA memory");
  if (p.dtype != AF_DTYPE_BFLOAT16 && p.dtype != AF_DTYPE_FLOAT16)
    return fail(AF_ERR_UNSUPPORTED, "cuda backend: dtype %d is not bfloat16 or float16 (float32 runs on CPU or torch)",
                int(p.dtype));
  if (p.head_dim < 1 || p.head_dim > 256)
    return fail(AF_ERR_UNSUPPORTED, "cuda backend: head_dim %lld is outside 1..256", (long long)p.head_dim);
  AF_RETURN_IF_ERROR(available());
  const DriverState& d = driver();
  if (p.device_index < 0 || p.device_index >= int(d.devices.size()) || p.device_index >= kMaxDevices)
    return fail(AF_ERR_DEVICE, "cuda backend: device %d does not exist (%zu visible)", p.device_index,
                d.devices.size());
  const DeviceInfo& info = d.devices[p.device_index];
  if (info.major < 8)
    return fail(AF_ERR_UNSUPPORTED, "cuda backend: %s is compute capability %d.%d; the kernels need 8.0+",
                info.name.c_str(), info.major, info.minor);
  const std::string target = target_for_device(info.major, info.minor);
  if (target.empty())
    return fail(AF_ERR_BACKEND_UNAVAILABLE, "NVRTC %d.%d cannot target compute capability %d.%d", nvrtc().major,
                nvrtc().minor, info.major, info.minor);
  return choose_variant(p, info, target, d.api->cuTensorMapEncodeTiled != nullptr, choice);
}

af_status choose_variant(const AttentionProblem& p, const DeviceInfo& info, const std::string& target, bool tensor_maps,
                         Choice* choice) {
  const int arch = target_arch(target);
  const int64_t packed_rows = p.seqlen_q * (p.heads_q / std::max<int64_t>(p.heads_kv, 1));
  const bool decode = p.paged || p.kv_batch_idx != nullptr || packed_rows <= kDecodeMaxPackedRows;
  FamilyId family_id = decode ? kFamilyDecode : kFamilyFwdSm80;
  std::string why;
  // fwd_sm90's schedule and tile height follow the mask's shape: a causal-like one (right edge only)
  // makes tiles of unequal cost, a sliding window about equal ones (as no mask does).
  const bool triangular = sm90_triangular(p);
  int sm90_block_m = kSm90BlockM;
  const bool sm90_block_m_ok = sm90_block_m_from_env(p.head_dim, triangular, p.seqlen_k, &sm90_block_m);
  // The extras variants are 128-row tiles only.
  if (sm90_extras(p)) sm90_block_m = kSm90BlockM;
  if (!decode && target == "sm_90a" && fwd_sm90_enabled()) {
    why = fwd_sm90_refusal(p, sm90_block_m);
    if (why.empty() && !tensor_maps) why = "the driver has no cuTensorMapEncodeTiled (CUDA < 12)";
    if (why.empty()) {
      family_id = kFamilyFwdSm90;
      why = "sm_90a";
    }
  }
  // Extras: softcap and ALiBi in fwd_sm80's and decode's variants; softcap and a left window edge in
  // fwd_sm90's (which take no ALiBi).
  const bool extras = family_id == kFamilyFwdSm90 ? sm90_extras(p) : p.softcap > 0 || p.alibi_slopes != nullptr;
  Sm90Schedule schedule = kSm90V0;
  if (family_id == kFamilyFwdSm90 && !sm90_schedule_from_env(p.head_dim, triangular, p.seqlen_k, &schedule))
    return fail(AF_ERR_INVALID_ARGUMENT,
                "cuda backend: ATTNFORGE_SM90_VARIANT=%s is not a fwd_sm90 schedule (v0, overlap, pingpong, "
                "overlap-persistent, pingpong-persistent, overlap-persistent-tma-store, "
                "pingpong-persistent-tma-store, overlap-dynamic, pingpong-dynamic)",
                std::getenv("ATTNFORGE_SM90_VARIANT"));
  if (family_id == kFamilyFwdSm90 && !sm90_block_m_ok)
    return fail(AF_ERR_INVALID_ARGUMENT,
                "cuda backend: ATTNFORGE_SM90_BLOCK_M=%s is not a fwd_sm90 tile height (128, or 192 at head dim 64)",
                std::getenv("ATTNFORGE_SM90_BLOCK_M"));
  if (family_id == kFamilyFwdSm90 && extras && !sm90_has_extras(schedule)) {
    const char* asked = std::getenv("ATTNFORGE_SM90_VARIANT");
    if (asked != nullptr && *asked != 0)  // a tuning run asked for a form that has no window/softcap variant
      why += std::string("; ") + asked + " has no window/softcap form";
    schedule = sm90_extras_schedule(schedule, p.head_dim, p.seqlen_k);
  }
  // Decode grids past one wave of the default tile: a wide-grid tile (decode_grid_tile).
  const int64_t decode_ctas = p.batch * p.heads_kv * ((packed_rows + kDecodeTileRows - 1) / kDecodeTileRows);
  int index = find_variant(family_id, p.dtype, int(p.head_dim), extras, schedule, sm90_block_m);
  if (decode && index >= 0 && shared_memory_class(arch) == kSmem227K) {
    // Per tile, the CTAs one SM of the class holds (Variant::ctas_per_sm); 0 without the tile. At d64 the
    // wide-grid tile only for caches of up to 2k keys (seqlen_k: a paged or kvcache call's capacity, not its used
    // lengths): from 4k the two-per-SM 8-warp tile streamed 0.3-1.4% faster in its 1.94 waves (H200,
    // bench/results/decode-d64-wide-h200-2026-12-01.md; at 1k the wide tile 3-5% faster).
    const bool short_or_d128 = p.head_dim > 64 || p.seqlen_k <= 2048;
    int kinds[3] = {index, -1, -1}, per_sm[3] = {};
    for (DecodeTile kind : {kDecodeTileDefault, kDecodeTileWide, kDecodeTileWide2Stage}) {
      if (kind != kDecodeTileDefault && short_or_d128)
        kinds[kind] = find_variant(family_id, p.dtype, int(p.head_dim), extras, schedule, kSm90BlockM, kind);
      if (kinds[kind] >= 0) per_sm[kind] = variants()[kinds[kind]].ctas_per_sm(arch);
    }
    index = kinds[decode_grid_tile(decode_ctas, info.sm_count, per_sm)];
  }
  if (index < 0 || index >= kMaxVariants)
    return fail(AF_ERR_INTERNAL, "cuda backend: no %s%s variant for head_dim %lld", family(family_id).name,
                extras ? " extras" : "", (long long)p.head_dim);
  const Variant& v = variants()[index];
  if (v.total_smem_bytes(arch) > info.max_smem_optin)
    return fail(AF_ERR_UNSUPPORTED, "cuda backend: %s needs %d bytes of shared memory, %s allows %d", v.name.c_str(),
                v.smem_bytes(arch), info.name.c_str(), info.max_smem_optin);
  // 16-byte vector loads and stores: every batch, row and head stride a multiple of 8 elements.
  const int64_t strides[] = {p.q_batch_stride, p.q_row_stride,     p.q_head_stride,  p.k_batch_stride,
                             p.k_row_stride,   p.k_head_stride,    p.v_batch_stride, p.v_row_stride,
                             p.v_head_stride,  p.out_batch_stride, p.out_row_stride, p.out_head_stride};
  for (int64_t s : strides)
    if (s % 8 != 0)
      return fail(AF_ERR_UNSUPPORTED,
                  "cuda backend: every batch, row and head stride must be a multiple of 8 elements (got %lld)",
                  (long long)s);
  const TileConfig& tile = v.tile_for(arch);
  const int64_t m_blocks =
      decode ? (packed_rows + tile.block_m() - 1) / tile.block_m() : (p.seqlen_q + tile.block_m() - 1) / tile.block_m();
  if (!fits_int(p.seqlen_q) || !fits_int(p.seqlen_k) || !fits_int(p.total_q) || !fits_int(p.total_k) ||
      !fits_int(p.kv_batches) || p.batch * p.heads_q > INT_MAX || p.window_left > INT_MAX || p.window_right > INT_MAX ||
      m_blocks > 65535 || (decode && (p.batch > 65535 || m_blocks * p.heads_kv > 65535)) ||
      (sm90_persistent(v.schedule) && m_blocks * p.batch * p.heads_q > INT_MAX))
    return fail(AF_ERR_UNSUPPORTED, "cuda backend: a size exceeds the kernel's 32-bit row indices or grid limits");
  choice->variant = index;
  choice->target = target;
  choice->arch = arch;
  choice->why = why;
  return AF_OK;
}

void size_sm90_persistent(const AttentionProblem& p, const Variant& v, int wave_ctas, Plan* plan) {
  // At most one wave of CTAs over the (query tile, head, sequence) tiles; no key splits. Under a
  // causal mask (sm90_triangular: also a right window edge without a left one) both forms take the
  // tiles longest first within groups of pairs whose K and V together fill about kL2Budget (a guess
  // at two thirds of the H100/H200's 50 MB L2, not yet measured against other sizes): all of the
  // problem's tiles longest first would stream every pair's K and V at once, and the tensor cores
  // outrun DRAM without L2 reuse. The static form deals each group's tiles round-robin, so CTAs of
  // low index take the longest tile of every round: at d128 with 16 heads and 16k tokens, 2k-8k keys,
  // its busiest CTA has 14-15% more work than the mean (a tile costing its key blocks plus one), where
  // the dynamic form's counter, handing out the same order as CTAs free up, comes within 1%. Until
  // 2026-12-01 the dynamic form took one group of all pairs, which balanced as well but ran 0.92x / 0.95x
  // as fast as the static form at b16 x 1k / b8 x 2k (1.05x at b4 x 1k; bench/results/fwd-sm90-h200-2026-11-30.md,
  // session 5).
  // Without a causal mask the tiles are equal and a group is one pair (its query tiles run side by
  // side). So with a sliding window (a left edge): its tiles are about equal (the first window /
  // block_m of a sequence shorter, and still first in the descending order), and a pair's
  // neighbouring query tiles read overlapping windows, which a group of one pair keeps in L2
  // together. The dynamic form's workspace is its tile counter (4 bytes).
  constexpr int64_t kL2Budget = int64_t(32) << 20;
  const int64_t block_m = v.tile_for(90).block_m();
  const int64_t pairs = p.batch * p.heads_q;
  const int64_t tiles = (p.seqlen_q + block_m - 1) / block_m * pairs;
  plan->grid[0] = unsigned(std::min<int64_t>(tiles, std::max(wave_ctas, 1)));
  plan->grid[1] = plan->grid[2] = 1;
  plan->pair_group = 1;
  if (sm90_triangular(p)) {
    const int64_t kv_bytes_per_pair = 2 * p.seqlen_k * v.head_dim * 2 / std::max<int64_t>(1, p.heads_q / p.heads_kv);
    plan->pair_group = int(std::clamp<int64_t>(kL2Budget / std::max<int64_t>(kv_bytes_per_pair, 1), 1, pairs));
  }
  plan->counters_offset = 0;
  plan->workspace_bytes = sm90_dynamic(v.schedule) ? sizeof(unsigned) : 0;
}

af_status make_plan(const AttentionProblem& p, const Choice& choice, Plan* plan) {
  *plan = Plan{};
  plan->choice = choice;
  const Variant& v = variants()[plan->choice.variant];
  AF_RETURN_IF_ERROR(load_variant(p.device_index, plan->choice.variant, plan->choice.target.c_str(), &plan->loaded));
  const TileConfig& tile = v.tile_for(plan->choice.arch);
  const int wave = plan->loaded.wave_ctas;
  const int key_blocks = int((p.seqlen_k + tile.block_n - 1) / tile.block_n);
  // The combine grid's y (rows / 4) is at most 65535.
  const bool can_split = (p.seqlen_q + 3) / 4 <= 65535;
  if (v.family == kFamilyFwdSm90 && sm90_persistent(v.schedule)) {
    size_sm90_persistent(p, v, wave, plan);
  } else if (v.family == kFamilyFwdSm90) {
    // One CTA per (query tile, head, sequence); no key splits.
    plan->grid[0] = unsigned((p.seqlen_q + tile.block_m() - 1) / tile.block_m());
    plan->grid[1] = unsigned(p.heads_q);
    plan->grid[2] = unsigned(p.batch);
  } else if (v.family == kFamilyDecode) {
    const int group = int(p.heads_q / p.heads_kv);
    const int m_blocks = int((p.seqlen_q * group + tile.block_m() - 1) / tile.block_m());
    const int ctas = int(p.batch) * int(p.heads_kv) * m_blocks;
    // The cluster merge: sm_90+ with a driver that launches clusters (load_variant counted them).
    static const int kNoClusters[kMaxClusterCtas + 1] = {};
    const bool clusters = plan->choice.arch >= 90 && decode_cluster_enabled();
    const int(&max_clusters)[kMaxClusterCtas + 1] = clusters ? plan->loaded.max_clusters : kNoClusters;
    const int forced = forced_splits(p.num_splits);
    const DecodeSplits split = can_split ? decode_splits(forced, ctas, key_blocks, plan->loaded.sm_count, max_clusters,
                                                         std::max(1, wave / std::max(1, plan->loaded.sm_count)))
                                         : DecodeSplits{};
    plan->splits = split.splits;
    plan->cluster = split.cluster;
    plan->grid[0] = unsigned(plan->splits);
    plan->grid[1] = unsigned(m_blocks * p.heads_kv);
    plan->grid[2] = unsigned(p.batch);
    plan->successor = decode_successor(p, p.batch * p.heads_kv * m_blocks, plan->splits, wave);
  } else {
    const int pairs = int(p.batch * p.heads_q);
    const int m_blocks = int((p.seqlen_q + tile.block_m() - 1) / tile.block_m());
    const bool masked = p.window_left >= 0 || p.window_right >= 0;
    plan->pair_group = pair_group(pairs, m_blocks, wave, masked);
    const int groups = (pairs + plan->pair_group - 1) / plan->pair_group;
    // gridDim.z = groups * splits is at most 65535.
    plan->splits =
        can_split ? std::max(1, std::min(sm80_splits(p.num_splits, pairs * m_blocks, key_blocks, wave), 65535 / groups))
                  : 1;
    plan->grid[0] = unsigned(plan->pair_group);
    plan->grid[1] = unsigned(m_blocks);
    plan->grid[2] = unsigned(groups * plan->splits);
  }
  if (plan->splits > 1 && !plan->cluster) {
    plan->workspace_bytes =
        size_t(plan->splits) * size_t(p.batch * p.heads_q) * size_t(p.seqlen_q) * size_t(v.head_dim + 1) * 4;
    plan->counters_offset = plan->workspace_bytes;
    if (v.family == kFamilyDecode)  // then the split counters, one per query tile
      plan->workspace_bytes += size_t(plan->grid[1]) * size_t(plan->grid[2]) * 4;
  }
  return AF_OK;
}

// The plan's word for a wide-grid decode tile.
static const char* decode_tile_label(DecodeTile kind) {
  return kind == kDecodeTileWide2Stage ? " wide-grid 2-stage" : " wide-grid";
}

std::string describe(const Choice& choice) {
  const Variant& v = variants()[choice.variant];
  const TileConfig& t = v.tile_for(choice.arch);
  char text[160];
  std::snprintf(text, sizeof text, "%s %s d%d%s%s%s%s %s %dx%d", family(v.family).name,
                v.dtype == AF_DTYPE_BFLOAT16 ? "bf16" : "fp16", v.head_dim, v.extras ? " extras" : "",
                v.decode_tile == kDecodeTileDefault ? "" : decode_tile_label(v.decode_tile),
                v.family == kFamilyFwdSm90 ? " " : "", v.family == kFamilyFwdSm90 ? sm90_schedule_name(v.schedule) : "",
                choice.target.c_str(), t.block_m(), t.block_n);
  return choice.why.empty() ? std::string(text) : std::string(text) + " (" + choice.why + ")";
}

std::string describe(const Plan& plan) {
  Choice bare = plan.choice;
  bare.why.clear();
  const std::string text = describe(bare) + " splits=" + std::to_string(plan.splits) +
                           (plan.cluster ? " cluster" : "") + (plan.successor > 0 ? " prefetch" : "");
  return plan.choice.why.empty() ? text : text + " (" + plan.choice.why + ")";
}

}  // namespace af::cuda
