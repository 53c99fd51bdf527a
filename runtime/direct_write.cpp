#include "runtime/direct_write.h"

#include <fcntl.h>
#include <unistd.h>
#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <future>
#include "parallel/error.h"

namespace ftune::runtime {
namespace {

constexpr int64_t kChunk = int64_t{8} << 20;      // staging buffer size
constexpr int64_t kMaxPwrite = int64_t{1} << 30;  // Linux writes at most ~2 GiB per call

// O_DIRECT refused for this range (EINVAL: the file system does not support it, or needs a
// larger alignment than kAlign): written through the page cache instead.
struct DirectRefused {};

constexpr int64_t kA = DirectWriter::kAlign;
int64_t AlignUp(int64_t v) { return (v + kA - 1) / kA * kA; }
int64_t AlignDown(int64_t v) { return v / kA * kA; }

}  // namespace

DirectWriter::DirectWriter(const std::string& path, bool direct) : path_(path) {
  fd_ = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd_ < 0) FT_THROW(IoError, "cannot open {} for writing: {}", path, std::strerror(errno));
  if (direct) {
    direct_fd_ = open(path.c_str(), O_WRONLY | O_CLOEXEC | O_DIRECT);  // -1 where refused
    if (direct_fd_ >= 0) {
      void* p = nullptr;
      if (posix_memalign(&p, kAlign, 2 * kChunk) != 0) {
        DropDirect();
      } else {
        staging_ = static_cast<char*>(p);
      }
    }
  }
}

DirectWriter::~DirectWriter() {
  DropDirect();
  if (fd_ >= 0) close(fd_);
}

void DirectWriter::DropDirect() {
  if (direct_fd_ >= 0) close(direct_fd_);
  direct_fd_ = -1;
  std::free(staging_);
  staging_ = nullptr;
}

void DirectWriter::PwriteAll(int fd, int64_t offset, const char* src, int64_t bytes) {
  while (bytes > 0) {
    const ssize_t n = pwrite(fd, src, static_cast<size_t>(std::min(bytes, kMaxPwrite)), offset);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EINVAL && fd == direct_fd_) throw DirectRefused{};
      FT_THROW(IoError, "writing {} at byte {}: {}", path_, offset, std::strerror(errno));
    }
    if (n == 0) FT_THROW(IoError, "writing {} at byte {}: no progress", path_, offset);
    src += n, offset += n, bytes -= n;
  }
}

void DirectWriter::Buffered(int64_t offset, const char* src, int64_t bytes) {
  PwriteAll(fd_, offset, src, bytes);
  buffered_bytes_ += bytes;
}

// offset and bytes are multiples of kAlign.
void DirectWriter::Direct(int64_t offset, const char* src, int64_t bytes) {
  if (reinterpret_cast<uintptr_t>(src) % kAlign == 0) {
    PwriteAll(direct_fd_, offset, src, bytes);
  } else {
    std::future<void> in_flight;  // the write of the other staging buffer
    for (int64_t done = 0, i = 0; done < bytes; ++i) {
      const int64_t n = std::min(kChunk, bytes - done);
      char* buf = staging_ + (i % 2) * kChunk;
      std::memcpy(buf, src + done, static_cast<size_t>(n));
      if (in_flight.valid()) in_flight.get();
      const int fd = direct_fd_;
      const int64_t at = offset + done;
      in_flight = std::async(std::launch::async, [this, fd, at, buf, n]() {
        PwriteAll(fd, at, buf, n);
      });
      done += n;
    }
    if (in_flight.valid()) in_flight.get();
  }
  direct_bytes_ += bytes;
}

void DirectWriter::Write(int64_t offset, const void* src, int64_t bytes) {
  const char* p = static_cast<const char*>(src);
  const int64_t begin = AlignUp(offset), end = AlignDown(offset + bytes);
  if (direct_fd_ < 0 || end <= begin) {
    Buffered(offset, p, bytes);
    return;
  }
  Buffered(offset, p, begin - offset);
  try {
    Direct(begin, p + (begin - offset), end - begin);
  } catch (const DirectRefused&) {
    DropDirect();
    Buffered(begin, p + (begin - offset), end - begin);
  }
  Buffered(end, p + (end - offset), offset + bytes - end);
}

void DirectWriter::Sync() {
  // One fsync covers the inode's dirty pages (the heads and tails) and flushes the device's
  // cache, which O_DIRECT writes may still sit in.
  if (fsync(fd_) != 0) FT_THROW(IoError, "fsync of {} failed: {}", path_, std::strerror(errno));
}

}  // namespace ftune::runtime
