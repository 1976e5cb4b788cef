// On-disk cache of compiled kernels (ARCHITECTURE rule 3).
//
// An entry is one file "<key>.afk" in the cache directory:
//   magic "AFKCACH2" | key (64 hex chars) | u64 payload size | SHA-256 of the payload (32 bytes) |
//   u32 label size | label ("sm_90a flash_fwd_bf16_d128") | payload (cubin or PTX)
// The key is the SHA-256 of the kernel source, the compile options, the target, the NVRTC
// version and the library version. Writes go to a unique temporary file in the same directory
// and are renamed into place, so readers see either nothing or a whole entry; an entry whose
// magic, key, size or digest does not match is treated as absent and rewritten.
//
// A cached cubin is code the next process runs, so the cache is trusted only when nobody else
// can write it: the directory must be a real directory (not a symbolic link) owned by the
// effective user and not writable by group or others; an entry must be a regular file, owned
// by the effective user, not writable by group or others, and is opened without following
// links and without blocking (a FIFO named like an entry is skipped, not waited on). A
// directory that fails these checks is not used at all: kernels are compiled in memory and
// the reason is written once to stderr (and is in af_runtime_report's "kernel_cache").
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "attnforge/attnforge.h"

namespace af::cuda {

struct CacheKey {
  uint8_t digest[32] = {};
  std::string hex() const;  // 64 lowercase hex chars
};

CacheKey make_cache_key(const std::string& source, const std::vector<std::string>& options, const std::string& target,
                        int nvrtc_major, int nvrtc_minor);

// $ATTNFORGE_CACHE_DIR, else $XDG_CACHE_HOME/attnforge, else $HOME/.cache/attnforge, as set
// (a relative $ATTNFORGE_CACHE_DIR is returned as is, and refused by cache_refusal).
std::string cache_directory();

// Why the cache directory may not be used ("" when it may, or when it does not exist yet:
// cache_store creates it). Creates nothing.
std::string cache_refusal();

// Creates the directory if needed and checks that an entry can be written there; AF_ERR_IO
// saying why not. af_warmup calls it first, so that it never reports success for kernels
// it could not store.
af_status cache_check_writable();

// Reads a valid entry into *payload; false if absent, damaged or untrusted (not an error).
bool cache_load(const CacheKey& key, std::vector<char>* payload);

// Stores an entry atomically, creating the directory (0700) if needed; AF_ERR_IO when the
// directory is refused or the write fails. Each failure is counted (cache_store_failures).
af_status cache_store(const CacheKey& key, const std::string& label, const std::vector<char>& payload);

// Failed cache_store calls so far in this process, and the message of the latest.
uint64_t cache_store_failures(std::string* last_message);

// JSON array of {file, size, label, valid} for our entries, with "problem" on invalid ones
// ("not a regular file", "owned by uid 1001", ...). "[]" when the directory does not exist;
// AF_ERR_IO when it cannot be listed or is refused (cache_refusal).
af_status cache_list(std::string* json);
// The same list, or "[]" on any error.
std::string cache_list();

// Removes our entries and stale temporary files, nothing else; AF_OK when the directory does
// not exist, AF_ERR_IO when it is refused or an entry cannot be removed.
af_status cache_remove_all();

}  // namespace af::cuda
