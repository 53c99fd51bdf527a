#include "parallel/comm_bench.h"

#include <algorithm>

#include "parallel/mpi_check.h"

namespace ftune::parallel {
namespace {

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

std::vector<CommBenchRow> BenchAllReduce(Communicator& world, const std::vector<int64_t>& bytes,
                                         int warmup, int iters) {
  std::vector<CommBenchRow> rows;
  const int n = world.size();
  for (int64_t b : bytes) {
    const int64_t count = std::max<int64_t>(1, b / 4);
    auto buf = at::ones({count}, at::kFloat);
    std::vector<double> t_comm, t_raw;
    for (int i = 0; i < warmup + iters; ++i) {
      world.Barrier()->Wait();
      double t0 = MPI_Wtime();
      world.AllReduce(buf)->Wait();
      double t1 = MPI_Wtime();
      world.Barrier()->Wait();
      double t2 = MPI_Wtime();
      MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, buf.data_ptr(), static_cast<int>(count), MPI_FLOAT,
                              MPI_SUM, MPI_COMM_WORLD));
      double t3 = MPI_Wtime();
      if (i >= warmup) {
        t_comm.push_back(t1 - t0);
        t_raw.push_back(t3 - t2);
      }
      buf.fill_(1.0f);
    }
    // The slowest rank defines the collective's time.
    auto times = at::tensor({Median(t_comm), Median(t_raw)}, at::kDouble);
    world.AllReduce(times, ReduceOp::kMax)->Wait();
    CommBenchRow r;
    r.bytes = count * 4;
    r.comm_us = times[0].item<double>() * 1e6;
    r.raw_us = times[1].item<double>() * 1e6;
    const double factor = n > 1 ? 2.0 * (n - 1) / n : 1.0;
    r.comm_busbw_gbs = r.bytes / (r.comm_us * 1e-6) * factor / 1e9;
    r.raw_busbw_gbs = r.bytes / (r.raw_us * 1e-6) * factor / 1e9;
    rows.push_back(r);
  }
  return rows;
}

}  // namespace ftune::parallel
