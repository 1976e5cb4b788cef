#include "doctor/zip.h"

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstring>

namespace af::doctor {
namespace {

constexpr uint32_t kEndOfDirectorySignature = 0x06054b50;
constexpr uint32_t kDirectoryEntrySignature = 0x02014b50;
constexpr uint32_t kLocalHeaderSignature = 0x04034b50;
constexpr uint32_t kZip64LocatorSignature = 0x07064b50;
constexpr uint32_t kZip64EndSignature = 0x06064b50;
constexpr uint64_t kZip64LocatorSize = 20;
constexpr uint64_t kEndOfDirectorySize = 22;
constexpr uint64_t kMaxCommentSize = 0xffff;

// Zip64 extra field (id 1): the 64-bit values replace, in order, those of the
// 32-bit fields that hold 0xffffffff.
void apply_zip64_extra(ByteView extra, ZipMember& member, bool size_max, bool compressed_max, bool offset_max) {
  uint64_t at = 0;
  while (at + 4 <= extra.size()) {
    uint16_t id = 0, length = 0;
    extra.read(at, id);
    extra.read(at + 2, length);
    if (id == 1) {
      uint64_t field = at + 4;
      if (size_max && extra.read(field, member.uncompressed_size)) field += 8;
      if (compressed_max && extra.read(field, member.compressed_size)) field += 8;
      if (offset_max) extra.read(field, member.local_header_offset);
      return;
    }
    at += 4 + uint64_t(length);
  }
}

}  // namespace

bool parse_zip_directory(ByteView archive, std::vector<ZipMember>& members, std::string& error) {
  members.clear();
  if (archive.size() < kEndOfDirectorySize) {
    error = "file too small to be a zip archive";
    return false;
  }
  // The end-of-central-directory record sits in the last 22 + 65535 bytes.
  uint64_t lowest = archive.size() > kEndOfDirectorySize + kMaxCommentSize
                        ? archive.size() - kEndOfDirectorySize - kMaxCommentSize
                        : 0;
  uint64_t eocd = archive.size() - kEndOfDirectorySize;
  bool found = false;
  for (;; --eocd) {
    uint32_t signature = 0;
    archive.read(eocd, signature);
    if (signature == kEndOfDirectorySignature) {
      found = true;
      break;
    }
    if (eocd == lowest) break;
  }
  if (!found) {
    error = "no end-of-central-directory record: not a zip archive";
    return false;
  }
  uint16_t entry_count16 = 0;
  uint32_t directory_size32 = 0, directory_offset32 = 0;
  archive.read(eocd + 10, entry_count16);
  archive.read(eocd + 12, directory_size32);
  archive.read(eocd + 16, directory_offset32);
  uint64_t entry_count = entry_count16, directory_size = directory_size32, directory_offset = directory_offset32;
  // Zip64: a locator just before the record points at the zip64 end record,
  // which holds the 64-bit counts (APPNOTE 4.3.14, 4.3.15).
  uint32_t locator_signature = 0;
  if (eocd >= kZip64LocatorSize && archive.read(eocd - kZip64LocatorSize, locator_signature) &&
      locator_signature == kZip64LocatorSignature) {
    uint64_t record = 0;
    uint32_t record_signature = 0;
    if (!archive.read(eocd - kZip64LocatorSize + 8, record) || !archive.read(record, record_signature) ||
        record_signature != kZip64EndSignature || !archive.read(record + 32, entry_count) ||
        !archive.read(record + 40, directory_size) || !archive.read(record + 48, directory_offset)) {
      error = "zip64 end-of-central-directory record is damaged";
      return false;
    }
  } else if (directory_offset32 == 0xffffffff || entry_count16 == 0xffff) {
    error = "zip64 archive without its zip64 end-of-central-directory locator";
    return false;
  }
  if (entry_count > kMaxZipMembers) {
    error = "the archive lists " + std::to_string(entry_count) + " members; the doctor reads at most " +
            std::to_string(kMaxZipMembers) + " (limit hit: not judged)";
    return false;
  }
  ByteView directory;
  if (!archive.slice(directory_offset, directory_size, directory)) {
    error = "central directory lies outside the file";
    return false;
  }
  // Each directory entry takes at least 46 bytes: a count the directory cannot hold is a lie.
  if (entry_count > directory.size() / 46) {
    error = "the directory claims " + std::to_string(entry_count) + " members but has room for " +
            std::to_string(directory.size() / 46);
    return false;
  }
  members.reserve(size_t(entry_count));
  uint64_t at = 0;
  for (uint64_t i = 0; i < entry_count; ++i) {
    uint32_t signature = 0, compressed = 0, uncompressed = 0, offset = 0;
    uint16_t name_length = 0, extra_length = 0, comment_length = 0;
    ZipMember member;
    if (!directory.read(at, signature) || signature != kDirectoryEntrySignature ||
        !directory.read(at + 10, member.method) || !directory.read(at + 16, member.crc32) ||
        !directory.read(at + 20, compressed) || !directory.read(at + 24, uncompressed) ||
        !directory.read(at + 28, name_length) || !directory.read(at + 30, extra_length) ||
        !directory.read(at + 32, comment_length) || !directory.read(at + 42, offset)) {
      error = "central directory entry " + std::to_string(i) + " is damaged";
      return false;
    }
    ByteView name, extra;
    if (!directory.slice(at + 46, name_length, name) || !directory.slice(at + 46 + name_length, extra_length, extra)) {
      error = "central directory entry " + std::to_string(i) + " runs past the directory";
      return false;
    }
    member.name.assign(reinterpret_cast<const char*>(name.data()), name.size());
    member.compressed_size = compressed;
    member.uncompressed_size = uncompressed;
    member.local_header_offset = offset;
    apply_zip64_extra(extra, member, uncompressed == 0xffffffff, compressed == 0xffffffff, offset == 0xffffffff);
    // Where the data really starts: after the local header's own name and extra field.
    uint32_t local_signature = 0;
    uint16_t local_name = 0, local_extra = 0;
    uint64_t data_end = 0;
    if (!archive.read(member.local_header_offset, local_signature) || local_signature != kLocalHeaderSignature ||
        !archive.read(member.local_header_offset + 26, local_name) ||
        !archive.read(member.local_header_offset + 28, local_extra) ||
        !checked_add(member.local_header_offset, 30 + uint64_t(local_name) + local_extra, member.data_offset) ||
        !checked_add(member.data_offset, member.compressed_size, data_end) || data_end > archive.size()) {
      error = member.name + ": local header or data lies outside the archive";
      return false;
    }
    members.push_back(std::move(member));
    at += 46 + uint64_t(name_length) + extra_length + comment_length;
  }
  // Overlapping members let a small archive expand to gigabytes (each entry
  // re-reading the same compressed data); no zip writer produces them.
  std::vector<const ZipMember*> by_offset;
  by_offset.reserve(members.size());
  for (const ZipMember& m : members) by_offset.push_back(&m);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const ZipMember* a, const ZipMember* b) { return a->local_header_offset < b->local_header_offset; });
  for (size_t i = 0; i + 1 < by_offset.size(); ++i) {
    const ZipMember& a = *by_offset[i];
    const ZipMember& b = *by_offset[i + 1];
    if (a.data_offset + a.compressed_size > b.local_header_offset) {
      error = "members " + a.name + " and " + b.name + " overlap in the archive (a zip bomb, not a wheel a tool wrote)";
      members.clear();
      return false;
    }
  }
  if (!by_offset.empty()) {
    const ZipMember& last = *by_offset.back();
    if (last.data_offset + last.compressed_size > directory_offset && last.local_header_offset < directory_offset) {
      error = "member " + last.name + " overlaps the central directory";
      members.clear();
      return false;
    }
  }
  return true;
}

uint64_t default_zip_budget(uint64_t archive_size) {
  constexpr uint64_t kFloor = uint64_t(256) << 20, kCeiling = uint64_t(8) << 30, kRatio = 40;
  uint64_t scaled = archive_size > kCeiling / kRatio ? kCeiling : archive_size * kRatio;
  return std::min(kCeiling, std::max(kFloor, scaled));
}

bool stream_zip_member(ByteView archive, const ZipMember& member, const ZipSink& sink, ZipBudget* budget,
                       std::string& error) {
  if (budget && (budget->exhausted || member.uncompressed_size > budget->remaining)) {
    budget->exhausted = true;
    error = member.name + ": over the doctor's budget for uncompressed data (limit hit: not read)";
    return false;
  }
  if (budget) budget->remaining -= member.uncompressed_size;
  ByteView data;
  if (!archive.slice(member.data_offset, member.compressed_size, data)) {
    error = member.name + ": data runs past the end of the archive";
    return false;
  }
  uint32_t crc = 0;
  uint64_t produced = 0;
  ZipSink counting = [&](const uint8_t* bytes, size_t size) {
    crc = crc32_update(crc, bytes, size);
    produced += size;
    return sink(bytes, size);
  };
  if (member.method == 0) {
    if (member.compressed_size != member.uncompressed_size) {
      error = member.name + ": stored member with two different sizes";
      return false;
    }
    constexpr size_t kChunk = 256 << 10;
    for (uint64_t at = 0; at < data.size(); at += kChunk) {
      if (!counting(data.data() + at, size_t(std::min<uint64_t>(kChunk, data.size() - at)))) {
        error = member.name + ": reading stopped";
        return false;
      }
    }
  } else if (member.method == 8) {
    if (!inflate_stream(data, counting, member.uncompressed_size, error)) {
      error = member.name + ": " + error;
      return false;
    }
  } else {
    error = member.name + ": compression method " + std::to_string(member.method) + " is not used by wheels";
    return false;
  }
  if (produced != member.uncompressed_size) {
    error = member.name + ": size differs from the directory";
    return false;
  }
  if (crc != member.crc32) {
    error = member.name + ": CRC-32 mismatch";
    return false;
  }
  return true;
}

bool extract_zip_member(ByteView archive, const ZipMember& member, std::vector<uint8_t>& out, std::string& error,
                        uint64_t max_bytes, ZipBudget* budget) {
  out.clear();
  if (member.uncompressed_size > max_bytes) {
    error = member.name + ": " + std::to_string(member.uncompressed_size) +
            " bytes, larger than the doctor reads into memory (" + std::to_string(max_bytes) + ")";
    return false;
  }
  out.reserve(size_t(member.uncompressed_size));
  return stream_zip_member(
      archive, member,
      [&](const uint8_t* data, size_t size) {
        out.insert(out.end(), data, data + size);
        return true;
      },
      budget, error);
}

namespace {

// Bit reader over a DEFLATE stream (LSB first), buffering up to 64 bits.
class BitReader {
 public:
  explicit BitReader(ByteView in) : in_(in) {}
  bool bits(int count, uint32_t& value) {
    if (count == 0) {
      value = 0;
      return true;
    }
    while (available_ < count && next_byte_ < in_.size()) {
      buffer_ |= uint64_t(in_.data()[next_byte_++]) << available_;
      available_ += 8;
    }
    if (available_ < count) return false;
    value = uint32_t(buffer_ & ((uint64_t(1) << count) - 1));
    buffer_ >>= count;
    available_ -= count;
    return true;
  }
  // Drops the rest of the current byte; buffered whole bytes are given back.
  void align_to_byte() {
    int drop = available_ % 8;
    buffer_ >>= drop;
    available_ -= drop;
    next_byte_ -= uint64_t(available_ / 8);
    buffer_ = 0;
    available_ = 0;
  }
  uint64_t byte_position() const { return next_byte_; }
  void skip_bytes(uint64_t n) { next_byte_ += n; }

 private:
  ByteView in_;
  uint64_t next_byte_ = 0;  // first byte not yet in buffer_
  uint64_t buffer_ = 0;
  int available_ = 0;
};

// Canonical Huffman decoding table: counts per length and symbols sorted by code.
struct Huffman {
  std::array<uint16_t, 16> count{};
  std::vector<uint16_t> symbols;

  bool build(const uint8_t* lengths, int n) {
    count.fill(0);
    for (int i = 0; i < n; ++i) count[lengths[i]]++;
    count[0] = 0;
    int left = 1;
    for (int len = 1; len < 16; ++len) {
      left <<= 1;
      left -= count[len];
      if (left < 0) return false;  // over-subscribed
    }
    std::array<uint16_t, 16> offsets{};
    for (int len = 1; len < 15; ++len) offsets[len + 1] = offsets[len] + count[len];
    symbols.assign(n, 0);
    for (int i = 0; i < n; ++i) {
      if (lengths[i]) symbols[offsets[lengths[i]]++] = uint16_t(i);
    }
    return true;
  }

  bool decode(BitReader& reader, int& symbol) const {
    int code = 0, first = 0, index = 0;
    for (int len = 1; len < 16; ++len) {
      uint32_t bit;
      if (!reader.bits(1, bit)) return false;
      code |= int(bit);
      int c = count[len];
      if (code - c < first) {
        size_t at = size_t(index + (code - first));
        if (at >= symbols.size()) return false;
        symbol = symbols[at];
        return true;
      }
      index += c;
      first += c;
      first <<= 1;
      code <<= 1;
    }
    return false;
  }
};

constexpr uint16_t kLengthBase[29] = {3,  4,  5,  6,  7,  8,  9,  10, 11,  13,  15,  17,  19,  23, 27,
                                      31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258};
constexpr uint8_t kLengthExtra[29] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2,
                                      2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};
constexpr uint16_t kDistanceBase[30] = {1,    2,    3,    4,    5,    7,    9,    13,    17,    25,
                                        33,   49,   65,   97,   129,  193,  257,  385,   513,   769,
                                        1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577};
constexpr uint8_t kDistanceExtra[30] = {0, 0, 0, 0, 1, 1, 2, 2,  3,  3,  4,  4,  5,  5,  6,
                                        6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13};

// Inflate output: the last 32 KiB (the most a back-reference reaches) stay in
// memory; everything older goes to the sink in chunks.
class Window {
 public:
  Window(const ZipSink& sink, uint64_t max_bytes) : sink_(sink), max_bytes_(max_bytes) {
    bytes_.reserve(kFlushAt + 512);
  }
  uint64_t total() const { return flushed_ + bytes_.size(); }
  bool room(uint64_t length) const { return total() + length <= max_bytes_; }
  void put(uint8_t byte) { bytes_.push_back(byte); }
  void append(const uint8_t* data, size_t size) { bytes_.insert(bytes_.end(), data, data + size); }
  // A back-reference; the caller checked distance <= total().
  void copy(uint64_t distance, uint64_t length) {
    size_t from = bytes_.size() - size_t(distance);
    for (uint64_t i = 0; i < length; ++i) bytes_.push_back(bytes_[from + size_t(i)]);
  }
  // Hands all but the last 32 KiB to the sink once enough has piled up (or everything at the end).
  bool drain(bool all) {
    if (!all && bytes_.size() < kFlushAt) return true;
    size_t keep = all ? 0 : kWindow;
    size_t give = bytes_.size() - keep;
    if (give && !sink_(bytes_.data(), give)) return false;
    flushed_ += give;
    bytes_.erase(bytes_.begin(), bytes_.begin() + std::ptrdiff_t(give));
    return true;
  }

 private:
  static constexpr size_t kWindow = 32 << 10, kFlushAt = 256 << 10;
  const ZipSink& sink_;
  uint64_t max_bytes_;
  uint64_t flushed_ = 0;
  std::vector<uint8_t> bytes_;
};

bool inflate_block(BitReader& reader, const Huffman& literals, const Huffman& distances, Window& out,
                   std::string& error) {
  for (;;) {
    int symbol;
    if (!literals.decode(reader, symbol)) return error = "bad literal/length code", false;
    if (symbol < 256) {
      if (!out.room(1)) return error = "inflated data exceeds the declared size", false;
      out.put(uint8_t(symbol));
      continue;
    }
    if (symbol == 256) return true;
    symbol -= 257;
    if (symbol >= 29) return error = "bad length symbol", false;
    uint32_t extra;
    if (!reader.bits(kLengthExtra[symbol], extra)) return error = "truncated stream", false;
    uint64_t length = kLengthBase[symbol] + extra;
    int distance_symbol;
    if (!distances.decode(reader, distance_symbol) || distance_symbol >= 30) return error = "bad distance code", false;
    if (!reader.bits(kDistanceExtra[distance_symbol], extra)) return error = "truncated stream", false;
    uint64_t distance = kDistanceBase[distance_symbol] + extra;
    if (distance > out.total()) return error = "distance reaches before the start of the output", false;
    if (!out.room(length)) return error = "inflated data exceeds the declared size", false;
    out.copy(distance, length);
    if (!out.drain(false)) return error = "reading stopped", false;
  }
}

bool read_dynamic_tables(BitReader& reader, Huffman& literals, Huffman& distances, std::string& error) {
  uint32_t hlit, hdist, hclen;
  if (!reader.bits(5, hlit) || !reader.bits(5, hdist) || !reader.bits(4, hclen))
    return error = "truncated stream", false;
  hlit += 257;
  hdist += 1;
  hclen += 4;
  if (hlit > 286 || hdist > 30) return error = "bad dynamic table sizes", false;
  static constexpr uint8_t kOrder[19] = {16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15};
  uint8_t code_lengths[19] = {};
  for (uint32_t i = 0; i < hclen; ++i) {
    uint32_t v;
    if (!reader.bits(3, v)) return error = "truncated stream", false;
    code_lengths[kOrder[i]] = uint8_t(v);
  }
  Huffman code_lengths_table;
  if (!code_lengths_table.build(code_lengths, 19)) return error = "bad code-length table", false;
  uint8_t lengths[286 + 30] = {};
  uint32_t filled = 0;
  while (filled < hlit + hdist) {
    int symbol;
    if (!code_lengths_table.decode(reader, symbol)) return error = "bad code-length code", false;
    if (symbol < 16) {
      lengths[filled++] = uint8_t(symbol);
      continue;
    }
    uint32_t repeat = 0;
    uint8_t value = 0;
    if (symbol == 16) {
      if (filled == 0) return error = "repeat with no previous length", false;
      value = lengths[filled - 1];
      if (!reader.bits(2, repeat)) return error = "truncated stream", false;
      repeat += 3;
    } else if (symbol == 17) {
      if (!reader.bits(3, repeat)) return error = "truncated stream", false;
      repeat += 3;
    } else {
      if (!reader.bits(7, repeat)) return error = "truncated stream", false;
      repeat += 11;
    }
    if (filled + repeat > hlit + hdist) return error = "code lengths overflow the table", false;
    while (repeat--) lengths[filled++] = value;
  }
  if (!literals.build(lengths, int(hlit)) || !distances.build(lengths + hlit, int(hdist))) {
    return error = "bad dynamic Huffman table", false;
  }
  return true;
}

}  // namespace

bool inflate_raw(ByteView input, std::vector<uint8_t>& out, uint64_t max_bytes, std::string& error) {
  out.clear();
  return inflate_stream(
      input,
      [&](const uint8_t* data, size_t size) {
        out.insert(out.end(), data, data + size);
        return true;
      },
      max_bytes, error);
}

bool inflate_stream(ByteView input, const ZipSink& sink, uint64_t max_bytes, std::string& error) {
  Window out(sink, max_bytes);
  BitReader reader(input);
  static Huffman fixed_literals, fixed_distances;
  static bool fixed_ready = [] {
    uint8_t lengths[288];
    for (int i = 0; i < 144; ++i) lengths[i] = 8;
    for (int i = 144; i < 256; ++i) lengths[i] = 9;
    for (int i = 256; i < 280; ++i) lengths[i] = 7;
    for (int i = 280; i < 288; ++i) lengths[i] = 8;
    uint8_t distance_lengths[30];
    std::memset(distance_lengths, 5, sizeof distance_lengths);
    return fixed_literals.build(lengths, 288) && fixed_distances.build(distance_lengths, 30);
  }();
  if (!fixed_ready) return error = "internal: fixed tables", false;
  for (;;) {
    uint32_t final_block, type;
    if (!reader.bits(1, final_block) || !reader.bits(2, type)) return error = "truncated stream", false;
    if (type == 0) {
      reader.align_to_byte();
      uint16_t length = 0, complement = 0;
      if (!input.read(reader.byte_position(), length) || !input.read(reader.byte_position() + 2, complement) ||
          uint16_t(~complement) != length) {
        return error = "bad stored block header", false;
      }
      reader.skip_bytes(4);
      ByteView block;
      if (!input.slice(reader.byte_position(), length, block)) return error = "stored block runs past the input", false;
      if (!out.room(length)) return error = "inflated data exceeds the declared size", false;
      out.append(block.data(), block.size());
      reader.skip_bytes(length);
      if (!out.drain(false)) return error = "reading stopped", false;
    } else if (type == 1) {
      if (!inflate_block(reader, fixed_literals, fixed_distances, out, error)) return false;
    } else if (type == 2) {
      Huffman literals, distances;
      if (!read_dynamic_tables(reader, literals, distances, error)) return false;
      if (!inflate_block(reader, literals, distances, out, error)) return false;
    } else {
      return error = "reserved block type", false;
    }
    if (final_block) return out.drain(true) || (error = "reading stopped", false);
  }
}

uint32_t crc32_update(uint32_t crc, const uint8_t* data, size_t size) {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  crc = ~crc;
  for (size_t i = 0; i < size; ++i) crc = table[(crc ^ data[i]) & 0xff] ^ (crc >> 8);
  return ~crc;
}

uint32_t crc32_of(ByteView data) { return crc32_update(0, data.data(), data.size()); }

std::vector<uint8_t> digest_of(Sha256& sha) {
  std::vector<uint8_t> out(32);
  sha.finish(out.data());
  return out;
}

std::vector<uint8_t> sha256_of(ByteView data) {
  Sha256 sha;
  sha.update(data.data(), data.size());
  return digest_of(sha);
}

std::string record_hash_of(ByteView data) { return record_hash_of_digest(sha256_of(data)); }

std::string record_hash_of_digest(const std::vector<uint8_t>& digest) {
  static const char* alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::string out = "sha256=";
  for (size_t i = 0; i < digest.size(); i += 3) {
    uint32_t chunk = uint32_t(digest[i]) << 16;
    if (i + 1 < digest.size()) chunk |= uint32_t(digest[i + 1]) << 8;
    if (i + 2 < digest.size()) chunk |= digest[i + 2];
    size_t emit = std::min<size_t>(4, (digest.size() - i) * 8 / 6 + 1);
    for (size_t j = 0; j < emit && j < 4; ++j) out += alphabet[(chunk >> (18 - 6 * j)) & 63];
  }
  return out;
}

}  // namespace af::doctor
