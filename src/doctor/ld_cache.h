// Reader for the dynamic loader's cache, /etc/ld.so.cache (the "glibc-ld.so.cache1.1"
// format written by ldconfig since glibc 2.32, optionally after the old "ld.so-1.7.0" block).
#pragma once

#include <string>
#include <vector>

#include "doctor/bytes.h"

namespace af::doctor {

struct LdCacheEntry {
  std::string name;  // soname, e.g. "libc.so.6"
  std::string path;  // e.g. "/lib/x86_64-linux-gnu/libc.so.6"
  bool x86_64 = false;
};

// False with error when the cache is absent or unreadable; entries keep their cache order.
bool parse_ld_cache(ByteView cache, std::vector<LdCacheEntry>& entries, std::string& error);

}  // namespace af::doctor
