#include "cuda/kernel_cache.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "common/error.h"
#include "common/json.h"

namespace af::cuda {

namespace {

constexpr char kMagic[8] = {'A', 'F', 'K', 'C', 'A', 'C', 'H', '1'};
constexpr const char* kSuffix = ".afk";
constexpr const char* kTempPrefix = ".afk-tmp-";

// FNV-1a, 64-bit; two different offset bases give the two halves of a 128-bit key.
uint64_t fnv1a(const void* data, size_t size, uint64_t hash) {
  const unsigned char* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < size; ++i) {
    hash ^= p[i];
    hash *= 1099511628211ull;
  }
  return hash;
}

constexpr uint64_t kBasisA = 14695981039346656037ull;
constexpr uint64_t kBasisB = 0x9e3779b97f4a7c15ull;

bool read_all(int fd, void* data, size_t size) {
  char* p = static_cast<char*>(data);
  while (size > 0) {
    const ssize_t n = read(fd, p, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    size -= size_t(n);
  }
  return true;
}

bool write_all(int fd, const void* data, size_t size) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = write(fd, p, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    size -= size_t(n);
  }
  return true;
}

// mkdir -p with mode 0700 for the directories we create.
bool make_directories(const std::string& path) {
  if (path.empty()) return false;
  struct stat st;
  if (stat(path.c_str(), &st) == 0) return S_ISDIR(st.st_mode);
  const size_t slash = path.find_last_of('/');
  if (slash != std::string::npos && slash > 0 && !make_directories(path.substr(0, slash))) return false;
  return mkdir(path.c_str(), 0700) == 0 || errno == EEXIST;
}

struct EntryHeader {
  std::string key_hex;
  uint64_t size = 0;
  uint64_t checksum = 0;
  std::string label;
};

// Parses and validates a whole entry file; payload may be null (list only).
bool read_entry(const std::string& path, EntryHeader* header, std::vector<char>* payload) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  bool ok = false;
  char magic[8];
  char key[32];
  uint32_t label_size = 0;
  struct stat st;
  if (fstat(fd, &st) == 0 && read_all(fd, magic, 8) && std::memcmp(magic, kMagic, 8) == 0 && read_all(fd, key, 32) &&
      read_all(fd, &header->size, 8) && read_all(fd, &header->checksum, 8) && read_all(fd, &label_size, 4) &&
      label_size < 4096) {
    header->key_hex.assign(key, 32);
    header->label.resize(label_size);
    const uint64_t expected = 8 + 32 + 8 + 8 + 4 + uint64_t(label_size) + header->size;
    if (read_all(fd, &header->label[0], label_size) && uint64_t(st.st_size) == expected) {
      std::vector<char> data(header->size);
      if (read_all(fd, data.data(), data.size()) && fnv1a(data.data(), data.size(), kBasisA) == header->checksum) {
        ok = true;
        if (payload != nullptr) payload->swap(data);
      }
    }
  }
  close(fd);
  return ok;
}

bool has_suffix(const std::string& name, const std::string& suffix) {
  return name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Ours: 32 lowercase hex chars + ".afk", or a temporary file we write.
bool is_our_entry(const std::string& name) {
  if (name.size() != 32 + 4 || !has_suffix(name, kSuffix)) return false;
  for (size_t i = 0; i < 32; ++i)
    if (!((name[i] >= '0' && name[i] <= '9') || (name[i] >= 'a' && name[i] <= 'f'))) return false;
  return true;
}

bool is_our_temp(const std::string& name) { return name.compare(0, std::strlen(kTempPrefix), kTempPrefix) == 0; }

}  // namespace

std::string CacheKey::hex() const {
  char buffer[33];
  std::snprintf(buffer, sizeof buffer, "%016llx%016llx", (unsigned long long)hi, (unsigned long long)lo);
  return buffer;
}

CacheKey make_cache_key(const std::string& source, const std::vector<std::string>& options, const std::string& target,
                        int nvrtc_major, int nvrtc_minor) {
  std::string text = "attnforge-cache-v1\n" AF_VERSION_STRING "\n" + target + "\nnvrtc " +
                     std::to_string(nvrtc_major) + "." + std::to_string(nvrtc_minor) + "\n";
  for (const std::string& option : options) text += option + "\n";
  text += source;
  return {fnv1a(text.data(), text.size(), kBasisA), fnv1a(text.data(), text.size(), kBasisB)};
}

std::string cache_directory() {
  if (const char* dir = std::getenv("ATTNFORGE_CACHE_DIR"); dir != nullptr && *dir != 0) return dir;
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg != nullptr && *xdg == '/') return std::string(xdg) + "/attnforge";
  if (const char* home = std::getenv("HOME"); home != nullptr && *home != 0) return std::string(home) + "/.cache/attnforge";
  return "";
}

bool cache_load(const CacheKey& key, std::vector<char>* payload) {
  const std::string dir = cache_directory();
  if (dir.empty()) return false;
  EntryHeader header;
  return read_entry(dir + "/" + key.hex() + kSuffix, &header, payload) && header.key_hex == key.hex();
}

af_status cache_store(const CacheKey& key, const std::string& label, const std::vector<char>& payload) {
  const std::string dir = cache_directory();
  if (dir.empty()) return fail(AF_ERR_IO, "kernel cache: no directory (set ATTNFORGE_CACHE_DIR or HOME)");
  if (!make_directories(dir)) return fail(AF_ERR_IO, "kernel cache: cannot create %s: %s", dir.c_str(), std::strerror(errno));
  static std::atomic<unsigned> counter{0};
  const std::string temp = dir + "/" + kTempPrefix + key.hex() + "-" + std::to_string(getpid()) + "-" +
                           std::to_string(counter.fetch_add(1));
  const int fd = open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return fail(AF_ERR_IO, "kernel cache: cannot create %s: %s", temp.c_str(), std::strerror(errno));
  const std::string hex = key.hex();
  const uint64_t size = payload.size();
  const uint64_t checksum = fnv1a(payload.data(), payload.size(), kBasisA);
  const uint32_t label_size = uint32_t(label.size());
  const bool written = write_all(fd, kMagic, 8) && write_all(fd, hex.data(), 32) && write_all(fd, &size, 8) &&
                       write_all(fd, &checksum, 8) && write_all(fd, &label_size, 4) &&
                       write_all(fd, label.data(), label.size()) && write_all(fd, payload.data(), payload.size()) &&
                       fsync(fd) == 0;
  const int saved = errno;
  close(fd);
  if (!written || rename(temp.c_str(), (dir + "/" + hex + kSuffix).c_str()) != 0) {
    const int error = written ? errno : saved;
    unlink(temp.c_str());
    return fail(AF_ERR_IO, "kernel cache: cannot write %s/%s%s: %s", dir.c_str(), hex.c_str(), kSuffix,
                std::strerror(error));
  }
  return AF_OK;
}

std::string cache_list() {
  const std::string dir = cache_directory();
  std::string json = "[";
  DIR* d = dir.empty() ? nullptr : opendir(dir.c_str());
  if (d == nullptr) return "[]";
  bool first = true;
  while (const dirent* e = readdir(d)) {
    const std::string name = e->d_name;
    if (!is_our_entry(name)) continue;
    EntryHeader header;
    const bool valid = read_entry(dir + "/" + name, &header, nullptr) && header.key_hex + kSuffix == name;
    struct stat st;
    const long long size = stat((dir + "/" + name).c_str(), &st) == 0 ? (long long)st.st_size : 0;
    json += std::string(first ? "" : ",") + "{\"file\":" + json_quote(dir + "/" + name) +
            ",\"size\":" + std::to_string(size) + ",\"label\":" + json_quote(valid ? header.label : "") +
            ",\"valid\":" + (valid ? "true" : "false") + "}";
    first = false;
  }
  closedir(d);
  return json + "]";
}

af_status cache_remove_all() {
  const std::string dir = cache_directory();
  DIR* d = dir.empty() ? nullptr : opendir(dir.c_str());
  if (d == nullptr) return AF_OK;
  af_status status = AF_OK;
  while (const dirent* e = readdir(d)) {
    const std::string name = e->d_name;
    if (!is_our_entry(name) && !is_our_temp(name)) continue;
    if (unlink((dir + "/" + name).c_str()) != 0 && errno != ENOENT)
      status = fail(AF_ERR_IO, "kernel cache: cannot remove %s/%s: %s", dir.c_str(), name.c_str(), std::strerror(errno));
  }
  closedir(d);
  return status;
}

}  // namespace af::cuda
