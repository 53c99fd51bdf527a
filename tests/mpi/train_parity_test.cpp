// Every data-parallel layout against one rank: same per-step losses and same
// final parameters on the same global batch (fp32, tiny Llama, 5-10 steps).
// The one-rank reference is computed on each rank itself over a communicator
// of its own, so the comparison needs no file and cannot pass vacuously: the
// test also checks that the loss moved and the parameters changed.
#include <gtest/gtest.h>

#include "models/llama.h"
#include "parallel/compat.h"
#include "parallel/process_grid.h"
#include "runtime/config.h"
#include "runtime/parallelize.h"
#include "runtime/trainer.h"
#include "tests/learnable_batch.h"
#include "tests/mpi_test_env.h"

namespace ftune::runtime {
namespace {

using ftune::testing::TestWorld;

constexpr int64_t kSeq = 16;
constexpr int64_t kVocab = 96;

Config TinyConfig(int64_t micro_batch, int64_t grad_accum, int64_t zero) {
  Config c = LoadConfig("", {}, {});
  c.model.arch.vocab_size = kVocab;
  c.model.arch.hidden_size = 32;
  c.model.arch.intermediate_size = 64;
  c.model.arch.num_hidden_layers = 2;
  c.model.arch.num_attention_heads = 4;
  c.model.arch.num_key_value_heads = 2;
  c.data.max_seq_len = kSeq;
  c.train.steps = 10;
  c.train.micro_batch = micro_batch;
  c.train.grad_accum = grad_accum;
  c.train.clip = 1.0;
  c.optim.lr = 3e-3;
  c.optim.weight_decay = 0.1;
  c.optim.warmup_steps = 2;
  c.parallel.zero = zero;
  c.parallel.bucket_mb = 0.01;  // several buckets even for the tiny model
  c.log.jsonl = false;
  c.log.progress = "lines";
  c.log.every = 1000;
  return c;
}

data::Batch Samples(int64_t step, int64_t first, int64_t count) {
  return ftune::testing::LearnableBatch(step, first, count, kSeq, kVocab, 7);
}

struct RunResult {
  std::vector<double> losses;
  std::map<std::string, at::Tensor> params;
  at::ScalarType master_dtype = at::kFloat;  // of this rank's master weights
  int64_t master_not_bf16 = 0;  // master elements (this rank) that bf16 cannot represent
};

// Trains `steps` steps: this rank takes micro-batches of `mb` samples at
// offset dp_rank * mb of each global micro-batch of mb * dp samples.
RunResult Train(parallel::Communicator& comm, const Config& cfg, int steps) {
  parallel::ProcessGrid grid(comm, ftune::testing::TestGrid(-1, cfg.parallel.tp));
  auto mcfg = models::LlamaConfig::FromInline(cfg.model);
  std::shared_ptr<models::LlamaModel> model =
      models::BuildLlama(mcfg, torch::kFloat, cfg.model.init_seed);
  if (grid.tp() > 1) model = MakeTensorParallel(*model, grid);
  if (cfg.model.dtype == "bf16") model->to(torch::kBFloat16);
  // TrainStep needs World only for rank-0 logging.
  Trainer trainer(TestWorld(), cfg, model, grid);
  RunResult r;
  const int64_t mb = cfg.train.micro_batch, dp = grid.dp();
  const int64_t reads = Trainer::HostReads();
  for (int s = 0; s < steps; ++s) {
    std::vector<data::Batch> micro;
    for (int64_t k = 0; k < cfg.train.grad_accum; ++k) {
      micro.push_back(Samples(s, (k * dp + grid.dp_rank()) * mb, mb));
    }
    r.losses.push_back(trainer.TrainStep(micro, steps).loss);
  }
  // Device residency: the step reads its loss and gradient norm to the host once (on a GPU every
  // other read would stall the queue).
  EXPECT_EQ(Trainer::HostReads() - reads, steps) << "device-to-host reads in " << steps << " steps";
  for (auto& v : trainer.data_parallel().ShardViews()) {
    r.master_dtype = v.master.scalar_type();
    r.master_not_bf16 += v.master.ne(v.master.to(at::kBFloat16).to(at::kFloat)).sum().item<int64_t>();
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

void ExpectSameRun(const RunResult& got, const RunResult& want, const std::string& what) {
  ASSERT_EQ(got.losses.size(), want.losses.size());
  for (size_t i = 0; i < got.losses.size(); ++i) {
    EXPECT_NEAR(got.losses[i], want.losses[i], 1e-5 * std::abs(want.losses[i]))
        << what << " step " << i + 1;
  }
  for (const auto& [name, w] : want.params) {
    ASSERT_TRUE(got.params.count(name)) << name;
    const auto& g = got.params.at(name);
    const double err = (g - w).abs().max().item<double>();
    EXPECT_LT(err, 1e-5) << what << ": " << name << " max abs diff " << err;
  }
}

class TrainParity : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto& world = TestWorld().comm();
    self_ = world.Split(world.rank(), 0, "self").release();
    // One rank, the whole global batch of dp * 2 samples in one micro-batch.
    reference_ = new RunResult(Train(*self_, TinyConfig(2 * world.size(), 1, 0), kSteps));
  }
  static void TearDownTestSuite() {
    delete reference_;
    delete self_;
  }
  static constexpr int kSteps = 6;
  static parallel::Communicator* self_;
  static RunResult* reference_;
};
parallel::Communicator* TrainParity::self_ = nullptr;
RunResult* TrainParity::reference_ = nullptr;

TEST_F(TrainParity, ReferenceLearnsAndChangesEveryParameter) {
  const auto& ref = *reference_;
  EXPECT_LT(ref.losses.back(), ref.losses.front() - 0.05);
  auto cfg = TinyConfig(2, 1, 0);
  auto init = models::BuildLlama(models::LlamaConfig::FromInline(cfg.model), torch::kFloat,
                                 cfg.model.init_seed);
  for (const auto& p : init->named_parameters()) {
    EXPECT_GT((ref.params.at(p.key()) - p.value()).abs().max().item<double>(), 1e-4) << p.key();
  }
}

TEST_F(TrainParity, GradAccumulationEqualsOneBigBatch) {
  // k micro-batches of b == one batch of k*b, on one rank.
  const int n = TestWorld().world_size();
  ExpectSameRun(Train(*self_, TinyConfig(2, n, 0), kSteps), *reference_, "1 rank, accum");
}

TEST_F(TrainParity, DataParallelEachZeroStage) {
  const int n = TestWorld().world_size();
  for (int zero = 0; zero <= 3; ++zero) {
    ExpectSameRun(Train(TestWorld().comm(), TinyConfig(2, 1, zero), kSteps), *reference_,
                  fmt::format("dp={} zero={}", n, zero));
  }
}

TEST_F(TrainParity, DataParallelWithAccumulation) {
  // dp ranks x 2 micro-batches of 1 sample == the same global batch.
  const int n = TestWorld().world_size();
  for (int zero : {0, 2, 3}) {
    ExpectSameRun(Train(TestWorld().comm(), TinyConfig(1, 2, zero), kSteps), *reference_,
                  fmt::format("dp={} accum=2 zero={}", n, zero));
  }
}

// `policy` as train.activation_checkpointing (every_2: every_n with n = 2).
Config WithPolicy(Config c, const std::string& policy) {
  const bool every = policy.rfind("every_", 0) == 0;
  c.train.activation_checkpointing = every ? "every_n" : policy;
  c.train.activation_checkpointing_every = every ? std::stoll(policy.substr(6)) : 0;
  return c;
}

TEST_F(TrainParity, EveryCheckpointingPolicyAtEachZeroStageAndTp) {
  // What backward recomputes changes no number: every policy, at every ZeRO stage (ZeRO-3 gathers
  // and releases layers whether or not they are recomputed), with and without tp. every_2 on the
  // two layers recomputes layer 1 and keeps layer 0's activations.
  const int n = TestWorld().world_size();
  for (const std::string policy : {"none", "full", "every_2", "selective"}) {
    for (int64_t tp : {1, 2}) {
      for (int zero = 0; zero <= 3; ++zero) {
        if (policy == "none" && tp == 1) continue;  // DataParallelEachZeroStage
        auto cfg = WithPolicy(TinyConfig(2 * tp, 1, zero), policy);  // dp = n/tp ranks x 2tp
        cfg.parallel.tp = tp;
        ExpectSameRun(Train(TestWorld().comm(), cfg, kSteps), *reference_,
                      fmt::format("{} dp={} tp={} zero={}", policy, n / tp, tp, zero));
      }
    }
  }
}

TEST_F(TrainParity, OptimizerOffloadAtEachZeroStageAndTp) {
  // parallel.offload: optimizer moves the master weights and moments to the host and updates
  // them on host threads: the same run as the one-rank reference, at every ZeRO stage and tp.
  const int n = TestWorld().world_size();
  for (int64_t tp : {1, 2}) {
    for (int zero = 0; zero <= 3; ++zero) {
      auto cfg = TinyConfig(2 * tp, 1, zero);
      cfg.parallel.tp = tp;
      cfg.parallel.offload = "optimizer";
      cfg.parallel.offload_threads = 3;
      ExpectSameRun(Train(TestWorld().comm(), cfg, kSteps), *reference_,
                    fmt::format("offload dp={} tp={} zero={}", n / tp, tp, zero));
    }
  }
  // bf16 with fp32 masters: bit for bit the run without offload (the same arithmetic, on host).
  for (int zero : {0, 3}) {
    auto cfg = TinyConfig(2, 1, zero);
    cfg.model.dtype = "bf16";
    const auto plain = Train(TestWorld().comm(), cfg, kSteps);
    cfg.parallel.offload = "optimizer";
    const auto offloaded = Train(TestWorld().comm(), cfg, kSteps);
    EXPECT_EQ(offloaded.losses, plain.losses) << "bf16 offload zero " << zero;
    for (const auto& [name, w] : plain.params) {
      EXPECT_TRUE(offloaded.params.at(name).equal(w)) << "bf16 offload zero " << zero << name;
    }
    EXPECT_EQ(offloaded.master_dtype, at::kFloat);
  }
}

TEST_F(TrainParity, Zero3GathersEachLayerForForwardAndAgainForBackward) {
  // ZeRO-3 without recompute: each layer runs once per micro-batch, is released after its
  // forward (only the embedding, the head and the last layer stay whole until backward) and is
  // gathered again for its backward with the previous layer prefetched; never more than two
  // layers are whole. With full recompute each layer runs twice.
  for (const std::string policy : {"none", "full"}) {
    auto cfg = WithPolicy(TinyConfig(2, 1, 3), policy);
    cfg.model.arch.num_hidden_layers = 4;
    const int64_t layers = cfg.model.arch.num_hidden_layers;
    parallel::ProcessGrid grid(TestWorld().comm(), ftune::testing::TestGrid(-1, 1));
    auto model = models::BuildLlama(models::LlamaConfig::FromInline(cfg.model), torch::kFloat,
                                    cfg.model.init_seed);
    Trainer trainer(TestWorld(), cfg, model, grid);
    auto& dp = trainer.data_parallel();
    std::vector<int64_t> unit_bytes(dp.num_units());
    int64_t ends = 0, layer = 0;
    for (size_t p = 0; p < dp.params().size(); ++p) {
      int64_t numel = 1;
      for (int64_t d : dp.ShapeOf(static_cast<int>(p))) numel *= d;
      unit_bytes[dp.UnitOf(static_cast<int>(p))] += numel * 4;
      const std::string& name = dp.params()[p].name;
      if (name.rfind("model.layers.0.", 0) == 0) {
        layer += numel * 4;
      } else if (name.rfind("model.layers.", 0) != 0) {
        ends += numel * 4;
      }
    }
    int64_t runs = 0;
    std::vector<int64_t> in_forward, in_backward;
    const auto inner = model->layer_runner;
    model->layer_runner = [&](int64_t l, const torch::Tensor& x, const models::TensorHook& run) {
      models::TensorHook counted = [&, run](const torch::Tensor& h) {
        ++runs;
        auto y = run(h);
        if (torch::GradMode::is_enabled() == (policy == "none")) {
          in_forward.push_back(dp.GatheredBytes());
        }
        return y;
      };
      return inner(l, x, counted);
    };
    for (auto& p : model->parameters()) {
      p.register_hook([&](const torch::Tensor& g) {
        in_backward.push_back(dp.GatheredBytes());
        return g;
      });
    }
    const auto b = Samples(0, 2 * grid.dp_rank(), 2);
    dp.StartMicroBatch(true);
    trainer.parallel().BeginMicroBatch();
    auto ls = models::CausalLmLoss(*model, b.tokens, b.targets, b.loss_mask);
    const int64_t after_forward = dp.GatheredBytes();
    ls.loss_sum.backward();
    trainer.parallel().EndMicroBatch();
    dp.FinishGradSync();
    dp.ZeroGrads();
    const std::string what = "policy " + policy;
    EXPECT_EQ(runs, policy == "none" ? layers : 2 * layers) << what;
    EXPECT_EQ(after_forward, ends + layer) << what << ": whole after forward (bytes)";
    ASSERT_EQ(in_forward.size(), static_cast<size_t>(layers)) << what;
    for (int64_t l = 0; l + 1 < layers; ++l) {
      EXPECT_EQ(in_forward[l], ends + 2 * layer) << what << ": layer " << l << " and the next";
    }
    ASSERT_FALSE(in_backward.empty());
    EXPECT_EQ(*std::max_element(in_backward.begin(), in_backward.end()), ends + 2 * layer)
        << what << ": at most the layer and the prefetched previous one in backward";
    EXPECT_EQ(dp.GatheredBytes(), 0) << what << ": released after the micro-batch";
    // Parameters visited one unit at a time (export) stay valid after their unit is released,
    // also where the visitor keeps aliases rather than copies.
    std::map<std::string, torch::Tensor> held, copies;
    trainer.parallel().VisitParams([&](const std::string& name, const torch::Tensor& t) {
      held[name] = t.detach();
      copies[name] = t.clone();
    });
    EXPECT_EQ(dp.GatheredBytes(), 0) << what;
    for (const auto& [name, t] : copies) {
      ASSERT_GE(held.at(name).storage().nbytes(), t.numel() * t.element_size()) << what << name;
      EXPECT_TRUE(held.at(name).equal(t)) << what << ": " << name;
    }
  }
}

TEST_F(TrainParity, TensorParallelAndTpTimesDp) {
  // tp=2 (x dp=2 at 4 ranks): same global batch, so the same run as one rank.
  const int n = TestWorld().world_size();
  for (int zero : {0, 1, 3}) {
    auto cfg = TinyConfig(2 * 2, 1, zero);  // dp = n/2 ranks x 4 samples = 2n
    cfg.parallel.tp = 2;
    auto got = Train(TestWorld().comm(), cfg, kSteps);
    ExpectSameRun(got, *reference_, fmt::format("tp=2 dp={} zero={}", n / 2, zero));
  }
}

TEST_F(TrainParity, Bf16TracksFp32WithFp32MasterWeights) {
  // model.dtype bf16: bf16 compute, fp32 master weights and moments. The run follows the fp32
  // run within bf16's precision, and the masters keep what bf16 parameters cannot hold.
  const auto& ref = *reference_;
  const int n = TestWorld().world_size();
  for (int zero : {0, 3}) {
    auto cfg = TinyConfig(2, 1, zero);
    cfg.model.dtype = "bf16";
    const auto got = Train(TestWorld().comm(), cfg, kSteps);
    const std::string what = fmt::format("bf16 dp={} zero={}", n, zero);
    double worst = 0;
    for (size_t i = 0; i < ref.losses.size(); ++i) {
      worst = std::max(worst, std::abs(got.losses[i] - ref.losses[i]) / ref.losses[i]);
    }
    EXPECT_LT(worst, 2e-3) << what << ": max relative loss difference to fp32";
    EXPECT_GT(worst, 0.0) << what << ": bitwise equal to fp32, so bf16 was not used";
    for (const auto& [name, w] : ref.params) {
      const auto& g = got.params.at(name);
      EXPECT_EQ(g.scalar_type(), at::kBFloat16) << what << ": " << name;
      EXPECT_LT((g.to(at::kFloat) - w).abs().max().item<double>(), 2e-2) << what << ": " << name;
    }
    EXPECT_EQ(got.master_dtype, at::kFloat) << what;
    auto off = at::tensor({got.master_not_bf16}, at::kLong);
    TestWorld().comm().AllReduce(off, parallel::ReduceOp::kSum)->Wait();
    EXPECT_GT(off.item<int64_t>(), 0) << what << ": master weights hold no more than bf16";
    if (TestWorld().rank() == 0) std::printf("%s: max relative loss difference to fp32 %.3g, %ld master elements beyond bf16\n",
                what.c_str(), worst, static_cast<long>(off.item<int64_t>()));
  }
}

TEST_F(TrainParity, FusedAdamWMatchesThePlainOps) {
  // The reference ran with optim.fused (the default); the plain ops must give the same run.
  if (!compat::kFusedAdamW) GTEST_SKIP() << "libtorch " << compat::TorchVersion() << " has no fused AdamW";
  for (int zero : {0, 3}) {
    auto cfg = TinyConfig(2 * TestWorld().world_size(), 1, zero);
    cfg.optim.fused = false;
    ExpectSameRun(Train(*self_, cfg, kSteps), *reference_, fmt::format("plain AdamW zero={}", zero));
  }
}

TEST_F(TrainParity, ZeroShardsModelState) {
  auto& comm = TestWorld().comm();
  const int n = comm.size();
  int64_t bytes[4];
  for (int zero = 0; zero <= 3; ++zero) {
    parallel::ProcessGrid grid(comm, -1, 1);
    auto cfg = TinyConfig(2, 1, zero);
    auto model = models::BuildLlama(models::LlamaConfig::FromInline(cfg.model), torch::kFloat, 1);
    Trainer t(TestWorld(), cfg, model, grid);
    bytes[zero] = t.data_parallel().ModelStateBytes();
  }
  // fp32: 16 bytes per parameter at zero 0; ZeRO paper formulas with fp32 sizes.
  const double psi = bytes[0] / 16.0;
  EXPECT_NEAR(bytes[1], 8 * psi + 8 * psi / n, 64 * 4);
  EXPECT_NEAR(bytes[2], 4 * psi + 12 * psi / n, 64 * 4);
  EXPECT_NEAR(bytes[3], 16 * psi / n, 64 * 4);
  if (n == 4) EXPECT_LE(bytes[3], 0.3 * bytes[0]);
  // Offloaded, the optimizer state (master, moments, a gradient copy: 16 bytes per owned
  // element) is host memory; the device keeps parameters and gradients.
  for (int zero : {1, 3}) {
    parallel::ProcessGrid grid(comm, -1, 1);
    auto cfg = TinyConfig(2, 1, zero);
    cfg.parallel.offload = "optimizer";
    auto model = models::BuildLlama(models::LlamaConfig::FromInline(cfg.model), torch::kFloat, 1);
    Trainer t(TestWorld(), cfg, model, grid);
    const double device = zero == 1 ? 8 * psi : 8 * psi / n;
    EXPECT_NEAR(t.data_parallel().ModelStateBytes(), device, 64 * 4) << "zero " << zero;
    EXPECT_NEAR(t.data_parallel().HostStateBytes(), 16 * psi / n, 64 * 4) << "zero " << zero;
  }
}

}  // namespace
}  // namespace ftune::runtime
