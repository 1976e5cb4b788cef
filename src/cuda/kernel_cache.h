// On-disk cache of compiled kernels (ARCHITECTURE rule 3).
//
// An entry is one file "<key>.afk" in the cache directory:
//   magic "AFKCACH1" | key (32 hex chars) | u64 payload size | u64 payload checksum |
//   u32 label size | label ("sm_90a flash_fwd_bf16_d128") | payload (cubin or PTX)
// The key hashes the kernel source, the compile options, the target, the NVRTC version and
// the library version. Writes go to a unique temporary file in the same directory and are
// renamed into place, so readers see either nothing or a whole entry; an entry whose
// magic, key, size or checksum does not match is treated as absent and rewritten.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "attnforge/attnforge.h"

namespace af::cuda {

struct CacheKey {
  uint64_t hi = 0, lo = 0;
  std::string hex() const;
};

CacheKey make_cache_key(const std::string& source, const std::vector<std::string>& options,
                        const std::string& target, int nvrtc_major, int nvrtc_minor);

// $ATTNFORGE_CACHE_DIR, else $XDG_CACHE_HOME/attnforge, else $HOME/.cache/attnforge.
std::string cache_directory();

// Reads a valid entry into *payload; false if absent or damaged (damage is not an error).
bool cache_load(const CacheKey& key, std::vector<char>* payload);

// Stores an entry atomically, creating the directory (0700) if needed.
af_status cache_store(const CacheKey& key, const std::string& label, const std::vector<char>& payload);

// JSON array of {file, size, label, valid} for our entries.
std::string cache_list();

// Removes our entries and stale temporary files, nothing else.
af_status cache_remove_all();

}  // namespace af::cuda
