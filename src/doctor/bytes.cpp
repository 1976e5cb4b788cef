#include "doctor/bytes.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

namespace af::doctor {

MappedFile::~MappedFile() {
  if (address_ && size_) munmap(address_, size_);
}

bool MappedFile::open(const std::string& path, std::string& error) {
  // O_NONBLOCK: a FIFO given as the file must be refused below, not waited on.
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    error = "cannot open " + path + ": " + std::strerror(errno);
    return false;
  }
  struct stat info {};
  if (fstat(fd, &info) != 0 || !S_ISREG(info.st_mode)) {
    ::close(fd);
    error = path + " is not a regular file";
    return false;
  }
  size_ = size_t(info.st_size);
  if (size_ > 0) {
    address_ = mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (address_ == MAP_FAILED) {
      address_ = nullptr;
      size_ = 0;
      ::close(fd);
      error = "cannot map " + path;
      return false;
    }
  }
  ::close(fd);
  return true;
}

}  // namespace af::doctor
