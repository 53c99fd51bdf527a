// The attention entry point (models/attention.h) against the dense-mask attention it replaces,
// in fp64 so that any difference is the algorithm's, not rounding: block-wise causal attention
// with log-sum-exp merging (context parallelism's kernel) and per-document attention of packed
// rows, forward and every input gradient; and the load balance of context-parallel chunks.
#include <gtest/gtest.h>

#include "models/attention.h"
#include "models/llama.h"
#include "parallel/compat.h"
#include "parallel/context_parallel.h"
#include "parallel/error.h"

namespace ftune::models {
namespace {

torch::Tensor Rand(std::vector<int64_t> shape, int64_t seed) {
  torch::manual_seed(seed);
  return torch::randn(shape, torch::kDouble).requires_grad_(true);
}

// softmax(q k^T / sqrt(d) + mask) v with K/V repeated per query group: the reference.
torch::Tensor DenseAttention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                             const torch::Tensor& keep) {
  const int64_t rep = q.size(1) / k.size(1);
  auto kk = k.repeat_interleave(rep, 1), vv = v.repeat_interleave(rep, 1);
  auto s = torch::matmul(q, kk.transpose(-2, -1)) / std::sqrt(static_cast<double>(q.size(3)));
  s = s.masked_fill(keep.logical_not(), -std::numeric_limits<double>::infinity());
  return torch::matmul(torch::softmax(s, -1), vv);
}

std::vector<torch::Tensor> Grads(const torch::Tensor& y, const torch::Tensor& w,
                                 std::vector<torch::Tensor> inputs) {
  return torch::autograd::grad({(y * w).sum()}, inputs);
}

double RelErr(const torch::Tensor& got, const torch::Tensor& want) {
  return ((got - want).abs().max() / want.abs().max()).item<double>();
}

TEST(BlockCausalAttention, EqualsDenseCausalAttentionWithAnyBlockAndOffset) {
  const int64_t b = 2, h = 6, hkv = 2, d = 8, s = 24;
  for (int64_t t : {24, 7, 1}) {
    for (int64_t block : {1, 5, 8, 512}) {
      const int64_t q_start = s - t - (t == 7 ? 3 : 0);  // queries end before the keys do, too
      auto q = Rand({b, h, t, d}, 1), k = Rand({b, hkv, s, d}, 2), v = Rand({b, hkv, s, d}, 3);
      auto w = torch::randn({b, h, t, d}, torch::kDouble);
      auto qpos = torch::arange(q_start, q_start + t).unsqueeze(1);
      auto keep = torch::arange(s).unsqueeze(0) <= qpos;  // (T, S)
      auto want = DenseAttention(q, k, v, keep);
      auto got = BlockCausalAttention(q, k, v, q_start, block);
      const std::string what = fmt::format("t {} block {} q_start {}", t, block, q_start);
      EXPECT_LT(RelErr(got, want), 1e-12) << what;
      const auto gw = Grads(want, w, {q, k, v});
      const auto gg = Grads(got, w, {q, k, v});
      for (int i = 0; i < 3; ++i) EXPECT_LT(RelErr(gg[i], gw[i]), 1e-12) << what << " grad " << i;
    }
  }
}

TEST(BlockCausalAttention, Fp32WithinTolerance) {
  // The model's dtype: fp32 math throughout, within 1e-5 of the fp64 reference.
  auto q = Rand({1, 4, 16, 8}, 4), k = Rand({1, 2, 16, 8}, 5), v = Rand({1, 2, 16, 8}, 6);
  auto keep = torch::ones({16, 16}, torch::kBool).tril();
  auto want = DenseAttention(q, k, v, keep);
  auto got = BlockCausalAttention(q.to(torch::kFloat), k.to(torch::kFloat), v.to(torch::kFloat),
                                  0, 4);
  EXPECT_EQ(got.scalar_type(), torch::kFloat);
  EXPECT_LT(RelErr(got.to(torch::kDouble), want), 1e-5);
}

// Packed rows of T tokens against the dense (same segment & causal) mask, fp64.
void CheckPackedRows(int64_t t) {
  const int64_t b = 3, h = 4, hkv = 2, d = 8;
  const std::vector<std::vector<int64_t>> lengths = {
      {t / 4, t / 3, t - t / 4 - t / 3 - 2, 2}, {t}, {1, 2, t - 3}};
  auto seg = torch::empty({b, t}, torch::kLong);
  for (int64_t r = 0; r < b; ++r) {
    int64_t at = 0, id = 5 * r;
    for (int64_t n : lengths[r]) seg[r].narrow(0, at, n).fill_(id++), at += n;
  }
  auto q = Rand({b, h, t, d}, 7), k = Rand({b, hkv, t, d}, 8), v = Rand({b, hkv, t, d}, 9);
  auto w = torch::randn({b, h, t, d}, torch::kDouble);
  auto keep = ((seg.unsqueeze(2) == seg.unsqueeze(1)) &
               torch::ones({t, t}, torch::kBool).tril().unsqueeze(0)).unsqueeze(1);
  auto want = DenseAttention(q, k, v, keep);
  AttentionLayout layout;
  layout.segment_ids = seg;
  auto got = CausalAttention(q, k, v, layout);
  EXPECT_LT(RelErr(got, want), 1e-12) << "t " << t;
  const auto gw = Grads(want, w, {q, k, v});
  const auto gg = Grads(got, w, {q, k, v});
  for (int i = 0; i < 3; ++i) EXPECT_LT(RelErr(gg[i], gw[i]), 1e-12) << "t " << t << " grad " << i;
}

TEST(CausalAttention, PackedRowsAttendWithinEachDocumentOnly) {
  // Rows of several documents (runs of equal ids; a padding run at the end) against the dense
  // (same segment & causal) mask the training forward used to build: short rows (one masked
  // call) and long rows (kLongRowTokens and more: document by document).
  CheckPackedRows(12);
  CheckPackedRows(kLongRowTokens + 6);
}

TEST(CausalAttention, PackedRowIsEachDocumentAlone) {
  // fp32, a row of 16 documents of 64 tokens: each document's output is its attention alone.
  const int64_t t = 1024, docs = 16;
  auto seg = torch::arange(t).div(t / docs, "floor").unsqueeze(0);
  auto q = torch::randn({1, 2, t, 16}).requires_grad_(true);
  auto k = torch::randn({1, 2, t, 16}).requires_grad_(true);
  auto v = torch::randn({1, 2, t, 16}).requires_grad_(true);
  AttentionLayout layout;
  layout.segment_ids = seg;
  auto y = CausalAttention(q, k, v, layout);
  for (int64_t i = 0; i < docs; ++i) {
    const int64_t a = i * (t / docs);
    auto alone = compat::Attention(q.narrow(2, a, t / docs), k.narrow(2, a, t / docs),
                                   v.narrow(2, a, t / docs), {}, true);
    EXPECT_TRUE(torch::allclose(y.narrow(2, a, t / docs), alone, 1e-6, 1e-6)) << "document " << i;
  }
}

TEST(ContextParallel, BalancedChunksGiveEveryRankTheSameWork) {
  // Contiguous blocks at cp 4 load the ranks 1 : 3 : 5 : 7 (the last rank's queries see every
  // key); chunks r and 2cp-1-r give each rank exactly the same query-key pairs.
  const auto contiguous = parallel::AttentionWork(64, 4, /*balanced=*/false);
  EXPECT_EQ(contiguous, (std::vector<int64_t>{136, 392, 648, 904}));
  const auto balanced = parallel::AttentionWork(64, 4, /*balanced=*/true);
  EXPECT_EQ(balanced, (std::vector<int64_t>{520, 520, 520, 520}));
  int64_t total = 0;
  for (int64_t w : contiguous) total += w;
  EXPECT_EQ(total, 64 * 65 / 2);
  EXPECT_EQ(parallel::AttentionWork(4096, 8, true), std::vector<int64_t>(8, 4096 * 4097 / 16));
}

TEST(ContextParallel, ShardSequenceTakesChunksRAndMirror) {
  auto x = torch::arange(16).view({1, 16});
  EXPECT_TRUE(parallel::ShardSequence(x, 2, 0).equal(torch::tensor({{0, 1, 2, 3, 12, 13, 14, 15}})));
  EXPECT_TRUE(parallel::ShardSequence(x, 2, 1).equal(torch::tensor({{4, 5, 6, 7, 8, 9, 10, 11}})));
  EXPECT_TRUE(parallel::ShardSequence(x, 4, 3).equal(torch::tensor({{6, 7, 8, 9}})));
  EXPECT_THROW(parallel::ShardSequence(torch::zeros({1, 12}), 4, 0), ftune::ConfigError);
}

}  // namespace
}  // namespace ftune::models
