// Bounds-checked little-endian reads over an untrusted byte buffer. Every
// reader in the doctor goes through ByteView so that hostile files cannot make
// it read outside the buffer: offsets and sizes are checked with overflow-safe
// arithmetic before any access.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace af::doctor {

class ByteView {
 public:
  ByteView() = default;
  ByteView(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  explicit ByteView(const std::vector<uint8_t>& bytes) : data_(bytes.data()), size_(bytes.size()) {}

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

  // True when [offset, offset + length) lies inside the buffer.
  bool contains(uint64_t offset, uint64_t length) const { return offset <= size_ && length <= size_ - offset; }

  template <typename T>
  bool read(uint64_t offset, T& out) const {
    if (!contains(offset, sizeof(T))) return false;
    std::memcpy(&out, data_ + offset, sizeof(T));  // x86_64 and aarch64 hosts are little-endian
    return true;
  }

  // The sub-range [offset, offset + length), or an empty view (ok == false) if it does not fit.
  bool slice(uint64_t offset, uint64_t length, ByteView& out) const {
    if (!contains(offset, length)) return false;
    out = ByteView(data_ + offset, size_t(length));
    return true;
  }

  // NUL-terminated string starting at offset, cut at the buffer's end; false if offset is outside.
  bool c_string(uint64_t offset, std::string& out) const {
    if (offset >= size_) return false;
    const uint8_t* start = data_ + offset;
    const void* nul = std::memchr(start, 0, size_ - size_t(offset));
    size_t length = nul ? size_t(static_cast<const uint8_t*>(nul) - start) : size_ - size_t(offset);
    out.assign(reinterpret_cast<const char*>(start), length);
    return nul != nullptr;
  }

 private:
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// a + b and a * b without wrap-around; false on overflow.
inline bool checked_add(uint64_t a, uint64_t b, uint64_t& out) { return !__builtin_add_overflow(a, b, &out); }
inline bool checked_mul(uint64_t a, uint64_t b, uint64_t& out) { return !__builtin_mul_overflow(a, b, &out); }

// A read-only memory map of a whole file (libtorch_cuda is ~1 GB: only the
// pages the readers touch are read).
class MappedFile {
 public:
  MappedFile() = default;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();
  // False with a reason when the file cannot be opened or mapped.
  bool open(const std::string& path, std::string& error);
  ByteView view() const { return ByteView(static_cast<const uint8_t*>(address_), size_); }

 private:
  void* address_ = nullptr;
  size_t size_ = 0;
};

}  // namespace af::doctor
