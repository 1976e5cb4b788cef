#include "doctor/ld_cache.h"

#include <cstring>

namespace af::doctor {
namespace {

constexpr char kNewMagic[] = "glibc-ld.so.cache1.1";
constexpr size_t kNewHeaderSize = 48;  // magic[20], nlibs, len_strings, flags+pad, extension_offset, unused[3]
constexpr size_t kNewEntrySize = 24;   // flags, key, value, osversion, hwcap (u64)
constexpr int32_t kFlagElfLibc6 = 0x0003;
constexpr int32_t kFlagTypeMask = 0x00ff;
constexpr int32_t kFlagX8664Lib64 = 0x0300;
constexpr int32_t kFlagArchMask = 0xff00;

}  // namespace

bool parse_ld_cache(ByteView cache, std::vector<LdCacheEntry>& entries, std::string& error) {
  entries.clear();
  // The new-format table may follow an old-format one; find its magic.
  size_t magic_length = sizeof kNewMagic - 1;
  const uint8_t* found = nullptr;
  if (cache.size() >= magic_length) {
    for (size_t i = 0; i + magic_length <= cache.size(); i += 4) {
      if (std::memcmp(cache.data() + i, kNewMagic, magic_length) == 0) {
        found = cache.data() + i;
        break;
      }
    }
  }
  if (!found) {
    error = "no glibc-ld.so.cache1.1 table in the loader cache";
    return false;
  }
  uint64_t base = uint64_t(found - cache.data());
  uint32_t count = 0;
  if (!cache.read(base + 20, count)) {
    error = "truncated loader cache header";
    return false;
  }
  for (uint32_t i = 0; i < count; ++i) {
    uint64_t entry = base + kNewHeaderSize + uint64_t(i) * kNewEntrySize;
    int32_t flags = 0;
    uint32_t key = 0, value = 0;
    if (!cache.read(entry, flags) || !cache.read(entry + 4, key) || !cache.read(entry + 8, value)) {
      error = "loader cache entry table runs past the file";
      return !entries.empty();
    }
    if ((flags & kFlagTypeMask) != kFlagElfLibc6) continue;
    LdCacheEntry parsed;
    // String offsets in the new format are relative to the start of the new table.
    if (!cache.c_string(base + key, parsed.name) || !cache.c_string(base + value, parsed.path)) continue;
    parsed.x86_64 = (flags & kFlagArchMask) == kFlagX8664Lib64;
    entries.push_back(std::move(parsed));
  }
  return true;
}

}  // namespace af::doctor
