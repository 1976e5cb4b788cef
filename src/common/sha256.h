// SHA-256 (FIPS 180-4), for the kernel cache's keys and entry digests. The core links
// nothing but glibc, so no crypto library is available to it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace af {

class Sha256 {
 public:
  Sha256();
  Sha256& update(const void* data, size_t size);
  Sha256& update(const std::string& text) { return update(text.data(), text.size()); }
  // The 32-byte digest; the object must not be updated afterwards.
  void finish(uint8_t digest[32]);
  // The digest as 64 lowercase hex characters.
  std::string hex();

 private:
  void compress(const uint8_t block[64]);
  uint32_t state_[8];
  uint8_t buffer_[64];
  size_t buffered_ = 0;
  uint64_t total_bytes_ = 0;
};

}  // namespace af
