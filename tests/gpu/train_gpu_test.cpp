// gpu: training on the GPU gives the CPU's results, and a step waits for the device only where
// its own logic needs a value. At 1, 2 and 4 ranks (one GPU each; the data communicators are NCCL,
// as parallel.backend auto picks for an unshared GPU), against a one-rank fp32 run on the CPU
// computed by every rank itself, so nothing is read from a file and nothing can pass vacuously:
// the reference must learn. Runs behind tests/gpu_gate.sh (skipped without enough CUDA devices).
#include <gtest/gtest.h>

#include "models/hf_io.h"
#include "models/llama.h"
#include "models/safetensors.h"
#include "parallel/compat.h"
#include "parallel/files.h"
#include "parallel/process_grid.h"
#include "runtime/config.h"
#include "runtime/trainer.h"
#include "tests/learnable_batch.h"
#include "tests/mpi_test_env.h"

namespace ftune::runtime {
namespace {

using ftune::testing::TestWorld;

constexpr int64_t kSeq = 32;
constexpr int64_t kVocab = 128;
constexpr int kSteps = 8;

Config TinyConfig(int64_t micro_batch, int64_t zero, const std::string& dtype) {
  Config c = LoadConfig("", {}, {});
  c.model.arch.vocab_size = kVocab;
  c.model.arch.hidden_size = 64;
  c.model.arch.intermediate_size = 128;
  c.model.arch.num_hidden_layers = 2;
  c.model.arch.num_attention_heads = 4;
  c.model.arch.num_key_value_heads = 2;
  c.model.dtype = dtype;
  c.data.max_seq_len = kSeq;
  c.train.steps = kSteps;
  c.train.micro_batch = micro_batch;
  c.train.clip = 1.0;
  c.optim.lr = 3e-3;
  c.optim.weight_decay = 0.1;
  c.optim.warmup_steps = 2;
  c.parallel.zero = zero;
  c.parallel.bucket_mb = 0.02;  // several buckets even for the tiny model
  c.log.jsonl = false;
  c.log.progress = "lines";
  c.log.every = 1000;
  return c;
}

struct RunResult {
  std::vector<double> losses;
  std::map<std::string, at::Tensor> params;  // on the CPU, fp32
  int64_t host_reads = 0;                    // Trainer::HostReads() during steps 2..kSteps
  int64_t syncs = 0;                         // device synchronisations during steps 2..kSteps
  std::vector<std::string> sync_messages;
};

// `steps` steps on `device` over `comm`: every rank takes its dp share of the global batch of
// 2 * comm.size() samples.
RunResult Train(parallel::Communicator& comm, const Config& cfg, const at::Device& device,
                const std::string& backend) {
  parallel::GridOptions opt;
  opt.device = device;
  opt.backend = backend;
  parallel::ProcessGrid grid(comm, opt);
  EXPECT_EQ(grid.backend(), device.is_cuda() && backend != "mpi" ? "nccl" : "mpi");
  auto model = models::BuildLlama(models::LlamaConfig::FromInline(cfg.model), torch::kFloat,
                                  cfg.model.init_seed);
  if (cfg.model.dtype == "bf16") model->to(torch::kBFloat16);
  Trainer trainer(TestWorld(), cfg, model, grid);
  RunResult r;
  const int64_t mb = cfg.train.micro_batch;
  std::unique_ptr<compat::SyncCounter> syncs;
  int64_t reads = 0;
  for (int s = 0; s < kSteps; ++s) {
    if (s == 1) {  // the first step allocates and initialises (cuBLAS handles, the allocator)
      syncs = std::make_unique<compat::SyncCounter>();
      reads = Trainer::HostReads();
    }
    auto b = ftune::testing::LearnableBatch(s, grid.dp_rank() * mb, mb, kSeq, kVocab, 5);
    r.losses.push_back(trainer.TrainStep({b}, kSteps).loss);
  }
  r.host_reads = Trainer::HostReads() - reads;
  r.syncs = syncs->count();
  r.sync_messages = syncs->messages();
  syncs.reset();
  trainer.parallel().GatherAll();
  for (const auto& p : model->named_parameters()) {
    EXPECT_EQ(p.value().device(), device) << p.key();
    r.params[p.key()] = p.value().detach().to(torch::kCPU, torch::kFloat);
  }
  trainer.parallel().ReleaseAll();
  return r;
}

class GpuTrain : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto& world = TestWorld().comm();
    self_ = world.Split(world.rank(), 0, "self").release();
    reference_ = new RunResult(
        Train(*self_, TinyConfig(2 * world.size(), 0, "fp32"), at::Device(at::kCPU), "mpi"));
  }
  static void TearDownTestSuite() {
    delete reference_;
    delete self_;
  }
  void SetUp() override {
    ASSERT_TRUE(TestWorld().device().is_cuda()) << "World chose " << TestWorld().device().str();
  }
  static parallel::Communicator* self_;
  static RunResult* reference_;
};
parallel::Communicator* GpuTrain::self_ = nullptr;
RunResult* GpuTrain::reference_ = nullptr;

TEST_F(GpuTrain, ReferenceLearns) {
  EXPECT_LT(reference_->losses.back(), reference_->losses.front() - 0.1);
}

// fp32 on the GPU (cuBLAS without TF32, libtorch's default) follows the CPU within fp32 rounding
// of the reductions' different order, at every ZeRO stage, over NCCL.
TEST_F(GpuTrain, Fp32MatchesTheCpuEachZeroStage) {
  const auto& ref = *reference_;
  for (int zero = 0; zero <= 3; ++zero) {
    const auto got = Train(TestWorld().comm(), TinyConfig(2, zero, "fp32"),
                           TestWorld().device(), "auto");
    const std::string what = fmt::format("fp32 dp={} zero={}", TestWorld().world_size(), zero);
    for (size_t i = 0; i < ref.losses.size(); ++i) {
      EXPECT_NEAR(got.losses[i], ref.losses[i], 1e-4 * ref.losses[i]) << what << " step " << i + 1;
    }
    for (const auto& [name, w] : ref.params) {
      EXPECT_LT((got.params.at(name) - w).abs().max().item<double>(), 1e-4) << what << ": " << name;
    }
  }
}

// bf16 compute with fp32 masters on the GPU tracks fp32 on the CPU within bf16's precision.
TEST_F(GpuTrain, Bf16TracksTheCpuFp32Run) {
  const auto& ref = *reference_;
  for (int zero : {0, 3}) {
    const auto got = Train(TestWorld().comm(), TinyConfig(2, zero, "bf16"),
                           TestWorld().device(), "auto");
    double worst = 0;
    for (size_t i = 0; i < ref.losses.size(); ++i) {
      worst = std::max(worst, std::abs(got.losses[i] - ref.losses[i]) / ref.losses[i]);
    }
    EXPECT_LT(worst, 5e-3) << "bf16 zero=" << zero << ": max relative loss difference to fp32";
    EXPECT_GT(worst, 0.0) << "bf16 zero=" << zero << ": bitwise equal to fp32: bf16 not used";
  }
}

// The device-resident step: the host waits for the device once per step (the loss, token count
// and gradient norm, read together for logging, the NaN skip and clipping). libtorch's CUDA sync
// debug mode reports every synchronising call (item(), nonzero on the device, a pageable copy to
// the host, a stream synchronisation); each must be one of the Trainer's counted reads.
TEST_F(GpuTrain, StepWaitsForTheDeviceOncePerStep) {
  if (!compat::SyncCounter::kAvailable) GTEST_SKIP() << "this libtorch cannot report syncs";
  for (int zero : {0, 3}) {
    const auto got = Train(TestWorld().comm(), TinyConfig(2, zero, "bf16"),
                           TestWorld().device(), "auto");
    EXPECT_EQ(got.host_reads, kSteps - 1) << "zero=" << zero;
    std::string list;
    for (const auto& m : got.sync_messages) list += "\n  " + m;
    EXPECT_EQ(got.syncs, got.host_reads)
        << "zero=" << zero << ": device synchronisations in " << kSteps - 1 << " steps:" << list;
  }
}

// The transformers reference (tests/fixtures/hf_tiny_*: logits and loss from HF transformers)
// holds on the GPU: fp32 within 1e-4 as on the CPU, bf16 within its precision.
TEST_F(GpuTrain, HfReferenceOnTheGpu) {
  const auto dev = TestWorld().device();
  int found = 0;
  for (const char* name : {"hf_tiny_untied", "hf_tiny_tied"}) {
    const std::string dir = files::Join(FTUNE_SOURCE_DIR, std::string("tests/fixtures/") + name);
    if (!files::Exists(files::Join(dir, "reference.safetensors"))) continue;
    ++found;
    models::SafetensorsFile ref(files::Join(dir, "reference.safetensors"));
    auto tokens = ref.Get("tokens").to(torch::kLong);
    auto want_logits = ref.Get("logits").to(torch::kFloat);
    auto want_loss = ref.Get("loss_sum").to(torch::kFloat).item<double>();
    for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
      auto loaded = models::LoadHf(dir);
      auto& m = *loaded.model;
      m.to(dev, dtype);
      torch::NoGradGuard ng;
      auto t = tokens.to(dev);
      auto logits = m.Logits(m.ForwardHidden(t)).to(torch::kCPU, torch::kFloat);
      auto targets = torch::roll(t, -1, 1);
      auto mask = torch::ones_like(tokens);
      mask.select(1, tokens.size(1) - 1).fill_(0);
      const double loss = models::CausalLmLoss(m, t, targets, mask, {}, 3).loss_sum.item<double>();
      const double err = (logits - want_logits).abs().max().item<double>();
      if (dtype == torch::kFloat) {
        EXPECT_LT(err, 1e-4) << name << " fp32";
        EXPECT_NEAR(loss, want_loss, 1e-4) << name << " fp32";
      } else {
        EXPECT_LT(err, 0.05 * want_logits.abs().max().item<double>()) << name << " bf16";
        EXPECT_NEAR(loss, want_loss, 1e-2 * want_loss) << name << " bf16";
      }
    }
  }
  ASSERT_GT(found, 0) << "tests/fixtures/hf_tiny_*/reference.safetensors missing";
}

}  // namespace
}  // namespace ftune::runtime
