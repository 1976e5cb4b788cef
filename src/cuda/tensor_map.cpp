#include "cuda/tensor_map.h"

#include <cinttypes>
#include <cstdio>

#include "common/error.h"

namespace af::cuda {

namespace {

constexpr int64_t kMaxExtent = int64_t(1) << 32;
constexpr int64_t kMaxStrideBytes = int64_t(1) << 40;

// The stride TMA is given for a dimension: its own when the extent is above 1, else any valid one
// (the coordinate is always 0 there, and torch gives size-1 dimensions arbitrary strides).
int64_t map_stride_bytes(int64_t extent, int64_t stride) { return extent > 1 ? stride * 2 : 16; }

}  // namespace

std::string tile_map_refusal(const char* name, const TileTensor& t, unsigned box_rows) {
  char text[200];
  if (box_rows < 1 || box_rows > 256) {
    std::snprintf(text, sizeof text, "%s: a TMA box has 1 to 256 rows (got %u)", name, box_rows);
    return text;
  }
  const struct {
    const char* field;
    int64_t extent;
  } extents[] = {{"head_dim", t.head_dim}, {"rows", t.rows}, {"heads", t.heads}, {"batch", t.batch}};
  for (const auto& e : extents)
    if (e.extent < 1 || e.extent > kMaxExtent) {
      std::snprintf(text, sizeof text, "%s: TMA needs %s in 1..2^32 (got %" PRId64 ")", name, e.field, e.extent);
      return text;
    }
  const struct {
    const char* field;
    int64_t extent, stride;
  } strides[] = {{"row", t.rows, t.row_stride}, {"head", t.heads, t.head_stride}, {"batch", t.batch, t.batch_stride}};
  for (const auto& s : strides) {
    if (s.extent <= 1) continue;
    const int64_t bytes = s.stride * 2;
    if (s.stride <= 0 || bytes % 16 != 0 || bytes >= kMaxStrideBytes) {
      std::snprintf(text, sizeof text,
                    "%s: TMA needs the %s stride positive, a multiple of 16 bytes and below 2^40 bytes (got %" PRId64
                    " elements)",
                    name, s.field, s.stride);
      return text;
    }
  }
  if (t.base != nullptr && reinterpret_cast<uintptr_t>(t.base) % 16 != 0) {
    std::snprintf(text, sizeof text, "%s: TMA needs a 16-byte aligned address", name);
    return text;
  }
  return "";
}

af_status encode_tile_map(const DriverApi& api, const char* name, const TileTensor& t, af_dtype dtype,
                          unsigned box_rows, CUtensorMap* map) {
  const std::string refusal = tile_map_refusal(name, t, box_rows);
  if (!refusal.empty()) return fail(AF_ERR_UNSUPPORTED, "cuda backend: %s", refusal.c_str());
  if (t.base == nullptr) return fail(AF_ERR_UNSUPPORTED, "cuda backend: %s: no data to map", name);
  if (dtype != AF_DTYPE_BFLOAT16 && dtype != AF_DTYPE_FLOAT16)
    return fail(AF_ERR_UNSUPPORTED, "cuda backend: %s: TMA maps here are 16-bit (dtype %d)", name, int(dtype));
  if (api.cuTensorMapEncodeTiled == nullptr)
    return fail(AF_ERR_BACKEND_UNAVAILABLE, "cuda backend: the driver has no cuTensorMapEncodeTiled (CUDA < 12)");
  const unsigned long long dims[4] = {(unsigned long long)t.head_dim, (unsigned long long)t.rows,
                                      (unsigned long long)t.heads, (unsigned long long)t.batch};
  const unsigned long long strides[3] = {(unsigned long long)map_stride_bytes(t.rows, t.row_stride),
                                         (unsigned long long)map_stride_bytes(t.heads, t.head_stride),
                                         (unsigned long long)map_stride_bytes(t.batch, t.batch_stride)};
  const unsigned box[4] = {kTileMapBoxColumns, box_rows, 1, 1};
  const unsigned element_strides[4] = {1, 1, 1, 1};
  CUtensorMap encoded;
  const CUresult r = api.cuTensorMapEncodeTiled(
      &encoded, dtype == AF_DTYPE_BFLOAT16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 4,
      const_cast<void*>(t.base), dims, strides, box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
      CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS)
    return fail(AF_ERR_CUDA, "cuda backend: %s: %s", name, driver_error("cuTensorMapEncodeTiled", r).c_str());
  *map = encoded;
  return AF_OK;
}

}  // namespace af::cuda
