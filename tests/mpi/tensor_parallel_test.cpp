// Tensor parallelism under mpirun (np 2: tp 2; np 4: tp 2 x dp 2):
//  * the mapping functions against closed forms (input = f(rank) gives a known sum);
//  * vocab-parallel embedding and cross-entropy against the unsharded torch ops (values, grads);
//  * a tiny GQA Llama, tied and untied: the tp shard against the full model built from the same
//    seed on every rank -- logits, loss sum, and every parameter's gradient against the matching
//    slice of the full gradient.
// Tolerances. Where no reduction is split (embedding lookup, gathers, shard slicing) the
// comparison is exact. Where tp splits a reduction (matmuls over the sharded dim, all-reduced
// partial sums, the vocab-parallel softmax), fp32 results differ by rounding only:
//  * cross-entropy, logits, loss sums: elementwise |got - want| <= 1e-6 + 1e-5 * |want|;
//  * parameter gradients of the fp32 Llama: max |got - want| <= 1e-6 + 1e-5 * max |want| over
//    the tensor (an elementwise relative bound is meaningless for entries that are sums of
//    cancelling terms; observed max diffs are ~1e-6 of the tensor's scale, whereas a wrong
//    slice, a missing all-reduce or a mis-grouped GQA head gives O(1) differences).
#include "parallel/tensor_parallel.h"

#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include "models/llama.h"
#include "parallel/error.h"
#include "parallel/process_grid.h"
#include "runtime/parallelize.h"
#include "tests/mpi_test_env.h"

namespace ftune {
namespace {

namespace F = torch::nn::functional;
using ftune::testing::TestWorld;
using parallel::ProcessGrid;

constexpr double kRtol = 1e-5;
constexpr double kAtol = 1e-6;
constexpr int64_t kTp = 2;

// Identical on every rank: drawn from a generator seeded with `seed`.
torch::Tensor Randn(std::vector<int64_t> shape, int64_t seed, double scale = 1.0) {
  auto gen = at::detail::createCPUGenerator(seed);
  return torch::randn(shape, gen, torch::kFloat) * scale;
}
torch::Tensor RandInt(int64_t hi, std::vector<int64_t> shape, int64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  return torch::randint(hi, shape, gen, torch::kLong);
}

// Elementwise: |got - want| <= atol + rtol * |want|.
::testing::AssertionResult Close(const torch::Tensor& got, const torch::Tensor& want,
                                 double rtol = kRtol, double atol = kAtol) {
  if (got.sizes() != want.sizes()) {
    return ::testing::AssertionFailure() << "shape " << got.sizes() << " vs " << want.sizes();
  }
  if (torch::allclose(got, want, rtol, atol)) return ::testing::AssertionSuccess();
  const auto diff = (got - want).abs();
  return ::testing::AssertionFailure()
         << "max |diff| " << diff.max().item<double>() << " (max |want| "
         << want.abs().max().item<double>() << ", rtol " << rtol << ", atol " << atol << ")";
}

// Relative to the tensor's scale: max |got - want| <= atol + rtol * max |want|.
::testing::AssertionResult CloseToScale(const torch::Tensor& got, const torch::Tensor& want) {
  if (got.sizes() != want.sizes()) {
    return ::testing::AssertionFailure() << "shape " << got.sizes() << " vs " << want.sizes();
  }
  const double diff = (got - want).abs().max().item<double>();
  const double scale = want.abs().max().item<double>();
  if (diff <= kAtol + kRtol * scale) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << "max |diff| " << diff << " > " << kAtol << " + " << kRtol << " * max |want| " << scale;
}

// A fresh tp=2 grid per test (its communicators are freed before MPI finalizes).
class TensorParallel : public ::testing::Test {
 protected:
  void SetUp() override { grid_ = std::make_unique<ProcessGrid>(TestWorld().comm(), -1, kTp); }
  void TearDown() override { grid_.reset(); }
  ProcessGrid& Grid() { return *grid_; }
  void CheckCrossEntropy(double scale);
  void CheckLlamaParity(bool tied, int64_t chunk_tokens);

 private:
  std::unique_ptr<ProcessGrid> grid_;
};

TEST_F(TensorParallel, GridIsTpTwo) {
  ASSERT_EQ(Grid().tp(), kTp);
  EXPECT_EQ(Grid().dp(), TestWorld().world_size() / kTp);
}

TEST_F(TensorParallel, CopyToRegionClosedForm) {
  auto& g = Grid();
  const double r = g.tp_rank(), n = g.tp(), d = g.dp_rank();
  auto x = torch::full({3, 4}, r + 1 + 10 * d, torch::kFloat).requires_grad_(true);
  auto y = parallel::CopyToRegion(x, g.tp_comm());
  EXPECT_TRUE(torch::equal(y, x));  // forward identity
  y.backward(torch::full({3, 4}, r + 1 + 10 * d));
  // backward: sum over the tp group of (r + 1 + 10 d) = n(n+1)/2 + 10 d n
  EXPECT_TRUE(torch::equal(x.grad(), torch::full({3, 4}, n * (n + 1) / 2 + 10 * d * n)))
      << x.grad();
}

TEST_F(TensorParallel, ReduceFromRegionClosedForm) {
  auto& g = Grid();
  const double r = g.tp_rank(), n = g.tp(), d = g.dp_rank();
  auto x = torch::full({2, 5}, r + 1 + 10 * d, torch::kFloat).requires_grad_(true);
  auto y = parallel::ReduceFromRegion(x, g.tp_comm());
  EXPECT_TRUE(torch::equal(y, torch::full({2, 5}, n * (n + 1) / 2 + 10 * d * n))) << y;
  EXPECT_TRUE(torch::equal(x, torch::full({2, 5}, r + 1 + 10 * d)));  // input untouched
  y.backward(torch::full({2, 5}, 3 * (r + 1)));
  EXPECT_TRUE(torch::equal(x.grad(), torch::full({2, 5}, 3 * (r + 1))));  // backward identity
}

TEST_F(TensorParallel, GatherLastDimRoundTrip) {
  auto& g = Grid();
  auto full = torch::arange(2 * 3 * 4 * g.tp(), torch::kFloat).view({2, 3, 4 * g.tp()});
  auto x = full.narrow(2, 4 * g.tp_rank(), 4).clone().requires_grad_(true);
  auto y = parallel::GatherFromRegionLastDim(x, g.tp_comm());
  EXPECT_TRUE(torch::equal(y, full));
  y.backward(full * 2);
  EXPECT_TRUE(torch::equal(x.grad(), (full * 2).narrow(2, 4 * g.tp_rank(), 4)));
}

TEST_F(TensorParallel, ShardHelpers) {
  auto full = torch::arange(24, torch::kFloat).view({4, 6});
  EXPECT_TRUE(torch::equal(parallel::ShardRows(full, 1, 2), full.slice(0, 2, 4)));
  EXPECT_TRUE(torch::equal(parallel::ShardCols(full, 2, 3), full.slice(1, 4, 6)));
  auto s = parallel::ShardRows(full, 0, 2);
  s.fill_(-1);
  EXPECT_EQ(full[0][0].item<float>(), 0.0f);  // a copy, not a view
  try {
    parallel::ShardCols(full, 0, 4);
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("6 is not divisible by 4"), std::string::npos) << e.what();
  }
  EXPECT_THROW(parallel::ShardRows(full, 0, 3), ConfigError);
}

TEST_F(TensorParallel, VocabParallelEmbeddingMatchesFull) {
  auto& g = Grid();
  const int64_t v = 12, c = 5, vl = v / g.tp();
  auto full_w = Randn({v, c}, 11).requires_grad_(true);
  auto tokens = RandInt(v, {3, 7}, 12);
  tokens[0][0] = 0;
  tokens[0][1] = v - 1;  // both ends of the vocab
  auto want = F::embedding(tokens, full_w);
  auto up = Randn({3, 7, c}, 13);
  (want * up).sum().backward();

  auto w = parallel::ShardRows(full_w.detach(), g.tp_rank(), g.tp()).requires_grad_(true);
  auto got = parallel::VocabParallelEmbedding(tokens, w, g.tp_rank() * vl, g.tp_comm());
  // One rank contributes the row, the others exact zeros: exact.
  EXPECT_TRUE(torch::equal(got, want.detach()));
  (got * up).sum().backward();
  EXPECT_TRUE(torch::equal(w.grad(), parallel::ShardRows(full_w.grad(), g.tp_rank(), g.tp())));
}

void TensorParallel::CheckCrossEntropy(double scale) {
  auto& g = Grid();
  const int64_t n = 9, v = 16, vl = v / g.tp();
  auto full = Randn({n, v}, 21, scale).requires_grad_(true);
  auto targets = RandInt(v, {n}, 22);
  targets[3] = -100;  // ignored row
  targets[4] = 0;
  targets[5] = v - 1;
  auto want = F::cross_entropy(full, targets, F::CrossEntropyFuncOptions().reduction(torch::kNone));
  auto w = Randn({n}, 23);
  (want * w).sum().backward();

  auto local = parallel::ShardCols(full.detach(), g.tp_rank(), g.tp()).requires_grad_(true);
  auto got = parallel::VocabParallelCrossEntropy(local, targets, g.tp_rank() * vl, g.tp_comm());
  ASSERT_EQ(got.scalar_type(), torch::kFloat);
  EXPECT_TRUE(Close(got, want.detach()));
  EXPECT_EQ(got[3].item<float>(), 0.0f);
  (got * w).sum().backward();
  EXPECT_TRUE(Close(local.grad(), parallel::ShardCols(full.grad(), g.tp_rank(), g.tp())));
  EXPECT_TRUE(torch::equal(local.grad()[3], torch::zeros({vl})));
}

TEST_F(TensorParallel, VocabParallelCrossEntropyMatchesFull) { CheckCrossEntropy(1.0); }

TEST_F(TensorParallel, VocabParallelCrossEntropyIsStableForLargeLogits) {
  // exp(1000) overflows fp32 without the max shift.
  CheckCrossEntropy(1000.0);
}

TEST_F(TensorParallel, VocabParallelCrossEntropyBf16LogitsGetBf16Grads) {
  auto& g = Grid();
  const int64_t n = 4, v = 8, vl = v / g.tp();
  auto full = Randn({n, v}, 31).to(torch::kBFloat16);
  auto targets = RandInt(v, {n}, 32);
  auto local = parallel::ShardCols(full, g.tp_rank(), g.tp()).requires_grad_(true);
  auto got = parallel::VocabParallelCrossEntropy(local, targets, g.tp_rank() * vl, g.tp_comm());
  auto want = F::cross_entropy(full.to(torch::kFloat), targets,
                               F::CrossEntropyFuncOptions().reduction(torch::kNone));
  EXPECT_EQ(got.scalar_type(), torch::kFloat);
  EXPECT_TRUE(Close(got, want));
  got.sum().backward();
  EXPECT_EQ(local.grad().scalar_type(), torch::kBFloat16);
}

// --- tiny Llama parity ------------------------------------------------------------------------

models::LlamaConfig TinyConfig(bool tied) {
  models::LlamaConfig c;
  c.vocab_size = 64;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;  // GQA: 2 query heads per kv head, 1 kv head per tp rank
  c.head_dim = 8;
  c.max_position_embeddings = 64;
  c.rms_norm_eps = 1e-5;
  c.initializer_range = 0.2;  // large enough that every gradient is well above kAtol
  c.tie_word_embeddings = tied;
  return c;
}

void TensorParallel::CheckLlamaParity(bool tied, int64_t chunk_tokens) {
  auto& g = Grid();
  const auto cfg = TinyConfig(tied);
  auto full = models::BuildLlama(cfg, torch::kFloat, /*seed=*/5);
  auto tp = runtime::MakeTensorParallel(*full, g);

  // The layout names every parameter with its local shape.
  const auto& layout = tp->layout();
  auto params = tp->named_parameters();
  ASSERT_EQ(params.size(), layout.size());
  ASSERT_EQ(full->named_parameters().size(), layout.size());
  int64_t sharded = 0;
  for (const auto& p : params) {
    ASSERT_TRUE(layout.count(p.key())) << p.key();
    const auto& info = layout.at(p.key());
    EXPECT_EQ(p.value().sizes(), c10::IntArrayRef(info.local_shape())) << p.key();
    sharded += info.sharded();
    // Exact: the shard is a copy of the slice, and the gather reassembles the full tensor.
    EXPECT_TRUE(
        torch::equal(p.value(), runtime::SliceFull(full->named_parameters()[p.key()], info)))
        << p.key();
    EXPECT_TRUE(torch::equal(runtime::GatherFull(p.value(), info, g.tp_comm()),
                             full->named_parameters()[p.key()]))
        << p.key();
  }
  EXPECT_EQ(sharded, 7 * cfg.num_hidden_layers + (tied ? 1 : 2));
  EXPECT_EQ(tp->vocab_end() - tp->vocab_start(), cfg.vocab_size / g.tp());
  EXPECT_THROW(tp->Embed(torch::full({1, 2}, cfg.vocab_size, torch::kLong)), ModelError);

  const int64_t b = 2, t = 9;
  auto tokens = RandInt(cfg.vocab_size, {b, t}, 41);
  auto targets = RandInt(cfg.vocab_size, {b, t}, 42);
  auto mask = torch::ones({b, t}, torch::kLong);
  mask[0][0] = 0;
  mask[1][3] = 0;

  {  // Forward logits (gathered) equal the full model's, to fp32 rounding of the whole tensor:
    // tensor parallelism splits the row-parallel projections' sums over ranks, so they run in
    // another order, and the GEMM library blocks other shapes differently (OpenBLAS picks its
    // kernel by CPU; libtorch 2.x's CPU kernels round differently from 1.13's). Such rounding is
    // bounded relative to the values' magnitude, not per element: a logit near zero differed by
    // 2.9e-6 (7 fp32 ulps of the largest logit, 3.4) on one CPU while the elementwise bound there
    // is 1e-6. So: max |diff| <= kAtol + kRtol * max |want|.
    torch::NoGradGuard no_grad;
    auto want = full->Logits(full->ForwardHidden(tokens));
    auto got = tp->Logits(tp->ForwardHidden(tokens));
    EXPECT_TRUE(CloseToScale(got, want)) << "logits";
  }

  auto want = models::CausalLmLoss(*full, tokens, targets, mask, {}, chunk_tokens);
  auto got = models::CausalLmLoss(*tp, tokens, targets, mask, {}, chunk_tokens);
  EXPECT_EQ(got.count.item<int64_t>(), want.count.item<int64_t>());
  EXPECT_TRUE(Close(got.loss_sum, want.loss_sum))
      << got.loss_sum.item<double>() << " vs " << want.loss_sum.item<double>();
  want.loss_sum.backward();
  got.loss_sum.backward();

  auto full_params = full->named_parameters();
  for (const auto& p : params) {
    const auto& info = layout.at(p.key());
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
    auto want_grad = runtime::SliceFull(full_params[p.key()].grad(), info);
    EXPECT_TRUE(CloseToScale(p.value().grad(), want_grad)) << p.key();
  }
}

TEST_F(TensorParallel, LlamaUntiedMatchesFullModel) { CheckLlamaParity(false, 1024); }
TEST_F(TensorParallel, LlamaTiedMatchesFullModel) { CheckLlamaParity(true, 1024); }
// The chunked loss recomputes the vocab-parallel loss inside backward (nested collectives).
TEST_F(TensorParallel, LlamaChunkedLossMatchesFullModel) { CheckLlamaParity(false, 5); }
TEST_F(TensorParallel, LlamaTiedChunkedLossMatchesFullModel) { CheckLlamaParity(true, 5); }

TEST_F(TensorParallel, NonDivisibleLayoutIsAConfigError) {
  auto cfg = TinyConfig(false);
  cfg.num_key_value_heads = 1;
  auto full = models::BuildLlama(cfg, torch::kFloat, 5);
  try {
    runtime::MakeTensorParallel(*full, Grid());
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("num_key_value_heads 1 is not divisible by parallel.tp 2"),
              std::string::npos)
        << msg;
  }
  auto cfg2 = TinyConfig(true);
  cfg2.vocab_size = 63;
  try {
    runtime::CheckTensorParallel(cfg2, 2);
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("vocab_size 63 is not divisible by parallel.tp 2"),
              std::string::npos)
        << e.what();
  }
  auto cfg3 = TinyConfig(false);
  cfg3.intermediate_size = 50;
  EXPECT_THROW(runtime::TensorParallelLayout(cfg3, 4, 0), ConfigError);
}

}  // namespace
}  // namespace ftune
