// fuzz_replay: runs the committed corpora and crashers through every harness (CTest unit test).
//
//   fuzz_replay DIR [NAME...]   DIR holds corpus/<name>/ and crashers/<name>/ (tests/fuzz)
//
// Every registered harness must have a non-empty corpus. An input that fails stops the run with
// its path printed (by the abort handler, or by the sanitizers' death callback in the
// ASan/UBSan build), so a regression names the file to replay with fuzz_<name> FILE.
#include <dirent.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>

#include "tests/fuzz/fuzz_target.h"

extern "C" void __sanitizer_set_death_callback(void (*callback)(void)) __attribute__((weak));

namespace ftune::fuzz {
namespace {

std::map<std::string, TargetFn>& Targets() {
  static std::map<std::string, TargetFn> targets;
  return targets;
}

char g_current[4096] = "";  // the input being run, for the failure handlers

void PrintCurrent() {
  static const char kPrefix[] = "\nfuzz_replay: failing input: ";
  ssize_t ignored = ::write(2, kPrefix, sizeof(kPrefix) - 1);
  ignored = ::write(2, g_current, std::strlen(g_current));
  ignored = ::write(2, "\n", 1);
  (void)ignored;
}

void OnAbort(int sig) {
  PrintCurrent();
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

// Regular files of `dir`, sorted; empty when the directory does not exist.
std::vector<std::string> ListFiles(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return out;
  while (const dirent* e = ::readdir(d)) {
    if (e->d_name[0] == '.') continue;
    out.push_back(dir + "/" + e->d_name);
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "fuzz_replay: cannot read %s\n", path.c_str());
    std::exit(1);
  }
  return std::string(std::istreambuf_iterator<char>(in), {});
}

}  // namespace

bool Register(const char* name, TargetFn fn) {
  Targets()[name] = fn;
  return true;
}

}  // namespace ftune::fuzz

int main(int argc, char** argv) {
  using namespace ftune::fuzz;
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s DIR [NAME...]  (DIR holds corpus/<name>/, crashers/<name>/)\n",
                 argv[0]);
    return 2;
  }
  const std::string root = argv[1];
  std::vector<std::string> names(argv + 2, argv + argc);
  if (names.empty()) {
    for (const auto& [name, fn] : Targets()) names.push_back(name);
  }
  std::signal(SIGABRT, OnAbort);
  std::signal(SIGSEGV, OnAbort);
  if (__sanitizer_set_death_callback != nullptr) __sanitizer_set_death_callback(PrintCurrent);
  int failures = 0;
  for (const auto& name : names) {
    auto it = Targets().find(name);
    if (it == Targets().end()) {
      std::fprintf(stderr, "fuzz_replay: no harness named %s\n", name.c_str());
      return 2;
    }
    const auto corpus = ListFiles(root + "/corpus/" + name);
    const auto crashers = ListFiles(root + "/crashers/" + name);
    if (corpus.empty()) {
      std::fprintf(stderr, "fuzz_replay: %s: no corpus in %s/corpus/%s\n", name.c_str(),
                   root.c_str(), name.c_str());
      ++failures;
      continue;
    }
    double slowest = 0;
    std::string slowest_file;
    const auto t0 = std::chrono::steady_clock::now();
    for (const auto* list : {&corpus, &crashers}) {
      for (const auto& file : *list) {
        std::snprintf(g_current, sizeof(g_current), "%s", file.c_str());
        const std::string bytes = ReadAll(file);
        const auto t = std::chrono::steady_clock::now();
        it->second(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
        if (s > slowest) slowest = s, slowest_file = file;
      }
    }
    const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("%-18s %4zu corpus + %2zu crashers in %6.2f s (slowest %.3f s: %s)\n",
                name.c_str(), corpus.size(), crashers.size(), total, slowest,
                slowest_file.c_str());
  }
  g_current[0] = '\0';
  return failures == 0 ? 0 : 1;
}
