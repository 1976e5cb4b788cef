// Zip reader for wheels: the central directory (zip64 included), and members
// that are stored or deflated (the only methods wheels use), read as streams.
// Includes a small streaming inflate (RFC 1951) and SHA-256 for RECORD hashes.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "common/sha256.h"
#include "doctor/bytes.h"

namespace af::doctor {

struct ZipMember {
  std::string name;
  uint16_t method = 0;  // 0 stored, 8 deflate
  uint32_t crc32 = 0;
  uint64_t compressed_size = 0;
  uint64_t uncompressed_size = 0;
  uint64_t local_header_offset = 0;
  uint64_t data_offset = 0;  // first byte of the member's data (after its local header)
};

// Hostile archives: the directory may list at most this many members; members
// whose data ranges overlap (the "overlapping files" zip bomb) are refused.
constexpr uint64_t kMaxZipMembers = uint64_t(1) << 20;

// Reads the central directory (zip64 included). False with error when the
// archive is unusable, hostile (overlapping members) or over kMaxZipMembers.
bool parse_zip_directory(ByteView archive, std::vector<ZipMember>& members, std::string& error);

// How many uncompressed bytes the readers of one archive may still produce, in
// total, before they stop (`exhausted` then stays set): bounds time, and the disk
// used by extracted members, whatever the archive declares.
struct ZipBudget {
  uint64_t remaining = 0;
  bool exhausted = false;
};

// max(256 MiB, 40 x the archive's size), at most 8 GiB: real wheels inflate to
// 1-5x their size; a zip bomb stops after this much work.
uint64_t default_zip_budget(uint64_t archive_size);

// Receives a member's content in order, in chunks of at most 256 KiB; false stops the read.
using ZipSink = std::function<bool(const uint8_t* data, size_t size)>;

// Streams one member to `sink` (memory stays at the 32 KiB window plus a chunk),
// checking sizes and CRC-32; charges the bytes to `budget` when given.
bool stream_zip_member(ByteView archive, const ZipMember& member, const ZipSink& sink, ZipBudget* budget,
                       std::string& error);

// Extracts one member into memory (checks sizes and CRC-32). Refuses members larger than max_bytes.
bool extract_zip_member(ByteView archive, const ZipMember& member, std::vector<uint8_t>& out, std::string& error,
                        uint64_t max_bytes = uint64_t(64) << 20, ZipBudget* budget = nullptr);

// Raw DEFLATE stream -> sink; stops with an error past max_bytes of output.
bool inflate_stream(ByteView input, const ZipSink& sink, uint64_t max_bytes, std::string& error);
// Raw DEFLATE stream -> bytes; stops with an error past max_bytes of output.
bool inflate_raw(ByteView input, std::vector<uint8_t>& out, uint64_t max_bytes, std::string& error);

uint32_t crc32_of(ByteView data);
uint32_t crc32_update(uint32_t crc, const uint8_t* data, size_t size);  // start from 0

// The 32-byte digest of an incremental SHA-256 (af::Sha256, src/common/sha256.h); call once.
std::vector<uint8_t> digest_of(Sha256& sha);

// SHA-256 digest (32 bytes) and the RECORD spelling "sha256=<urlsafe base64, no padding>".
std::vector<uint8_t> sha256_of(ByteView data);
std::string record_hash_of(ByteView data);
std::string record_hash_of_digest(const std::vector<uint8_t>& digest);

}  // namespace af::doctor
