// Context parallelism (parallel.cp) against one rank on the whole sequence, fp32, tiny Llama:
// the loss and every parameter's gradient of one micro-batch (cp ranks' gradients summed), and a
// few optimizer steps of the Trainer in every layout the world size allows (cp alone, cp x dp
// with ZeRO 1-3, tp x cp; with and without activation checkpointing): same losses, same weights.
// The one-rank reference runs on each rank over a communicator of its own.
#include <gtest/gtest.h>

#include "models/llama.h"
#include "parallel/context_parallel.h"
#include "parallel/process_grid.h"
#include "runtime/config.h"
#include "runtime/parallelize.h"
#include "runtime/trainer.h"
#include "tests/learnable_batch.h"
#include "tests/mpi_test_env.h"

namespace ftune::runtime {
namespace {

using ftune::testing::TestWorld;

constexpr int64_t kSeq = 32;
constexpr int64_t kVocab = 96;
constexpr int64_t kGlobalBatch = 4;
constexpr int kSteps = 4;

Config TinyConfig() {
  Config c = LoadConfig("", {}, {});
  c.model.arch.vocab_size = kVocab;
  c.model.arch.hidden_size = 32;
  c.model.arch.intermediate_size = 64;
  c.model.arch.num_hidden_layers = 2;
  c.model.arch.num_attention_heads = 4;
  c.model.arch.num_key_value_heads = 2;
  c.data.max_seq_len = kSeq;
  c.train.steps = kSteps;
  c.train.grad_accum = 1;
  c.train.clip = 1.0;
  c.optim.lr = 3e-3;
  c.optim.weight_decay = 0.1;
  c.optim.warmup_steps = 1;
  c.parallel.bucket_mb = 0.01;
  c.log.jsonl = false;
  c.log.tensorboard = false;
  c.log.progress = "lines";
  c.log.every = 1000;
  return c;
}

// What the loader hands cp rank `rank`: its two chunks of every row, its own target count.
data::Batch Shard(data::Batch b, int64_t cp, int64_t rank) {
  for (torch::Tensor* t : {&b.tokens, &b.targets, &b.loss_mask, &b.positions}) {
    *t = parallel::ShardSequence(*t, cp, rank, 1);
  }
  b.num_targets = static_cast<int64_t>(b.loss_mask.sum().item<double>());
  return b;
}

parallel::GridOptions Grid(int64_t cp, int64_t tp) {
  auto o = ftune::testing::TestGrid(-1, tp);
  o.cp = cp;
  return o;
}

struct RunResult {
  std::vector<double> losses;
  std::map<std::string, at::Tensor> params;
};

RunResult Train(parallel::Communicator& comm, const Config& cfg) {
  parallel::ProcessGrid grid(comm, Grid(cfg.parallel.cp, cfg.parallel.tp));
  std::shared_ptr<models::LlamaModel> model = models::BuildLlama(
      models::LlamaConfig::FromInline(cfg.model), torch::kFloat, cfg.model.init_seed);
  if (grid.tp() > 1) model = MakeTensorParallel(*model, grid);
  Trainer trainer(TestWorld(), cfg, model, grid);
  RunResult r;
  const int64_t mb = kGlobalBatch / grid.dp();
  for (int s = 0; s < kSteps; ++s) {
    auto b = ftune::testing::LearnableBatch(s, grid.dp_rank() * mb, mb, kSeq, kVocab, 7);
    r.losses.push_back(trainer.TrainStep({Shard(b, grid.cp(), grid.cp_rank())}, kSteps).loss);
  }
  trainer.parallel().GatherAll();
  auto* tp = dynamic_cast<TensorParallelLlama*>(model.get());
  for (const auto& p : model->named_parameters()) {
    auto t = p.value().detach().clone();
    if (tp) t = GatherFull(t, tp->layout().at(p.key()), grid.tp_comm());
    r.params[p.key()] = t.to(torch::kCPU);
  }
  trainer.parallel().ReleaseAll();
  return r;
}

class ContextParallel : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto& world = TestWorld().comm();
    self_ = world.Split(world.rank(), 0, "self").release();
    reference_ = new RunResult(Train(*self_, TinyConfig()));
  }
  static void TearDownTestSuite() {
    delete reference_;
    delete self_;
  }
  static void ExpectSameRun(const Config& cfg, const std::string& what) {
    const auto got = Train(TestWorld().comm(), cfg);
    const auto& want = *reference_;
    ASSERT_EQ(got.losses.size(), want.losses.size());
    for (size_t i = 0; i < got.losses.size(); ++i) {
      EXPECT_NEAR(got.losses[i], want.losses[i], 1e-5 * std::abs(want.losses[i]))
          << what << " step " << i + 1;
    }
    for (const auto& [name, w] : want.params) {
      // 2e-5: on libtorch 2.x the one-rank reference's attention is SDPA's CPU kernel, another
      // summation order than the block-wise cp attention, and AdamW's first steps amplify the
      // gradients' last bits (1.3e-5 seen there; 1.x stays below 1e-5). The gradients themselves
      // are within 1e-5 relative (LossAndEveryGradientOfOneMicroBatch).
      const double err = (got.params.at(name) - w).abs().max().item<double>();
      EXPECT_LT(err, 2e-5) << what << ": " << name << " max abs diff " << err;
    }
  }
  static parallel::Communicator* self_;
  static RunResult* reference_;
};
parallel::Communicator* ContextParallel::self_ = nullptr;
RunResult* ContextParallel::reference_ = nullptr;

TEST_F(ContextParallel, LossAndEveryGradientOfOneMicroBatch) {
  // cp = world size: each rank's loss on its chunks, summed, is the whole sequence's; each
  // gradient, summed over the ranks, is the whole sequence's (dK, dV reduce-scattered).
  const int n = TestWorld().world_size();
  auto cfg = TinyConfig();
  auto mcfg = models::LlamaConfig::FromInline(cfg.model);
  auto b = ftune::testing::LearnableBatch(0, 0, 2, kSeq, kVocab, 7);
  auto one = models::BuildLlama(mcfg, torch::kFloat, cfg.model.init_seed);
  models::ForwardOptions fo;
  fo.positions = b.positions;
  auto ref = models::CausalLmLoss(*one, b.tokens, b.targets, b.loss_mask, fo);
  ref.loss_sum.backward();

  parallel::ProcessGrid grid(TestWorld().comm(), Grid(n, 1));
  auto model = models::BuildLlama(mcfg, torch::kFloat, cfg.model.init_seed);
  const auto mine = Shard(b, n, grid.cp_rank());
  models::ForwardOptions co;
  co.positions = mine.positions;
  co.cp = &grid.cp_comm();
  auto ls = models::CausalLmLoss(*model, mine.tokens, mine.targets, mine.loss_mask, co);
  ls.loss_sum.backward();
  auto loss = ls.loss_sum.detach().reshape({1}).clone();
  grid.cp_comm().AllReduce(loss)->Wait();
  EXPECT_NEAR(loss.item<double>(), ref.loss_sum.item<double>(),
              1e-5 * std::abs(ref.loss_sum.item<double>()));
  EXPECT_LT(mine.num_targets, b.num_targets);  // the ranks really split the targets
  auto want = one->named_parameters();
  for (const auto& p : model->named_parameters()) {
    auto g = p.value().grad().clone();
    grid.cp_comm().AllReduce(g)->Wait();
    const auto& w = want[p.key()].grad();
    const double rel = ((g - w).abs().max() / w.abs().max()).item<double>();
    EXPECT_LT(rel, 1e-5) << p.key();
    EXPECT_GT(w.abs().max().item<double>(), 0) << p.key();
  }
}

TEST_F(ContextParallel, TrainingLayoutsMatchOneRank) {
  const int n = TestWorld().world_size();
  EXPECT_LT(reference_->losses.back(), reference_->losses.front());
  struct Layout { int64_t cp, tp, zero; std::string policy; };
  std::vector<Layout> layouts = {{n, 1, 0, "none"}, {n, 1, 3, "none"}, {n, 1, 0, "full"},
                                 {n, 1, 2, "selective"}};
  if (n == 4) {
    for (int64_t zero : {1, 2, 3}) layouts.push_back({2, 1, zero, "none"});  // cp 2 x dp 2
    layouts.push_back({2, 1, 3, "full"});
    layouts.push_back({2, 2, 0, "none"});  // tp 2 x cp 2
    layouts.push_back({2, 2, 1, "selective"});
  }
  for (const auto& l : layouts) {
    auto cfg = TinyConfig();
    cfg.parallel.cp = l.cp;
    cfg.parallel.tp = l.tp;
    cfg.parallel.zero = l.zero;
    cfg.train.activation_checkpointing = l.policy;
    ExpectSameRun(cfg, fmt::format("cp {} tp {} dp {} zero {} {}", l.cp, l.tp,
                                   n / (l.cp * l.tp), l.zero, l.policy));
  }
}

}  // namespace
}  // namespace ftune::runtime
