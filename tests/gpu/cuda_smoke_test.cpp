// gpu: what every GPU feature rests on, at 1, 2 and 4 ranks with one GPU each. World puts each
// rank on cuda:<local rank>; a matmul there matches the CPU's; the NCCL backend's collectives on
// CUDA tensors give closed-form results (input = f(rank)) in fp32 and bf16 and leave the tensors
// on the device. Runs behind tests/gpu_gate.sh: skipped without enough CUDA devices.
#include <gtest/gtest.h>

#include "parallel/communicator.h"
#include "tests/mpi_test_env.h"

namespace ftune::parallel {
namespace {

using ftune::testing::TestWorld;

TEST(CudaSmoke, RankIsOnItsLocalGpu) {
  const auto& world = TestWorld();
  ASSERT_TRUE(world.device().is_cuda()) << "World chose " << world.device().str();
  const int devices = static_cast<int>(torch::cuda::device_count());
  EXPECT_EQ(world.device().index(), world.local_rank() % devices);
}

TEST(CudaSmoke, MatmulMatchesCpu) {
  torch::manual_seed(1);
  auto a = torch::randn({256, 512});
  auto b = torch::randn({512, 128});
  const auto dev = TestWorld().device();
  auto on_gpu = torch::matmul(a.to(dev), b.to(dev));
  EXPECT_TRUE(on_gpu.is_cuda());
  EXPECT_TRUE(torch::allclose(on_gpu.cpu(), torch::matmul(a, b), 1e-4, 1e-3));
}

// Closed-form results of every collective on `nccl`, in fp32 and bf16.
void CheckCollectives(Communicator& nccl, const torch::Device& dev) {
  const int n = nccl.size(), r = nccl.rank();
  for (auto dt : {at::kFloat, at::kBFloat16}) {
    SCOPED_TRACE(c10::toString(dt));
    const auto opts = at::TensorOptions(dt).device(dev);
    // Small integers: exact in bf16 too. sum over ranks of (i % 7 + rank + 1).
    auto base = at::arange(65537, at::kLong).remainder(7);
    auto t = (base + r + 1).to(dt).to(dev);
    nccl.AllReduce(t)->Wait();
    EXPECT_TRUE(t.is_cuda());
    EXPECT_TRUE(at::equal(t.cpu().to(at::kLong), base * n + n * (n + 1) / 2));

    auto in = at::full({1000}, r, opts);
    auto out = at::empty({n * 1000}, opts);
    nccl.AllGather(in, out)->Wait();
    EXPECT_TRUE(at::equal(out.cpu().to(at::kLong), at::arange(n, at::kLong).repeat_interleave(1000)));

    // Chunk c of rank q's input is q + c; chunk r reduced: sum over q of (q + r).
    auto rs_in = (at::arange(n, at::kLong).repeat_interleave(1000) + r).to(dt).to(dev);
    auto rs_out = at::empty({1000}, opts);
    nccl.ReduceScatter(rs_in, rs_out)->Wait();
    EXPECT_TRUE(at::equal(rs_out.cpu().to(at::kLong),
                          at::full({1000}, n * r + n * (n - 1) / 2, at::kLong)));

    auto b = at::full({17}, r, opts);
    nccl.Broadcast(b, n - 1)->Wait();
    EXPECT_TRUE(at::equal(b.cpu().to(at::kLong), at::full({17}, n - 1, at::kLong)));

    // The V forms: rank q contributes q + 1 elements.
    std::vector<int64_t> counts(n);
    for (int q = 0; q < n; ++q) counts[q] = q + 1;
    const int64_t total = n * (n + 1) / 2;
    auto gv_in = at::full({r + 1}, r, opts);
    auto gv_out = at::empty({total}, opts);
    nccl.AllGatherV(gv_in, gv_out, counts)->Wait();
    auto want = at::arange(n, at::kLong).repeat_interleave(at::arange(1, n + 1, at::kLong));
    EXPECT_TRUE(at::equal(gv_out.cpu().to(at::kLong), want));
    auto rv_in = at::full({total}, r + 1, opts);
    auto rv_out = at::empty({r + 1}, opts);
    nccl.ReduceScatterV(rv_in, rv_out, counts)->Wait();
    EXPECT_TRUE(at::equal(rv_out.cpu().to(at::kLong), at::full({r + 1}, total, at::kLong)));
  }
}

TEST(CudaSmoke, NcclCollectivesOnCudaTensors) {
  if (!HasNccl()) GTEST_SKIP() << "built without NCCL";
  auto& world = TestWorld();
  // At one rank the communicator's collectives are local copies on the caller's stream unless
  // local_when_alone is false: both, so that a one-GPU machine runs NCCL's kernels too.
  for (bool local_when_alone : {true, false}) {
    SCOPED_TRACE(local_when_alone ? "local_when_alone" : "NCCL kernels at every size");
    auto nccl = MakeNcclCommunicator(world.comm(), local_when_alone);
    CheckCollectives(*nccl, world.device());
  }
}

}  // namespace
}  // namespace ftune::parallel
