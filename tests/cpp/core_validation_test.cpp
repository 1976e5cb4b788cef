// Argument validation, table-driven: one row per bad input (and a few good
// ones at the edges), each run through af_attention_forward AND
// af_attention_supported, which must agree on the status; the message must
// name the problem, and a refused call must not have written its output.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "attnforge/attnforge.h"

namespace {

// A valid call to start from: padded fp32, B = 2, S = 8, H = 4, Hk = 2, D = 16,
// with softmax_lse; helpers turn it into a varlen or a paged call.
struct Call {
  static constexpr int64_t B = 2, S = 8, H = 4, Hk = 2, D = 16;
  std::vector<float> q = std::vector<float>(B * S * H * D, 0.5f), k = std::vector<float>(B * S * Hk * D, 0.25f),
                     v = std::vector<float>(B * S * Hk * D, 1.0f), out = std::vector<float>(B * S * H * D, 7.0f),
                     lse = std::vector<float>(B * H * S, 7.0f), alibi = std::vector<float>(B * H, 0.1f);
  std::vector<int32_t> cu_q{0, 5, 16}, cu_k{0, 9, 16}, seqused{8, 3}, leftpad{1, 2}, table{0, 1, 2, 3}, kv_idx{1, 0};
  af_tensor tq{}, tk{}, tv{}, tout{}, tlse{}, tcu_q{}, tcu_k{}, tseqused{}, tleftpad{}, ttable{}, tkv_idx{}, talibi{};
  af_attention_args args{};

  static af_tensor tensor(void* data, af_dtype dtype, std::vector<int64_t> shape) {
    af_tensor t{};
    t.data = data;
    t.dtype = dtype;
    t.device_type = AF_DEVICE_CPU;
    t.rank = int32_t(shape.size());
    int64_t stride = 1;
    for (int64_t i = t.rank - 1; i >= 0; --i) t.shape[i] = shape[i], t.strides[i] = stride, stride *= shape[i];
    return t;
  }

  Call() {
    tq = tensor(q.data(), AF_DTYPE_FLOAT32, {B, S, H, D});
    tk = tensor(k.data(), AF_DTYPE_FLOAT32, {B, S, Hk, D});
    tv = tensor(v.data(), AF_DTYPE_FLOAT32, {B, S, Hk, D});
    tout = tensor(out.data(), AF_DTYPE_FLOAT32, {B, S, H, D});
    tlse = tensor(lse.data(), AF_DTYPE_FLOAT32, {B, H, S});
    tcu_q = tensor(cu_q.data(), AF_DTYPE_INT32, {B + 1});
    tcu_k = tensor(cu_k.data(), AF_DTYPE_INT32, {B + 1});
    tseqused = tensor(seqused.data(), AF_DTYPE_INT32, {B});
    tleftpad = tensor(leftpad.data(), AF_DTYPE_INT32, {B});
    ttable = tensor(table.data(), AF_DTYPE_INT32, {B, 2});
    tkv_idx = tensor(kv_idx.data(), AF_DTYPE_INT32, {B});
    talibi = tensor(alibi.data(), AF_DTYPE_FLOAT32, {H});
    args.struct_size = sizeof args;
    args.q = &tq, args.k = &tk, args.v = &tv, args.out = &tout, args.softmax_lse = &tlse;
    args.backend = AF_BACKEND_CPU;
  }

  // q, out (16, H, D), k, v (16, Hk, D), lse (H, 16); lengths 5 + 11 and 9 + 7.
  void make_varlen() {
    tq = tensor(q.data(), AF_DTYPE_FLOAT32, {B * S, H, D});
    tout = tensor(out.data(), AF_DTYPE_FLOAT32, {B * S, H, D});
    tk = tensor(k.data(), AF_DTYPE_FLOAT32, {B * S, Hk, D});
    tv = tensor(v.data(), AF_DTYPE_FLOAT32, {B * S, Hk, D});
    tlse = tensor(lse.data(), AF_DTYPE_FLOAT32, {H, B * S});
    args.cu_seqlens_q = &tcu_q, args.cu_seqlens_k = &tcu_k;
    args.max_seqlen_q = 11, args.max_seqlen_k = 9;
  }

  // k, v (4 pages, page_size 4, Hk, D) with block_table (B, 2).
  void make_paged() {
    tk = tensor(k.data(), AF_DTYPE_FLOAT32, {4, 4, Hk, D});
    tv = tensor(v.data(), AF_DTYPE_FLOAT32, {4, 4, Hk, D});
    args.block_table = &ttable;
  }
};

struct Row {
  const char* name;
  af_status status;
  const char* message;  // a substring of af_last_error_message(); "" for AF_OK
  std::function<void(Call&)> mutate;
};

constexpr int64_t kHuge = int64_t(1) << 62;

std::vector<Row> rows() {
  return {
      {"struct_size_too_small", AF_ERR_STRUCT_SIZE, "struct_size", [](Call& c) { c.args.struct_size = 16; }},
      {"struct_size_larger_is_fine", AF_OK, "", [](Call& c) { c.args.struct_size = sizeof(af_attention_args) + 64; }},
      {"q_null", AF_ERR_NULL_POINTER, "q is NULL", [](Call& c) { c.args.q = nullptr; }},
      {"k_null", AF_ERR_NULL_POINTER, "k is NULL", [](Call& c) { c.args.k = nullptr; }},
      {"v_null", AF_ERR_NULL_POINTER, "v is NULL", [](Call& c) { c.args.v = nullptr; }},
      {"out_null", AF_ERR_NULL_POINTER, "out is NULL", [](Call& c) { c.args.out = nullptr; }},
      {"q_data_null", AF_ERR_NULL_POINTER, "q->data is NULL", [](Call& c) { c.tq.data = nullptr; }},
      {"cu_seqlens_data_null", AF_ERR_NULL_POINTER, "cu_seqlens_q->data is NULL",
       [](Call& c) { c.make_varlen(), c.tcu_q.data = nullptr; }},
      {"q_rank", AF_ERR_SHAPE, "q must have rank 4, got rank 3", [](Call& c) { c.tq.rank = 3; }},
      {"rank_above_max", AF_ERR_SHAPE, "k must have rank 4", [](Call& c) { c.tk.rank = 9; }},
      {"negative_size", AF_ERR_SHAPE, "negative size", [](Call& c) { c.tv.shape[1] = -1; }},
      {"k_head_dim", AF_ERR_SHAPE, "k has head_dim 8", [](Call& c) { c.tk.shape[3] = 8, c.tv.shape[3] = 8; }},
      {"v_shape", AF_ERR_SHAPE, "v must have the shape of k", [](Call& c) { c.tv.shape[1] = 7; }},
      {"out_shape", AF_ERR_SHAPE, "out must have shape", [](Call& c) { c.tout.shape[2] = 2; }},
      {"k_batch", AF_ERR_SHAPE, "k has batch 1", [](Call& c) { c.tk.shape[0] = c.tv.shape[0] = 1; }},
      {"gqa_not_divisible", AF_ERR_SHAPE, "H % Hk != 0", [](Call& c) { c.tk.shape[2] = c.tv.shape[2] = 3; }},
      {"zero_kv_heads", AF_ERR_SHAPE, "k has 0 heads", [](Call& c) { c.tk.shape[2] = c.tv.shape[2] = 0; }},
      {"head_dim_zero", AF_ERR_SHAPE, "head_dim",
       [](Call& c) { c.tq.shape[3] = c.tk.shape[3] = c.tv.shape[3] = c.tout.shape[3] = 0; }},
      {"head_dim_above_256", AF_ERR_SHAPE, "must be in 1..256",
       [](Call& c) { c.tq.shape[3] = c.tk.shape[3] = c.tv.shape[3] = c.tout.shape[3] = 257; }},
      {"mixed_dtypes", AF_ERR_DTYPE, "k is float16 but q is float32", [](Call& c) { c.tk.dtype = AF_DTYPE_FLOAT16; }},
      {"out_dtype", AF_ERR_DTYPE, "out is bfloat16", [](Call& c) { c.tout.dtype = AF_DTYPE_BFLOAT16; }},
      {"q_int32", AF_ERR_DTYPE, "q must be float32, float16 or bfloat16",
       [](Call& c) { c.tq.dtype = c.tk.dtype = c.tv.dtype = c.tout.dtype = AF_DTYPE_INT32; }},
      {"q_float64", AF_ERR_DTYPE, "got float64",
       [](Call& c) { c.tq.dtype = c.tk.dtype = c.tv.dtype = c.tout.dtype = AF_DTYPE_FLOAT64; }},
      {"unknown_dtype", AF_ERR_DTYPE, "unknown dtype code 99", [](Call& c) { c.tq.dtype = 99; }},
      {"lse_dtype", AF_ERR_DTYPE, "softmax_lse must be float32", [](Call& c) { c.tlse.dtype = AF_DTYPE_FLOAT16; }},
      {"lse_shape", AF_ERR_SHAPE, "softmax_lse must have shape", [](Call& c) { c.tlse.shape[2] = 9; }},
      {"index_not_int32", AF_ERR_DTYPE, "cu_seqlens_k must be int32",
       [](Call& c) { c.make_varlen(), c.tcu_k.dtype = AF_DTYPE_FLOAT32; }},
      {"alibi_dtype", AF_ERR_DTYPE, "alibi_slopes must be float32",
       [](Call& c) { c.args.alibi_slopes = &c.talibi, c.talibi.dtype = AF_DTYPE_FLOAT16; }},
      {"alibi_shape", AF_ERR_SHAPE, "alibi_slopes must have shape (H) or (B, H)",
       [](Call& c) { c.args.alibi_slopes = &c.talibi, c.talibi.shape[0] = 3; }},
      {"alibi_batch_shape", AF_ERR_SHAPE, "alibi_slopes must have shape",
       [](Call& c) {
         c.args.alibi_slopes = &c.talibi, c.talibi = Call::tensor(c.alibi.data(), AF_DTYPE_FLOAT32, {1, 4});
       }},
      {"alibi_b_h_ok", AF_OK, "",
       [](Call& c) {
         c.args.alibi_slopes = &c.talibi, c.talibi = Call::tensor(c.alibi.data(), AF_DTYPE_FLOAT32, {2, 4});
       }},
      {"last_dim_stride", AF_ERR_STRIDE, "stride 1 in its last dimension", [](Call& c) { c.tq.strides[3] = 2; }},
      {"negative_stride", AF_ERR_STRIDE, "negative stride", [](Call& c) { c.tk.strides[1] = -32; }},
      {"index_stride", AF_ERR_STRIDE, "seqused_k must have stride 1",
       [](Call& c) { c.args.seqused_k = &c.tseqused, c.tseqused.shape[0] = 2, c.tseqused.strides[0] = 2; }},
      // Typed loads of misaligned elements are undefined behaviour (and fault on GPUs).
      {"q_misaligned", AF_ERR_STRIDE, "q->data is not aligned to its 4-byte elements",
       [](Call& c) { c.tq.data = reinterpret_cast<char*>(c.q.data()) + 2; }},
      {"cu_seqlens_misaligned", AF_ERR_STRIDE, "cu_seqlens_k->data is not aligned to its 4-byte elements",
       [](Call& c) { c.make_varlen(), c.tcu_k.data = reinterpret_cast<char*>(c.cu_k.data()) + 1; }},
      {"block_table_misaligned", AF_ERR_STRIDE, "block_table->data is not aligned",
       [](Call& c) { c.make_paged(), c.ttable.data = reinterpret_cast<char*>(c.table.data()) + 3; }},
      {"lse_misaligned", AF_ERR_STRIDE, "softmax_lse->data is not aligned",
       [](Call& c) { c.tlse.data = reinterpret_cast<char*>(c.lse.data()) + 1; }},
      {"device_mismatch", AF_ERR_DEVICE, "k is on device (1, 1)", [](Call& c) { c.tk.device_index = 1; }},
      {"cuda_mixed_with_cpu", AF_ERR_DEVICE, "out is on device (2, 0)",
       [](Call& c) { c.tout.device_type = AF_DEVICE_CUDA; }},
      {"unknown_device", AF_ERR_DEVICE, "unknown device_type 7", [](Call& c) { c.tv.device_type = 7; }},
      {"cuda_backend_on_host", AF_ERR_DEVICE, "backend 'cuda' was requested",
       [](Call& c) { c.args.backend = AF_BACKEND_CUDA; }},
      {"unknown_backend", AF_ERR_INVALID_ARGUMENT, "backend 7 is not", [](Call& c) { c.args.backend = 7; }},
      {"negative_backend", AF_ERR_INVALID_ARGUMENT, "backend -1 is not", [](Call& c) { c.args.backend = -1; }},
      {"huge_backend", AF_ERR_INVALID_ARGUMENT, "backend 2147483647 is not",
       [](Call& c) { c.args.backend = INT32_MAX; }},
      {"negative_dtype", AF_ERR_DTYPE, "unknown dtype code -2147483648", [](Call& c) { c.tk.dtype = INT32_MIN; }},
      {"negative_device_type", AF_ERR_DEVICE, "unknown device_type -1", [](Call& c) { c.tq.device_type = -1; }},
      {"negative_device_index", AF_ERR_DEVICE, "negative device_index", [](Call& c) { c.tout.device_index = -3; }},
      {"negative_rank", AF_ERR_SHAPE, "got rank -1", [](Call& c) { c.tq.rank = -1; }},
      {"cu_seqlens_k_alone", AF_ERR_SEQLENS, "without cu_seqlens_q", [](Call& c) { c.args.cu_seqlens_k = &c.tcu_k; }},
      {"cu_seqlens_q_alone", AF_ERR_SEQLENS, "without cu_seqlens_k",
       [](Call& c) { c.make_varlen(), c.args.cu_seqlens_k = nullptr; }},
      {"varlen_ok", AF_OK, "", [](Call& c) { c.make_varlen(); }},
      {"cu_seqlens_length", AF_ERR_SEQLENS, "cu_seqlens_k has 2 entries",
       [](Call& c) { c.make_varlen(), c.tcu_k.shape[0] = 2; }},
      {"cu_seqlens_not_from_zero", AF_ERR_SEQLENS, "cu_seqlens_q[0] must be 0",
       [](Call& c) {
         c.make_varlen(), c.cu_q = {1, 5, 16};
       }},
      {"cu_seqlens_decreasing", AF_ERR_SEQLENS, "non-decreasing",
       [](Call& c) {
         c.make_varlen(), c.cu_k = {0, 9, 8}, c.args.max_seqlen_k = 99;
       }},
      {"cu_seqlens_past_rows", AF_ERR_SEQLENS, "past the 16 rows",
       [](Call& c) {
         c.make_varlen(), c.cu_q = {0, 5, 17}, c.args.max_seqlen_q = 99;
       }},
      {"max_seqlen_q_too_small", AF_ERR_SEQLENS, "max_seqlen_q = 10 is smaller than a query length of 11",
       [](Call& c) { c.make_varlen(), c.args.max_seqlen_q = 10; }},
      {"max_seqlen_k_too_small", AF_ERR_SEQLENS, "max_seqlen_k = 8 is smaller",
       [](Call& c) { c.make_varlen(), c.args.max_seqlen_k = 8; }},
      {"max_seqlen_negative", AF_ERR_SEQLENS, "must not be negative",
       [](Call& c) { c.make_varlen(), c.args.max_seqlen_q = -1; }},
      {"varlen_empty_sequences_ok", AF_OK, "",
       [](Call& c) {
         c.make_varlen(), c.cu_q = {0, 0, 16}, c.cu_k = {0, 16, 16}, c.args.max_seqlen_q = c.args.max_seqlen_k = 16;
       }},
      {"varlen_wrong_lse_shape", AF_ERR_SHAPE, "(H, total_q)", [](Call& c) { c.make_varlen(), c.tlse.shape[1] = 15; }},
      {"seqused_too_large", AF_ERR_SEQLENS, "seqused_k[1] = 9",
       [](Call& c) { c.args.seqused_k = &c.tseqused, c.seqused[1] = 9; }},
      {"seqused_negative", AF_ERR_SEQLENS, "seqused_k[0] = -1",
       [](Call& c) { c.args.seqused_k = &c.tseqused, c.seqused[0] = -1; }},
      {"seqused_length", AF_ERR_SHAPE, "seqused_k must have B = 2 entries",
       [](Call& c) { c.args.seqused_k = &c.tseqused, c.tseqused.shape[0] = 1; }},
      {"seqused_leftpad_ok", AF_OK, "",
       [](Call& c) { c.args.seqused_k = &c.tseqused, c.args.leftpad_k = &c.tleftpad; }},
      {"leftpad_past_seqused", AF_ERR_SEQLENS, "leftpad_k[1] = 4",
       [](Call& c) { c.args.seqused_k = &c.tseqused, c.args.leftpad_k = &c.tleftpad, c.leftpad[1] = 4; }},
      {"leftpad_negative", AF_ERR_SEQLENS, "leftpad_k[0] = -1",
       [](Call& c) { c.args.leftpad_k = &c.tleftpad, c.leftpad[0] = -1; }},
      {"paged_ok", AF_OK, "", [](Call& c) { c.make_paged(); }},
      {"paged_varlen_ok", AF_OK, "",
       [](Call& c) {
         c.make_varlen(), c.make_paged(), c.cu_k = {0, 8, 15};
       }},
      {"paged_keys_past_table", AF_ERR_SEQLENS, "block table holds only 8",
       [](Call& c) { c.make_varlen(), c.make_paged(); }},
      {"block_table_entry", AF_ERR_INVALID_ARGUMENT, "block_table[1][0] = 4",
       [](Call& c) { c.make_paged(), c.table[2] = 4; }},
      {"block_table_negative_used", AF_ERR_INVALID_ARGUMENT, "block_table[0][1] = -1",
       [](Call& c) { c.make_paged(), c.table[1] = -1; }},
      {"block_table_unused_entry_ignored", AF_OK, "",
       [](Call& c) { c.make_paged(), c.args.seqused_k = &c.tseqused, c.table[3] = -1; }},
      {"block_table_rows", AF_ERR_SHAPE, "block_table must have B = 2 rows",
       [](Call& c) { c.make_paged(), c.ttable.shape[0] = 1; }},
      {"page_size_zero", AF_ERR_SHAPE, "page_size >= 1",
       [](Call& c) { c.make_paged(), c.tk.shape[1] = c.tv.shape[1] = 0; }},
      {"paged_with_kv_batch_idx", AF_ERR_INVALID_ARGUMENT, "kv_batch_idx works only",
       [](Call& c) { c.make_paged(), c.args.kv_batch_idx = &c.tkv_idx; }},
      {"kv_batch_idx_ok", AF_OK, "", [](Call& c) { c.args.kv_batch_idx = &c.tkv_idx; }},
      {"kv_batch_idx_range", AF_ERR_INVALID_ARGUMENT, "kv_batch_idx[1] = 2",
       [](Call& c) { c.args.kv_batch_idx = &c.tkv_idx, c.kv_idx[1] = 2; }},
      {"window_left_negative", AF_ERR_INVALID_ARGUMENT, "window sizes", [](Call& c) { c.args.window_left = -2; }},
      {"window_right_negative", AF_ERR_INVALID_ARGUMENT, "window sizes", [](Call& c) { c.args.window_right = -5; }},
      {"scale_nan", AF_ERR_INVALID_ARGUMENT, "softmax_scale", [](Call& c) { c.args.softmax_scale = std::nanf(""); }},
      {"scale_negative", AF_ERR_INVALID_ARGUMENT, "softmax_scale", [](Call& c) { c.args.softmax_scale = -1.0f; }},
      {"scale_inf", AF_ERR_INVALID_ARGUMENT, "softmax_scale",
       [](Call& c) { c.args.softmax_scale = std::numeric_limits<float>::infinity(); }},
      {"softcap_negative", AF_ERR_INVALID_ARGUMENT, "softcap", [](Call& c) { c.args.softcap = -1.0f; }},
      {"softcap_nan", AF_ERR_INVALID_ARGUMENT, "softcap", [](Call& c) { c.args.softcap = std::nanf(""); }},
      {"element_count_overflow", AF_ERR_OVERFLOW, "number of elements overflows",
       [](Call& c) { c.tq.shape[1] = c.tout.shape[1] = kHuge; }},
      {"offset_overflow", AF_ERR_OVERFLOW, "largest element offset overflows",
       [](Call& c) { c.tk.strides[0] = std::numeric_limits<int64_t>::max(); }},
      {"byte_offset_overflow", AF_ERR_OVERFLOW, "largest byte offset overflows",
       [](Call& c) { c.tk.strides[0] = kHuge / 2; }},
      {"out_aliases_k", AF_ERR_INVALID_ARGUMENT, "out overlaps k or v", [](Call& c) { c.tout.data = c.k.data(); }},
      {"out_overlaps_q_shifted", AF_ERR_INVALID_ARGUMENT, "out overlaps q",
       [](Call& c) {  // 4 of the 8 rows, so that out stays inside q's buffer
         c.tq.shape[1] = c.tout.shape[1] = c.tlse.shape[2] = 4;
         c.tout.data = c.q.data() + 16;
       }},
      {"out_is_q_ok", AF_OK, "", [](Call& c) { c.tout.data = c.q.data(); }},
      {"lse_overlaps_out", AF_ERR_INVALID_ARGUMENT, "softmax_lse overlaps",
       [](Call& c) { c.tlse.data = c.out.data(); }},
      {"empty_batch_ok", AF_OK, "",
       [](Call& c) { c.tq.shape[0] = c.tk.shape[0] = c.tv.shape[0] = c.tout.shape[0] = c.tlse.shape[0] = 0; }},
      {"empty_batch_null_data_ok", AF_OK, "",
       [](Call& c) {
         c.tq.shape[0] = c.tk.shape[0] = c.tv.shape[0] = c.tout.shape[0] = c.tlse.shape[0] = 0;
         c.tq.data = c.tk.data = c.tv.data = c.tout.data = c.tlse.data = nullptr;
       }},
      {"zero_keys_ok", AF_OK, "", [](Call& c) { c.tk.shape[1] = c.tv.shape[1] = 0; }},
  };
}

}  // namespace

TEST(CoreValidation, NullArgs) {
  EXPECT_EQ(af_attention_forward(nullptr), AF_ERR_NULL_POINTER);
  EXPECT_NE(std::string(af_last_error_message()).find("args is NULL"), std::string::npos);
  EXPECT_EQ(af_attention_supported(nullptr, nullptr), AF_ERR_NULL_POINTER);
}

TEST(CoreValidation, Table) {
  for (const Row& row : rows()) {
    SCOPED_TRACE(row.name);
    Call supported_call;
    row.mutate(supported_call);
    af_backend selected = AF_BACKEND_AUTO;
    const af_status supported = af_attention_supported(&supported_call.args, &selected);
    const std::string supported_message = af_last_error_message();

    Call forward_call;
    row.mutate(forward_call);
    const af_status forward = af_attention_forward(&forward_call.args);
    const std::string forward_message = af_last_error_message();

    EXPECT_EQ(af_status_string(forward), std::string(af_status_string(row.status))) << forward_message;
    EXPECT_EQ(supported, forward) << "af_attention_supported and af_attention_forward disagree: " << supported_message;
    if (row.status == AF_OK) {
      EXPECT_EQ(selected, AF_BACKEND_CPU);
      continue;
    }
    EXPECT_NE(forward_message.find(row.message), std::string::npos) << "message: " << forward_message;
    EXPECT_EQ(supported_message, forward_message);
    for (float x : forward_call.out) ASSERT_EQ(x, 7.0f) << "a refused call wrote its output";
    for (float x : forward_call.lse) ASSERT_EQ(x, 7.0f) << "a refused call wrote softmax_lse";
  }
}

// With zero keys every row attends to nothing: out is 0 and lse is -inf.
TEST(CoreValidation, ZeroKeysGiveZeroAndMinusInfinity) {
  Call c;
  c.tk.shape[1] = c.tv.shape[1] = 0;
  ASSERT_EQ(af_attention_forward(&c.args), AF_OK) << af_last_error_message();
  for (float x : c.out) ASSERT_EQ(x, 0.0f);
  for (float x : c.lse) ASSERT_TRUE(std::isinf(x) && x < 0);
}

// No query row (Sq = 0) with B = 2^40: nothing to compute, and the cost must not
// grow with B (it used to walk every sequence). k/v hold 3 keys per sequence,
// all sequences aliasing one buffer (batch stride 0).
TEST(CoreValidation, ZeroQueryRowsWithHugeBatchReturnAtOnce) {
  for (int64_t keys : {0, 3}) {
    SCOPED_TRACE("keys " + std::to_string(keys));
    Call c;
    const int64_t huge = int64_t(1) << 40;
    c.tq.shape[0] = c.tout.shape[0] = c.tk.shape[0] = c.tv.shape[0] = c.tlse.shape[0] = huge;
    c.tq.shape[1] = c.tout.shape[1] = c.tlse.shape[2] = 0;
    c.tk.shape[1] = c.tv.shape[1] = keys;
    c.tk.strides[0] = c.tv.strides[0] = 0;
    const auto start = std::chrono::steady_clock::now();
    EXPECT_EQ(af_attention_supported(&c.args, nullptr), AF_OK) << af_last_error_message();
    EXPECT_EQ(af_attention_forward(&c.args), AF_OK) << af_last_error_message();
    EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 1.0);
    for (float x : c.out) ASSERT_EQ(x, 7.0f) << "an empty call wrote its output";
  }
}

// Random index contents, lengths and scalars on varlen, paged and kv-cache
// calls. The library cannot know buffer sizes, so only what it can check is
// fuzzed: index array values (cu_seqlens, seqused_k, leftpad_k, block_table,
// kv_batch_idx), max_seqlen, windows, scale, softcap. Every call must either
// be refused or run without touching memory outside the (valid) tensors (run
// under AddressSanitizer to see that), and forward and supported must agree.
TEST(CoreValidation, FuzzedIndexArraysNeverReadOutOfBounds) {
  const uint64_t seed = uint64_t(std::chrono::high_resolution_clock::now().time_since_epoch().count());
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const int32_t interesting[] = {-2, -1, 0, 1, 2, 3, 4, 5, 7, 8, 9, 11, 15, 16, 17, 1 << 30};
  auto pick = [&] { return interesting[rng() % (sizeof interesting / sizeof interesting[0])]; };
  int accepted = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    Call c;
    const int layout = int(rng() % 4);  // padded, varlen, paged, paged varlen
    if (layout == 1 || layout == 3) c.make_varlen();
    if (layout >= 2) c.make_paged();
    if (rng() % 2) c.args.seqused_k = &c.tseqused;
    if (rng() % 2) c.args.leftpad_k = &c.tleftpad;
    if (layout == 0 && rng() % 2) c.args.kv_batch_idx = &c.tkv_idx;
    if (layout == 1 && rng() % 4 == 0) c.args.cu_seqlens_k = nullptr;
    std::vector<int32_t>* arrays[] = {&c.cu_q, &c.cu_k, &c.seqused, &c.leftpad, &c.table, &c.kv_idx};
    for (int m = 0, n = 1 + int(rng() % 4); m < n; ++m) {
      std::vector<int32_t>& a = *arrays[rng() % 6];
      a[rng() % a.size()] = pick();
    }
    if (rng() % 4 == 0) c.args.max_seqlen_q = pick();
    if (rng() % 4 == 0) c.args.max_seqlen_k = pick();
    if (rng() % 3 == 0) c.args.causal = 1;
    if (rng() % 3 == 0) c.args.window_left = pick();
    if (rng() % 3 == 0) c.args.window_right = pick();
    if (rng() % 5 == 0) c.args.softcap = float(pick());
    if (rng() % 5 == 0) c.args.softmax_scale = float(pick());
    af_backend selected = AF_BACKEND_AUTO;
    const af_status supported = af_attention_supported(&c.args, &selected);
    const af_status forward = af_attention_forward(&c.args);
    ASSERT_EQ(supported, forward) << "trial " << trial << ": " << af_last_error_message();
    if (forward == AF_OK) {
      ++accepted;
      for (float x : c.out) ASSERT_FALSE(std::isnan(x)) << "trial " << trial;
    } else {
      ASSERT_NE(std::string(af_last_error_message()), "") << "trial " << trial;
    }
  }
  EXPECT_GT(accepted, 100) << "the fuzzer should produce valid calls too";
}
