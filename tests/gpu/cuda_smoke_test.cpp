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

TEST(CudaSmoke, NcclCollectivesOnCudaTensors) {
  if (!HasNccl()) GTEST_SKIP() << "built without NCCL";
  auto& world = TestWorld();
  auto nccl = MakeNcclCommunicator(world.comm());
  const int n = nccl->size(), r = nccl->rank();
  const auto dev = world.device();
  for (auto dt : {at::kFloat, at::kBFloat16}) {
    SCOPED_TRACE(c10::toString(dt));
    const auto opts = at::TensorOptions(dt).device(dev);
    // Small integers: exact in bf16 too. sum over ranks of (i % 7 + rank + 1).
    auto base = at::arange(65537, at::kLong).remainder(7);
    auto t = (base + r + 1).to(dt).to(dev);
    nccl->AllReduce(t)->Wait();
    EXPECT_TRUE(t.is_cuda());
    EXPECT_TRUE(at::equal(t.cpu().to(at::kLong), base * n + n * (n + 1) / 2));

    auto in = at::full({1000}, r, opts);
    auto out = at::empty({n * 1000}, opts);
    nccl->AllGather(in, out)->Wait();
    EXPECT_TRUE(at::equal(out.cpu().to(at::kLong), at::arange(n, at::kLong).repeat_interleave(1000)));

    // Chunk c of rank q's input is q + c; chunk r reduced: sum over q of (q + r).
    auto rs_in = (at::arange(n, at::kLong).repeat_interleave(1000) + r).to(dt).to(dev);
    auto rs_out = at::empty({1000}, opts);
    nccl->ReduceScatter(rs_in, rs_out)->Wait();
    EXPECT_TRUE(at::equal(rs_out.cpu().to(at::kLong),
                          at::full({1000}, n * r + n * (n - 1) / 2, at::kLong)));

    auto b = at::full({17}, r, opts);
    nccl->Broadcast(b, n - 1)->Wait();
    EXPECT_TRUE(at::equal(b.cpu().to(at::kLong), at::full({17}, n - 1, at::kLong)));
  }
}

}  // namespace
}  // namespace ftune::parallel
