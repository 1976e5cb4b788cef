// Zip reader for wheels: the central directory, and members that are stored or
// deflated (the only methods wheels use). Includes a small inflate (RFC 1951)
// and SHA-256 for RECORD hashes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "doctor/bytes.h"

namespace af::doctor {

struct ZipMember {
  std::string name;
  uint16_t method = 0;  // 0 stored, 8 deflate
  uint32_t crc32 = 0;
  uint64_t compressed_size = 0;
  uint64_t uncompressed_size = 0;
  uint64_t local_header_offset = 0;
};

// Reads the central directory. False with error when the archive is unusable.
bool parse_zip_directory(ByteView archive, std::vector<ZipMember>& members, std::string& error);

// Extracts one member (checks sizes and CRC-32). Refuses members larger than max_bytes.
bool extract_zip_member(ByteView archive, const ZipMember& member, std::vector<uint8_t>& out, std::string& error,
                        uint64_t max_bytes = uint64_t(2) << 30);

// Raw DEFLATE stream -> bytes; stops with an error past max_bytes of output.
bool inflate_raw(ByteView input, std::vector<uint8_t>& out, uint64_t max_bytes, std::string& error);

uint32_t crc32_of(ByteView data);

// SHA-256 digest (32 bytes) and the RECORD spelling "sha256=<urlsafe base64, no padding>".
std::vector<uint8_t> sha256_of(ByteView data);
std::string record_hash_of(ByteView data);

}  // namespace af::doctor
