// libFuzzer target: the zip reader (central directory, member extraction with
// inflate, CRC-32 and SHA-256), plus raw inflate and the ld.so.cache reader.
#include "doctor/ld_cache.h"
#include "doctor/zip.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  af::doctor::ByteView input(data, size);
  std::string error;
  std::vector<af::doctor::ZipMember> members;
  if (af::doctor::parse_zip_directory(input, members, error)) {
    std::vector<uint8_t> out;
    for (size_t i = 0; i < members.size() && i < 16; ++i) {
      if (af::doctor::extract_zip_member(input, members[i], out, error, 1 << 20)) {
        af::doctor::record_hash_of(af::doctor::ByteView(out));
      }
    }
  }
  std::vector<uint8_t> inflated;
  af::doctor::inflate_raw(input, inflated, 1 << 20, error);
  std::vector<af::doctor::LdCacheEntry> cache;
  af::doctor::parse_ld_cache(input, cache, error);
  return 0;
}
