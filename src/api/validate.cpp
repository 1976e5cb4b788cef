// Argument validation: turns the public af_attention_args into an AttentionProblem
// or returns the first problem found as a specific status with a message.
//
// Order of checks: the struct itself, each tensor on its own (pointers, rank,
// dtype, strides, addressable extent), then the relations between tensors
// (shapes, devices), then the scalars, then the contents of the index arrays.
//
// Index arrays (cu_seqlens_*, seqused_k, leftpad_k, block_table, kv_batch_idx)
// are read only when they are in host memory: reading device memory would need
// a synchronisation. For CUDA tensors their contents are the caller's
// responsibility, as in FlashAttention; the GPU kernels must not rely on them
// beyond what is checked here (shapes, dtypes, strides).
//
// Aliasing: `out` may be the very same view as `q` (every backend reads a query
// tile before it writes that tile's output); any other overlap of out with
// q, k or v is rejected, because results would depend on the schedule.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>

#include "api/validate.h"
#include "common/error.h"

namespace af {

namespace {

// The size of version 1 of af_attention_args: everything up to cuda_stream.
constexpr size_t kArgsV1Size = offsetof(af_attention_args, cuda_stream) + sizeof(void*);
// Version 2 adds num_splits.
constexpr size_t kArgsV2Size = offsetof(af_attention_args, num_splits) + sizeof(int32_t);

const char* dtype_name(int32_t dtype) {
  switch (dtype) {
    case AF_DTYPE_FLOAT32: return "float32";
    case AF_DTYPE_FLOAT16: return "float16";
    case AF_DTYPE_BFLOAT16: return "bfloat16";
    case AF_DTYPE_INT32: return "int32";
    case AF_DTYPE_FLOAT64: return "float64";
  }
  return "unknown";
}

int64_t dtype_bytes(int32_t dtype) {
  switch (dtype) {
    case AF_DTYPE_FLOAT32: return 4;
    case AF_DTYPE_FLOAT16: return 2;
    case AF_DTYPE_BFLOAT16: return 2;
    case AF_DTYPE_INT32: return 4;
    case AF_DTYPE_FLOAT64: return 8;
  }
  return 0;
}

// Writes a tensor's shape as "(2, 3, 4)" into buf for messages.
const char* shape_text(const af_tensor& t, char (&buf)[160]) {
  int n = snprintf(buf, sizeof buf, "(");
  for (int32_t i = 0; i < t.rank && n < int(sizeof buf) - 24; ++i)
    n += snprintf(buf + n, sizeof buf - n, i == 0 ? "%lld" : ", %lld", static_cast<long long>(t.shape[i]));
  snprintf(buf + n, sizeof buf - n, ")");
  return buf;
}

// What a tensor covers in memory, once its own fields have been checked.
struct Extent {
  int64_t elements = 0;    // product of the shape
  int64_t last_byte = -1;  // offset from data of the last byte reachable, -1 when empty
};

// Checks one tensor on its own: pointers, rank, non-negative sizes and strides,
// unit stride in the last dimension (when it has more than one element), data
// aligned to the element size, and that every element offset and byte offset
// fits in int64. need_data: a NULL data pointer is an error (not for plans).
af_status check_tensor(const char* name, const af_tensor* t, int32_t rank, Extent* extent, bool need_data) {
  if (t == nullptr) return fail(AF_ERR_NULL_POINTER, "%s is NULL", name);
  if (t->rank != rank) return fail(AF_ERR_SHAPE, "%s must have rank %d, got rank %d", name, rank, int(t->rank));
  if (t->device_type != AF_DEVICE_CPU && t->device_type != AF_DEVICE_CUDA)
    return fail(AF_ERR_DEVICE, "%s has unknown device_type %d (1 cpu, 2 cuda)", name, int(t->device_type));
  if (t->device_index < 0) return fail(AF_ERR_DEVICE, "%s has negative device_index %d", name, int(t->device_index));
  const int64_t elem_bytes = dtype_bytes(t->dtype);
  if (elem_bytes == 0) return fail(AF_ERR_DTYPE, "%s has unknown dtype code %d", name, int(t->dtype));
  int64_t elements = 1, max_offset = 0;
  for (int32_t i = 0; i < rank; ++i) {
    if (t->shape[i] < 0)
      return fail(AF_ERR_SHAPE, "%s has negative size %lld in dimension %d", name, (long long)t->shape[i], int(i));
    if (t->strides[i] < 0)
      return fail(AF_ERR_STRIDE, "%s has negative stride %lld in dimension %d", name, (long long)t->strides[i], int(i));
    if (__builtin_mul_overflow(elements, t->shape[i], &elements))
      return fail(AF_ERR_OVERFLOW, "%s: the number of elements overflows int64", name);
  }
  if (rank > 0 && t->shape[rank - 1] > 1 && t->strides[rank - 1] != 1)
    return fail(AF_ERR_STRIDE, "%s must have stride 1 in its last dimension, got %lld", name,
                (long long)t->strides[rank - 1]);
  if (elements > 0) {
    for (int32_t i = 0; i < rank; ++i) {
      int64_t term = 0;
      if (__builtin_mul_overflow(t->shape[i] - 1, t->strides[i], &term) ||
          __builtin_add_overflow(max_offset, term, &max_offset))
        return fail(AF_ERR_OVERFLOW, "%s: the largest element offset overflows int64", name);
    }
    int64_t end_byte = 0;
    if (__builtin_mul_overflow(max_offset + 1, elem_bytes, &end_byte))
      return fail(AF_ERR_OVERFLOW, "%s: the largest byte offset overflows int64", name);
    if (t->data == nullptr && need_data) return fail(AF_ERR_NULL_POINTER, "%s->data is NULL", name);
    // Every backend reads elements as their type (C++ typed loads, GPU vector loads), which
    // needs element alignment; torch and DLPack tensors always have it.
    if (reinterpret_cast<uintptr_t>(t->data) % uintptr_t(elem_bytes) != 0)
      return fail(AF_ERR_STRIDE, "%s->data is not aligned to its %lld-byte elements", name, (long long)elem_bytes);
    extent->last_byte = end_byte - 1;
  }
  extent->elements = elements;
  return AF_OK;
}

// A checked optional int32 index array of the given rank.
af_status check_index_tensor(const char* name, const af_tensor* t, int32_t rank, Extent* extent, bool need_data) {
  AF_RETURN_IF_ERROR(check_tensor(name, t, rank, extent, need_data));
  if (t->dtype != AF_DTYPE_INT32) return fail(AF_ERR_DTYPE, "%s must be int32, got %s", name, dtype_name(t->dtype));
  return AF_OK;
}

af_status check_shape(const char* name, const af_tensor& t, const int64_t* expected, int32_t rank,
                      const char* meaning) {
  for (int32_t i = 0; i < rank; ++i) {
    if (t.shape[i] != expected[i]) {
      char got[160], want[160];
      af_tensor w{};
      w.rank = rank;
      for (int32_t j = 0; j < rank; ++j) w.shape[j] = expected[j];
      return fail(AF_ERR_SHAPE, "%s must have shape %s %s, got %s", name, shape_text(w, want), meaning,
                  shape_text(t, got));
    }
  }
  return AF_OK;
}

af_status check_same_device(const char* name, const af_tensor& t, const af_tensor& q) {
  if (t.device_type != q.device_type || t.device_index != q.device_index)
    return fail(AF_ERR_DEVICE, "%s is on device (%d, %d) but q is on device (%d, %d)", name, int(t.device_type),
                int(t.device_index), int(q.device_type), int(q.device_index));
  return AF_OK;
}

bool overlaps(const af_tensor& a, const Extent& ea, const af_tensor& b, const Extent& eb) {
  if (ea.last_byte < 0 || eb.last_byte < 0) return false;
  const uintptr_t a0 = reinterpret_cast<uintptr_t>(a.data), b0 = reinterpret_cast<uintptr_t>(b.data);
  return a0 <= b0 + uintptr_t(eb.last_byte) && b0 <= a0 + uintptr_t(ea.last_byte);
}

bool same_view(const af_tensor& a, const af_tensor& b) {
  if (a.data != b.data || a.rank != b.rank || a.dtype != b.dtype) return false;
  for (int32_t i = 0; i < a.rank; ++i)
    if (a.shape[i] != b.shape[i] || a.strides[i] != b.strides[i]) return false;
  return true;
}

// Checks a host cu_seqlens array of B + 1 entries: starts at 0, non-decreasing,
// last entry <= rows; returns the largest length in *max_len.
af_status check_cu_seqlens(const char* name, const int32_t* cu, int64_t batch, int64_t rows, int64_t* max_len) {
  if (cu[0] != 0) return fail(AF_ERR_SEQLENS, "%s[0] must be 0, got %d", name, int(cu[0]));
  *max_len = 0;
  for (int64_t b = 0; b < batch; ++b) {
    if (cu[b + 1] < cu[b])
      return fail(AF_ERR_SEQLENS, "%s must be non-decreasing, but %s[%lld] = %d < %s[%lld] = %d", name, name,
                  (long long)(b + 1), int(cu[b + 1]), name, (long long)b, int(cu[b]));
    if (int64_t(cu[b + 1]) - cu[b] > *max_len) *max_len = int64_t(cu[b + 1]) - cu[b];
  }
  if (cu[batch] > rows)
    return fail(AF_ERR_SEQLENS, "%s[%lld] = %d is past the %lld rows of its tensor", name, (long long)batch,
                int(cu[batch]), (long long)rows);
  return AF_OK;
}

}  // namespace

af_status validate_attention_args(const af_attention_args* args, AttentionProblem* problem, ValidateMode mode) {
  const bool call = mode == ValidateMode::kCall;
  if (args == nullptr) return fail(AF_ERR_NULL_POINTER, "args is NULL");
  if (problem == nullptr) return fail(AF_ERR_NULL_POINTER, "problem is NULL");
  if (args->struct_size < kArgsV1Size)
    return fail(AF_ERR_STRUCT_SIZE, "args->struct_size is %u, smaller than version 1 (%zu bytes)",
                unsigned(args->struct_size), kArgsV1Size);
  if (args->backend != AF_BACKEND_AUTO && args->backend != AF_BACKEND_CPU && args->backend != AF_BACKEND_CUDA)
    return fail(AF_ERR_INVALID_ARGUMENT, "backend %d is not an af_backend value (0 auto, 1 cpu, 2 cuda)",
                int(args->backend));

  AttentionProblem p;
  const bool varlen = args->cu_seqlens_q != nullptr;
  const bool paged = args->block_table != nullptr;
  if (args->cu_seqlens_k != nullptr && !varlen)
    return fail(AF_ERR_SEQLENS, "cu_seqlens_k is given without cu_seqlens_q (varlen needs both)");
  if (varlen && args->cu_seqlens_k == nullptr && !paged)
    return fail(AF_ERR_SEQLENS, "cu_seqlens_q is given without cu_seqlens_k (only a paged KV cache may omit it)");
  if (args->kv_batch_idx != nullptr && (varlen || paged))
    return fail(AF_ERR_INVALID_ARGUMENT, "kv_batch_idx works only with padded, non-paged k/v");

  // ---- Each tensor on its own.
  const int32_t q_rank = varlen ? 3 : 4;
  const int32_t kv_rank = (varlen && !paged) ? 3 : 4;
  Extent eq, ek, ev, eo, e_lse, ecq, eck, esu, elp, ebt, ekb, eal;
  AF_RETURN_IF_ERROR(check_tensor("q", args->q, q_rank, &eq, call));
  AF_RETURN_IF_ERROR(check_tensor("k", args->k, kv_rank, &ek, call));
  AF_RETURN_IF_ERROR(check_tensor("v", args->v, kv_rank, &ev, call));
  AF_RETURN_IF_ERROR(check_tensor("out", args->out, q_rank, &eo, call));
  const af_tensor &q = *args->q, &k = *args->k, &v = *args->v, &out = *args->out;
  if (args->softmax_lse != nullptr)
    AF_RETURN_IF_ERROR(check_tensor("softmax_lse", args->softmax_lse, varlen ? 2 : 3, &e_lse, call));
  if (varlen) AF_RETURN_IF_ERROR(check_index_tensor("cu_seqlens_q", args->cu_seqlens_q, 1, &ecq, call));
  if (args->cu_seqlens_k != nullptr)
    AF_RETURN_IF_ERROR(check_index_tensor("cu_seqlens_k", args->cu_seqlens_k, 1, &eck, call));
  if (args->seqused_k != nullptr) AF_RETURN_IF_ERROR(check_index_tensor("seqused_k", args->seqused_k, 1, &esu, call));
  if (args->leftpad_k != nullptr) AF_RETURN_IF_ERROR(check_index_tensor("leftpad_k", args->leftpad_k, 1, &elp, call));
  if (paged) AF_RETURN_IF_ERROR(check_index_tensor("block_table", args->block_table, 2, &ebt, call));
  if (args->kv_batch_idx != nullptr)
    AF_RETURN_IF_ERROR(check_index_tensor("kv_batch_idx", args->kv_batch_idx, 1, &ekb, call));
  if (args->alibi_slopes != nullptr) {
    const int32_t rank = args->alibi_slopes->rank == 2 ? 2 : 1;
    AF_RETURN_IF_ERROR(check_tensor("alibi_slopes", args->alibi_slopes, rank, &eal, call));
    if (args->alibi_slopes->dtype != AF_DTYPE_FLOAT32)
      return fail(AF_ERR_DTYPE, "alibi_slopes must be float32, got %s", dtype_name(args->alibi_slopes->dtype));
  }

  // ---- Dtypes and devices.
  if (q.dtype != AF_DTYPE_FLOAT32 && q.dtype != AF_DTYPE_FLOAT16 && q.dtype != AF_DTYPE_BFLOAT16)
    return fail(AF_ERR_DTYPE, "q must be float32, float16 or bfloat16, got %s", dtype_name(q.dtype));
  const af_tensor* same_dtype[] = {&k, &v, &out};
  const char* same_dtype_names[] = {"k", "v", "out"};
  for (int i = 0; i < 3; ++i)
    if (same_dtype[i]->dtype != q.dtype)
      return fail(AF_ERR_DTYPE, "%s is %s but q is %s (q, k, v and out must share one dtype)", same_dtype_names[i],
                  dtype_name(same_dtype[i]->dtype), dtype_name(q.dtype));
  if (args->softmax_lse != nullptr && args->softmax_lse->dtype != AF_DTYPE_FLOAT32)
    return fail(AF_ERR_DTYPE, "softmax_lse must be float32, got %s", dtype_name(args->softmax_lse->dtype));
  const af_tensor* optional[] = {args->softmax_lse, args->cu_seqlens_q, args->cu_seqlens_k, args->seqused_k,
                                 args->leftpad_k,   args->block_table,  args->kv_batch_idx, args->alibi_slopes};
  const char* optional_names[] = {"softmax_lse", "cu_seqlens_q", "cu_seqlens_k", "seqused_k",
                                  "leftpad_k",   "block_table",  "kv_batch_idx", "alibi_slopes"};
  AF_RETURN_IF_ERROR(check_same_device("k", k, q));
  AF_RETURN_IF_ERROR(check_same_device("v", v, q));
  AF_RETURN_IF_ERROR(check_same_device("out", out, q));
  for (int i = 0; i < 8; ++i)
    if (optional[i] != nullptr) AF_RETURN_IF_ERROR(check_same_device(optional_names[i], *optional[i], q));
  const bool host = q.device_type == AF_DEVICE_CPU;

  // ---- Shapes. Dimensions: q (B, Sq, H, D) or (total_q, H, D); k/v per layout.
  const int64_t heads = q.shape[q_rank - 2], head_dim = q.shape[q_rank - 1];
  const int64_t heads_kv = k.shape[kv_rank - 2];
  if (head_dim == 0 || head_dim > 256)
    return fail(AF_ERR_SHAPE, "head_dim (last dimension of q) must be in 1..256, got %lld", (long long)head_dim);
  if (heads == 0) return fail(AF_ERR_SHAPE, "q has 0 heads");
  if (heads_kv == 0) return fail(AF_ERR_SHAPE, "k has 0 heads");
  if (heads % heads_kv != 0)
    return fail(AF_ERR_SHAPE, "the %lld query heads are not a multiple of the %lld key/value heads (H %% Hk != 0)",
                (long long)heads, (long long)heads_kv);
  if (k.shape[kv_rank - 1] != head_dim)
    return fail(AF_ERR_SHAPE, "k has head_dim %lld but q has %lld", (long long)k.shape[kv_rank - 1],
                (long long)head_dim);
  for (int32_t i = 0; i < kv_rank; ++i)
    if (v.shape[i] != k.shape[i]) {
      char gk[160], gv[160];
      return fail(AF_ERR_SHAPE, "v must have the shape of k %s, got %s", shape_text(k, gk), shape_text(v, gv));
    }
  {
    char gq[160];
    AF_RETURN_IF_ERROR(check_shape("out", out, q.shape, q_rank, shape_text(q, gq)));
  }

  int64_t batch = 0, seqlen_q = 0, seqlen_k = 0;
  if (varlen) {
    if (args->cu_seqlens_q->shape[0] < 1)
      return fail(AF_ERR_SEQLENS, "cu_seqlens_q must have B + 1 >= 1 entries, got 0");
    batch = args->cu_seqlens_q->shape[0] - 1;
    if (args->cu_seqlens_k != nullptr && args->cu_seqlens_k->shape[0] != batch + 1)
      return fail(AF_ERR_SEQLENS, "cu_seqlens_k has %lld entries but cu_seqlens_q has %lld (both B + 1)",
                  (long long)args->cu_seqlens_k->shape[0], (long long)(batch + 1));
    if (args->max_seqlen_q < 0 || args->max_seqlen_k < 0)
      return fail(AF_ERR_SEQLENS, "max_seqlen_q (%lld) and max_seqlen_k (%lld) must not be negative",
                  (long long)args->max_seqlen_q, (long long)args->max_seqlen_k);
    seqlen_q = args->max_seqlen_q;
    seqlen_k = args->max_seqlen_k;
  } else {
    batch = q.shape[0];
    seqlen_q = q.shape[1];
    seqlen_k = k.shape[1];
  }

  int64_t kv_batches = 0;  // padded: first dimension of k/v; paged: pages
  if (paged) {
    const af_tensor& bt = *args->block_table;
    if (bt.shape[0] != batch)
      return fail(AF_ERR_SHAPE, "block_table must have B = %lld rows, got %lld", (long long)batch,
                  (long long)bt.shape[0]);
    p.page_size = k.shape[1];
    p.num_pages = k.shape[0];
    p.max_blocks_per_seq = bt.shape[1];
    p.block_table_batch_stride = bt.strides[0];
    if (p.page_size < 1) return fail(AF_ERR_SHAPE, "paged k/v must have page_size >= 1 (dimension 1 of k), got 0");
    int64_t capacity = 0;
    if (__builtin_mul_overflow(p.max_blocks_per_seq, p.page_size, &capacity) || capacity > INT32_MAX)
      return fail(AF_ERR_OVERFLOW, "block_table capacity max_blocks * page_size does not fit in int32");
    // Without cu_seqlens_k every sequence may use the whole block table.
    if (!varlen || args->cu_seqlens_k == nullptr) seqlen_k = capacity;
    p.total_k = p.num_pages * p.page_size;
  } else if (varlen) {
    p.total_k = k.shape[0];
  } else {
    kv_batches = k.shape[0];
    if (args->kv_batch_idx == nullptr && kv_batches != batch)
      return fail(AF_ERR_SHAPE, "k has batch %lld but q has batch %lld", (long long)kv_batches, (long long)batch);
    p.total_k = kv_batches * seqlen_k;
  }
  p.total_q = varlen ? q.shape[0] : batch * seqlen_q;

  if (args->softmax_lse != nullptr) {
    const af_tensor& lse = *args->softmax_lse;
    if (varlen) {
      const int64_t want[2] = {heads, q.shape[0]};
      AF_RETURN_IF_ERROR(check_shape("softmax_lse", lse, want, 2, "(H, total_q)"));
    } else {
      const int64_t want[3] = {batch, heads, seqlen_q};
      AF_RETURN_IF_ERROR(check_shape("softmax_lse", lse, want, 3, "(B, H, Sq)"));
    }
  }
  const af_tensor* per_batch[] = {args->seqused_k, args->leftpad_k, args->kv_batch_idx};
  const char* per_batch_names[] = {"seqused_k", "leftpad_k", "kv_batch_idx"};
  for (int i = 0; i < 3; ++i)
    if (per_batch[i] != nullptr && per_batch[i]->shape[0] != batch)
      return fail(AF_ERR_SHAPE, "%s must have B = %lld entries, got %lld", per_batch_names[i], (long long)batch,
                  (long long)per_batch[i]->shape[0]);
  if (args->alibi_slopes != nullptr) {
    const af_tensor& al = *args->alibi_slopes;
    const bool ok = al.rank == 1 ? al.shape[0] == heads : (al.shape[0] == batch && al.shape[1] == heads);
    if (!ok) {
      char got[160];
      return fail(AF_ERR_SHAPE, "alibi_slopes must have shape (H) or (B, H) with B = %lld, H = %lld, got %s",
                  (long long)batch, (long long)heads, shape_text(al, got));
    }
    p.alibi_head_stride = al.strides[al.rank - 1];
    p.alibi_batch_stride = al.rank == 2 ? al.strides[0] : 0;
    p.alibi_slopes = static_cast<const float*>(al.data);
  }

  // ---- Aliasing between the output and the inputs (a plan has no addresses yet).
  if (call) {
    if (overlaps(out, eo, k, ek) || overlaps(out, eo, v, ev))
      return fail(AF_ERR_INVALID_ARGUMENT, "out overlaps k or v in memory");
    if (overlaps(out, eo, q, eq) && !same_view(out, q))
      return fail(AF_ERR_INVALID_ARGUMENT, "out overlaps q in memory without being exactly the same view");
    if (args->softmax_lse != nullptr &&
        (overlaps(*args->softmax_lse, e_lse, q, eq) || overlaps(*args->softmax_lse, e_lse, k, ek) ||
         overlaps(*args->softmax_lse, e_lse, v, ev) || overlaps(*args->softmax_lse, e_lse, out, eo)))
      return fail(AF_ERR_INVALID_ARGUMENT, "softmax_lse overlaps q, k, v or out in memory");
  }

  // ---- Scalars.
  float scale = args->softmax_scale;
  if (std::isnan(scale) || std::isinf(scale) || scale < 0.0f)
    return fail(AF_ERR_INVALID_ARGUMENT, "softmax_scale must be finite and >= 0 (0 means 1/sqrt(head_dim)), got %g",
                double(scale));
  if (scale == 0.0f) scale = float(1.0 / std::sqrt(double(head_dim)));
  if (std::isnan(args->softcap) || std::isinf(args->softcap) || args->softcap < 0.0f)
    return fail(AF_ERR_INVALID_ARGUMENT, "softcap must be finite and >= 0 (0 disables it), got %g",
                double(args->softcap));
  const int32_t num_splits = args->struct_size >= kArgsV2Size ? args->num_splits : 0;
  if (num_splits < 0 || num_splits > 256)
    return fail(AF_ERR_INVALID_ARGUMENT, "num_splits must be in 0..256 (0 heuristic, 1 no split), got %d",
                int(num_splits));
  if (args->window_left < -1 || args->window_right < -1)
    return fail(AF_ERR_INVALID_ARGUMENT, "window sizes must be >= 0 or -1 (unbounded), got (%d, %d)",
                int(args->window_left), int(args->window_right));

  // ---- Contents of host index arrays.
  const int32_t* cu_q = varlen ? static_cast<const int32_t*>(args->cu_seqlens_q->data) : nullptr;
  const int32_t* cu_k = args->cu_seqlens_k != nullptr ? static_cast<const int32_t*>(args->cu_seqlens_k->data) : nullptr;
  const int32_t* seqused = args->seqused_k != nullptr ? static_cast<const int32_t*>(args->seqused_k->data) : nullptr;
  const int32_t* leftpad = args->leftpad_k != nullptr ? static_cast<const int32_t*>(args->leftpad_k->data) : nullptr;
  const int32_t* kv_idx =
      args->kv_batch_idx != nullptr ? static_cast<const int32_t*>(args->kv_batch_idx->data) : nullptr;
  const int32_t* table = paged ? static_cast<const int32_t*>(args->block_table->data) : nullptr;
  if (host && call) {
    if (varlen) {
      int64_t longest_q = 0, longest_k = 0;
      AF_RETURN_IF_ERROR(check_cu_seqlens("cu_seqlens_q", cu_q, batch, q.shape[0], &longest_q));
      if (longest_q > args->max_seqlen_q)
        return fail(AF_ERR_SEQLENS, "max_seqlen_q = %lld is smaller than a query length of %lld",
                    (long long)args->max_seqlen_q, (long long)longest_q);
      if (cu_k != nullptr) {
        // Paged: cu_seqlens_k gives lengths only; each must fit the block table.
        const int64_t rows = paged ? INT32_MAX : k.shape[0];
        AF_RETURN_IF_ERROR(check_cu_seqlens("cu_seqlens_k", cu_k, batch, rows, &longest_k));
        if (longest_k > args->max_seqlen_k)
          return fail(AF_ERR_SEQLENS, "max_seqlen_k = %lld is smaller than a key length of %lld",
                      (long long)args->max_seqlen_k, (long long)longest_k);
      }
    }
    // Only the index arrays have per-sequence contents to check; each holds B entries in
    // memory, so this loop costs no more than reading them (B alone may be 2^40 when q is empty).
    const bool per_sequence = cu_k != nullptr || seqused != nullptr || leftpad != nullptr || kv_idx != nullptr || paged;
    for (int64_t b = 0; per_sequence && b < batch; ++b) {
      // Keys the layout makes available to sequence b, before seqused_k and leftpad_k.
      int64_t available = seqlen_k;
      if (cu_k != nullptr) available = int64_t(cu_k[b + 1]) - cu_k[b];
      const int64_t capacity = paged ? p.max_blocks_per_seq * p.page_size : available;
      if (paged && available > capacity)
        return fail(AF_ERR_SEQLENS, "sequence %lld has %lld keys but its block table holds only %lld", (long long)b,
                    (long long)available, (long long)capacity);
      int64_t end = available;
      if (seqused != nullptr) {
        if (seqused[b] < 0 || seqused[b] > available)
          return fail(AF_ERR_SEQLENS, "seqused_k[%lld] = %d is outside [0, %lld] (the keys available)", (long long)b,
                      int(seqused[b]), (long long)available);
        end = seqused[b];
      }
      if (leftpad != nullptr && (leftpad[b] < 0 || leftpad[b] > end))
        return fail(AF_ERR_SEQLENS, "leftpad_k[%lld] = %d is outside [0, %lld] (the end of the used keys)",
                    (long long)b, int(leftpad[b]), (long long)end);
      if (kv_idx != nullptr && (kv_idx[b] < 0 || kv_idx[b] >= kv_batches))
        return fail(AF_ERR_INVALID_ARGUMENT, "kv_batch_idx[%lld] = %d is outside [0, %lld)", (long long)b,
                    int(kv_idx[b]), (long long)kv_batches);
      if (paged) {
        // Only the pages that hold used keys are read (tables are often padded with -1).
        const int64_t pages_used = (end + p.page_size - 1) / p.page_size;
        for (int64_t j = 0; j < pages_used; ++j) {
          const int32_t page = table[b * p.block_table_batch_stride + j];
          if (page < 0 || page >= p.num_pages)
            return fail(AF_ERR_INVALID_ARGUMENT, "block_table[%lld][%lld] = %d is outside [0, %lld) (the pages of k/v)",
                        (long long)b, (long long)j, int(page), (long long)p.num_pages);
        }
      }
    }
  }

  // ---- Fill the problem.
  p.dtype = af_dtype(q.dtype);
  p.device_type = af_device_type(q.device_type);
  p.device_index = q.device_index;
  p.batch = batch;
  p.heads_q = heads;
  p.heads_kv = heads_kv;
  p.head_dim = head_dim;
  p.seqlen_q = seqlen_q;
  p.seqlen_k = seqlen_k;
  p.varlen = varlen;
  p.paged = paged;
  p.q = q.data;
  p.k = k.data;
  p.v = v.data;
  p.out = out.data;
  if (varlen) {
    p.q_row_stride = q.strides[0], p.q_head_stride = q.strides[1];
    p.out_row_stride = out.strides[0], p.out_head_stride = out.strides[1];
  } else {
    p.q_batch_stride = q.strides[0], p.q_row_stride = q.strides[1], p.q_head_stride = q.strides[2];
    p.out_batch_stride = out.strides[0], p.out_row_stride = out.strides[1], p.out_head_stride = out.strides[2];
  }
  if (kv_rank == 3) {
    p.k_row_stride = k.strides[0], p.k_head_stride = k.strides[1];
    p.v_row_stride = v.strides[0], p.v_head_stride = v.strides[1];
  } else {
    p.k_batch_stride = k.strides[0], p.k_row_stride = k.strides[1], p.k_head_stride = k.strides[2];
    p.v_batch_stride = v.strides[0], p.v_row_stride = v.strides[1], p.v_head_stride = v.strides[2];
  }
  if (args->softmax_lse != nullptr) {
    const af_tensor& lse = *args->softmax_lse;
    p.lse = static_cast<float*>(lse.data);
    if (varlen) {
      p.lse_head_stride = lse.strides[0], p.lse_row_stride = lse.strides[1];
    } else {
      p.lse_batch_stride = lse.strides[0], p.lse_head_stride = lse.strides[1], p.lse_row_stride = lse.strides[2];
    }
  }
  p.cu_seqlens_q = cu_q;
  p.cu_seqlens_k = cu_k;
  p.seqused_k = seqused;
  p.leftpad_k = leftpad;
  p.kv_batch_idx = kv_idx;
  p.block_table = table;
  p.softmax_scale = scale;
  p.softcap = args->softcap;
  p.causal = args->causal != 0;
  p.window_left = args->window_left;
  p.window_right = p.causal ? 0 : args->window_right;
  p.num_splits = num_splits;
  p.kv_batches = kv_batches;
  p.cuda_stream = args->cuda_stream;
  *problem = p;
  return AF_OK;
}

}  // namespace af

namespace af {

af_status check_same_shapes(const AttentionProblem& plan, const AttentionProblem& call) {
  struct Field {
    const char* name;
    int64_t planned, called;
  };
  auto aligned = [](const AttentionProblem& p) {
    const int64_t strides[] = {p.q_batch_stride, p.q_row_stride,     p.q_head_stride,  p.k_batch_stride,
                               p.k_row_stride,   p.k_head_stride,    p.v_batch_stride, p.v_row_stride,
                               p.v_head_stride,  p.out_batch_stride, p.out_row_stride, p.out_head_stride};
    int64_t bits = 0;
    for (int i = 0; i < 12; ++i) bits |= int64_t(strides[i] % 8 == 0) << i;
    return bits;
  };
  const Field fields[] = {
      {"dtype", plan.dtype, call.dtype},
      {"device_type", plan.device_type, call.device_type},
      {"device_index", plan.device_index, call.device_index},
      {"batch", plan.batch, call.batch},
      {"heads", plan.heads_q, call.heads_q},
      {"heads_kv", plan.heads_kv, call.heads_kv},
      {"head_dim", plan.head_dim, call.head_dim},
      {"seqlen_q (max_seqlen_q)", plan.seqlen_q, call.seqlen_q},
      {"seqlen_k (max_seqlen_k)", plan.seqlen_k, call.seqlen_k},
      {"varlen (cu_seqlens given)", plan.varlen, call.varlen},
      {"paged (block_table given)", plan.paged, call.paged},
      {"page_size", plan.page_size, call.page_size},
      {"max_blocks_per_seq", plan.max_blocks_per_seq, call.max_blocks_per_seq},
      {"kv_batch_idx given", plan.kv_batch_idx != nullptr, call.kv_batch_idx != nullptr},
      {"alibi_slopes given", plan.alibi_slopes != nullptr, call.alibi_slopes != nullptr},
      {"softcap > 0", plan.softcap > 0, call.softcap > 0},
      {"causal", plan.causal, call.causal},
      {"window_left", plan.window_left, call.window_left},
      {"window_right", plan.window_right, call.window_right},
      {"num_splits", plan.num_splits, call.num_splits},
      {"strides that are multiples of 8 (one bit per tensor dimension)", aligned(plan), aligned(call)},
  };
  for (const Field& f : fields)
    if (f.planned != f.called)
      return fail(AF_ERR_INVALID_ARGUMENT, "the call's %s is %lld but the plan was made for %lld", f.name,
                  (long long)f.called, (long long)f.planned);
  return AF_OK;
}

}  // namespace af

namespace af {

af_status validate_tensor(const char* name, const af_tensor* t, int32_t rank) {
  Extent extent;
  return check_tensor(name, t, rank, &extent, true);
}

}  // namespace af
