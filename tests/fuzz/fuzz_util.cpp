// Scratch files and input splitting for the harnesses (see fuzz_target.h).
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <set>

#include "tests/fuzz/fuzz_target.h"

namespace ftune::fuzz {
namespace {

// The scratch directory and what was written into it, removed when the process exits.
struct Scratch {
  std::string dir;
  std::set<std::string> files, subdirs;

  Scratch() {
    std::string base = "/dev/shm";
    if (::access(base.c_str(), W_OK) != 0) {
      const char* tmp = std::getenv("TMPDIR");
      base = tmp != nullptr && *tmp != '\0' ? tmp : "/tmp";
    }
    std::string templ = base + "/ftune_fuzz.XXXXXX";
    if (::mkdtemp(templ.data()) == nullptr) {
      std::fprintf(stderr, "fuzz: mkdtemp %s: %s\n", templ.c_str(), std::strerror(errno));
      std::abort();
    }
    dir = templ;
  }
  ~Scratch() {
    for (const auto& f : files) ::unlink((dir + "/" + f).c_str());
    for (auto it = subdirs.rbegin(); it != subdirs.rend(); ++it) ::rmdir((dir + "/" + *it).c_str());
    ::rmdir(dir.c_str());
  }
};

Scratch& TheScratch() {
  static Scratch s;
  return s;
}

}  // namespace

const std::string& ScratchDir() { return TheScratch().dir; }

std::string WriteScratch(const std::string& name, std::string_view bytes) {
  Scratch& s = TheScratch();
  for (size_t slash = name.find('/'); slash != std::string::npos;
       slash = name.find('/', slash + 1)) {
    const std::string sub = name.substr(0, slash);
    if (s.subdirs.insert(sub).second) ::mkdir((s.dir + "/" + sub).c_str(), 0700);
  }
  const std::string path = s.dir + "/" + name;
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr || std::fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size() ||
      std::fclose(f) != 0) {
    std::fprintf(stderr, "fuzz: cannot write %s: %s\n", path.c_str(), std::strerror(errno));
    std::abort();
  }
  s.files.insert(name);
  return path;
}

void RemoveScratch(const std::string& name) { ::unlink((ScratchDir() + "/" + name).c_str()); }

std::vector<std::string_view> SplitParts(const uint8_t* data, size_t size) {
  std::vector<std::string_view> parts;
  const char* p = reinterpret_cast<const char*>(data);
  size_t start = 0;
  for (size_t i = 0; i <= size; ++i) {
    if (i == size || p[i] == '\0') {
      parts.emplace_back(p + start, i - start);
      start = i + 1;
    }
  }
  return parts;
}

}  // namespace ftune::fuzz
