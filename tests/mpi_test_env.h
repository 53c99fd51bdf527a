// Access to the process's World from tests run under tests/mpi_gtest_main.cpp, and the device
// those tests run on.
#pragma once

#include "parallel/process_grid.h"
#include "runtime/world.h"

namespace ftune::testing {

// Exit status of an mpi test binary that skips (CTest SKIP_RETURN_CODE).
inline constexpr int kSkipped = 77;

runtime::World& TestWorld();

// FTUNE_TEST_DEVICE=cuda (the `gpu` CTest label) runs the tests on this rank's GPU (World's
// device; ranks share it when there are more ranks than GPUs); unset or cpu, on the CPU. Under
// cuda without a GPU the binary exits with kSkipped, saying so.
at::Device TestDevice();
// A grid on TestDevice() with MPI data communicators (which stage device tensors through host
// memory, so np 2 and 4 can share one GPU).
parallel::GridOptions TestGrid(int64_t dp, int64_t tp);

}  // namespace ftune::testing
