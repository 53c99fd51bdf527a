// `ftune bench comm`: Communicator all-reduce bandwidth beside raw MPI.
#include <fmt/format.h>

#include "launch/commands.h"
#include "parallel/comm_bench.h"

namespace ftune::launch {

void AddBenchCommand(CLI::App& app, runtime::World& world) {
  auto* bench = app.add_subcommand("bench", "benchmarks (not tests): comm");
  bench->require_subcommand(1);
  auto* comm = bench->add_subcommand("comm", "all-reduce busbw: Communicator vs raw MPI_Allreduce");
  static int64_t min_bytes = 1 << 10, max_bytes = int64_t(256) << 20;
  static int iters = 20, warmup = 3;
  comm->add_option("--min-bytes", min_bytes, "smallest message")->capture_default_str();
  comm->add_option("--max-bytes", max_bytes, "largest message")->capture_default_str();
  comm->add_option("--iters", iters, "timed iterations per size")->capture_default_str();
  comm->add_option("--warmup", warmup, "untimed iterations per size")->capture_default_str();
  comm->callback([&world]() {
    std::vector<int64_t> sizes;
    for (int64_t b = min_bytes; b <= max_bytes; b *= 4) sizes.push_back(b);
    auto rows = parallel::BenchAllReduce(world.comm(), sizes, warmup, iters);
    if (world.rank() != 0) return;
    fmt::print("all-reduce fp32 sum, {} ranks, {} iters (median, slowest rank)\n",
               world.world_size(), iters);
    fmt::print("{:>12} {:>12} {:>12} {:>14} {:>14} {:>8}\n", "bytes", "ftune_us", "mpi_us",
               "ftune_busbw", "mpi_busbw", "ratio");
    for (const auto& r : rows) {
      fmt::print("{:>12} {:>12.1f} {:>12.1f} {:>11.3f}GB/s {:>11.3f}GB/s {:>8.3f}\n", r.bytes,
                 r.comm_us, r.raw_us, r.comm_busbw_gbs, r.raw_busbw_gbs,
                 r.comm_busbw_gbs / r.raw_busbw_gbs);
    }
  });
}

}  // namespace ftune::launch
