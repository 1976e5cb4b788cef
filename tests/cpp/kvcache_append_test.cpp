// af_kvcache_append's host-side checks: every bad field is refused with a message naming it before
// anything is launched (the kernel itself runs in tests/gpu), and host tensors are refused as
// unsupported so that the Python package appends with torch.
#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "attnforge/attnforge.h"

namespace {

af_tensor tensor(af_dtype dtype, std::vector<int64_t> shape, af_device_type device = AF_DEVICE_CUDA) {
  static char storage[64];  // never dereferenced: every case fails before a launch
  af_tensor t{};
  t.data = storage;
  t.dtype = dtype;
  t.device_type = device;
  t.rank = int32_t(shape.size());
  int64_t stride = 1;
  for (int64_t i = t.rank - 1; i >= 0; --i) t.shape[i] = shape[i], t.strides[i] = stride, stride *= shape[i];
  return t;
}

struct Append {
  af_tensor k_cache = tensor(AF_DTYPE_BFLOAT16, {3, 64, 2, 128}), v_cache = k_cache;
  af_tensor k = tensor(AF_DTYPE_BFLOAT16, {3, 1, 2, 128}), v = k;
  af_tensor seqlens = tensor(AF_DTYPE_INT32, {3});
  af_tensor cos = tensor(AF_DTYPE_BFLOAT16, {64, 32}), sin = cos;
  af_tensor q = tensor(AF_DTYPE_BFLOAT16, {3, 1, 8, 128}), q_out = q;
  af_tensor table = tensor(AF_DTYPE_INT32, {3, 4});
  af_tensor used = tensor(AF_DTYPE_FLOAT32, {3});
  af_kvcache_append_args args{};
  Append() {
    args.struct_size = sizeof args;
    args.k_cache = &k_cache, args.v_cache = &v_cache, args.k = &k, args.v = &v, args.cache_seqlens = &seqlens;
    args.rotary_cos = &cos, args.rotary_sin = &sin, args.q = &q, args.q_out = &q_out;
  }
};

struct Case {
  const char* name;
  af_status status;
  const char* message;  // must appear in af_last_error_message()
  std::function<void(Append&)> edit;
};

TEST(KvcacheAppend, RefusesBadFieldsNamingThem) {
  const std::vector<Case> cases = {
      {"null_args", AF_ERR_NULL_POINTER, "args", nullptr},
      {"small_struct", AF_ERR_STRUCT_SIZE, "struct_size", [](Append& a) { a.args.struct_size = 8; }},
      {"no_cache", AF_ERR_NULL_POINTER, "k_cache", [](Append& a) { a.args.k_cache = nullptr; }},
      {"host_cache", AF_ERR_UNSUPPORTED, "CUDA",
       [](Append& a) { a.k_cache.device_type = a.v_cache.device_type = AF_DEVICE_CPU; }},
      {"fp32_cache", AF_ERR_DTYPE, "k_cache", [](Append& a) { a.k_cache.dtype = a.v_cache.dtype = AF_DTYPE_FLOAT32; }},
      {"v_cache_shape", AF_ERR_SHAPE, "v_cache",
       [](Append& a) {
         a.v_cache = tensor(AF_DTYPE_BFLOAT16, {3, 64, 2, 64});
       }},
      {"k_without_v", AF_ERR_NULL_POINTER, "together", [](Append& a) { a.args.v = nullptr; }},
      {"k_heads", AF_ERR_SHAPE, "k must have shape",
       [](Append& a) {
         a.k = a.v = tensor(AF_DTYPE_BFLOAT16, {3, 1, 4, 128});
       }},
      {"k_dtype", AF_ERR_DTYPE, "k must have the dtype",
       [](Append& a) {
         a.k = a.v = tensor(AF_DTYPE_FLOAT16, {3, 1, 2, 128});
       }},
      {"seqlens_int64", AF_ERR_DTYPE, "cache_seqlens", [](Append& a) { a.seqlens.dtype = AF_DTYPE_FLOAT32; }},
      {"seqlens_batch", AF_ERR_SHAPE, "k must have shape", [](Append& a) { a.seqlens = tensor(AF_DTYPE_INT32, {2}); }},
      {"cache_batch", AF_ERR_SHAPE, "k_cache has batch",
       [](Append& a) {
         a.k_cache = a.v_cache = tensor(AF_DTYPE_BFLOAT16, {5, 64, 2, 128});
       }},
      {"cos_without_sin", AF_ERR_NULL_POINTER, "rotary_sin", [](Append& a) { a.args.rotary_sin = nullptr; }},
      {"rotary_too_wide", AF_ERR_SHAPE, "rotary_dim",
       [](Append& a) {
         a.cos = a.sin = tensor(AF_DTYPE_BFLOAT16, {64, 65});
       }},
      {"q_without_rotary", AF_ERR_INVALID_ARGUMENT, "rotary_cos",
       [](Append& a) { a.args.rotary_cos = a.args.rotary_sin = nullptr; }},
      {"q_out_shape", AF_ERR_SHAPE, "q_out",
       [](Append& a) {
         a.q_out = tensor(AF_DTYPE_BFLOAT16, {3, 2, 8, 128});
       }},
      {"q_dim", AF_ERR_SHAPE, "q must have shape",
       [](Append& a) {
         a.q = a.q_out = tensor(AF_DTYPE_BFLOAT16, {3, 1, 8, 64});
       }},
      {"paged_with_batch_idx", AF_ERR_INVALID_ARGUMENT, "cache_batch_idx",
       [](Append& a) {
         a.args.block_table = &a.table;
         a.args.cache_batch_idx = &a.seqlens;
       }},
      {"table_int64", AF_ERR_DTYPE, "block_table",
       [](Append& a) {
         a.table.dtype = AF_DTYPE_FLOAT32;
         a.args.block_table = &a.table;
       }},
      {"table_rows", AF_ERR_SHAPE, "block_table",
       [](Append& a) {
         a.table = tensor(AF_DTYPE_INT32, {2, 4});
         a.args.block_table = &a.table;
       }},
      {"other_device", AF_ERR_DEVICE, "v", [](Append& a) { a.v.device_index = 1; }},
      {"seqused_out_dtype", AF_ERR_DTYPE, "seqused_out", [](Append& a) { a.args.seqused_out = &a.used; }},
  };
  for (const Case& c : cases) {
    Append a;
    if (c.edit) c.edit(a);
    const af_status status = af_kvcache_append(c.edit ? &a.args : nullptr);
    EXPECT_EQ(status, c.status) << c.name << ": " << af_last_error_message();
    EXPECT_NE(std::string(af_last_error_message()).find(c.message), std::string::npos)
        << c.name << ": " << af_last_error_message();
  }
}

TEST(KvcacheAppend, ValidCallWithoutAGpuSaysWhy) {
  if (af_backend_available(AF_BACKEND_CUDA) == AF_OK) GTEST_SKIP() << "a GPU is here: tests/gpu runs the kernel";
  Append a;
  EXPECT_EQ(af_kvcache_append(&a.args), AF_ERR_BACKEND_UNAVAILABLE) << af_last_error_message();
}

}  // namespace
