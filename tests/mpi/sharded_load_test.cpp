// Sharded loading (runtime/model_setup.h BuildTrainModel): every layout loads an HF directory
// into exactly the weights of the one-process LoadHf, and under ZeRO-3 each rank reads only
// its own share of the elements (counted at the source), so no rank ever holds the whole model.
#include <gtest/gtest.h>

#include "data/tokenizer.h"
#include "models/hf_io.h"
#include "parallel/files.h"
#include "parallel/process_grid.h"
#include "runtime/config.h"
#include "runtime/model_setup.h"
#include "runtime/parallelize.h"
#include "runtime/trainer.h"
#include "tests/mpi_test_env.h"

namespace ftune::runtime {
namespace {

using ftune::testing::TestWorld;

const std::string kTokenizer = std::string(FTUNE_SOURCE_DIR) + "/tests/fixtures/data/tokenizer";

Config TestConfig(const std::string& hf_dir, int64_t tp, int64_t zero, const std::string& dtype) {
  Config c = runtime::LoadConfig("", {}, {});
  c.model.path = hf_dir;
  c.model.dtype = dtype;
  c.tokenizer.path = kTokenizer;
  c.train.steps = 1;
  c.parallel.tp = tp;
  c.parallel.zero = zero;
  c.parallel.bucket_mb = 0.02;  // several buckets, so ZeRO slices cut across tensors
  c.log.jsonl = false;
  return c;
}

// A random HF directory written by rank 0 into a directory every rank sees.
std::string WriteHfModel(bool tied) {
  auto& comm = TestWorld().comm();
  const std::string dir = files::Join(
      files::TempDir(),
      fmt::format("ftune_sharded_load_{}_{}", tied ? "tied" : "untied", ::getppid()));
  if (comm.rank() == 0) {
    models::LlamaConfig cfg;
    cfg.vocab_size = 288;  // >= the fixture tokenizer's 281 ids, divisible by tp = 2
    cfg.hidden_size = 32;
    cfg.intermediate_size = 64;
    cfg.num_hidden_layers = 2;
    cfg.num_attention_heads = 4;
    cfg.num_key_value_heads = 2;
    cfg.head_dim = 8;
    cfg.tie_word_embeddings = tied;
    auto model = models::BuildLlama(cfg, torch::kFloat, tied ? 11 : 12);
    models::SaveHfOptions opt;
    opt.overwrite = true;
    opt.max_shard_bytes = 40000;  // several safetensors files + index
    models::SaveHf(*model, cfg, dir, opt);
  }
  comm.Barrier()->Wait();
  return dir;
}

struct Loaded {
  std::map<std::string, at::Tensor> params;  // full shapes, gathered
  int64_t elements_read = 0;                  // by this rank, from the safetensors
};

Loaded LoadWithLayout(const std::string& dir, int64_t tp, int64_t zero, const std::string& dtype) {
  auto cfg = TestConfig(dir, tp, zero, dtype);
  parallel::ProcessGrid grid(TestWorld().comm(), -1, tp);
  auto tok = data::Tokenizer::FromPath(kTokenizer);
  TrainModel built = BuildTrainModel(cfg, tok, grid);
  EXPECT_TRUE(static_cast<bool>(built.source));
  Loaded out;
  auto counted = [&out, inner = built.source](const parallel::ParamSpec& s, int64_t begin,
                                               at::Tensor dst) {
    out.elements_read += dst.numel();
    inner(s, begin, dst);
  };
  Trainer trainer(TestWorld(), cfg, built.model, grid, counted);
  trainer.parallel().GatherAll();
  auto* tpm = dynamic_cast<TensorParallelLlama*>(built.model.get());
  EXPECT_EQ(tpm != nullptr, tp > 1);
  for (const auto& p : built.model->named_parameters()) {
    auto t = p.value().detach().clone();
    if (tpm) t = GatherFull(t.contiguous(), tpm->layout().at(p.key()), grid.tp_comm());
    out.params[p.key()] = t;
  }
  trainer.parallel().ReleaseAll();
  return out;
}

void ExpectLoadsExactly(bool tied) {
  auto& comm = TestWorld().comm();
  const int n = comm.size();
  const std::string dir = WriteHfModel(tied);
  const auto want = models::LoadHf(dir, torch::kFloat).model;
  int64_t total = 0;
  for (const auto& p : want->parameters()) total += p.numel();

  struct Layout {
    int64_t tp, zero;
  };
  for (const Layout& l : {Layout{1, 0}, Layout{1, 1}, Layout{1, 2}, Layout{1, 3}, Layout{2, 0},
                          Layout{2, 3}}) {
    for (const std::string dtype : {"fp32", "bf16"}) {
      const std::string what =
          fmt::format("{} ranks tp={} zero={} {} tied={}", n, l.tp, l.zero, dtype, tied);
      Loaded got = LoadWithLayout(dir, l.tp, l.zero, dtype);
      const auto type = dtype == "bf16" ? torch::kBFloat16 : torch::kFloat;
      ASSERT_EQ(got.params.size(), want->named_parameters().size()) << what;
      for (const auto& p : want->named_parameters()) {
        ASSERT_TRUE(got.params.count(p.key())) << what << ": " << p.key();
        const auto& g = got.params.at(p.key());
        EXPECT_EQ(g.scalar_type(), type) << what << ": " << p.key();
        EXPECT_TRUE(torch::equal(g, p.value().to(type))) << what << ": " << p.key();
      }
      // What each rank read: its whole tp shard, or under ZeRO-3 only its 1/dp of it (up to
      // one element per bucket), the dp ranks together reading each element of it exactly once.
      const int64_t dp = n / l.tp;
      int64_t shard = 0, all_shards = 0;  // this tp rank's elements; all tp ranks' together
      for (int64_t r = 0; r < l.tp; ++r) {
        for (const auto& [name, info] : TensorParallelLayout(want->config(), l.tp, r)) {
          int64_t numel = 1;
          for (int64_t d : info.local_shape()) numel *= d;
          all_shards += numel;
          if (r == comm.rank() % l.tp) shard += numel;
        }
      }
      auto sum = torch::tensor({got.elements_read}, torch::kLong);
      comm.AllReduce(sum, parallel::ReduceOp::kSum)->Wait();
      if (l.zero == 3) {
        EXPECT_EQ(sum.item<int64_t>(), all_shards) << what;
        EXPECT_LE(got.elements_read, shard / dp + 64) << what;
        if (l.tp == 1) EXPECT_LE(got.elements_read, total / n + 64) << what;
      } else {
        EXPECT_EQ(got.elements_read, shard) << what;
        EXPECT_EQ(sum.item<int64_t>(), all_shards * dp) << what;
      }
    }
  }
  comm.Barrier()->Wait();
  if (comm.rank() == 0) files::RemoveAll(dir);
}

TEST(ShardedLoad, UntiedEveryLayoutLoadsTheSameWeights) { ExpectLoadsExactly(false); }
TEST(ShardedLoad, TiedEveryLayoutLoadsTheSameWeights) { ExpectLoadsExactly(true); }

}  // namespace
}  // namespace ftune::runtime
