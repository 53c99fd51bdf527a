// Harness of data/shards' manifest reader (manifest.json of a prepared dataset, ReadManifest).
// An accepted manifest written back with WriteManifest must read back to the same file.
#include <fstream>
#include <iterator>
#include <optional>

#include "data/shards.h"
#include "tests/fuzz/fuzz_target.h"

namespace {

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

}  // namespace

// Input: the bytes of manifest.json.
FTUNE_FUZZ_TARGET(manifest) {
  using namespace ftune::data;
  using ftune::fuzz::WriteScratch;
  const std::string path = WriteScratch("ds/manifest.json", {(const char*)data, size});
  const std::string dir = path.substr(0, path.rfind('/'));
  std::optional<Manifest> m;
  ftune::fuzz::ExpectInputErrors([&] { m = ReadManifest(dir); });
  if (!m) return 0;
  // Outside ExpectInputErrors: a manifest ftune wrote failing to read back is a finding.
  const std::string out = WriteScratch("ds2/manifest.json", "");
  const std::string out_dir = out.substr(0, out.rfind('/'));
  WriteManifest(out_dir, *m);
  const std::string first = ReadBytes(out);
  WriteManifest(out_dir, ReadManifest(out_dir));
  FTUNE_FUZZ_CHECK(ReadBytes(out) == first);
  return 0;
}
