// Benchmark (not a timed test; skipped unless FTUNE_BENCH_DATA_DIR names a prepared dataset):
// loader throughput (tokens/s delivered) beside a raw sequential H5Dread of the same shards.
//   FTUNE_BENCH_DATA_DIR=run/data FTUNE_BENCH_SEQ_LEN=1024 FTUNE_BENCH_PACKING=1 \
//     build/tests/loader_bench_test
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>

#include "data/loader.h"
#include "data/shards.h"

namespace ftune::data {
namespace {

int64_t EnvInt(const char* name, int64_t def) {
  const char* v = std::getenv(name);
  return v ? std::atoll(v) : def;
}

double Seconds(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double RawRead(const std::string& dir, const Manifest& m, int64_t* tokens) {
  const auto t0 = std::chrono::steady_clock::now();
  *tokens = 0;
  std::vector<int32_t> tok;
  std::vector<uint8_t> mask;
  for (const auto& s : m.train.shards) {
    ShardReader r(dir + "/" + s.file);
    r.ReadAll(&tok, &mask);
    *tokens += int64_t(tok.size());
  }
  return Seconds(t0);
}

TEST(LoaderBench, Throughput) {
  const char* dir = std::getenv("FTUNE_BENCH_DATA_DIR");
  if (!dir) GTEST_SKIP() << "set FTUNE_BENCH_DATA_DIR to a prepared dataset";
  const Manifest m = ReadManifest(dir);
  int64_t raw_tokens = 0;
  const double raw1 = RawRead(dir, m, &raw_tokens);

  LoaderOptions o;
  o.dir = dir;
  o.seq_len = EnvInt("FTUNE_BENCH_SEQ_LEN", 1024);
  o.micro_batch = EnvInt("FTUNE_BENCH_MICRO_BATCH", 8);
  o.packing = EnvInt("FTUNE_BENCH_PACKING", 1) != 0;
  o.seed = 1;
  Loader loader(o);
  const int64_t max_batches = EnvInt("FTUNE_BENCH_BATCHES", 1 << 30);
  const int64_t batches = std::min(max_batches, loader.samples_per_epoch() / o.micro_batch);
  const auto t0 = std::chrono::steady_clock::now();
  int64_t delivered = 0, targets = 0;
  for (int64_t k = 0; k < batches; ++k) {
    Batch b = loader.Next();
    delivered += b.tokens.numel();
    targets += b.num_targets;
  }
  const double lt = Seconds(t0);
  const double raw2 = RawRead(dir, m, &raw_tokens);
  std::printf("loader bench: %s, %lld tokens in %zu train shards, seq_len %lld, micro_batch %lld, "
              "packing %d\n",
              dir, (long long)raw_tokens, m.train.shards.size(), (long long)o.seq_len,
              (long long)o.micro_batch, int(o.packing));
  std::printf("  raw H5Dread (whole datasets): %8.3f s  %12.0f tokens/s  (again: %.3f s, %.0f "
              "tokens/s)\n",
              raw1, raw_tokens / raw1, raw2, raw_tokens / raw2);
  std::printf("  loader (%lld batches)        : %8.3f s  %12.0f tokens/s delivered (%lld "
              "trained targets), Next() waited %.3f s\n",
              (long long)batches, lt, delivered / lt, (long long)targets, loader.wait_seconds());
}

}  // namespace
}  // namespace ftune::data
