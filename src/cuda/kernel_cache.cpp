#include "cuda/kernel_cache.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "common/error.h"
#include "common/json.h"
#include "common/sha256.h"

namespace af::cuda {

namespace {

constexpr char kMagic[8] = {'A', 'F', 'K', 'C', 'A', 'C', 'H', '2'};
constexpr const char* kSuffix = ".afk";
constexpr const char* kTempPrefix = ".afk-tmp-";
constexpr size_t kKeyChars = 64;

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

std::string format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string format(const char* fmt, ...) {
  char buffer[1024];
  va_list args;
  va_start(args, fmt);
  std::vsnprintf(buffer, sizeof buffer, fmt, args);
  va_end(args);
  return buffer;
}

// Why a file or directory we are about to trust could have been written by someone else.
std::string ownership_problem(const struct stat& st) {
  if (st.st_uid != geteuid())
    return format("owned by uid %u, not by this user (uid %u)", unsigned(st.st_uid), unsigned(geteuid()));
  if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0)
    return format("writable by group or others (mode %04o)", unsigned(st.st_mode & 07777));
  return "";
}

// mkdir -p with mode 0700 for the directories we create.
bool make_directories(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) == 0) {
    if (!S_ISDIR(st.st_mode)) errno = ENOTDIR;
    return S_ISDIR(st.st_mode);
  }
  const size_t slash = path.find_last_of('/');
  if (slash != std::string::npos && slash > 0 && !make_directories(path.substr(0, slash))) return false;
  return mkdir(path.c_str(), 0700) == 0 || errno == EEXIST;
}

// The cache directory, opened and checked (see the header). fd < 0 with an empty refusal
// means it does not exist.
struct Directory {
  std::string path;
  int fd = -1;
  std::string refusal;
  Directory() = default;
  Directory(const Directory&) = delete;
  Directory& operator=(const Directory&) = delete;
  ~Directory() {
    if (fd >= 0) close(fd);
  }
};

void open_directory(bool create, Directory* d) {
  d->path = cache_directory();
  if (d->path.empty()) {
    d->refusal = "no cache directory: set ATTNFORGE_CACHE_DIR, XDG_CACHE_HOME or HOME";
    return;
  }
  if (d->path[0] != '/') {
    d->refusal = "ATTNFORGE_CACHE_DIR must be an absolute path, got '" + d->path + "'";
    return;
  }
  struct stat st;
  if (lstat(d->path.c_str(), &st) != 0 && errno == ENOENT && create) {
    if (!make_directories(d->path)) {
      d->refusal = format("cannot create %s: %s", d->path.c_str(), std::strerror(errno));
      return;
    }
  }
  if (lstat(d->path.c_str(), &st) != 0) {
    if (errno != ENOENT) d->refusal = format("cannot read %s: %s", d->path.c_str(), std::strerror(errno));
    return;
  }
  if (S_ISLNK(st.st_mode)) {
    d->refusal = d->path + " is a symbolic link (set ATTNFORGE_CACHE_DIR to a real directory)";
    return;
  }
  if (!S_ISDIR(st.st_mode)) {
    d->refusal = d->path + " is not a directory";
    return;
  }
  // O_NOFOLLOW and fstat of the descriptor itself: what is checked is what is used.
  d->fd = open(d->path.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (d->fd < 0) {
    d->refusal = format("cannot open %s: %s", d->path.c_str(), std::strerror(errno));
    return;
  }
  if (fstat(d->fd, &st) != 0 || !S_ISDIR(st.st_mode)) {
    d->refusal = d->path + " is not a directory";
  } else if (const std::string problem = ownership_problem(st); !problem.empty()) {
    d->refusal = d->path + " is " + problem + ": another user could replace the kernels in it";
  }
  if (!d->refusal.empty()) {
    close(d->fd);
    d->fd = -1;
  }
}

// Written once per process: the first time a GPU call finds the cache refused.
void log_bypass(const std::string& refusal) {
  static std::once_flag once;
  std::call_once(once, [&] {
    std::fprintf(stderr, "attnforge: kernel cache not used (kernels are compiled in memory): %s\n", refusal.c_str());
  });
}

struct EntryHeader {
  std::string key_hex;
  uint64_t size = 0;
  uint8_t digest[32] = {};
  std::string label;
};

// Opens, checks and parses a whole entry; payload may be null (list only). "" when valid,
// else what is wrong with it.
std::string read_entry(int dir_fd, const std::string& name, EntryHeader* header, std::vector<char>* payload,
                       long long* file_size) {
  const int fd = openat(dir_fd, name.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return errno == ELOOP ? "a symbolic link" : std::string("cannot open: ") + std::strerror(errno);
  std::string problem;
  struct stat st;
  char magic[8];
  char key[kKeyChars];
  uint32_t label_size = 0;
  if (fstat(fd, &st) != 0) {
    problem = std::string("cannot stat: ") + std::strerror(errno);
  } else if (!S_ISREG(st.st_mode)) {
    problem = "not a regular file";
  } else if (problem = ownership_problem(st); problem.empty()) {
    *file_size = (long long)st.st_size;
    problem = "damaged";
    if (read_all(fd, magic, 8) && std::memcmp(magic, kMagic, 8) == 0 && read_all(fd, key, kKeyChars) &&
        read_all(fd, &header->size, 8) && read_all(fd, header->digest, 32) && read_all(fd, &label_size, 4) &&
        label_size < 4096 && header->size <= uint64_t(st.st_size)) {
      header->key_hex.assign(key, kKeyChars);
      header->label.resize(label_size);
      const uint64_t expected = 8 + kKeyChars + 8 + 32 + 4 + uint64_t(label_size) + header->size;
      if (read_all(fd, &header->label[0], label_size) && uint64_t(st.st_size) == expected) {
        std::vector<char> data(header->size);
        uint8_t digest[32];
        if (read_all(fd, data.data(), data.size())) {
          Sha256().update(data.data(), data.size()).finish(digest);
          if (std::memcmp(digest, header->digest, 32) == 0) {
            problem.clear();
            if (payload != nullptr) payload->swap(data);
          }
        }
      }
    }
  }
  close(fd);
  return problem;
}

bool has_suffix(const std::string& name, const std::string& suffix) {
  return name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Ours: 64 lowercase hex chars + ".afk", or a temporary file we write.
bool is_our_entry(const std::string& name) {
  if (name.size() != kKeyChars + 4 || !has_suffix(name, kSuffix)) return false;
  for (size_t i = 0; i < kKeyChars; ++i)
    if (!((name[i] >= '0' && name[i] <= '9') || (name[i] >= 'a' && name[i] <= 'f'))) return false;
  return true;
}

bool is_our_temp(const std::string& name) { return name.compare(0, std::strlen(kTempPrefix), kTempPrefix) == 0; }

std::mutex g_store_mutex;
uint64_t g_store_failures = 0;
std::string g_store_failure;

af_status store_failed(const std::string& message) {
  {
    std::lock_guard<std::mutex> lock(g_store_mutex);
    ++g_store_failures;
    g_store_failure = message;
  }
  return fail(AF_ERR_IO, "kernel cache: %s", message.c_str());
}

}  // namespace

std::string CacheKey::hex() const {
  static const char kDigits[] = "0123456789abcdef";
  std::string text(kKeyChars, '0');
  for (int i = 0; i < 32; ++i) text[2 * i] = kDigits[digest[i] >> 4], text[2 * i + 1] = kDigits[digest[i] & 15];
  return text;
}

CacheKey make_cache_key(const std::string& source, const std::vector<std::string>& options, const std::string& target,
                        int nvrtc_major, int nvrtc_minor) {
  // Every field is length-prefixed, so no two different inputs hash the same text.
  Sha256 hash;
  auto field = [&](const std::string& text) { hash.update(std::to_string(text.size()) + ":").update(text); };
  field("attnforge-cache-v2");
  field(AF_VERSION_STRING);
  field(target);
  field(std::to_string(nvrtc_major) + "." + std::to_string(nvrtc_minor));
  field(std::to_string(options.size()));
  for (const std::string& option : options) field(option);
  field(source);
  CacheKey key;
  hash.finish(key.digest);
  return key;
}

std::string cache_directory() {
  if (const char* dir = std::getenv("ATTNFORGE_CACHE_DIR"); dir != nullptr && *dir != 0) {
    // Without trailing slashes: "dir/" would make lstat follow a symbolic link named dir.
    std::string path = dir;
    while (path.size() > 1 && path.back() == '/') path.pop_back();
    return path;
  }
  // The XDG base directory spec says relative values are invalid and must be ignored.
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg != nullptr && *xdg == '/')
    return std::string(xdg) + "/attnforge";
  if (const char* home = std::getenv("HOME"); home != nullptr && *home == '/')
    return std::string(home) + "/.cache/attnforge";
  return "";
}

std::string cache_refusal() {
  Directory d;
  open_directory(false, &d);
  return d.refusal;
}

af_status cache_check_writable() {
  Directory d;
  open_directory(true, &d);
  if (!d.refusal.empty()) return fail(AF_ERR_IO, "kernel cache: %s", d.refusal.c_str());
  const std::string probe = std::string(kTempPrefix) + "probe-" + std::to_string(getpid());
  const int fd = openat(d.fd, probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) return fail(AF_ERR_IO, "kernel cache: cannot write in %s: %s", d.path.c_str(), std::strerror(errno));
  close(fd);
  unlinkat(d.fd, probe.c_str(), 0);
  return AF_OK;
}

bool cache_load(const CacheKey& key, std::vector<char>* payload) {
  Directory d;
  open_directory(false, &d);
  if (!d.refusal.empty()) log_bypass(d.refusal);
  if (d.fd < 0) return false;
  EntryHeader header;
  long long size = 0;
  const std::string hex = key.hex();
  return read_entry(d.fd, hex + kSuffix, &header, payload, &size).empty() && header.key_hex == hex;
}

af_status cache_store(const CacheKey& key, const std::string& label, const std::vector<char>& payload) {
  Directory d;
  open_directory(true, &d);
  if (!d.refusal.empty()) {
    log_bypass(d.refusal);
    return store_failed(d.refusal);
  }
  static std::atomic<unsigned> counter{0};
  const std::string hex = key.hex();
  const std::string temp =
      kTempPrefix + hex + "-" + std::to_string(getpid()) + "-" + std::to_string(counter.fetch_add(1));
  const int fd = openat(d.fd, temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0)
    return store_failed(format("cannot create %s/%s: %s", d.path.c_str(), temp.c_str(), std::strerror(errno)));
  uint8_t digest[32];
  Sha256().update(payload.data(), payload.size()).finish(digest);
  const uint64_t size = payload.size();
  const uint32_t label_size = uint32_t(label.size());
  const bool written = write_all(fd, kMagic, 8) && write_all(fd, hex.data(), kKeyChars) && write_all(fd, &size, 8) &&
                       write_all(fd, digest, 32) && write_all(fd, &label_size, 4) &&
                       write_all(fd, label.data(), label.size()) && write_all(fd, payload.data(), payload.size()) &&
                       fsync(fd) == 0;
  const int saved = errno;
  close(fd);
  if (!written || renameat(d.fd, temp.c_str(), d.fd, (hex + kSuffix).c_str()) != 0) {
    const int error = written ? errno : saved;
    unlinkat(d.fd, temp.c_str(), 0);
    return store_failed(format("cannot write %s/%s%s: %s", d.path.c_str(), hex.c_str(), kSuffix, std::strerror(error)));
  }
  return AF_OK;
}

uint64_t cache_store_failures(std::string* last_message) {
  std::lock_guard<std::mutex> lock(g_store_mutex);
  if (last_message != nullptr) *last_message = g_store_failure;
  return g_store_failures;
}

af_status cache_list(std::string* json) {
  Directory d;
  open_directory(false, &d);
  if (!d.refusal.empty()) return fail(AF_ERR_IO, "kernel cache: %s", d.refusal.c_str());
  *json = "[";
  if (d.fd < 0) {
    *json += "]";
    return AF_OK;
  }
  DIR* listing = fdopendir(dup(d.fd));
  if (listing == nullptr)
    return fail(AF_ERR_IO, "kernel cache: cannot list %s: %s", d.path.c_str(), std::strerror(errno));
  bool first = true;
  while (const dirent* e = readdir(listing)) {
    const std::string name = e->d_name;
    if (!is_our_entry(name)) continue;
    EntryHeader header;
    long long size = 0;
    std::string problem = read_entry(d.fd, name, &header, nullptr, &size);
    if (problem.empty() && header.key_hex + kSuffix != name) problem = "holds the entry of another key";
    *json += std::string(first ? "" : ",") + "{\"file\":" + json_quote(d.path + "/" + name) +
             ",\"size\":" + std::to_string(size) + ",\"label\":" + json_quote(problem.empty() ? header.label : "") +
             ",\"valid\":" + (problem.empty() ? "true" : "false") +
             (problem.empty() ? std::string() : ",\"problem\":" + json_quote(problem)) + "}";
    first = false;
  }
  closedir(listing);
  *json += "]";
  return AF_OK;
}

std::string cache_list() {
  std::string json;
  return cache_list(&json) == AF_OK ? json : "[]";
}

af_status cache_remove_all() {
  Directory d;
  open_directory(false, &d);
  if (!d.refusal.empty()) return fail(AF_ERR_IO, "kernel cache: %s", d.refusal.c_str());
  if (d.fd < 0) return AF_OK;
  DIR* listing = fdopendir(dup(d.fd));
  if (listing == nullptr)
    return fail(AF_ERR_IO, "kernel cache: cannot list %s: %s", d.path.c_str(), std::strerror(errno));
  af_status status = AF_OK;
  while (const dirent* e = readdir(listing)) {
    const std::string name = e->d_name;
    if (!is_our_entry(name) && !is_our_temp(name)) continue;
    if (unlinkat(d.fd, name.c_str(), 0) != 0 && errno != ENOENT)
      status =
          fail(AF_ERR_IO, "kernel cache: cannot remove %s/%s: %s", d.path.c_str(), name.c_str(), std::strerror(errno));
  }
  closedir(listing);
  return status;
}

}  // namespace af::cuda
