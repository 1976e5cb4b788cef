// fwd_sm90 routing and TMA tensor-map checks, host only (no GPU, no driver): which prefill calls the
// Hopper family takes and, for the rest, the reason the plan gives when it sends them to fwd_sm80.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <string>
#include <tuple>
#include <vector>

#include <gtest/gtest.h>

#include "cuda/driver_api.h"
#include "cuda/families.h"
#include "cuda/plan.h"
#include "cuda/tensor_map.h"

namespace af::cuda {
namespace {

// A contiguous padded bf16 (B, S, H, D) prefill call: batch 2, 1000 query rows, 1000 keys, 32/8
// heads, head_dim 128.
AttentionProblem prefill(int64_t head_dim = 128) {
  AttentionProblem p;
  p.dtype = AF_DTYPE_BFLOAT16;
  p.device_type = AF_DEVICE_CUDA;
  p.batch = 2, p.seqlen_q = 1000, p.seqlen_k = 1000, p.heads_q = 32, p.heads_kv = 8, p.head_dim = head_dim;
  p.total_q = p.batch * p.seqlen_q, p.total_k = p.batch * p.seqlen_k;
  p.q_head_stride = head_dim, p.q_row_stride = p.heads_q * head_dim, p.q_batch_stride = p.seqlen_q * p.q_row_stride;
  p.k_head_stride = head_dim, p.k_row_stride = p.heads_kv * head_dim, p.k_batch_stride = p.seqlen_k * p.k_row_stride;
  p.v_head_stride = p.k_head_stride, p.v_row_stride = p.k_row_stride, p.v_batch_stride = p.k_batch_stride;
  p.out_head_stride = p.q_head_stride, p.out_row_stride = p.q_row_stride, p.out_batch_stride = p.q_batch_stride;
  return p;
}

void expect_refused(const AttentionProblem& p, const std::string& words) {
  const std::string why = fwd_sm90_refusal(p);
  EXPECT_NE(why.find(words), std::string::npos) << "expected a refusal naming '" << words << "', got '" << why << "'";
}

TEST(FwdSm90Routing, TakesPaddedCausalAndGqaCallsOfEveryHeadDimOnTheGrid) {
  for (int64_t d : {8, 64, 72, 128, 192, 256}) {
    AttentionProblem p = prefill(d);
    EXPECT_EQ(fwd_sm90_refusal(p), "") << "head_dim " << d;
    p.causal = true, p.window_right = 0;
    EXPECT_EQ(fwd_sm90_refusal(p), "") << "causal head_dim " << d;
  }
  AttentionProblem fp16 = prefill();
  fp16.dtype = AF_DTYPE_FLOAT16;
  EXPECT_EQ(fwd_sm90_refusal(fp16), "");
  // A (B, H, S, D) tensor transposed to (B, S, H, D): head stride above the row stride.
  AttentionProblem transposed = prefill();
  transposed.q_row_stride = 128, transposed.q_head_stride = 1000 * 128;
  EXPECT_EQ(fwd_sm90_refusal(transposed), "");
  // Size-1 dimensions may carry any stride (torch gives them arbitrary ones).
  AttentionProblem one = prefill();
  one.batch = 1, one.q_batch_stride = 0, one.k_batch_stride = 8;
  EXPECT_EQ(fwd_sm90_refusal(one), "");
}

// The same call packed: varlen (total, H, D) q/k/v/out with cu_seqlens (batch strides 0), sequences
// of 1000 and 24 query rows, 700 and 300 keys, max_seqlen 1000.
AttentionProblem varlen_prefill(int64_t head_dim = 128) {
  static const int32_t cu_q[3] = {0, 1000, 1024}, cu_k[3] = {0, 700, 1000};
  AttentionProblem p = prefill(head_dim);
  p.varlen = true, p.cu_seqlens_q = cu_q, p.cu_seqlens_k = cu_k;
  p.total_q = 1024, p.total_k = 1000;
  p.q_batch_stride = p.k_batch_stride = p.v_batch_stride = p.out_batch_stride = 0;
  return p;
}

TEST(FwdSm90Routing, TakesVarlenSequsedAndLeftpadCalls) {
  static const int32_t used[2] = {900, 17}, pad[2] = {3, 17};  // pad == used: an empty key range
  for (int64_t d : {64, 128, 256}) {
    AttentionProblem p = prefill(d);
    p.seqused_k = used;
    EXPECT_EQ(fwd_sm90_refusal(p), "") << "seqused_k, head_dim " << d;
    p.leftpad_k = pad, p.causal = true, p.window_right = 0;
    EXPECT_EQ(fwd_sm90_refusal(p), "") << "seqused_k + leftpad_k, causal, head_dim " << d;
    p = varlen_prefill(d);
    EXPECT_EQ(fwd_sm90_refusal(p), "") << "varlen, head_dim " << d;
    p.seqused_k = used, p.causal = true, p.window_right = 0;
    EXPECT_EQ(fwd_sm90_refusal(p), "") << "varlen + seqused_k, causal, head_dim " << d;
  }
  // Windows and softcap with these too; what stays refused stays refused with them.
  AttentionProblem p = varlen_prefill();
  p.softcap = 30.f;
  EXPECT_EQ(fwd_sm90_refusal(p), "");
  p = varlen_prefill(), p.window_left = 64, p.seqused_k = used;
  EXPECT_EQ(fwd_sm90_refusal(p), "");
  const float slopes[32] = {};
  p = varlen_prefill(), p.alibi_slopes = slopes, p.window_left = 64;
  expect_refused(p, "ALiBi");
  p = varlen_prefill(), p.paged = true;
  expect_refused(p, "paged");
  p = prefill(), p.seqused_k = used;
  const int32_t index[2] = {1, 0};
  p.kv_batch_idx = index;
  expect_refused(p, "kv_batch_idx");
  // The maps of a varlen call hold the packed rows: an empty k (every key range empty) has none.
  p = varlen_prefill(), p.total_k = 0;
  expect_refused(p, "fwd_sm90: k: TMA needs rows in 1..2^32 (got 0)");
  p = varlen_prefill(), p.out_row_stride = 4;
  expect_refused(p, "fwd_sm90: out: TMA needs the row stride");
}

TEST(FwdSm90Routing, MapsSeePaddedBatchesAsTheyAreAndVarlenAsOneBatchOfPackedRows) {
  const AttentionProblem padded = prefill();
  const Sm90Tensors a = sm90_tensors(padded);
  EXPECT_EQ(a.q.batch, 2);
  EXPECT_EQ(a.q.rows, 1000);
  EXPECT_EQ(a.q.heads, 32);
  EXPECT_EQ(a.q.batch_stride, padded.q_batch_stride);
  EXPECT_EQ(a.k.rows, 1000);
  EXPECT_EQ(a.k.heads, 8);
  EXPECT_EQ(a.v.row_stride, padded.v_row_stride);
  EXPECT_EQ(a.out.head_stride, padded.out_head_stride);
  const AttentionProblem packed = varlen_prefill();
  const Sm90Tensors b = sm90_tensors(packed);
  for (const TileTensor* t : {&b.q, &b.k, &b.v, &b.out}) EXPECT_EQ(t->batch, 1);
  EXPECT_EQ(b.q.rows, 1024);
  EXPECT_EQ(b.out.rows, 1024);
  EXPECT_EQ(b.k.rows, 1000);
  EXPECT_EQ(b.v.rows, 1000);
  EXPECT_EQ(b.q.row_stride, packed.q_row_stride);
  EXPECT_EQ(b.k.head_stride, packed.k_head_stride);
}

TEST(FwdSm90Routing, SendsWhatItDoesNotTakeToSm80WithTheReason) {
  AttentionProblem p = prefill(96 + 4);
  expect_refused(p, "head_dim a multiple of 8");
  p = prefill(), p.dtype = AF_DTYPE_FLOAT32;
  expect_refused(p, "bfloat16 and float16");
  p = prefill(), p.paged = true;
  expect_refused(p, "paged");
  int32_t index[2] = {0, 1};
  p = prefill(), p.kv_batch_idx = index;
  expect_refused(p, "kv_batch_idx");
  const float slopes[32] = {};
  p = prefill(), p.alibi_slopes = slopes;
  expect_refused(p, "ALiBi");
  p = prefill(), p.alibi_slopes = slopes, p.softcap = 30.f, p.causal = true, p.window_right = 0;
  expect_refused(p, "ALiBi");
  p = prefill(), p.num_splits = 3;
  expect_refused(p, "num_splits");
  p = prefill(), p.seqlen_k = 0;
  expect_refused(p, "at least one key");
  p = prefill(), p.heads_q = 65536 * 8, p.heads_kv = 8;
  expect_refused(p, "65535 heads");
  // TMA: strides of 8 elements (16 bytes) are the finest; an expanded (stride 0) k is not describable.
  p = prefill(), p.k_batch_stride = 0;
  expect_refused(p, "fwd_sm90: k: TMA needs the batch stride positive");
  p = prefill(), p.v_row_stride = 4;
  expect_refused(p, "fwd_sm90: v: TMA needs the row stride");
  p = prefill(), p.q_head_stride = (int64_t(1) << 39) + 8;
  expect_refused(p, "fwd_sm90: q: TMA needs the head stride");
  // out is stored through a tensor map by the TMA-store forms: the same rules, named "out".
  p = prefill(), p.out_row_stride = 4;
  expect_refused(p, "fwd_sm90: out: TMA needs the row stride");
  p = prefill(), p.out_batch_stride = -p.out_batch_stride;
  expect_refused(p, "fwd_sm90: out: TMA needs the batch stride positive");
}

TEST(FwdSm90Routing, IsOnUnlessTheEnvironmentSaysZero) {
  const char* saved = std::getenv("ATTNFORGE_FWD_SM90");
  const std::string before = saved != nullptr ? saved : "";
  unsetenv("ATTNFORGE_FWD_SM90");
  EXPECT_TRUE(fwd_sm90_enabled());
  setenv("ATTNFORGE_FWD_SM90", "0", 1);
  EXPECT_FALSE(fwd_sm90_enabled());
  setenv("ATTNFORGE_FWD_SM90", "00", 1);
  EXPECT_TRUE(fwd_sm90_enabled());
  setenv("ATTNFORGE_FWD_SM90", "1", 1);
  EXPECT_TRUE(fwd_sm90_enabled());
  if (saved != nullptr)
    setenv("ATTNFORGE_FWD_SM90", before.c_str(), 1);
  else
    unsetenv("ATTNFORGE_FWD_SM90");
}

// Sets an environment variable for one scope, restoring its value (or its absence) after.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    const char* saved = std::getenv(name);
    had_ = saved != nullptr;
    if (had_) saved_ = saved;
    if (value != nullptr)
      setenv(name, value, 1);
    else
      unsetenv(name);
  }
  ~ScopedEnv() {
    if (had_)
      setenv(name_, saved_.c_str(), 1);
    else
      unsetenv(name_);
  }

 private:
  const char* name_;
  bool had_ = false;
  std::string saved_;
};

TEST(FwdSm90Schedule, ReadsTheVariantFromTheEnvironmentAndRefusesUnknownNames) {
  Sm90Schedule s = kSm90Overlap;
  {
    ScopedEnv env("ATTNFORGE_SM90_VARIANT", nullptr);
    const struct {
      int64_t head_dim;
      bool causal;
      int64_t seqlen_k;
      Sm90Schedule expected;
    } defaults[] = {{128, false, 512, kSm90PingPongPersistentTmaStore},
                    {128, true, 1024, kSm90PingPongPersistentTmaStore},
                    {128, false, 2048, kSm90PingPongPersistent},
                    {128, false, 16384, kSm90PingPongPersistent},
                    {128, true, 2048, kSm90PingPongDynamic},
                    {128, true, 4096, kSm90PingPongDynamic},
                    {128, true, 8192, kSm90PingPongDynamic},
                    {128, true, 16384, kSm90PingPongDynamic},
                    {64, true, 1024, kSm90PingPongPersistent},
                    {64, false, 1024, kSm90PingPongPersistentTmaStore},
                    {64, true, 2048, kSm90PingPongDynamic},
                    {64, true, 4096, kSm90PingPongDynamic},
                    {64, true, 16384, kSm90PingPongDynamic},
                    {256, false, 1024, kSm90PingPongPersistent},
                    {256, true, 512, kSm90PingPongDynamic},
                    {256, true, 2048, kSm90PingPongDynamic},
                    {256, true, 4096, kSm90PingPong},
                    {256, false, 8192, kSm90Overlap},
                    {192, false, 4096, kSm90PingPongPersistent}};  // d192: the d256 variant
    for (const auto& d : defaults) {
      EXPECT_TRUE(sm90_schedule_from_env(d.head_dim, d.causal, d.seqlen_k, &s));
      EXPECT_EQ(s, d.expected) << "unset: the measured default for d" << d.head_dim << (d.causal ? " causal " : " ")
                               << d.seqlen_k << " keys";
    }
  }
  const struct {
    const char* value;
    Sm90Schedule expected;
  } named[] = {{"", kSm90PingPongPersistent},
               {"overlap", kSm90Overlap},
               {"pingpong", kSm90PingPong},
               {"v0", kSm90V0},
               {"overlap-persistent", kSm90OverlapPersistent},
               {"pingpong-persistent", kSm90PingPongPersistent},
               {"overlap-persistent-tma-store", kSm90OverlapPersistentTmaStore},
               {"pingpong-persistent-tma-store", kSm90PingPongPersistentTmaStore},
               {"overlap-dynamic", kSm90OverlapDynamic},
               {"pingpong-dynamic", kSm90PingPongDynamic}};
  for (const auto& n : named) {
    ScopedEnv env("ATTNFORGE_SM90_VARIANT", n.value);
    s = kSm90Overlap;
    EXPECT_TRUE(sm90_schedule_from_env(128, false, 4096, &s)) << "'" << n.value << "'";
    EXPECT_EQ(s, n.expected) << "'" << n.value << "'";
  }
  for (const char* bad : {"Overlap", "overlap ", "ping-pong", "1", "persistent", "v0-persistent", "pingpong_persistent",
                          "dynamic", "pingpong-persistent-dynamic"}) {
    ScopedEnv env("ATTNFORGE_SM90_VARIANT", bad);
    s = kSm90Overlap;
    EXPECT_FALSE(sm90_schedule_from_env(128, false, 4096, &s)) << bad;
    EXPECT_EQ(s, kSm90Overlap) << "'" << bad << "' must leave the schedule as it was";
  }
}

// Every schedule but v0: its name, main loop (AF_SM90_SCHEDULE) and forms.
const struct {
  Sm90Schedule schedule;
  const char* name;
  int main_loop;
  bool persistent, tma_store, dynamic;
} kScheduleForms[] = {
    {kSm90Overlap, "overlap", 1, false, false, false},
    {kSm90PingPong, "pingpong", 2, false, false, false},
    {kSm90OverlapPersistent, "overlap-persistent", 1, true, false, false},
    {kSm90PingPongPersistent, "pingpong-persistent", 2, true, false, false},
    {kSm90OverlapPersistentTmaStore, "overlap-persistent-tma-store", 1, true, true, false},
    {kSm90PingPongPersistentTmaStore, "pingpong-persistent-tma-store", 2, true, true, false},
    {kSm90OverlapDynamic, "overlap-dynamic", 1, true, false, true},
    {kSm90PingPongDynamic, "pingpong-dynamic", 2, true, false, true},
};

TEST(FwdSm90Schedule, EachScheduleIsItsOwnModuleWithTheSameTileAndDescribeNamesIt) {
  ASSERT_EQ(sizeof kScheduleForms / sizeof kScheduleForms[0], size_t(kSm90Schedules - 1));
  for (af_dtype dtype : {AF_DTYPE_BFLOAT16, AF_DTYPE_FLOAT16})
    for (int d : {64, 128, 256})
      for (const auto& e : kScheduleForms) {
        const int v0 = find_variant(kFamilyFwdSm90, dtype, d, false, kSm90V0);
        const int other = find_variant(kFamilyFwdSm90, dtype, d, false, e.schedule);
        ASSERT_GE(v0, 0);
        ASSERT_GE(other, 0);
        ASSERT_NE(v0, other);
        const Variant& a = variants()[v0];
        const Variant& b = variants()[other];
        EXPECT_EQ(a.schedule, kSm90V0);
        EXPECT_EQ(b.schedule, e.schedule);
        EXPECT_EQ(b.name, a.name + "_" + e.name);
        EXPECT_EQ(sm90_schedule_name(e.schedule), std::string(e.name));
        // The TMA-store forms stage O in a tile of their own up to d128, in Q's at d256; the persistent
        // forms take a second Q tile up to d128 (d256's 192 KB leave no room).
        const int o_tile = e.tma_store && d <= 128 ? 128 * d * 2 : 0;
        const int q_buffers = e.persistent && d <= 128 ? 2 : 1;
        EXPECT_EQ(b.tile_for(90).q_buffers, q_buffers) << b.name;
        EXPECT_EQ(a.tile_for(90).q_buffers, 1) << a.name;
        EXPECT_EQ(b.smem_bytes(90), a.smem_bytes(90) + o_tile + (q_buffers - 1) * 128 * d * 2) << b.name;
        EXPECT_LE(b.smem_bytes(90), 227 * 1024) << b.name;
        EXPECT_EQ(a.tile_for(90).block_n, b.tile_for(90).block_n);
        // The options are part of the kernel cache key: they must differ, in the main-loop macro
        // and the persistent, TMA-store, dynamic and deferred-max ones only.
        const std::vector<std::string> oa = compile_options(a, "sm_90a", 13, 0),
                                       ob = compile_options(b, "sm_90a", 13, 0);
        ASSERT_EQ(oa.size(), ob.size());
        std::vector<std::string> differing;
        for (size_t i = 0; i < oa.size(); ++i)
          if (oa[i] != ob[i]) differing.push_back(oa[i] + " -> " + ob[i]);
        std::vector<std::string> expected = {"-DAF_SM90_SCHEDULE=0 -> -DAF_SM90_SCHEDULE=" +
                                             std::to_string(e.main_loop)};
        if (e.persistent) expected.push_back("-DAF_SM90_PERSISTENT=0 -> -DAF_SM90_PERSISTENT=1");
        if (e.tma_store) expected.push_back("-DAF_SM90_TMA_STORE=0 -> -DAF_SM90_TMA_STORE=1");
        if (e.dynamic) expected.push_back("-DAF_SM90_DYNAMIC=0 -> -DAF_SM90_DYNAMIC=1");
        if (q_buffers == 2) expected.push_back("-DAF_Q_BUFFERS=1 -> -DAF_Q_BUFFERS=2");
        // v0 has no deferred block max; the others where sm90_deferred_max puts it.
        EXPECT_FALSE(a.tile_for(90).deferred_max) << a.name;
        if (b.tile_for(90).deferred_max) expected.push_back("-DAF_DEFERRED_MAX=0 -> -DAF_DEFERRED_MAX=1");
        EXPECT_EQ(sm90_persistent(e.schedule), e.persistent) << b.name;
        EXPECT_EQ(sm90_tma_store(e.schedule), e.tma_store) << b.name;
        EXPECT_EQ(sm90_dynamic(e.schedule), e.dynamic) << b.name;
        EXPECT_EQ(int(sm90_main_loop(e.schedule)), e.main_loop) << b.name;
        EXPECT_EQ(differing, expected) << b.name;
      }
  Choice choice;
  choice.variant = find_variant(kFamilyFwdSm90, AF_DTYPE_BFLOAT16, 128, false, kSm90Overlap);
  choice.target = "sm_90a";
  choice.arch = 90;
  EXPECT_EQ(describe(choice), "fwd_sm90 bf16 d128 overlap sm_90a 128x128");
  choice.variant = find_variant(kFamilyFwdSm90, AF_DTYPE_FLOAT16, 256, false, kSm90V0);
  EXPECT_EQ(describe(choice), "fwd_sm90 fp16 d256 v0 sm_90a 128x64");
  choice.variant = find_variant(kFamilyFwdSm90, AF_DTYPE_FLOAT16, 64, false, kSm90PingPong);
  EXPECT_EQ(describe(choice), "fwd_sm90 fp16 d64 pingpong sm_90a 128x128");
  choice.variant = find_variant(kFamilyFwdSm90, AF_DTYPE_BFLOAT16, 128, false, kSm90PingPongPersistent);
  EXPECT_EQ(describe(choice), "fwd_sm90 bf16 d128 pingpong-persistent sm_90a 128x128");
  choice.variant = find_variant(kFamilyFwdSm90, AF_DTYPE_FLOAT16, 256, false, kSm90OverlapPersistent);
  EXPECT_EQ(describe(choice), "fwd_sm90 fp16 d256 overlap-persistent sm_90a 128x64");
  choice.variant = find_variant(kFamilyFwdSm90, AF_DTYPE_BFLOAT16, 64, false, kSm90PingPongPersistentTmaStore);
  EXPECT_EQ(describe(choice), "fwd_sm90 bf16 d64 pingpong-persistent-tma-store sm_90a 128x128");
  choice.variant = find_variant(kFamilyFwdSm90, AF_DTYPE_FLOAT16, 128, false, kSm90PingPongDynamic);
  EXPECT_EQ(describe(choice), "fwd_sm90 fp16 d128 pingpong-dynamic sm_90a 128x128");
  choice.variant = find_variant(kFamilyFwdSm80, AF_DTYPE_BFLOAT16, 128, false);
  EXPECT_EQ(describe(choice).find("v0"), std::string::npos) << "only fwd_sm90 has schedules";
}

// The persistent forms' grid, tile order and workspace (size_sm90_persistent, host only): one wave
// at most; the static forms group pairs by the L2 under a causal mask, the dynamic ones hand out
// every tile longest first (one group); only the dynamic ones need a workspace: their tile counter.
TEST(FwdSm90Schedule, PersistentFormsSizeGridTileOrderAndTheDynamicFormsCounter) {
  const int wave = 132;
  for (int64_t d : {64, 128, 256})
    for (Sm90Schedule s : {kSm90OverlapPersistent, kSm90PingPongPersistent, kSm90OverlapPersistentTmaStore,
                           kSm90PingPongPersistentTmaStore, kSm90OverlapDynamic, kSm90PingPongDynamic})
      for (bool causal : {false, true}) {
        const Variant& v = variants()[find_variant(kFamilyFwdSm90, AF_DTYPE_BFLOAT16, int(d), false, s)];
        // b2 s8192 32/8 heads: 64 query tiles x 64 pairs = 4096 tiles over 132 CTAs.
        AttentionProblem p = prefill(d);
        p.seqlen_q = p.seqlen_k = 8192;
        p.causal = causal;
        Plan plan;
        plan.pair_group = -1, plan.workspace_bytes = 99, plan.counters_offset = 99;
        size_sm90_persistent(p, v, wave, &plan);
        const std::string name = v.name + (causal ? " causal" : "");
        EXPECT_EQ(plan.grid[0], unsigned(wave)) << name;
        EXPECT_EQ(plan.grid[1] * plan.grid[2], 1u) << name;
        EXPECT_EQ(plan.splits, 1) << name;
        EXPECT_EQ(plan.workspace_bytes, sm90_dynamic(s) ? 4u : 0u) << name << ": the tile counter";
        EXPECT_EQ(plan.counters_offset, 0u) << name;
        // K + V per pair: 2 x 8192 x d x 2 bytes over 4 query heads per KV head; 32 MB of L2 per group, in the
        // static form and the dynamic one alike.
        const int l2_group = int((int64_t(32) << 20) / (2 * 8192 * d * 2 / 4));
        EXPECT_EQ(plan.pair_group, !causal ? 1 : l2_group) << name;
        // Fewer tiles than a wave: one CTA per tile (b1 s512 2 heads: 4 x 2 tiles).
        AttentionProblem small = prefill(d);
        small.batch = 1, small.seqlen_q = small.seqlen_k = 512, small.heads_q = 2, small.heads_kv = 1;
        small.causal = causal;
        size_sm90_persistent(small, v, wave, &plan);
        EXPECT_EQ(plan.grid[0], 8u) << name;
        EXPECT_EQ(plan.pair_group, causal ? 2 : 1) << name << ": both pairs' K and V fit the L2";
      }
}

// The 192-row forms (three consumer warpgroups) at head dim 64: opt-in through
// $ATTNFORGE_SM90_BLOCK_M, their own modules (AF_WARPS and AF_BLOCK_M differ, nothing else), 24 KB
// more shared memory for Q (and O's staging tile), and the persistent grid sized in 192-row tiles.
TEST(FwdSm90BlockM, ReadsTheTileHeightFromTheEnvironmentAndRefusesOtherValues) {
  int block_m = 0;
  {
    ScopedEnv env("ATTNFORGE_SM90_BLOCK_M", nullptr);
    const struct {
      int64_t head_dim;
      bool causal;
      int64_t seqlen_k;
      int expected;
    } defaults[] = {{64, false, 512, 192},  {64, false, 16384, 192}, {64, true, 1024, 128},  {64, true, 2048, 192},
                    {40, false, 4096, 192}, {128, false, 4096, 128}, {256, false, 4096, 128}};
    for (const auto& d : defaults) {
      ASSERT_TRUE(sm90_block_m_from_env(d.head_dim, d.causal, d.seqlen_k, &block_m));
      EXPECT_EQ(block_m, d.expected) << "unset: the measured default at d" << d.head_dim
                                     << (d.causal ? " causal " : " ") << d.seqlen_k << " keys";
    }
  }
  const struct {
    const char* value;
    int64_t head_dim;
    int expected;
  } good[] = {{"", 64, 192},    {"128", 64, 128},  {"192", 64, 192}, {"192", 40, 192},
              {"192", 72, 128}, {"192", 128, 128}, {"192", 256, 128}};
  for (const auto& g : good) {
    ScopedEnv env("ATTNFORGE_SM90_BLOCK_M", g.value);
    block_m = 0;
    EXPECT_TRUE(sm90_block_m_from_env(g.head_dim, false, 4096, &block_m)) << "'" << g.value << "'";
    EXPECT_EQ(block_m, g.expected) << "'" << g.value << "' at head_dim " << g.head_dim;
  }
  for (const char* bad : {"64", "256", "0", "192 ", " 192", "m192", "192x128", "1e2"}) {
    ScopedEnv env("ATTNFORGE_SM90_BLOCK_M", bad);
    block_m = 7;
    EXPECT_FALSE(sm90_block_m_from_env(64, false, 4096, &block_m)) << "'" << bad << "'";
    EXPECT_EQ(block_m, 7) << "'" << bad << "' must leave the tile height as it was";
  }
}

TEST(FwdSm90BlockM, EachScheduleHasA192RowModuleAtD64WithThreeConsumerWarpgroups) {
  int wide = 0;
  for (af_dtype dtype : {AF_DTYPE_BFLOAT16, AF_DTYPE_FLOAT16})
    for (int s = 0; s < kSm90Schedules; ++s) {
      const Sm90Schedule schedule = Sm90Schedule(s);
      for (int d : {128, 256}) EXPECT_EQ(find_variant(kFamilyFwdSm90, dtype, d, false, schedule, 192), -1) << "d" << d;
      const int narrow = find_variant(kFamilyFwdSm90, dtype, 64, false, schedule);
      const int index = find_variant(kFamilyFwdSm90, dtype, 64, false, schedule, 192);
      ASSERT_GE(narrow, 0);
      ASSERT_GE(index, 0) << sm90_schedule_name(schedule);
      ++wide;
      const Variant& a = variants()[narrow];
      const Variant& b = variants()[index];
      EXPECT_EQ(find_variant(kFamilyFwdSm90, dtype, 40, false, schedule, 192), index) << "d40 runs the d64 variant";
      std::string name = a.name;
      name.insert(name.find("_d64") + 4, "_m192");
      EXPECT_EQ(b.name, name);
      EXPECT_EQ(b.schedule, schedule);
      const TileConfig &ta = a.tile_for(90), &tb = b.tile_for(90);
      EXPECT_EQ(tb.block_m(), 192) << b.name;
      EXPECT_EQ(tb.threads(), 512) << b.name << ": a producer and three consumer warpgroups";
      EXPECT_EQ(tb.block_n, ta.block_n) << b.name;
      EXPECT_EQ(tb.stages, ta.stages) << b.name;
      // Q's 64 more rows of 64 dims in each Q buffer (and the TMA-store forms' staging tile of O as many).
      EXPECT_EQ(tb.q_buffers, ta.q_buffers) << b.name;
      EXPECT_EQ(b.smem_bytes(90), a.smem_bytes(90) + (tb.q_buffers + (sm90_tma_store(schedule) ? 1 : 0)) * 64 * 64 * 2)
          << b.name;
      EXPECT_LE(b.smem_bytes(90), 227 * 1024) << b.name;
      const std::vector<std::string> oa = compile_options(a, "sm_90a", 13, 0), ob = compile_options(b, "sm_90a", 13, 0);
      ASSERT_EQ(oa.size(), ob.size());
      std::vector<std::string> differing;
      for (size_t i = 0; i < oa.size(); ++i)
        if (oa[i] != ob[i]) differing.push_back(oa[i] + " -> " + ob[i]);
      std::vector<std::string> expected = {"-DAF_WARPS=12 -> -DAF_WARPS=16", "-DAF_BLOCK_M=128 -> -DAF_BLOCK_M=192"};
      // The deferred block max is a 128-row form only (on by default at d64's 128 x 128 tile in two schedules).
      if (ta.deferred_max) expected.push_back("-DAF_DEFERRED_MAX=1 -> -DAF_DEFERRED_MAX=0");
      EXPECT_EQ(differing, expected) << b.name;
    }
  EXPECT_EQ(wide, 18);
  Choice choice;
  choice.target = "sm_90a";
  choice.arch = 90;
  choice.variant = find_variant(kFamilyFwdSm90, AF_DTYPE_BFLOAT16, 64, false, kSm90PingPongPersistent, 192);
  EXPECT_EQ(describe(choice), "fwd_sm90 bf16 d64 pingpong-persistent sm_90a 192x128");
  choice.variant = find_variant(kFamilyFwdSm90, AF_DTYPE_FLOAT16, 64, false, kSm90Overlap, 192);
  EXPECT_EQ(describe(choice), "fwd_sm90 fp16 d64 overlap sm_90a 192x128");
}

TEST(FwdSm90BlockM, TheGridAndTheQueryBoxCountRowsInTilesOf192) {
  const int wave = 132;
  for (Sm90Schedule s : {kSm90OverlapPersistent, kSm90PingPongPersistent, kSm90PingPongDynamic})
    for (bool causal : {false, true}) {
      const Variant& v = variants()[find_variant(kFamilyFwdSm90, AF_DTYPE_BFLOAT16, 64, false, s, 192)];
      // b1 s500 4/2 heads: 3 tiles of 192 rows (4 of 128) per head, 12 CTAs.
      AttentionProblem p = prefill(64);
      p.batch = 1, p.seqlen_q = p.seqlen_k = 500, p.heads_q = 4, p.heads_kv = 2;
      p.causal = causal;
      Plan plan;
      size_sm90_persistent(p, v, wave, &plan);
      EXPECT_EQ(plan.grid[0], 12u) << v.name;
      // b2 s1000 32/8: 6 tiles of 192 rows x 64 pairs = 384 > one wave.
      size_sm90_persistent(prefill(64), v, wave, &plan);
      EXPECT_EQ(plan.grid[0], unsigned(wave)) << v.name;
    }
  // The Q box is block_m rows: 192 fits TMA's 256; every call fwd_sm90 takes at d64 it takes with either.
  AttentionProblem p = prefill(64);
  EXPECT_EQ(fwd_sm90_refusal(p, 192), "");
  p.causal = true;
  p.seqlen_q = 1;
  EXPECT_EQ(fwd_sm90_refusal(p, 192), "");
  p.window_left = 16;  // taken, on a 128-row extras variant (FwdSm90Extras below)
  EXPECT_EQ(fwd_sm90_refusal(p, 192), "");
}

// Sliding windows and softcap (the extras variants: a left window edge and softcap compiled in, 128-row
// tiles, pingpong and pingpong-persistent): the refusal takes them, the plan routes them onto fwd_sm90 on
// sm_90a (the extras variant where softcap or a left edge needs it, the plain one for a right edge
// alone, as for causal) and onto fwd_sm80 everywhere else, with each family's own meaning of extras.
TEST(FwdSm90Extras, TakesEveryWindowAndSoftcapButNotAlibi) {
  const struct {
    int64_t left, right;
    bool causal;
    float softcap;
  } calls[] = {{64, -1, false, 0.f},     {-1, 16, false, 0.f},  {64, 16, false, 0.f}, {0, 0, true, 0.f},
               {5000, 5000, false, 0.f}, {-1, -1, false, 30.f}, {-1, 0, true, 50.f},  {255, 0, true, 20.f}};
  for (int64_t d : {64, 128, 256})
    for (const auto& c : calls) {
      AttentionProblem p = prefill(d);  // 1000 query rows and keys
      p.window_left = c.left, p.window_right = c.right, p.causal = c.causal, p.softcap = c.softcap;
      EXPECT_EQ(fwd_sm90_refusal(p), "") << "d" << d << " window (" << c.left << ", " << c.right << ")";
      // (5000, 5000) reaches past every row's keys on both sides: no window.
      const bool left = c.left >= 0 && c.left < 1000, right = c.causal || (c.right >= 0 && c.right < 1000);
      EXPECT_EQ(sm90_extras(p), left || c.softcap > 0) << "window (" << c.left << ", " << c.right << ")";
      EXPECT_EQ(sm90_triangular(p), !left && right) << "window (" << c.left << ", " << c.right << ")";
    }
}

// Window edges as the kernels take them: an edge no row can reach is unbounded, the rest unchanged.
TEST(FwdSm90Extras, WindowEdgesNoRowReachesAreUnbounded) {
  AttentionProblem p = prefill();
  p.seqlen_q = 300, p.seqlen_k = 200;  // a varlen call's max_seqlen_q / max_seqlen_k
  const struct {
    int64_t left, right;
    bool causal;
    int64_t left_in_effect, right_in_effect;
  } edges[] = {{-1, -1, false, -1, -1},   {199, 299, false, 199, 299},
               {200, 300, false, -1, -1}, {int64_t(1) << 31, 5, false, -1, 5},
               {0, 0, false, 0, 0},       {5000, -1, true, -1, 0},
               {7, 5000, true, 7, 0}};
  for (const auto& e : edges) {
    p.window_left = e.left, p.window_right = e.causal ? 0 : e.right, p.causal = e.causal;
    EXPECT_EQ(window_left_in_effect(p), e.left_in_effect) << e.left;
    EXPECT_EQ(window_right_in_effect(p), e.right_in_effect) << e.right;
  }
}

TEST(FwdSm90Extras, TwoSchedulesOfExtrasVariantsIn128RowTilesDifferingOnlyInAfExtras) {
  int found = 0;
  for (af_dtype dtype : {AF_DTYPE_BFLOAT16, AF_DTYPE_FLOAT16})
    for (int d : {64, 128, 256})
      for (int s = 0; s < kSm90Schedules; ++s) {
        const Sm90Schedule schedule = Sm90Schedule(s);
        const int index = find_variant(kFamilyFwdSm90, dtype, d, true, schedule);
        EXPECT_EQ(find_variant(kFamilyFwdSm90, dtype, d, true, schedule, 192), -1) << "no 192-row extras form";
        EXPECT_EQ(index >= 0, sm90_has_extras(schedule)) << sm90_schedule_name(schedule);
        EXPECT_EQ(sm90_has_extras(schedule), schedule == kSm90PingPong || schedule == kSm90PingPongPersistent);
        if (sm90_has_extras(schedule)) EXPECT_EQ(sm90_extras_schedule(schedule, d, 16384), schedule);
        if (index < 0) continue;
        ++found;
        const Variant& plain = variants()[find_variant(kFamilyFwdSm90, dtype, d, false, schedule)];
        const Variant& v = variants()[index];
        EXPECT_TRUE(v.extras);
        std::string name = plain.name;
        name.insert(name.find("_d") + 2 + std::to_string(d).size(), "_extras");
        EXPECT_EQ(v.name, name);
        EXPECT_EQ(v.smem_bytes(90), plain.smem_bytes(90)) << v.name;
        EXPECT_EQ(v.tile_for(90).block_m(), 128) << v.name;
        EXPECT_EQ(v.tile_for(90).block_n, plain.tile_for(90).block_n) << v.name;
        const std::vector<std::string> a = compile_options(plain, "sm_90a", 13, 0),
                                       b = compile_options(v, "sm_90a", 13, 0);
        ASSERT_EQ(a.size(), b.size());
        std::vector<std::string> differing;
        for (size_t i = 0; i < a.size(); ++i)
          if (a[i] != b[i]) differing.push_back(a[i] + " -> " + b[i]);
        // The extras keep the block max first unless $ATTNFORGE_SM90_DEFERRED_MAX=1 (sm90_deferred_max).
        const auto deferred = [](const Variant& x) {
          return std::string("-DAF_DEFERRED_MAX=") + (x.tile_for(90).deferred_max ? "1" : "0");
        };
        std::vector<std::string> expected = {"-DAF_EXTRAS=0 -> -DAF_EXTRAS=1"};
        if (deferred(plain) != deferred(v)) expected.push_back(deferred(plain) + " -> " + deferred(v));
        const char* knob = std::getenv("ATTNFORGE_SM90_DEFERRED_MAX");
        if (knob == nullptr || std::strcmp(knob, "1") != 0) EXPECT_FALSE(v.tile_for(90).deferred_max) << v.name;
        EXPECT_EQ(differing, expected) << v.name;
      }
  EXPECT_EQ(found, 12);
  Choice choice;
  choice.target = "sm_90a";
  choice.arch = 90;
  choice.variant = find_variant(kFamilyFwdSm90, AF_DTYPE_BFLOAT16, 128, true, kSm90PingPongPersistent);
  EXPECT_EQ(describe(choice), "fwd_sm90 bf16 d128 extras pingpong-persistent sm_90a 128x128");
}

// An H100-like device for choose_variant (no driver needed).
DeviceInfo h100() {
  DeviceInfo info;
  info.name = "H100 (host test)";
  info.major = 9, info.minor = 0;
  info.sm_count = 132;
  info.max_smem_optin = 227 * 1024;
  return info;
}

struct Routed {
  af_status status;
  std::string family, kernel, why;
  const Variant* variant;
};
Routed route(const AttentionProblem& p, const std::string& target = "sm_90a", bool tensor_maps = true) {
  Choice choice;
  const af_status status = choose_variant(p, h100(), target, tensor_maps, &choice);
  if (status != AF_OK) return {status, "", "", af_last_error_message(), nullptr};
  const Variant& v = variants()[choice.variant];
  return {status, family(v.family).name, describe(Choice{choice.variant, choice.target, choice.arch, ""}), choice.why,
          &v};
}

// Schedules without an extras form: pingpong-persistent, but the dynamic form above d128, and at d128 from 8k keys,
// pingpong (the causal default there before the dynamic form).
TEST(FwdSm90Extras, SchedulesWithoutAnExtrasFormMapToTheirFormerDefaults) {
  EXPECT_EQ(sm90_extras_schedule(kSm90PingPongDynamic, 256, 1024), kSm90PingPong);
  EXPECT_EQ(sm90_extras_schedule(kSm90PingPongDynamic, 192, 1024), kSm90PingPong);
  EXPECT_EQ(sm90_extras_schedule(kSm90PingPongDynamic, 128, 4096), kSm90PingPongPersistent);
  EXPECT_EQ(sm90_extras_schedule(kSm90PingPongDynamic, 128, 8192), kSm90PingPong);
  EXPECT_EQ(sm90_extras_schedule(kSm90PingPongDynamic, 64, 16384), kSm90PingPongPersistent);
  EXPECT_EQ(sm90_extras_schedule(kSm90OverlapDynamic, 256, 1024), kSm90PingPongPersistent);
  EXPECT_EQ(sm90_extras_schedule(kSm90PingPongPersistentTmaStore, 128, 1024), kSm90PingPongPersistent);
  EXPECT_EQ(sm90_extras_schedule(kSm90Overlap, 256, 16384), kSm90PingPongPersistent);
}

TEST(FwdSm90Extras, PlansWindowsAndSoftcapOntoFwdSm90OnSm90aAndOntoFwdSm80Elsewhere) {
  ScopedEnv no_variant("ATTNFORGE_SM90_VARIANT", nullptr), no_rows("ATTNFORGE_SM90_BLOCK_M", nullptr);
  ScopedEnv enabled("ATTNFORGE_FWD_SM90", nullptr);
  const float slopes[32] = {};
  const struct {
    const char* what;
    int64_t left, right;
    bool causal;
    float softcap;
    bool alibi;
    bool sm90_extras;  // fwd_sm90's extras variant (else its plain one)
  } calls[] = {{"sliding window, causal", 512, 0, true, 0.f, false, true},
               {"a window past the 1000 keys: causal", 4096, 0, true, 0.f, false, false},
               {"left edge only", 100, -1, false, 0.f, false, true},
               {"right edge only", -1, 100, false, 0.f, false, false},
               {"both edges", 64, 32, false, 0.f, false, true},
               {"softcap", -1, -1, false, 30.f, false, true},
               {"softcap, causal", -1, 0, true, 50.f, false, true},
               {"softcap, sliding window", 256, 0, true, 50.f, false, true},
               {"ALiBi (stays fwd_sm80's)", -1, 0, true, 0.f, true, false}};
  for (int64_t d : {64, 128, 256})
    for (const auto& c : calls) {
      AttentionProblem p = prefill(d);
      p.window_left = c.left, p.window_right = c.right, p.causal = c.causal, p.softcap = c.softcap;
      if (c.alibi) p.alibi_slopes = slopes;
      const std::string what = std::string(c.what) + " d" + std::to_string(d);
      const Routed sm90 = route(p);
      ASSERT_EQ(sm90.status, AF_OK) << what << ": " << sm90.why;
      if (c.alibi) {
        EXPECT_EQ(sm90.family, "fwd_sm80") << what;
        EXPECT_NE(sm90.why.find("ALiBi"), std::string::npos) << what << ": " << sm90.why;
        EXPECT_TRUE(sm90.variant->extras) << what << ": fwd_sm80's extras (softcap, ALiBi)";
      } else {
        EXPECT_EQ(sm90.family, "fwd_sm90") << what << ": " << sm90.kernel << " (" << sm90.why << ")";
        EXPECT_EQ(sm90.variant->extras, c.sm90_extras) << what << ": " << sm90.kernel;
        EXPECT_EQ(sm90.why, "sm_90a") << what;
      }
      // Elsewhere fwd_sm80, extras only for softcap and ALiBi (windows are its run-time flags).
      for (const char* target : {"sm_80", "sm_86", "sm_89", "compute_120"}) {
        const Routed other = route(p, target);
        ASSERT_EQ(other.status, AF_OK) << what << " " << target << ": " << other.why;
        EXPECT_EQ(other.family, "fwd_sm80") << what << " " << target;
        EXPECT_EQ(other.variant->extras, c.softcap > 0 || c.alibi) << what << " " << target;
        EXPECT_EQ(other.why, "") << what << " " << target;
      }
      const Routed no_maps = route(p, "sm_90a", false);
      EXPECT_EQ(no_maps.family, "fwd_sm80") << what;
      if (!c.alibi) EXPECT_NE(no_maps.why.find("cuTensorMapEncodeTiled"), std::string::npos) << no_maps.why;
      {
        ScopedEnv off("ATTNFORGE_FWD_SM90", "0");
        const Routed turned_off = route(p);
        EXPECT_EQ(turned_off.family, "fwd_sm80") << what;
        EXPECT_EQ(turned_off.variant->extras, c.softcap > 0 || c.alibi) << what;
      }
    }
}

TEST(FwdSm90Extras, SchedulesAndTileHeightsOfWindowAndSoftcapCallsAndTheTuningKnobs) {
  ScopedEnv no_variant("ATTNFORGE_SM90_VARIANT", nullptr), no_rows("ATTNFORGE_SM90_BLOCK_M", nullptr);
  ScopedEnv enabled("ATTNFORGE_FWD_SM90", nullptr);
  auto call = [](int64_t d, int64_t keys, int64_t left, int64_t right, bool causal, float softcap) {
    AttentionProblem p = prefill(d);
    p.seqlen_q = p.seqlen_k = keys;
    p.total_q = p.total_k = p.batch * keys;
    p.q_batch_stride = keys * p.q_row_stride, p.k_batch_stride = keys * p.k_row_stride;
    p.v_batch_stride = p.k_batch_stride, p.out_batch_stride = p.q_batch_stride;
    p.window_left = left, p.window_right = right, p.causal = causal, p.softcap = softcap;
    return p;
  };
  const struct {
    AttentionProblem p;
    const char* kernel;
  } defaults[] = {
      // A sliding window: tiles of about equal cost, the persistent pingpong at every length and head dim.
      {call(128, 16384, 4096, 0, true, 0.f), "fwd_sm90 bf16 d128 extras pingpong-persistent sm_90a 128x128"},
      {call(256, 16384, 4096, 0, true, 50.f), "fwd_sm90 bf16 d256 extras pingpong-persistent sm_90a 128x64"},
      {call(64, 1024, 100, 100, false, 0.f), "fwd_sm90 bf16 d64 extras pingpong-persistent sm_90a 128x128"},
      // Softcap under a causal mask: the schedule the plain variants took before the dynamic form took their causal
      // calls (pingpong from 8k keys and above d128, else pingpong-persistent; sm90_extras_schedule).
      {call(128, 16384, -1, 0, true, 30.f), "fwd_sm90 bf16 d128 extras pingpong sm_90a 128x128"},
      {call(256, 4096, -1, 0, true, 50.f), "fwd_sm90 bf16 d256 extras pingpong sm_90a 128x64"},
      {call(256, 2048, -1, 0, true, 50.f), "fwd_sm90 bf16 d256 extras pingpong sm_90a 128x64"},
      {call(128, 4096, -1, 0, true, 30.f), "fwd_sm90 bf16 d128 extras pingpong-persistent sm_90a 128x128"},
      {call(64, 4096, -1, 0, true, 20.f), "fwd_sm90 bf16 d64 extras pingpong-persistent sm_90a 128x128"},
      // Without a mask: the TMA-store and overlap defaults have no extras form.
      {call(128, 1024, -1, -1, false, 30.f), "fwd_sm90 bf16 d128 extras pingpong-persistent sm_90a 128x128"},
      {call(256, 16384, -1, -1, false, 30.f), "fwd_sm90 bf16 d256 extras pingpong-persistent sm_90a 128x64"},
      // A right edge alone runs the plain variants as causal does (d64 from 2k keys: the dynamic form, 192 rows).
      {call(128, 16384, -1, 100, false, 0.f), "fwd_sm90 bf16 d128 pingpong-dynamic sm_90a 128x128"},
      {call(64, 8192, -1, 100, false, 0.f), "fwd_sm90 bf16 d64 pingpong-dynamic sm_90a 192x128"},
      // d64 without a mask takes 192 rows, its extras forms 128.
      {call(64, 8192, -1, -1, false, 0.f), "fwd_sm90 bf16 d64 pingpong-persistent sm_90a 192x128"},
      {call(64, 8192, -1, -1, false, 20.f), "fwd_sm90 bf16 d64 extras pingpong-persistent sm_90a 128x128"},
  };
  for (const auto& c : defaults) {
    const Routed r = route(c.p);
    ASSERT_EQ(r.status, AF_OK) << r.why;
    EXPECT_EQ(r.kernel, c.kernel) << "window (" << c.p.window_left << ", " << c.p.window_right << ") softcap "
                                  << c.p.softcap << " " << c.p.seqlen_k << " keys";
    EXPECT_EQ(r.why, "sm_90a") << r.kernel;
  }
  const AttentionProblem window = call(64, 4096, 512, 0, true, 0.f);
  {
    ScopedEnv env("ATTNFORGE_SM90_VARIANT", "pingpong");
    EXPECT_EQ(route(window).kernel, "fwd_sm90 bf16 d64 extras pingpong sm_90a 128x128");
  }
  for (const char* other : {"overlap", "v0", "pingpong-dynamic", "pingpong-persistent-tma-store"}) {
    ScopedEnv env("ATTNFORGE_SM90_VARIANT", other);
    const Routed r = route(window);
    EXPECT_EQ(r.kernel, "fwd_sm90 bf16 d64 extras pingpong-persistent sm_90a 128x128") << other;
    EXPECT_EQ(r.why, std::string("sm_90a; ") + other + " has no window/softcap form") << other;
    // The plain variants still take it.
    const Routed plain = route(call(64, 4096, -1, 0, true, 0.f));
    EXPECT_NE(plain.kernel.find(std::string(" ") + other + " sm_90a"), std::string::npos) << plain.kernel;
  }
  {
    ScopedEnv env("ATTNFORGE_SM90_VARIANT", "pingpong_persistent");
    EXPECT_EQ(route(window).status, AF_ERR_INVALID_ARGUMENT) << "an unknown name is an error for extras calls too";
  }
  {
    ScopedEnv env("ATTNFORGE_SM90_BLOCK_M", "192");
    EXPECT_EQ(route(window).kernel, "fwd_sm90 bf16 d64 extras pingpong-persistent sm_90a 128x128");
    EXPECT_EQ(route(call(64, 4096, -1, 0, true, 0.f)).kernel, "fwd_sm90 bf16 d64 pingpong-dynamic sm_90a 192x128");
  }
  {
    ScopedEnv env("ATTNFORGE_SM90_BLOCK_M", "96");
    EXPECT_EQ(route(window).status, AF_ERR_INVALID_ARGUMENT);
  }
}

// The persistent tile order: a sliding window's tiles are about equal, so one pair per group (its
// neighbouring query tiles share their windows' keys in L2), as without a mask; a right edge alone
// is grouped as causal is.
TEST(FwdSm90Extras, PersistentTileOrderOfWindows) {
  const Variant& v = variants()[find_variant(kFamilyFwdSm90, AF_DTYPE_BFLOAT16, 128, true, kSm90PingPongPersistent)];
  AttentionProblem p = prefill(128);
  p.seqlen_q = p.seqlen_k = 8192;
  Plan plan;
  p.causal = true, p.window_right = 0, p.window_left = 4096;
  size_sm90_persistent(p, v, 132, &plan);
  EXPECT_EQ(plan.pair_group, 1);
  p.causal = false, p.window_right = 64, p.window_left = 64;
  size_sm90_persistent(p, v, 132, &plan);
  EXPECT_EQ(plan.pair_group, 1);
  p.window_left = -1;  // right edge only: causal-like
  size_sm90_persistent(p, v, 132, &plan);
  EXPECT_EQ(plan.pair_group, int((int64_t(32) << 20) / (2 * 8192 * 128 * 2 / 4)));
}

// $ATTNFORGE_SM90_BLOCK_N="D:N;...": the 128-row tile's key-block width per head dim, N a multiple of 16
// from 64 to 192 whose shared memory fits with the head dim's ring depth; anything else ignored.
TEST(FwdSm90BlockN, ReadsTheKeyBlockWidthPerHeadDimAndIgnoresMalformedOrOversizedEntries) {
  // The table (built once per process) has the untuned tiles unless this process was started with a knob.
  const bool untuned_table =
      std::getenv("ATTNFORGE_SM90_BLOCK_N") == nullptr && std::getenv("ATTNFORGE_SM90_STAGES") == nullptr;
  ScopedEnv stages("ATTNFORGE_SM90_STAGES", nullptr);
  struct Tile {
    int block_n, stages, smem;
  };
  auto tile = [](int d) {
    const TileConfig t = sm90_tile_for(d);
    EXPECT_EQ(t.block_m(), 128) << "d" << d;
    EXPECT_EQ(t.threads(), 384) << "d" << d;
    return Tile{t.block_n, t.stages, sm90_smem_bytes(d, t.block_m(), t.block_n, t.stages, false)};
  };
  // Unset (and the defaults the table was built with): 128 keys at d64 and d128, 64 at d256, 2 stages.
  const int defaults[3] = {128, 128, 64};
  const int dims[3] = {64, 128, 256};
  for (const char* unset : {static_cast<const char*>(nullptr), ""}) {
    ScopedEnv env("ATTNFORGE_SM90_BLOCK_N", unset);
    for (int i = 0; i < 3; ++i) {
      const Tile t = tile(dims[i]);
      EXPECT_EQ(t.block_n, defaults[i]) << "d" << dims[i];
      EXPECT_EQ(t.stages, 2) << "d" << dims[i];
    }
    EXPECT_EQ(tile(128).smem, (128 + 2 * 2 * 128) * 128 * 2 + 1024);
    EXPECT_EQ(tile(256).smem, (128 + 2 * 2 * 64) * 256 * 2 + 1024);
  }
  if (untuned_table)
    for (const Variant& v : variants())
      if (v.family == kFamilyFwdSm90) {
        const int expected = v.head_dim == 256 ? 64 : 128;
        EXPECT_EQ(v.tile_for(90).block_n, expected) << v.name;
        EXPECT_EQ(v.tile_for(90).stages, 2) << v.name;
      }
  const struct {
    const char* value;
    int d64, d128, d256;
  } cases[] = {
      {"128:176", 128, 176, 64},
      {"256:80", 128, 128, 80},
      {"128:176;256:80", 128, 176, 80},
      {"64:192;128:64;256:64", 192, 64, 64},
      {"128:192", 128, 192, 64},          // (128 + 4 x 192) x 256 + 1024 = 225 KB: the widest that fits at d128
      {"128:96;128:160", 128, 160, 64},   // the last valid entry of a head dim wins
      {"128:160;128:100", 128, 160, 64},  // not a multiple of 16
      {"128:48;128:208;128:0;128:-128", 128, 128, 64},  // below 64, above 192
      {"256:96;256:128", 128, 128, 64},                 // 256 and 320 KB at d256 with 2 stages: oversized
      {"128", 128, 128, 64},
      {":176", 128, 128, 64},
      {"abc;128:x;;256:80", 128, 128, 80},
      {"d128:176", 128, 128, 64},
      {"96:176;192:176", 128, 128, 64},  // not a compiled head dim
  };
  for (const auto& c : cases) {
    ScopedEnv env("ATTNFORGE_SM90_BLOCK_N", c.value);
    const int expected[3] = {c.d64, c.d128, c.d256};
    for (int i = 0; i < 3; ++i) {
      const Tile t = tile(dims[i]);
      EXPECT_EQ(t.block_n, expected[i]) << "'" << c.value << "' at d" << dims[i];
      EXPECT_EQ(t.stages, 2) << "'" << c.value << "' at d" << dims[i];
      EXPECT_EQ(t.smem, (128 + 2 * 2 * expected[i]) * dims[i] * 2 + 1024) << "'" << c.value << "' at d" << dims[i];
      EXPECT_LE(t.smem, kSm90SmemLimit) << "'" << c.value << "' at d" << dims[i];
    }
  }
  // Checked against the ring depth $ATTNFORGE_SM90_STAGES left: 176 keys with 3 stages would take 297 KB.
  {
    ScopedEnv deeper("ATTNFORGE_SM90_STAGES", "128:3");
    ScopedEnv env("ATTNFORGE_SM90_BLOCK_N", "128:176;64:192");
    const Tile d128 = tile(128);
    EXPECT_EQ(d128.block_n, 128);
    EXPECT_EQ(d128.stages, 3);
    EXPECT_EQ(tile(64).block_n, 192);
  }
  // The 192-row d64 tile keeps its width.
  {
    ScopedEnv env("ATTNFORGE_SM90_BLOCK_N", "64:64");
    EXPECT_EQ(sm90_tile_for(64).block_n, 64);
    EXPECT_EQ(sm90_wide_tile().block_n, 128);
    EXPECT_EQ(sm90_wide_tile().block_m(), 192);
  }
  // The width reaches the kernel's macros (and so the kernel cache's key) and describe().
  const int index = find_variant(kFamilyFwdSm90, AF_DTYPE_BFLOAT16, 128, false, kSm90PingPongPersistent);
  ASSERT_GE(index, 0);
  Variant v = variants()[index];
  {
    ScopedEnv env("ATTNFORGE_SM90_BLOCK_N", "128:176");
    for (TileConfig& t : v.tiles) t = sm90_tile_for(128);
  }
  const std::vector<std::string> options = compile_options(v, "sm_90a", 13, 0);
  EXPECT_NE(std::find(options.begin(), options.end(), "-DAF_BLOCK_N=176"), options.end());
  EXPECT_EQ(v.smem_bytes(90), (128 + 2 * 2 * 176) * 128 * 2 + 1024);
}

// The block max after the exps by default where it was timed and sanitized ("", "yes" and "1 " are no setting): the
// 128 x 128 tiles of d64 and d128 with 2 stages and no extras in pingpong-persistent and pingpong-dynamic; with
// $ATTNFORGE_SM90_DEFERRED_MAX=1 every 128-row variant but v0's, with "0" none; never the 192-row d64 tile. In the
// compile options (so the kernel cache's key).
TEST(FwdSm90DeferredMax, MeasuredFormsByDefaultEvery128RowVariantWithOneNoneWithZero) {
  ScopedEnv block_n("ATTNFORGE_SM90_BLOCK_N", nullptr);
  ScopedEnv stages("ATTNFORGE_SM90_STAGES", nullptr);
  const Sm90Schedule by_default[] = {kSm90PingPongPersistent, kSm90PingPongDynamic};
  for (const char* unset : {static_cast<const char*>(nullptr), "", "yes", "1 "}) {
    ScopedEnv env("ATTNFORGE_SM90_DEFERRED_MAX", unset);
    const std::string setting = unset ? unset : "(unset)";
    for (int s = 0; s < kSm90Schedules; ++s)
      for (int d : {64, 128, 256})
        for (bool extras : {false, true}) {
          const Sm90Schedule schedule = Sm90Schedule(s);
          const bool expected =
              d != 256 && !extras &&
              std::find(std::begin(by_default), std::end(by_default), schedule) != std::end(by_default);
          EXPECT_EQ(sm90_deferred_max(d, extras, schedule, sm90_tile_for(d)), expected)
              << "d" << d << " " << sm90_schedule_name(schedule) << (extras ? " extras " : " ") << setting;
        }
    EXPECT_FALSE(sm90_deferred_max(64, false, kSm90PingPongPersistent, sm90_wide_tile()));
    TileConfig wide_keys = sm90_tile_for(128), deep = sm90_tile_for(128);
    wide_keys.block_n = 176;
    deep.stages = 3;
    EXPECT_FALSE(sm90_deferred_max(128, false, kSm90PingPongPersistent, wide_keys));
    EXPECT_FALSE(sm90_deferred_max(128, false, kSm90PingPongPersistent, deep));
  }
  {
    ScopedEnv env("ATTNFORGE_SM90_DEFERRED_MAX", "0");
    for (int d : {64, 128, 256})
      EXPECT_FALSE(sm90_deferred_max(d, false, kSm90PingPongPersistent, sm90_tile_for(d))) << "d" << d;
  }
  ScopedEnv env("ATTNFORGE_SM90_DEFERRED_MAX", "1");
  for (int d : {64, 128, 256}) {
    EXPECT_TRUE(sm90_deferred_max(d, true, kSm90PingPongPersistentTmaStore, sm90_tile_for(d))) << "d" << d;
    EXPECT_FALSE(sm90_deferred_max(d, false, kSm90V0, sm90_tile_for(d))) << "d" << d;
  }
  EXPECT_FALSE(sm90_deferred_max(64, false, kSm90PingPongPersistent, sm90_wide_tile()));
  const int index = find_variant(kFamilyFwdSm90, AF_DTYPE_BFLOAT16, 128, false, kSm90PingPongPersistent);
  ASSERT_GE(index, 0);
  Variant v = variants()[index];
  const auto has = [](const std::vector<std::string>& options, const std::string& option) {
    return std::find(options.begin(), options.end(), option) != options.end();
  };
  EXPECT_EQ(has(compile_options(v, "sm_90a", 13, 0), "-DAF_DEFERRED_MAX=1"), v.tile_for(90).deferred_max);
  for (TileConfig& t : v.tiles) t.deferred_max = true;
  EXPECT_TRUE(has(compile_options(v, "sm_90a", 13, 0), "-DAF_DEFERRED_MAX=1"));
  for (TileConfig& t : v.tiles) t.deferred_max = false;
  EXPECT_TRUE(has(compile_options(v, "sm_90a", 13, 0), "-DAF_DEFERRED_MAX=0"));
}

TEST(FwdSm90QBuffers, TwoQTilesInThePersistentFormsWhereTheyFitAndOneWithTheKnob) {
  ScopedEnv stages("ATTNFORGE_SM90_STAGES", nullptr);
  ScopedEnv block_n("ATTNFORGE_SM90_BLOCK_N", nullptr);
  for (const char* unset : {static_cast<const char*>(nullptr), "", "2"}) {
    ScopedEnv env("ATTNFORGE_SM90_Q_BUFFERS", unset);
    // d128 with the TMA-store epilogue: 2 Q + 2 x 64 KB of K/V + O's 32 KB + 1 KB = 225 KB, within 226.
    const TileConfig t128 = sm90_tile_for(128);
    EXPECT_EQ(sm90_q_buffers(128, t128, kSm90PingPongPersistentTmaStore), 2);
    EXPECT_EQ(sm90_smem_bytes(128, 128, 128, 2, true, 2), 225 * 1024);
    EXPECT_EQ(sm90_q_buffers(128, t128, kSm90PingPongDynamic), 2);
    EXPECT_EQ(sm90_q_buffers(64, sm90_tile_for(64), kSm90OverlapPersistent), 2);
    EXPECT_EQ(sm90_q_buffers(64, sm90_wide_tile(), kSm90PingPongPersistentTmaStore), 2);
    // One CTA per tile loads one Q; d256 (192 KB) has no room; nor has FlashAttention-3's 128 x 176 at d128.
    EXPECT_EQ(sm90_q_buffers(128, t128, kSm90PingPong), 1);
    EXPECT_EQ(sm90_q_buffers(256, sm90_tile_for(256), kSm90PingPongPersistent), 1);
    EXPECT_EQ(sm90_q_buffers(256, sm90_tile_for(256), kSm90PingPongPersistentTmaStore), 1);
    TileConfig wide = t128;
    wide.block_n = 176;
    EXPECT_EQ(sm90_q_buffers(128, wide, kSm90PingPongPersistent), 1);
  }
  ScopedEnv env("ATTNFORGE_SM90_Q_BUFFERS", "1");
  EXPECT_EQ(sm90_q_buffers(128, sm90_tile_for(128), kSm90PingPongPersistentTmaStore), 1);
  EXPECT_EQ(sm90_q_buffers(64, sm90_wide_tile(), kSm90PingPongDynamic), 1);
  // Every persistent variant's shared memory counts its Q tiles (the table may have been built with the knob).
  for (const Variant& v : variants())
    if (v.family == kFamilyFwdSm90) {
      const TileConfig& t = v.tile_for(90);
      EXPECT_EQ(v.smem_bytes(90),
                sm90_smem_bytes(v.head_dim, t.block_m(), t.block_n, t.stages, sm90_tma_store(v.schedule), t.q_buffers))
          << v.name;
      EXPECT_LE(v.smem_bytes(90), kSm90SmemLimit) << v.name;
    }
}

// The cross-tile pipeline from NVRTC 12.9 on (12.1-12.8 serialise its wgmmas): the version reaches the options, so the
// kernel cache keeps one entry per choice; the two Q tiles (and shared memory) do not depend on it.
TEST(FwdSm90CrossTile, FromNvrtc129AndInTheCompileOptions) {
  EXPECT_FALSE(sm90_cross_tile(12, 1));
  EXPECT_FALSE(sm90_cross_tile(12, 8));
  EXPECT_TRUE(sm90_cross_tile(12, 9));
  EXPECT_TRUE(sm90_cross_tile(13, 0));
  EXPECT_TRUE(sm90_cross_tile(14, 0));
  ScopedEnv env("ATTNFORGE_SM90_Q_BUFFERS", nullptr);
  const int index = find_variant(kFamilyFwdSm90, AF_DTYPE_BFLOAT16, 128, false, kSm90PingPongPersistent);
  ASSERT_GE(index, 0);
  const Variant& v = variants()[index];
  ASSERT_EQ(v.tile_for(90).q_buffers, 2);
  const auto has = [](const std::vector<std::string>& options, const std::string& option) {
    return std::find(options.begin(), options.end(), option) != options.end();
  };
  for (const auto& [major, minor, cross_tile] :
       {std::tuple{12, 1, false}, {12, 8, false}, {12, 9, true}, {13, 0, true}}) {
    const std::vector<std::string> options = compile_options(v, "sm_90a", major, minor);
    EXPECT_TRUE(has(options, cross_tile ? "-DAF_CROSS_TILE=1" : "-DAF_CROSS_TILE=0")) << major << "." << minor;
    EXPECT_TRUE(has(options, "-DAF_Q_BUFFERS=2")) << major << "." << minor;
  }
}

TEST(TileMap, RefusesWhatTmaCannotDescribeNamingTheArgument) {
  alignas(16) static unsigned short data[64];
  TileTensor t{data, 2, 100, 4, 64, 100 * 4 * 64, 4 * 64, 64};
  EXPECT_EQ(tile_map_refusal("q", t, 128), "");
  EXPECT_NE(tile_map_refusal("q", t, 0).find("q: a TMA box has 1 to 256 rows"), std::string::npos);
  EXPECT_NE(tile_map_refusal("q", t, 257).find("1 to 256 rows"), std::string::npos);
  TileTensor unaligned = t;
  unaligned.base = data + 1;
  EXPECT_NE(tile_map_refusal("k", unaligned, 128).find("k: TMA needs a 16-byte aligned address"), std::string::npos);
  TileTensor odd = t;
  odd.row_stride = 4 * 64 + 4;  // 520 bytes: not a multiple of 16
  EXPECT_NE(tile_map_refusal("v", odd, 128).find("v: TMA needs the row stride"), std::string::npos);
  TileTensor empty = t;
  empty.rows = 0;
  EXPECT_NE(tile_map_refusal("q", empty, 128).find("rows in 1..2^32"), std::string::npos);
  TileTensor huge = t;
  huge.batch_stride = int64_t(1) << 40;
  EXPECT_NE(tile_map_refusal("q", huge, 128).find("batch stride"), std::string::npos);
}

// encode_tile_map checks before it calls the driver, and writes nothing when it refuses.
int g_encode_calls = 0;
CUresult fake_encode(CUtensorMap* map, int, unsigned rank, void*, const unsigned long long* dims,
                     const unsigned long long* strides, const unsigned* box, const unsigned*, int, int swizzle, int,
                     int) {
  ++g_encode_calls;
  // The map the kernel reads: (head_dim, rows, heads, batch), 64 x box_rows boxes, 128-byte swizzle.
  map->opaque[0] = rank * 1000 + dims[0];
  map->opaque[1] = strides[0];
  map->opaque[2] = box[0] * 1000 + box[1];
  map->opaque[3] = unsigned(swizzle);
  return CUDA_SUCCESS;
}

TEST(TileMap, EncodesOnlyWhatPassesTheChecks) {
  DriverApi api{};
  api.cuTensorMapEncodeTiled = fake_encode;
  alignas(16) static unsigned short data[64];
  TileTensor t{data, 2, 100, 4, 128, 100 * 4 * 128, 4 * 128, 128};
  CUtensorMap map{};
  g_encode_calls = 0;
  ASSERT_EQ(encode_tile_map(api, "q", t, AF_DTYPE_BFLOAT16, 128, &map), AF_OK);
  EXPECT_EQ(g_encode_calls, 1);
  EXPECT_EQ(map.opaque[0], 4u * 1000 + 128);
  EXPECT_EQ(map.opaque[1], 4u * 128 * 2);  // the row stride in bytes
  EXPECT_EQ(map.opaque[2], 64u * 1000 + 128);
  EXPECT_EQ(map.opaque[3], unsigned(CU_TENSOR_MAP_SWIZZLE_128B));

  CUtensorMap untouched{};
  TileTensor bad = t;
  bad.head_stride = 4;
  EXPECT_EQ(encode_tile_map(api, "k", bad, AF_DTYPE_BFLOAT16, 128, &untouched), AF_ERR_UNSUPPORTED);
  TileTensor shapes_only = t;
  shapes_only.base = nullptr;
  EXPECT_EQ(encode_tile_map(api, "k", shapes_only, AF_DTYPE_BFLOAT16, 128, &untouched), AF_ERR_UNSUPPORTED);
  EXPECT_EQ(encode_tile_map(api, "k", t, AF_DTYPE_FLOAT32, 128, &untouched), AF_ERR_UNSUPPORTED);
  EXPECT_EQ(g_encode_calls, 1) << "the driver was called for a refused tensor";
  for (unsigned long long word : untouched.opaque) EXPECT_EQ(word, 0u);

  api.cuTensorMapEncodeTiled = nullptr;
  EXPECT_EQ(encode_tile_map(api, "q", t, AF_DTYPE_BFLOAT16, 128, &untouched), AF_ERR_BACKEND_UNAVAILABLE);
}

}  // namespace
}  // namespace af::cuda
