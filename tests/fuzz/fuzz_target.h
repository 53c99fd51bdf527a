// The harnesses of tests/fuzz: one source per parser of untrusted input, built two ways.
//
//  * As a libFuzzer target (FTUNE_FUZZ=ON, clang; cluster/fuzz.sh): FTUNE_FUZZ_TARGET(name) is
//    libFuzzer's LLVMFuzzerTestOneInput and the binary is fuzz_<name>.
//  * Into fuzz_replay (every build, CTest label unit): FTUNE_FUZZ_TARGET(name) registers the body
//    under `name`, and fuzz_replay runs every file of tests/fuzz/corpus/<name>/ and
//    tests/fuzz/crashers/<name>/ through it, so the corpora are a regression test without clang.
//
// A harness passes for an input when the parser accepts it or rejects it with the typed error it
// promises (ftune::Error other than InternalError). Anything else is a finding: a sanitizer
// report, an InternalError or a foreign exception escaping (std::terminate), or a harness's own
// consistency check failing (FTUNE_FUZZ_CHECK aborts).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "parallel/error.h"

namespace ftune::fuzz {

using TargetFn = int (*)(const uint8_t* data, size_t size);

// Adds a harness to fuzz_replay's table (defined in replay_main.cpp). Returns true.
bool Register(const char* name, TargetFn fn);

// A directory of this process on tmpfs (/dev/shm, else $TMPDIR or /tmp), created on first use
// and removed with its files at exit: harnesses of parsers that read files write inputs here.
const std::string& ScratchDir();
// Writes `bytes` to ScratchDir()/`name` (a subdirectory in `name` is created) and returns the
// path. Later calls overwrite it; RemoveScratch(name) deletes it.
std::string WriteScratch(const std::string& name, std::string_view bytes);
void RemoveScratch(const std::string& name);

// The input cut at each NUL byte (no valid JSON or YAML text holds one): the parts of harnesses
// that take several files or strings. Always at least one part.
std::vector<std::string_view> SplitParts(const uint8_t* data, size_t size);

// Runs f(); the errors ftune throws on purpose for bad input end it quietly. InternalError
// (a violated invariant) and every other exception propagate: the run stops on them.
template <class F>
void ExpectInputErrors(F&& f) {
  try {
    f();
  } catch (const InternalError&) {
    throw;
  } catch (const Error&) {
  }
}

}  // namespace ftune::fuzz

// A consistency check of a harness: prints and aborts (a crash for libFuzzer) when false.
#define FTUNE_FUZZ_CHECK(cond)                                                            \
  do {                                                                                    \
    if (!(cond)) {                                                                        \
      std::fprintf(stderr, "fuzz check failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
      std::abort();                                                                       \
    }                                                                                     \
  } while (0)

#ifdef FTUNE_LIBFUZZER
#define FTUNE_FUZZ_TARGET(name) \
  extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size)
#else
#define FTUNE_FUZZ_TARGET(name)                                                             \
  static int FuzzTarget_##name(const uint8_t* data, size_t size);                           \
  static const bool kRegistered_##name = ::ftune::fuzz::Register(#name, FuzzTarget_##name); \
  static int FuzzTarget_##name(const uint8_t* data, size_t size)
#endif
