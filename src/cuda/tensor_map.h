// TMA tensor maps for the fwd_sm90 family: which 16-bit (batch, rows, heads, head_dim) tensors the
// copy engine can describe, and their encoding through the driver's cuTensorMapEncodeTiled.
#pragma once

#include <cstdint>
#include <string>

#include "attnforge/attnforge.h"
#include "cuda/driver_api.h"

namespace af::cuda {

// A 16-bit tensor of (batch, rows, heads, head_dim) elements with unit stride along head_dim;
// strides in elements (any order, as torch views give them).
struct TileTensor {
  const void* base = nullptr;  // null: shapes only (a plan made before the data exists)
  int64_t batch = 0, rows = 0, heads = 0, head_dim = 0;
  int64_t batch_stride = 0, row_stride = 0, head_stride = 0;
};

// Columns per TMA box: one 128-byte line of 16-bit elements, the widest box the 128-byte swizzle
// takes (cuTensorMapEncodeTiled's rule); a 128-column head dim is loaded as two boxes.
constexpr unsigned kTileMapBoxColumns = 64;

// Rows of fwd_sm90's TMA-store box of O: one consumer warpgroup's 64 query rows.
constexpr unsigned kSm90StoreBoxRows = 64;

// Empty when TMA can describe `t` for boxes of (kTileMapBoxColumns, box_rows): every extent in
// 1..2^32, every stride of an extent above 1 positive, a multiple of 16 bytes and below 2^40 bytes,
// the base (when given) 16-byte aligned, box_rows in 1..256. Otherwise why not, naming `name`
// ("q", "k", "v") and the offending field.
std::string tile_map_refusal(const char* name, const TileTensor& t, unsigned box_rows);

// Encodes `t` as a rank-4 map (head_dim, rows, heads, batch), 128-byte swizzle, out-of-bounds
// elements read as zeros. AF_ERR_UNSUPPORTED with tile_map_refusal's reason when it refuses (or
// the base is null), AF_ERR_BACKEND_UNAVAILABLE when the driver has no cuTensorMapEncodeTiled,
// AF_ERR_CUDA when the driver refuses. Nothing is written to *map on failure.
af_status encode_tile_map(const DriverApi& api, const char* name, const TileTensor& t, af_dtype dtype,
                          unsigned box_rows, CUtensorMap* map);

}  // namespace af::cuda
