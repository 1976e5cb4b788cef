// The one CUDA kernel selector: problem + device -> plan (family, variant, target arch, tile,
// grid, key splits, workspace bytes), or the reason nothing fits. af_attention_supported,
// af_attention_forward, af_attention_plan_create, warmup and explain() all go through it.
#pragma once

#include <cstddef>
#include <string>

#include "cuda/driver_api.h"
#include "cuda/families.h"
#include "cuda/modules.h"
#include "cuda/tensor_map.h"
#include "problem/problem.h"

namespace af::cuda {

// Which kernel would run a problem; found without compiling anything.
struct Choice {
  int variant = -1;    // index into variants()
  std::string target;  // NVRTC target the device's kernels compile for ("sm_90a", "compute_120")
  int arch = 0;        // target_arch(target): sizes the tile, the same arch that compiles
  std::string why;     // prefill on sm_90a with fwd_sm90 enabled: why fwd_sm90 runs or does not; else empty
};

// Whether the plan may pick fwd_sm90 for prefill on sm_90a: yes unless $ATTNFORGE_FWD_SM90 is "0"
// (then fwd_sm80 runs, as on other GPUs).
bool fwd_sm90_enabled();

// fwd_sm90's schedule without $ATTNFORGE_SM90_VARIANT, by head dim, causal mask and key count (the
// H200 A/B runs in bench/results/fwd-sm90-*.md; the rule and its numbers in plan.cpp): the persistent
// pingpong, with the TMA-store epilogue up to 1024 keys at d64/d128; overlap above d128 without a mask
// from 8192 keys. Under a causal mask: at d64 the persistent pingpong up to 1024 keys, above that the
// dynamic tile scheduler; at d128 the TMA-store form up to 1024, the dynamic one below 8192 and the
// one-CTA-per-tile pingpong from 8192; above d128 the dynamic one below 4096 and the one-CTA-per-tile
// pingpong from 4096. Measured at 512-16k keys in powers of two; each threshold sits between two
// measured lengths.
Sm90Schedule default_sm90_schedule(int64_t head_dim, bool causal, int64_t seqlen_k);

// fwd_sm90's schedule from $ATTNFORGE_SM90_VARIANT, read at each plan: unset or empty -> the
// default for the problem; a schedule's name (sm90_schedule_name: "v0", "overlap", "pingpong",
// "overlap-persistent", "pingpong-persistent", "overlap-persistent-tma-store",
// "pingpong-persistent-tma-store", "overlap-dynamic", "pingpong-dynamic") -> that one; anything
// else -> false, *schedule left as it was.
bool sm90_schedule_from_env(int64_t head_dim, bool causal, int64_t seqlen_k, Sm90Schedule* schedule);

// fwd_sm90's measured query rows per tile (plan.cpp): 192 (kSm90WideBlockM, three consumer
// warpgroups) where head_dim compiles to 64, except under a causal mask up to 2k keys; else 128.
int default_sm90_block_m(int64_t head_dim, bool causal, int64_t seqlen_k);
// fwd_sm90's query rows per tile from $ATTNFORGE_SM90_BLOCK_M, read at each plan: unset or empty
// -> default_sm90_block_m; "128" -> 128; "192" -> 192 where head_dim compiles to 64, 128 at the
// other head dims (they have no 192-row form); anything else -> false, *block_m left as it was.
bool sm90_block_m_from_env(int64_t head_dim, bool causal, int64_t seqlen_k, int* block_m);

// Why fwd_sm90 cannot run a prefill problem that would otherwise go to fwd_sm80 (empty: it can).
// Needs neither a GPU nor a driver: the rules are the kernel's (padded or varlen batches, with or
// without seqused_k and leftpad_k, not paged and without kv_batch_idx; head_dim a multiple of 8
// (up to 256, as every CUDA call); causal, windows and softcap, but no ALiBi or forced key splits;
// q/k/v/out as TMA can describe them (sm90_tensors), a grid of at most 65535 heads and 65535
// sequences). block_m: the tile's query rows (the Q box's).
std::string fwd_sm90_refusal(const AttentionProblem& p, int block_m = kSm90BlockM);

// p's window edges as the kernels take them (FlashFwdParams::window_left/right): an edge no query row
// can reach is unbounded (-1): a left one of at least seqlen_k keys (row i of a sequence sees keys
// from i + k_len - q_len - left < k_len - left <= 0), a right one of at least seqlen_q rows (up to
// i + k_len - q_len + right >= k_len - 1); causal makes the right one 0. The same visible keys
// (FlashAttention-2's mha_fwd unbinds both at seqlen_k), the kernels' key bounds stay within 32-bit
// ints for any window, and a window over the whole sequence runs the plain variants. seqlen_q and
// seqlen_k are a varlen call's max_seqlen (what a plan's calls must share).
int64_t window_left_in_effect(const AttentionProblem& p);
int64_t window_right_in_effect(const AttentionProblem& p);

// Whether p needs one of fwd_sm90's extras variants: softcap, or a sliding window's left edge
// (window_left_in_effect >= 0). Causal and a right edge alone are run-time flags of every variant.
bool sm90_extras(const AttentionProblem& p);
// Whether p's mask has a right edge and no left one in effect (causal, or window (-1, right)): its query
// tiles cost unequal work, the later ones more, as under a causal mask; fwd_sm90's defaults
// (default_sm90_schedule, default_sm90_block_m) and the persistent tile order treat it as causal.
// A sliding window's (both edges) tiles cost about the same, (left + right + block_m) / block_n + 2
// key blocks at most; with a left edge alone the first tiles cost the most, an order not worth its
// own tile list (models with sliding windows are causal).
bool sm90_triangular(const AttentionProblem& p);
// The schedule an extras call runs for a wanted one: itself where it has an extras form
// (sm90_has_extras: pingpong, pingpong-persistent), else pingpong-persistent (the default's register
// epilogue and persistent grid; the TMA-store and dynamic forms and overlap have no extras form), but
// for the dynamic form above d128, and at d128 from 8k keys (seqlen_k), the one-CTA-per-tile pingpong (the
// causal default there before the dynamic form took it: bench/results/fwd-sm90-h200-2026-11-30.md, session 5;
// the static persistent form trails it by ~8% at d128 causal 16k, fwd-sm90-schedules-h200-2026-12-01.md).
Sm90Schedule sm90_extras_schedule(Sm90Schedule s, int64_t head_dim, int64_t seqlen_k);

// q, k, v and out as fwd_sm90's tensor maps see them: padded (B, S, H, D) as (batch, rows, heads,
// head_dim) = (B, Sq or Sk, H or Hk, D); varlen (total, H, D) as (1, total_q or total_k, H or Hk,
// D), each sequence's rows found from cu_seqlens by the kernel.
struct Sm90Tensors {
  TileTensor q, k, v, out;
};
Sm90Tensors sm90_tensors(const AttentionProblem& p);

struct Plan {
  Choice choice;
  LoadedVariant loaded;
  unsigned grid[3] = {1, 1, 1};
  int splits = 1;  // key splits per query tile (1: none)
  // decode: the splits of a query tile are one thread-block cluster (dims (splits, 1, 1)) and merge
  // through distributed shared memory; no workspace
  bool cluster = false;
  // fp32 partial results when splits > 1 (decode: then the split counters); fwd_sm90's dynamic
  // forms: their tile counter (4 bytes)
  size_t workspace_bytes = 0;
  size_t counters_offset = 0;  // bytes of partial results; the counters follow
  int pair_group = 1;          // fwd_sm80, fwd_sm90 persistent: (batch, head) pairs per scheduling group
  // decode: CTAs per wave when each CTA prefetches its successor's first K/V blocks into L2
  // (FlashFwdParams::decode_successor), else 0
  int successor = 0;
};

// Whether the decode family may merge key splits in a thread-block cluster (sm_90+): yes unless
// $ATTNFORGE_DECODE_CLUSTER is "0" (read at each plan; for A/B runs against the global merge).
bool decode_cluster_enabled();

// Whether a decode grid of more than one wave may prefetch each CTA's successor into L2
// (Plan::successor): yes unless $ATTNFORGE_DECODE_PREFETCH is "0" (read at each plan; for A/B runs).
bool decode_prefetch_enabled();

// Plan::successor for a decode grid of `ctas` CTAs in `splits` key splits, wave_ctas of which run at once:
// wave_ctas where the grid takes more than one wave and its CTAs' first key rows need no loads to address
// (an unpaged, unpadded cache without varlen, leftpad_k, kv_batch_idx or a left window edge; no splits), else 0.
int decode_successor(const AttentionProblem& p, int64_t ctas, int splits, int wave_ctas);

// The decode family's key splits per query tile and how they merge, for `ctas` query tiles of
// key_blocks key blocks each on sm_count SMs. forced: FlashAttention-2's num_splits when > 0 (1 no
// split, n > 1 exactly n; else $ATTNFORGE_NUM_SPLITS), 0 for the heuristic. max_clusters: clusters
// of n CTAs resident at once (LoadedVariant::max_clusters; all 0 where clusters are off or cannot
// launch). The rule and its measurements are in plan.cpp.
struct DecodeSplits {
  int splits = 1;
  bool cluster = false;  // merged through distributed shared memory in a cluster of `splits` CTAs
};
// ctas_per_sm: CTAs of the variant one SM holds (LoadedVariant::wave_ctas / sm_count); above 1 the
// heuristic takes only clusters of up to 4 CTAs of at most 4 key blocks each.
DecodeSplits decode_splits(int forced, int ctas, int key_blocks, int sm_count,
                           const int (&max_clusters)[kMaxClusterCtas + 1], int ctas_per_sm = 1);

// The decode tile for a grid of `ctas` CTAs on sm_count SMs, from the CTAs of each tile one SM holds
// (per_sm[kind], 0 where the call has no such tile; families.h's DecodeTile). The rule and its measurements
// are in plan.cpp.
DecodeTile decode_grid_tile(int64_t ctas, int sm_count, const int (&per_sm)[3]);

// AF_OK and the kernel that would run p, or the status and reason why the CUDA backend cannot.
af_status choose(const AttentionProblem& p, Choice* choice);
// choose() after the device checks, host only (no driver): the kernel that would run p on a device
// like `info` (sm_count, max_smem_optin, name) whose kernels NVRTC compiles for `target` ("sm_90a",
// "sm_80", "compute_120"), with tensor_maps telling whether the driver can encode TMA maps.
af_status choose_variant(const AttentionProblem& p, const DeviceInfo& info, const std::string& target, bool tensor_maps,
                         Choice* choice);

// fwd_sm90's persistent forms (sm90_persistent(v.schedule)): grid (at most one wave of wave_ctas
// CTAs), tile order (pair_group) and workspace (the dynamic forms' tile counter) into plan. Host
// only (make_plan takes wave_ctas from the loaded kernel's occupancy).
void size_sm90_persistent(const AttentionProblem& p, const Variant& v, int wave_ctas, Plan* plan);

// Compiles or loads the chosen variant and sizes the grid and the key splits.
af_status make_plan(const AttentionProblem& p, const Choice& choice, Plan* plan);

// "decode bf16 d128 sm_90a 16x64 splits=12" (" cluster" after it when the splits merge in a
// thread-block cluster; fwd_sm90: "fwd_sm90 bf16 d128 overlap sm_90a 128x128 ...");
// with Choice::why set, followed by " (why)".
std::string describe(const Plan& plan);
std::string describe(const Choice& choice);

// Launches p with a plan made for its shapes on p.cuda_stream; no host synchronisation. The
// workspace (split keys, fwd_sm90's tile counter) is the caller's (at least plan.workspace_bytes;
// the decode family's split counters and the tile counter in it are zeroed on the stream first),
// or, when workspace is null, attnforge's workspace of that stream (stream_workspace: zeroed once,
// and each launch leaves its counters at zero). Where none can be had, the unsplit launch (the
// dynamic forms: static striding) computes the same result.
af_status run(const Plan& plan, const AttentionProblem& p, void* workspace, size_t workspace_bytes);

}  // namespace af::cuda
