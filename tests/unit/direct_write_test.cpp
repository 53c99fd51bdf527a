// DirectWriter: ranges at any offset and length land byte-exact, with O_DIRECT and without,
// from several writers of one file at once; errors name the path.
#include "runtime/direct_write.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <fstream>
#include <random>
#include <thread>
#include <vector>
#include "parallel/error.h"
#include "parallel/files.h"

namespace ftune::runtime {
namespace {

std::string Scratch(const std::string& name) {
  const std::string dir = files::Join(FTUNE_BINARY_DIR, "test_tmp/direct_write");
  files::CreateDirectories(dir);
  const std::string p = files::Join(dir, name);
  std::ofstream(p, std::ios::trunc).close();
  return p;
}

std::vector<char> ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<char>(std::istreambuf_iterator<char>(in), {});
}

// Splits [0, size) at random cut points into ranges; two threads (two writers of the one file,
// as two ranks are) write alternate ranges from copies whose addresses are deliberately
// misaligned by `shift` bytes.
void WriteInRanges(const std::string& path, bool direct, int64_t size, int shift,
                   std::vector<char>& expect, int64_t* direct_bytes) {
  std::mt19937_64 rng(size + shift);
  expect.resize(size);
  for (auto& c : expect) c = static_cast<char>(rng());
  std::vector<int64_t> cuts{0, size};
  for (int i = 0; i < 9; ++i) cuts.push_back(static_cast<int64_t>(rng() % size));
  std::sort(cuts.begin(), cuts.end());
  auto writer = [&](int which, int64_t* counted) {
    DirectWriter w(path, direct);
    for (size_t i = which; i + 1 < cuts.size(); i += 2) {
      const int64_t n = cuts[i + 1] - cuts[i];
      std::vector<char> src(n + shift + 1);
      std::copy(expect.begin() + cuts[i], expect.begin() + cuts[i + 1], src.begin() + shift);
      w.Write(cuts[i], src.data() + shift, n);
    }
    w.Sync();
    *counted = w.direct_bytes();
  };
  int64_t d0 = 0, d1 = 0;
  std::thread t0(writer, 0, &d0), t1(writer, 1, &d1);
  t0.join();
  t1.join();
  *direct_bytes = d0 + d1;
}

TEST(DirectWriter, RangesLandExactlyWithAndWithoutODirect) {
  for (bool direct : {true, false}) {
    for (int shift : {0, 1, 4, 4096}) {
      // Large enough for whole pages and several staging chunks (8 MiB); odd sizes.
      for (int64_t size : {int64_t{1} << 12, int64_t{37} << 20 | 123, int64_t{5000}}) {
        const std::string path = Scratch("f.bin");
        std::vector<char> expect;
        int64_t direct_bytes = 0;
        WriteInRanges(path, direct, size, shift, expect, &direct_bytes);
        EXPECT_EQ(ReadAll(path), expect) << "direct " << direct << " shift " << shift
                                         << " size " << size;
        if (!direct) EXPECT_EQ(direct_bytes, 0);
      }
    }
  }
}

TEST(DirectWriter, UsesODirectWhereTheFileSystemAllows) {
  const std::string path = Scratch("probe.bin");
  DirectWriter w(path, true);
  if (!w.direct()) GTEST_SKIP() << "this file system refuses O_DIRECT: " << path;
  std::vector<char> buf(3 << 20, 'x');
  w.Write(100, buf.data(), static_cast<int64_t>(buf.size()));
  w.Sync();
  // Everything but the unaligned head and tail went around the page cache.
  EXPECT_GE(w.direct_bytes(), static_cast<int64_t>(buf.size()) - 2 * DirectWriter::kAlign);
  EXPECT_EQ(w.direct_bytes() + w.buffered_bytes(), static_cast<int64_t>(buf.size()));
}

TEST(DirectWriter, ErrorsNameThePath) {
  const std::string missing = files::Join(FTUNE_BINARY_DIR, "test_tmp/no_such_dir/x");
  try {
    DirectWriter w(missing, true);
    FAIL() << "opened a file in a missing directory";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find(missing), std::string::npos) << e.what();
  }
  // A write that cannot go through: /dev/full reports ENOSPC.
  if (access("/dev/full", W_OK) == 0) {
    DirectWriter w("/dev/full", false);
    std::vector<char> buf(100, 'x');
    try {
      w.Write(0, buf.data(), 100);
      w.Sync();
      FAIL() << "writing to /dev/full succeeded";
    } catch (const IoError& e) {
      EXPECT_NE(std::string(e.what()).find("/dev/full"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("space"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace ftune::runtime
