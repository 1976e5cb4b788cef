// The decode family's key splits and their two merges (plan.cpp decode_splits): the global merge's
// counts, the cluster merge's counts where clusters are all resident at once, forced counts, the
// $ATTNFORGE_DECODE_CLUSTER switch and the plan string; and that the cluster instructions are
// compiled for sm_90 only (PTX from NVRTC, no GPU).
#include <climits>
#include <cstdlib>
#include <string>

#include <gtest/gtest.h>

#include "cuda/compiler.h"
#include "cuda/driver_api.h"
#include "cuda/families.h"
#include "cuda/plan.h"

namespace af::cuda {
namespace {

constexpr int kH200Sms = 132;

// Resident clusters of n CTAs for a kernel of one CTA per SM on a 132-SM GPU whose GPCs hold 16 or
// more SMs: 132 / n up to 8 CTAs, and `of16` clusters of 9 to 16 CTAs (one per GPC that fits one).
struct Clusters {
  int n[kMaxClusterCtas + 1] = {};
  explicit Clusters(int of16) {
    for (int c = 2; c <= 8; ++c) n[c] = kH200Sms / c;
    for (int c = 9; c <= kMaxClusterCtas; ++c) n[c] = of16;
  }
};
const int kNone[kMaxClusterCtas + 1] = {};

void expect_splits(DecodeSplits got, int splits, bool cluster, const char* what) {
  EXPECT_EQ(got.splits, splits) << what;
  EXPECT_EQ(got.cluster, cluster) << what;
}

// Query tiles of bf16 32/8 heads d128 Sq 1 (one 16-row tile per KV head, 128-key blocks):
// batch 1 = 8 CTAs, batch 8 = 64.
TEST(DecodeSplits, GlobalMergeKeepsTheV9Rule) {
  expect_splits(decode_splits(0, 8, 8, kH200Sms, kNone), 4, false, "B1 1k");
  expect_splits(decode_splits(0, 8, 32, kH200Sms, kNone), 16, false, "B1 4k");
  expect_splits(decode_splits(0, 64, 8, kH200Sms, kNone), 2, false, "B8 1k");
  expect_splits(decode_splits(0, 66, 256, kH200Sms, kNone), 1, false, "half the SMs busy: no split");
  expect_splits(decode_splits(0, 8, 1, kH200Sms, kNone), 1, false, "one key block");
}

TEST(DecodeSplits, ClusterMergeSplitsDownToOneBlock) {
  const Clusters h200(8);
  expect_splits(decode_splits(0, 8, 8, kH200Sms, h200.n), 8, true, "B1 1k: 8 splits of 128 keys");
  expect_splits(decode_splits(0, 8, 32, kH200Sms, h200.n), 16, true, "B1 4k with 8 resident 16-CTA clusters");
  expect_splits(decode_splits(0, 64, 8, kH200Sms, h200.n), 2, true, "B8 1k");
  expect_splits(decode_splits(0, 64, 256, kH200Sms, h200.n), 2, true, "B8 32k");
  expect_splits(decode_splits(0, 8, 2, kH200Sms, h200.n), 2, true, "B1 256 keys");
  expect_splits(decode_splits(0, 66, 256, kH200Sms, h200.n), 1, false, "half the SMs busy: no split");
  expect_splits(decode_splits(0, 8, 1, kH200Sms, h200.n), 1, false, "one key block");
}

TEST(DecodeSplits, TilesSharingAnSmMergeInSmallClustersOnlyWhileLatencyBound) {
  // d64 (two CTAs per SM): 16/16 heads, B1 = 16 CTAs; 1k keys = 8 blocks, 2k 16, 4k 32.
  const Clusters h200(8);
  expect_splits(decode_splits(0, 16, 8, kH200Sms, h200.n, 2), 4, true, "d64 B1 1k: 4 CTAs of 2 blocks");
  expect_splits(decode_splits(0, 16, 16, kH200Sms, h200.n, 2), 4, true, "d64 B1 2k: 4 CTAs of 4 blocks");
  expect_splits(decode_splits(0, 16, 3, kH200Sms, h200.n, 2), 3, true, "d64 B1 384 keys: 3 CTAs of 1 block");
  expect_splits(decode_splits(0, 16, 32, kH200Sms, h200.n, 2), 8, false, "d64 B1 4k: 8 blocks in 4 CTAs, global");
  expect_splits(decode_splits(0, 16, 8, kH200Sms, kNone, 2), 4, false, "d64 B1 1k, clusters off: global");
  // Batch 2-4 at 1k keys (32, 48, 64 CTAs): clusters only while their CTAs fill at most 3/4 of the SMs.
  expect_splits(decode_splits(0, 32, 8, kH200Sms, h200.n, 2), 3, true, "d64 B2 1k: 96 CTAs, not 128");
  expect_splits(decode_splits(0, 48, 8, kH200Sms, h200.n, 2), 2, true, "d64 B3 1k: 96 CTAs");
  expect_splits(decode_splits(0, 64, 8, kH200Sms, h200.n, 2), 2, false, "d64 B4 1k: 128 CTAs, global");
  expect_splits(decode_splits(0, 32, 16, kH200Sms, h200.n, 2), 4, false,
                "d64 B2 2k: clusters of 3 would read 6 blocks each: the global 4");
  expect_splits(decode_splits(3, 16, 32, kH200Sms, h200.n, 2), 3, true, "a forced count still merges in a cluster");
}

TEST(DecodeSplits, ShortSharesMergeInClustersLongOnesGlobally) {
  // Only 7 clusters of 16 resident for 8 query tiles: 8-CTA clusters fill 64 SMs, the global merge 128.
  // At 4 key blocks per CTA the step is latency-bound and the clusters win; at 16 the global merge.
  const Clusters seven(7);
  expect_splits(decode_splits(0, 8, 32, kH200Sms, seven.n), 8, true, "B1 4k, 7 resident 16-CTA clusters");
  expect_splits(decode_splits(0, 8, 128, kH200Sms, seven.n), 16, false, "B1 16k, 7 resident 16-CTA clusters");
  // Clusters of 9 resident for all 8 tiles but none larger: 9 CTAs on 16 blocks read 2 blocks each
  // at most, as 8 do, so 8.
  Clusters nine(0);
  nine.n[9] = 8;
  expect_splits(decode_splits(0, 8, 16, kH200Sms, nine.n), 8, true, "B1 2k, 9-CTA clusters resident");
}

TEST(DecodeSplits, GlobalMergeWhereClustersCannotFillTheSms) {
  // 64 tiles need 64 resident 2-CTA clusters; with 60 none of the cluster counts is one wave.
  Clusters tight(8);
  for (int c = 2; c <= kMaxClusterCtas; ++c) tight.n[c] = 60 / c;
  expect_splits(decode_splits(0, 64, 8, kH200Sms, tight.n), 2, false, "B8 1k, 60 SMs of clusters");
}

TEST(DecodeSplits, ForcedCountsKeepFlashAttentionSemantics) {
  const Clusters h200(8), no16(0);
  expect_splits(decode_splits(1, 8, 32, kH200Sms, h200.n), 1, false, "num_splits=1: none");
  expect_splits(decode_splits(7, 8, 32, kH200Sms, h200.n), 7, true, "7 in a cluster");
  expect_splits(decode_splits(7, 100, 32, kH200Sms, h200.n), 7, true, "forced even past half the SMs");
  expect_splits(decode_splits(16, 8, 32, kH200Sms, h200.n), 16, true, "16 where 16-CTA clusters launch");
  expect_splits(decode_splits(16, 8, 32, kH200Sms, no16.n), 16, false, "16 where they do not: global");
  expect_splits(decode_splits(17, 8, 32, kH200Sms, h200.n), 17, false, "above the cluster limit: global");
  expect_splits(decode_splits(5, 8, 32, kH200Sms, kNone), 5, false, "clusters off: global");
}

TEST(DecodeSplits, EnvironmentTurnsTheClusterMergeOff) {
  const char* saved = std::getenv("ATTNFORGE_DECODE_CLUSTER");
  const std::string kept = saved != nullptr ? saved : "";
  unsetenv("ATTNFORGE_DECODE_CLUSTER");
  EXPECT_TRUE(decode_cluster_enabled());
  setenv("ATTNFORGE_DECODE_CLUSTER", "0", 1);
  EXPECT_FALSE(decode_cluster_enabled());
  setenv("ATTNFORGE_DECODE_CLUSTER", "1", 1);
  EXPECT_TRUE(decode_cluster_enabled());
  if (saved != nullptr)
    setenv("ATTNFORGE_DECODE_CLUSTER", kept.c_str(), 1);
  else
    unsetenv("ATTNFORGE_DECODE_CLUSTER");
}

TEST(DecodeSplits, PlanStringNamesTheMerge) {
  Plan plan;
  plan.choice.variant = find_variant(kFamilyDecode, AF_DTYPE_BFLOAT16, 128, false);
  plan.choice.target = "sm_90a";
  plan.choice.arch = 90;
  plan.splits = 8;
  plan.cluster = true;
  EXPECT_EQ(describe(plan), "decode bf16 d128 sm_90a 16x128 splits=8 cluster");
  plan.cluster = false;
  EXPECT_EQ(describe(plan), "decode bf16 d128 sm_90a 16x128 splits=8");
}

// Wide-grid decode tiles (plan.cpp decode_grid_tile) on 132 SMs, d128 on the 227 KB class: the default tile
// one CTA per SM, the 3-block ring two, the 2-block ring three. Batches x 8 KV heads, one 16-row tile each.
TEST(DecodeGridTile, FewestIdleSlotsInTheLastWave) {
  const int d128[3] = {1, 2, 3}, d64[3] = {2, 4, 0}, d64_long[3] = {2, 0, 0};
  for (DecodeTile kind : {kDecodeTileDefault, kDecodeTileWide, kDecodeTileWide2Stage}) {  // the variants' own counts
    const int v128 = find_variant(kFamilyDecode, AF_DTYPE_BFLOAT16, 128, false, kSm90V0, kSm90BlockM, kind);
    const int v64 = find_variant(kFamilyDecode, AF_DTYPE_BFLOAT16, 64, false, kSm90V0, kSm90BlockM, kind);
    EXPECT_EQ(v128 >= 0 ? variants()[v128].ctas_per_sm(90) : 0, d128[kind]) << kind;
    EXPECT_EQ(v64 >= 0 ? variants()[v64].ctas_per_sm(90) : 0, d64[kind]) << kind;
  }
  EXPECT_EQ(decode_grid_tile(17 * 8, 0, d128), kDecodeTileDefault) << "no SM count: the default tile";
  EXPECT_EQ(decode_grid_tile(16 * 8, kH200Sms, d128), kDecodeTileDefault) << "B16: one wave of the default tile";
  EXPECT_EQ(decode_grid_tile(24 * 8, kH200Sms, d128), kDecodeTileWide2Stage) << "B24: one wave of either";
  EXPECT_EQ(decode_grid_tile(32 * 8, kH200Sms, d128), kDecodeTileWide2Stage) << "B32";
  EXPECT_EQ(decode_grid_tile(48 * 8, kH200Sms, d128), kDecodeTileWide2Stage) << "B48: 1.45 waves of the 3-block ring";
  EXPECT_EQ(decode_grid_tile(64 * 8, kH200Sms, d128), kDecodeTileWide) << "B64: 1.29 waves of the 2-block ring";
  EXPECT_EQ(decode_grid_tile(96 * 8, kH200Sms, d128), kDecodeTileWide2Stage) << "B96: 1.94 waves against 2.91";
  EXPECT_EQ(decode_grid_tile(128 * 8, kH200Sms, d128), kDecodeTileWide) << "B128: 2.59 waves against 3.88";
  EXPECT_EQ(decode_grid_tile(32 * 16, kH200Sms, d64), kDecodeTileWide) << "d64 B32 x 16 KV heads, caches <= 2k";
  EXPECT_EQ(decode_grid_tile(32 * 16, kH200Sms, d64_long), kDecodeTileDefault) << "d64 from 4k keys";
  EXPECT_EQ(decode_grid_tile(16 * 16, kH200Sms, d64_long), kDecodeTileDefault) << "d64 B16 x 4k: one wave";
  EXPECT_EQ(decode_grid_tile(8 * 16, kH200Sms, d64), kDecodeTileDefault) << "d64 B8: one wave of the default tile";
}

// A decode step, bf16: q (B, 1, H, D) against (B, S, Hk, D) caches, contiguous.
AttentionProblem decode_step(int64_t batch, int64_t keys, int64_t heads, int64_t heads_kv, int64_t head_dim) {
  AttentionProblem p;
  p.dtype = AF_DTYPE_BFLOAT16;
  p.device_type = AF_DEVICE_CUDA;
  p.batch = batch, p.seqlen_q = 1, p.seqlen_k = keys, p.heads_q = heads, p.heads_kv = heads_kv, p.head_dim = head_dim;
  p.total_q = batch, p.total_k = batch * keys;
  p.q_head_stride = head_dim, p.q_row_stride = heads * head_dim, p.q_batch_stride = p.q_row_stride;
  p.k_head_stride = head_dim, p.k_row_stride = heads_kv * head_dim, p.k_batch_stride = keys * p.k_row_stride;
  p.v_head_stride = p.k_head_stride, p.v_row_stride = p.k_row_stride, p.v_batch_stride = p.k_batch_stride;
  p.out_head_stride = p.q_head_stride, p.out_row_stride = p.q_row_stride, p.out_batch_stride = p.q_batch_stride;
  return p;
}

// The tile the plan takes for a decode step on a 132-SM device of the given target, as describe() names it.
std::string planned_tile(const AttentionProblem& p, const char* target = "sm_90a") {
  DeviceInfo info;
  info.name = "132-SM host test";
  info.major = target[3] - '0', info.minor = 0;
  info.sm_count = kH200Sms;
  info.max_smem_optin = std::string(target) == "sm_90a" ? 227 * 1024 : 163 * 1024;
  Choice choice;
  if (choose_variant(p, info, target, true, &choice) != AF_OK)
    return std::string("refused: ") + af_last_error_message();
  return describe(Choice{choice.variant, choice.target, choice.arch, ""});
}

// choose_variant on the real variants: the default tile up to one wave of it, then the wide-grid tile the rule
// picks (decode_grid_tile); d64 only up to 2k keys and without extras; none on the 163 KB class.
TEST(DecodeGridTile, PlansTheRealVariants) {
  EXPECT_EQ(planned_tile(decode_step(16, 4096, 32, 8, 128)), "decode bf16 d128 sm_90a 16x128");
  EXPECT_EQ(planned_tile(decode_step(17, 4096, 32, 8, 128)), "decode bf16 d128 wide-grid 2-stage sm_90a 16x64");
  EXPECT_EQ(planned_tile(decode_step(66, 4096, 32, 8, 128)), "decode bf16 d128 wide-grid sm_90a 16x64");
  EXPECT_EQ(planned_tile(decode_step(128, 4096, 32, 8, 128)), "decode bf16 d128 wide-grid sm_90a 16x64");
  EXPECT_EQ(planned_tile(decode_step(17, 1024, 16, 16, 64)), "decode bf16 d64 wide-grid sm_90a 16x64");
  EXPECT_EQ(planned_tile(decode_step(17, 4096, 16, 16, 64)), "decode bf16 d64 sm_90a 16x128");
  AttentionProblem softcapped = decode_step(17, 1024, 16, 16, 64);
  softcapped.softcap = 30.f;
  EXPECT_EQ(planned_tile(softcapped), "decode bf16 d64 extras sm_90a 16x128");
  EXPECT_EQ(planned_tile(decode_step(128, 4096, 32, 8, 128), "sm_80"), "decode bf16 d128 sm_80 16x64");
}

// The successor prefetch (plan.cpp decode_successor): grids past one wave whose first key rows need no loads to
// address; nothing for one wave, key splits, paged, varlen, leftpad_k, kv_batch_idx, a left window edge or
// $ATTNFORGE_DECODE_PREFETCH=0. The plan string says "prefetch".
TEST(DecodeSuccessor, OnlyGridsPastOneWaveOfRowZeroCaches) {
  const char* saved = std::getenv("ATTNFORGE_DECODE_PREFETCH");
  const std::string kept = saved != nullptr ? saved : "";
  unsetenv("ATTNFORGE_DECODE_PREFETCH");
  const AttentionProblem step = decode_step(64, 1024, 32, 8, 128);
  const int wave = 2 * kH200Sms;  // the 3-block wide-grid tile
  EXPECT_EQ(decode_successor(step, 512, 1, wave), wave) << "B64: 1.94 waves";
  EXPECT_EQ(decode_successor(step, wave, 1, wave), 0) << "one wave";
  EXPECT_EQ(decode_successor(step, 512, 2, wave), 0) << "key splits";
  EXPECT_EQ(decode_successor(step, 512, 1, 0), 0) << "no occupancy";
  EXPECT_EQ(decode_successor(step, int64_t(INT_MAX) - 10, 1, wave), 0) << "linear index + wave past 32 bits";
  const int32_t lengths[1] = {0};
  AttentionProblem p = step;
  p.seqused_k = lengths;  // flash_attn_with_kvcache's cache_seqlens: lengths only, rows still from 0
  EXPECT_EQ(decode_successor(p, 512, 1, wave), wave) << "seqused_k";
  p = step, p.paged = true;
  EXPECT_EQ(decode_successor(p, 512, 1, wave), 0) << "paged";
  p = step, p.varlen = true;
  EXPECT_EQ(decode_successor(p, 512, 1, wave), 0) << "varlen";
  p = step, p.leftpad_k = lengths;
  EXPECT_EQ(decode_successor(p, 512, 1, wave), 0) << "leftpad_k";
  p = step, p.kv_batch_idx = lengths;
  EXPECT_EQ(decode_successor(p, 512, 1, wave), 0) << "kv_batch_idx";
  p = step, p.window_left = 100;
  EXPECT_EQ(decode_successor(p, 512, 1, wave), 0) << "a left window edge";
  setenv("ATTNFORGE_DECODE_PREFETCH", "0", 1);
  EXPECT_EQ(decode_successor(step, 512, 1, wave), 0) << "$ATTNFORGE_DECODE_PREFETCH=0";
  if (saved != nullptr)
    setenv("ATTNFORGE_DECODE_PREFETCH", kept.c_str(), 1);
  else
    unsetenv("ATTNFORGE_DECODE_PREFETCH");

  Plan plan;
  plan.choice.variant = find_variant(kFamilyDecode, AF_DTYPE_BFLOAT16, 128, false);
  plan.choice.target = "sm_90a";
  plan.choice.arch = 90;
  plan.successor = wave;
  EXPECT_EQ(describe(plan), "decode bf16 d128 sm_90a 16x128 splits=1 prefetch");
}

// The cluster merge's PTX (barriers, mapa, distributed shared-memory loads) is in the sm_90 decode
// module and not in the sm_80 one, which must not need clusters.
TEST(DecodeCluster, ClusterInstructionsOnlyForSm90) {
  if (!nvrtc().ok) GTEST_SKIP() << "NVRTC not found: " << nvrtc().failure;
  const Variant& v = variants()[find_variant(kFamilyDecode, AF_DTYPE_BFLOAT16, 128, false)];
  for (const char* target : {"compute_90", "compute_80"}) {
    CompiledKernel compiled;
    ASSERT_EQ(compile_variant(v, target, false, &compiled), AF_OK) << target;
    ASSERT_FALSE(compiled.is_cubin) << target;
    const std::string ptx(compiled.binary.data());
    const bool sm90 = std::string(target) == "compute_90";
    for (const char* instruction : {"barrier.cluster.arrive.release", "barrier.cluster.wait.acquire",
                                    "mapa.shared::cluster", "ld.shared::cluster", "%cluster_nctarank"})
      EXPECT_EQ(ptx.find(instruction) != std::string::npos, sm90) << target << ": " << instruction;
  }
}

}  // namespace
}  // namespace af::cuda
