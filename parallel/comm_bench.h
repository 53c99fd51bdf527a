// All-reduce bandwidth through the Communicator beside raw MPI_Allreduce on the
// same buffers in the same run (nccl-tests conventions: algbw = bytes / time,
// busbw = algbw * 2(n-1)/n).
#pragma once

#include <cstdint>
#include <vector>

#include "parallel/communicator.h"

namespace ftune::parallel {

struct CommBenchRow {
  int64_t bytes = 0;
  double comm_us = 0;        // median time per all-reduce through the Communicator
  double raw_us = 0;         // median time per raw MPI_Allreduce (MPI_COMM_WORLD)
  double comm_busbw_gbs = 0;
  double raw_busbw_gbs = 0;
};

// Collective over `world` (which must span MPI_COMM_WORLD). fp32 sums; `iters`
// timed repetitions per size after `warmup`, interleaving the two paths.
std::vector<CommBenchRow> BenchAllReduce(Communicator& world, const std::vector<int64_t>& bytes,
                                         int warmup, int iters);

}  // namespace ftune::parallel
