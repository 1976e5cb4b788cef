// Plan / run in the C ABI: a plan made from shapes alone (NULL data) runs calls of its shape with
// the result of af_attention_forward, refuses any other shape naming the field, and frees NULL.
#include <gtest/gtest.h>

#include <cstddef>
#include <random>
#include <string>
#include <vector>

#include "attnforge/attnforge.h"

namespace {

af_tensor tensor(void* data, af_dtype dtype, std::vector<int64_t> shape) {
  af_tensor t{};
  t.data = data;
  t.dtype = dtype;
  t.device_type = AF_DEVICE_CPU;
  t.rank = int32_t(shape.size());
  int64_t stride = 1;
  for (int64_t i = t.rank - 1; i >= 0; --i) t.shape[i] = shape[i], t.strides[i] = stride, stride *= shape[i];
  return t;
}

// Padded fp32 GQA call (B 2, Sq 3, Sk 37, H 8, Hk 2, D 24) on fresh random inputs.
struct Call {
  int64_t B = 2, Sq = 3, Sk = 37, H = 8, Hk = 2, D = 24;
  std::vector<float> q, k, v, out;
  af_tensor tq{}, tk{}, tv{}, tout{};
  af_attention_args args{};
  explicit Call(int64_t sk = 37) : Sk(sk) {
    std::mt19937 rng(std::random_device{}());
    std::normal_distribution<float> normal;
    auto fill = [&](std::vector<float>& x, int64_t n) {
      x.resize(n);
      for (float& e : x) e = normal(rng);
    };
    fill(q, B * Sq * H * D), fill(k, B * Sk * Hk * D), fill(v, B * Sk * Hk * D);
    out.assign(B * Sq * H * D, 7.f);
    tq = tensor(q.data(), AF_DTYPE_FLOAT32, {B, Sq, H, D});
    tk = tensor(k.data(), AF_DTYPE_FLOAT32, {B, Sk, Hk, D});
    tv = tensor(v.data(), AF_DTYPE_FLOAT32, {B, Sk, Hk, D});
    tout = tensor(out.data(), AF_DTYPE_FLOAT32, {B, Sq, H, D});
    args.struct_size = sizeof args;
    args.q = &tq, args.k = &tk, args.v = &tv, args.out = &tout;
    args.causal = 1;
  }
};

TEST(Plan, FromShapesAloneRunsLikeForward) {
  Call shapes;
  shapes.tq.data = shapes.tk.data = shapes.tv.data = shapes.tout.data = nullptr;
  af_attention_plan* plan = nullptr;
  ASSERT_EQ(af_attention_plan_create(&shapes.args, &plan), AF_OK) << af_last_error_message();
  ASSERT_NE(plan, nullptr);
  char text[64];
  ASSERT_EQ(af_attention_plan_describe(plan, text, sizeof text, nullptr), AF_OK);
  EXPECT_EQ(std::string(text), "cpu");
  size_t bytes = 1;
  ASSERT_EQ(af_attention_plan_workspace_size(plan, &bytes), AF_OK);
  EXPECT_EQ(bytes, 0u);

  for (int call = 0; call < 2; ++call) {  // one plan, two calls with different data
    Call a;
    std::vector<float> expected;
    ASSERT_EQ(af_attention_forward(&a.args), AF_OK) << af_last_error_message();
    expected = a.out;
    a.out.assign(a.out.size(), 7.f);
    ASSERT_EQ(af_attention_run(plan, &a.args, nullptr, 0), AF_OK) << af_last_error_message();
    EXPECT_EQ(a.out, expected);
  }
  af_attention_plan_destroy(plan);
}

TEST(Plan, RefusesAnotherShapeNamingTheField) {
  Call shapes;
  af_attention_plan* plan = nullptr;
  ASSERT_EQ(af_attention_plan_create(&shapes.args, &plan), AF_OK) << af_last_error_message();
  Call longer(38);
  longer.out.assign(longer.out.size(), 7.f);
  EXPECT_EQ(af_attention_run(plan, &longer.args, nullptr, 0), AF_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(af_last_error_message()).find("seqlen_k"), std::string::npos) << af_last_error_message();
  EXPECT_EQ(longer.out, std::vector<float>(longer.out.size(), 7.f)) << "a refused run wrote its output";
  Call flags;
  flags.args.causal = 0;
  EXPECT_EQ(af_attention_run(plan, &flags.args, nullptr, 0), AF_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(af_last_error_message()).find("causal"), std::string::npos) << af_last_error_message();
  af_attention_plan_destroy(plan);
}

TEST(Plan, NullArgumentsAndVersions) {
  Call a;
  EXPECT_EQ(af_attention_plan_create(&a.args, nullptr), AF_ERR_NULL_POINTER);
  af_attention_plan* plan = reinterpret_cast<af_attention_plan*>(&a);  // must be reset on failure
  a.args.num_splits = 300;
  EXPECT_EQ(af_attention_plan_create(&a.args, &plan), AF_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(plan, nullptr);
  EXPECT_NE(std::string(af_last_error_message()).find("num_splits"), std::string::npos);
  EXPECT_EQ(af_attention_run(nullptr, &a.args, nullptr, 0), AF_ERR_NULL_POINTER);
  size_t bytes = 0;
  EXPECT_EQ(af_attention_plan_workspace_size(nullptr, &bytes), AF_ERR_NULL_POINTER);
  af_attention_plan_destroy(nullptr);
  // A version-1 caller (struct ends at cuda_stream) never has its num_splits read.
  a.args.struct_size = offsetof(af_attention_args, num_splits);
  EXPECT_EQ(af_attention_forward(&a.args), AF_OK) << af_last_error_message();
}

}  // namespace
