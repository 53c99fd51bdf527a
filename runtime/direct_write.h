#pragma once
// Writing large byte ranges into an existing file around the page cache (O_DIRECT).
//
// Why: several ranks writing their slices of one checkpoint file through the page cache spend
// their time in the kernel's copy, which ext4 serialises per file; measured on the 2-core VM,
// two buffered writers to one file reached ~65 % of `dd conv=fsync`, two O_DIRECT writers
// ~100 % (PERFORMANCE.md, checkpoint section).
//
// O_DIRECT needs the file offset, the length and the memory address aligned (kAlign covers the
// page size and every common logical block size). A range is split into an unaligned head and
// tail, written through the page cache, and an aligned body, written with O_DIRECT from the
// caller's memory where its address lines up, else through two aligned staging buffers (the copy
// of one overlapping the write of the other). Where the file system refuses O_DIRECT (tmpfs,
// some network file systems), everything is written through the page cache instead.
//
// Several processes may write disjoint ranges of the same file at once: pages shared by two
// ranges (a head of one and a tail of the other) are only ever written through the page cache.

#include <cstdint>
#include <string>

namespace ftune::runtime {

class DirectWriter {
 public:
  static constexpr int64_t kAlign = 4096;

  // Opens `path` (which must exist) for writing; `direct` false: page cache only.
  DirectWriter(const std::string& path, bool direct);
  ~DirectWriter();
  DirectWriter(const DirectWriter&) = delete;
  DirectWriter& operator=(const DirectWriter&) = delete;

  // Writes `bytes` bytes from `src` at byte `offset` of the file. Throws IoError naming the
  // path, the offset and the system error (e.g. "No space left on device").
  void Write(int64_t offset, const void* src, int64_t bytes);
  // Flushes what this process wrote to stable storage (fsync).
  void Sync();

  // Whether O_DIRECT is in use (false after the file system refused it).
  bool direct() const { return direct_fd_ >= 0; }
  int64_t direct_bytes() const { return direct_bytes_; }    // written with O_DIRECT
  int64_t buffered_bytes() const { return buffered_bytes_; }  // through the page cache

 private:
  void Buffered(int64_t offset, const char* src, int64_t bytes);
  void Direct(int64_t offset, const char* src, int64_t bytes);
  void PwriteAll(int fd, int64_t offset, const char* src, int64_t bytes);
  void DropDirect();

  std::string path_;
  int fd_ = -1;         // buffered
  int direct_fd_ = -1;  // O_DIRECT, or -1
  char* staging_ = nullptr;  // two aligned buffers of kChunk bytes
  int64_t direct_bytes_ = 0, buffered_bytes_ = 0;
};

}  // namespace ftune::runtime
