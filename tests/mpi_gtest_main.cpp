// gtest main for tests under mpirun: one World per process, only rank 0 prints
// the gtest report, and failures are summed over ranks so that one failing rank
// fails the whole test (every rank exits non-zero).
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <iostream>

#include "runtime/log.h"
#include "tests/mpi_test_env.h"

namespace ftune::testing {
runtime::World* g_world = nullptr;
runtime::World& TestWorld() { return *g_world; }

namespace {
bool WantCuda() {
  const char* d = std::getenv("FTUNE_TEST_DEVICE");
  return d != nullptr && std::strcmp(d, "cuda") == 0;
}
}  // namespace

at::Device TestDevice() { return WantCuda() ? g_world->device() : at::Device(at::kCPU); }

parallel::GridOptions TestGrid(int64_t dp, int64_t tp) {
  parallel::GridOptions o;
  o.dp = dp;
  o.tp = tp;
  o.device = TestDevice();
  o.backend = "mpi";
  return o;
}
}  // namespace ftune::testing

int main(int argc, char** argv) {
  ftune::runtime::World world(&argc, &argv);
  ftune::testing::g_world = &world;
  ftune::runtime::InitLogging(world.rank(), world.world_size());
  if (ftune::testing::WantCuda() && !world.device().is_cuda()) {
    if (world.rank() == 0) {
      std::cout << "skipped: FTUNE_TEST_DEVICE=cuda but this machine (or build) has no CUDA "
                   "device\n";
    }
    return ftune::testing::kSkipped;
  }
  torch::set_num_threads(1);
  ::testing::InitGoogleTest(&argc, argv);
  auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
  if (world.rank() != 0) {
    // Keep other ranks' failures visible, but not their progress lines.
    delete listeners.Release(listeners.default_result_printer());
  }
  int rc = RUN_ALL_TESTS();
  const int failed = ::testing::UnitTest::GetInstance()->failed_test_count();
  auto t = torch::tensor({static_cast<int64_t>(failed)}, torch::kLong);
  world.comm().AllReduce(t)->Wait();
  const int64_t total = t.item<int64_t>();
  if (total > 0 && world.rank() == 0) {
    std::cerr << "FAILED: " << total << " test failure(s) summed over " << world.world_size()
              << " ranks\n";
  }
  if (world.rank() != 0 && failed > 0) {
    std::cerr << "rank " << world.rank() << ": " << failed << " failed test(s)\n";
  }
  return (total > 0 || rc != 0) ? 1 : 0;
}
