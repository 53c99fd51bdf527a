// `ftune plan`'s model-state prediction (runtime/plan.h PlanModelState) against what ftune really
// allocates at 1 rank and at the job's 2 or 4 ranks, for every ZeRO stage, tp 1 and 2, fp32 and
// bf16: within 10 % (the bar). "Really allocates" is measured with the allocator's
// statistics of bytes in use (glibc's mallinfo2; under AddressSanitizer, which replaces malloc,
// its own count) around the Trainer's construction, with the model built
// unmaterialised (its parameters are mmap-backed, outside malloc) and filled through a
// ParamSource, so the difference is exactly what DataParallel allocated; its own accounting
// (ModelStateBytes) is checked too.
#include <gtest/gtest.h>
#include <malloc.h>
#if defined(__SANITIZE_ADDRESS__)
// The sanitizer runtime's count of bytes in use (<sanitizer/allocator_interface.h>, which GCC's
// packages do not install).
extern "C" size_t __sanitizer_get_current_allocated_bytes();
#endif

#include "models/llama.h"
#include "parallel/compat.h"
#include "parallel/context_parallel.h"
#include "parallel/process_grid.h"
#include "runtime/config.h"
#include "runtime/parallelize.h"
#include "runtime/plan.h"
#include "runtime/trainer.h"
#include "tests/mpi_test_env.h"
#include "tests/tensor_memory.h"

namespace ftune::runtime {
namespace {

double HeapBytesInUse() {
#if defined(__SANITIZE_ADDRESS__)
  return static_cast<double>(__sanitizer_get_current_allocated_bytes());
#else
  const struct mallinfo2 m = ::mallinfo2();
  return static_cast<double>(m.uordblks + m.hblkhd);
#endif
}

using ftune::testing::TestWorld;

void ExpectPlanMatches(parallel::Communicator& comm) {
  Config cfg = LoadConfig("", {}, {});
  cfg.model.arch.vocab_size = 1024;
  cfg.model.arch.hidden_size = 128;
  cfg.model.arch.intermediate_size = 352;
  cfg.model.arch.num_hidden_layers = 3;
  cfg.model.arch.num_attention_heads = 4;
  cfg.model.arch.num_key_value_heads = 2;
  cfg.log.jsonl = false;
  const auto mcfg = models::LlamaConfig::FromInline(cfg.model);
  for (int64_t tp : {1, 2}) {
    if (comm.size() % tp != 0) continue;
    for (const std::string dtype : {"fp32", "bf16"}) {
      for (int64_t zero = 0; zero <= 3; ++zero) {
        cfg.parallel.tp = tp;
        cfg.parallel.zero = zero;
        cfg.model.dtype = dtype;
        parallel::ProcessGrid grid(comm, -1, tp);
        std::shared_ptr<models::LlamaModel> model;
        if (tp > 1) {
          model = std::make_shared<TensorParallelLlama>(mcfg, grid);
        } else {
          model = std::make_shared<models::LlamaModel>(mcfg, /*materialize=*/false);
        }
        models::Unmaterialize(*model, dtype == "bf16" ? torch::kBFloat16 : torch::kFloat);
        auto source = [](const parallel::ParamSpec&, int64_t, at::Tensor out) { out.fill_(0.02); };
        const double before = HeapBytesInUse();
        Trainer trainer(TestWorld(), cfg, model, grid, source);
        const double real = HeapBytesInUse() - before;
        const double accounted = double(trainer.data_parallel().ModelStateBytes());
        const double planned =
            PlanModelState(mcfg, dtype == "bf16" ? 2 : 4, grid.dp(), tp, zero).total();
        const std::string what = fmt::format("{} rank(s) dp {} tp {} zero {} {}", comm.size(),
                                             grid.dp(), tp, zero, dtype);
        EXPECT_NEAR(planned, real, 0.10 * real) << what;
        EXPECT_NEAR(accounted, real, 0.10 * real) << what;
        if (TestWorld().rank() == 0) {
          std::printf("%s: planned %.0f B, allocated %.0f B (%+.2f%%), DataParallel's own "
                      "accounting %.0f B\n", what.c_str(), planned, real,
                      100.0 * (planned - real) / real, accounted);
        }
      }
    }
  }
}

// One micro-batch of training and its optimizer step under each activation checkpointing policy
// and ZeRO stage (fp32; tp 2 and bf16 at ZeRO 0 and 3; optimizer offload at ZeRO 1 and 3) against `ftune plan`'s prediction for
// the same run (runtime/plan.h PlanConfigLayout): the model state, the tensor bytes kept between
// forward and backward (the activations; under ZeRO-3 less the gathered units) and the most
// tensor bytes alive at once during the step above the model state (the plan's peak), each within
// 10 %. Counted at libtorch's CPU allocator (tests/tensor_memory.h), where all of them are
// allocated; every token is a target, as the plan assumes.
void ExpectActivationsMatch(parallel::Communicator& comm) {
  Config cfg = LoadConfig("", {}, {});
  cfg.model.arch.vocab_size = 256;
  cfg.model.arch.hidden_size = 128;
  cfg.model.arch.intermediate_size = 352;
  cfg.model.arch.num_hidden_layers = 4;
  cfg.model.arch.num_attention_heads = 4;
  cfg.model.arch.num_key_value_heads = 2;
  cfg.data.max_seq_len = 64;
  cfg.train.micro_batch = 4;
  cfg.log.jsonl = false;
  const auto mcfg = models::LlamaConfig::FromInline(cfg.model);
  auto gen = at::detail::createCPUGenerator(11);
  const auto tokens = torch::randint(256, {4, 64}, gen, torch::kLong);
  const auto targets = torch::randint(256, {4, 64}, gen, torch::kLong);
  const auto mask = torch::ones({4, 64});
  // One layout: planned against measured.
  auto check = [&](parallel::ProcessGrid& grid, const std::string& dtype, int64_t zero,
                   const std::string& policy, bool offload) {
    const int64_t tp = grid.tp();
    cfg.model.dtype = dtype;
    cfg.parallel.tp = tp;
    cfg.parallel.zero = zero;
    cfg.parallel.offload = offload ? "optimizer" : "none";
    cfg.train.activation_checkpointing = policy == "every_2" ? "every_n" : policy;
    cfg.train.activation_checkpointing_every = policy == "every_2" ? 2 : 0;
    PlanInput in = PlanInputFor(cfg, mcfg, 1, comm.size(), 1e12);
    in.flash_attention = false;   // libtorch 1.x's attention on CPU
    in.staged_reductions = true;  // the MPI backend
    in.overhead_bytes = 0;
    const LayoutPlan plan = PlanConfigLayout(in, cfg);
    // On CPU ranks the host is the device: the offloaded state and its update's temporaries are
    // counted with the rest.
    const double planned_state = plan.state.total() + plan.state.host;
    const double planned_peak = std::max(plan.peak.bytes, plan.host - plan.state.host);

    testing::TensorMemoryCounter memory;
    std::shared_ptr<models::LlamaModel> model;
    if (tp > 1) {
      model = std::make_shared<TensorParallelLlama>(mcfg, grid);
    } else {
      model = std::make_shared<models::LlamaModel>(mcfg, /*materialize=*/false);
    }
    models::Unmaterialize(*model, dtype == "bf16" ? torch::kBFloat16 : torch::kFloat);
    auto source = [](const parallel::ParamSpec&, int64_t, at::Tensor out) { out.fill_(0.02); };
    Trainer trainer(TestWorld(), cfg, model, grid, source);
    auto& dp = trainer.data_parallel();
    auto& pm = trainer.parallel();
    const double state = double(memory.in_use());
    memory.ResetPeak();
    dp.StartMicroBatch(true);
    pm.BeginMicroBatch();
    auto ls = models::CausalLmLoss(*model, tokens, targets, mask);
    const double kept = double(memory.in_use()) - state - double(dp.GatheredBytes());
    ls.loss_sum.backward();
    pm.EndMicroBatch();
    dp.FinishGradSync();
    dp.Step({});
    const double peak = double(memory.peak()) - state;
    const std::string what =
        fmt::format("{} rank(s) dp {} tp {} zero {} {} {}{}", comm.size(), grid.dp(), tp, zero,
                    policy, dtype, offload ? " offload" : "");
    EXPECT_NEAR(planned_state, state, 0.10 * state) << what << ": model state";
    EXPECT_NEAR(plan.acts.kept(), kept, 0.10 * kept) << what << ": activations";
    EXPECT_NEAR(planned_peak, peak, 0.10 * peak)
        << what << ": peak above the model state (planned at the " << plan.peak.Name() << ")";
    if (TestWorld().rank() == 0) {
      std::printf("%s: state %+.1f%% | activations planned %.0f measured %.0f (%+.1f%%) | "
                  "peak planned %.0f (%s) measured %.0f (%+.1f%%)\n",
                  what.c_str(), 100.0 * (planned_state - state) / state, plan.acts.kept(), kept,
                  100.0 * (plan.acts.kept() - kept) / kept, planned_peak, plan.peak.Name(), peak,
                  100.0 * (planned_peak - peak) / peak);
    }
  };
  for (int64_t tp : {1, 2}) {
    if (comm.size() % tp != 0) continue;
    parallel::ProcessGrid grid(comm, -1, tp);
    for (const std::string policy : {"none", "selective", "every_2", "full"}) {
      for (int64_t zero = 0; zero <= 3; ++zero) {
        if (tp == 1 || zero == 0 || zero == 3) check(grid, "fp32", zero, policy, false);
        if (tp == 1 && (zero == 0 || zero == 3)) check(grid, "bf16", zero, policy, false);
      }
    }
    for (int64_t zero : {1, 3}) check(grid, "fp32", zero, "none", /*offload=*/true);
  }
  parallel::ProcessGrid grid(comm, -1, 1);
  check(grid, "bf16", 3, "selective", /*offload=*/true);
}

TEST(PlanActivations, MatchAllocationsPerPolicyZeroStageAndTp) {
  if (compat::kTorch2) {
    GTEST_SKIP() << "the plan's CPU attention term is libtorch 1.x's (materialized softmax); "
                    "libtorch " << compat::TorchVersion() << " runs SDPA on the CPU";
  }
  ExpectActivationsMatch(TestWorld().comm());
}

// Long rows with block-wise attention (models/attention.h) at cp 1 (one rank of its own) and at
// cp = the job's ranks: the plan's activations and step peak against allocations, within 15 %.
void ExpectContextParallelMatches(parallel::Communicator& comm) {
  Config cfg = LoadConfig("", {}, {});
  cfg.model.arch.vocab_size = 256;
  cfg.model.arch.hidden_size = 128;
  cfg.model.arch.intermediate_size = 352;
  cfg.model.arch.num_hidden_layers = 2;
  cfg.model.arch.num_attention_heads = 4;
  cfg.model.arch.num_key_value_heads = 2;
  cfg.model.arch.max_position_embeddings = 4096;
  cfg.data.max_seq_len = 4096;
  cfg.data.packing = false;
  cfg.train.micro_batch = 1;
  cfg.log.jsonl = false;
  const int64_t cp = comm.size(), t = cfg.data.max_seq_len;
  const auto mcfg = models::LlamaConfig::FromInline(cfg.model);
  auto gen = at::detail::createCPUGenerator(12);
  data::Batch b;
  b.tokens = torch::randint(256, {1, t}, gen, torch::kLong);
  b.targets = torch::randint(256, {1, t}, gen, torch::kLong);
  b.loss_mask = torch::ones({1, t});
  b.positions = torch::arange(t).unsqueeze(0);
  parallel::GridOptions go = ftune::testing::TestGrid(-1, 1);
  go.cp = cp;
  parallel::ProcessGrid grid(comm, go);
  for (const std::string policy : {"none", "selective", "full"}) {
    cfg.parallel.cp = cp;
    cfg.train.activation_checkpointing = policy;
    PlanInput in = PlanInputFor(cfg, mcfg, 1, comm.size(), 1e12);
    in.flash_attention = false;
    in.staged_reductions = true;
    in.overhead_bytes = 0;
    const LayoutPlan plan = PlanConfigLayout(in, cfg);
    testing::TensorMemoryCounter memory;
    auto model = std::make_shared<models::LlamaModel>(mcfg, /*materialize=*/false);
    models::Unmaterialize(*model, torch::kFloat);
    auto source = [](const parallel::ParamSpec&, int64_t, at::Tensor out) { out.fill_(0.02); };
    Trainer trainer(TestWorld(), cfg, model, grid, source);
    auto& dp = trainer.data_parallel();
    auto& pm = trainer.parallel();
    const double state = double(memory.in_use());
    memory.ResetPeak();
    models::ForwardOptions fo;
    auto cut = [&](const torch::Tensor& x) { return parallel::ShardSequence(x, cp, grid.cp_rank()); };
    fo.positions = cut(b.positions);
    if (cp > 1) fo.cp = &grid.cp_comm();
    dp.StartMicroBatch(true);
    pm.BeginMicroBatch();
    // The trainer's chunking of the loss (Trainer::MicroBatchLoss): none below 1 GiB of logits.
    const int64_t chunk = std::max<int64_t>(1024, (int64_t(1) << 30) / (4 * mcfg.vocab_size));
    auto ls = models::CausalLmLoss(*model, cut(b.tokens), cut(b.targets), cut(b.loss_mask), fo,
                                   chunk);
    const double kept = double(memory.in_use()) - state;
    ls.loss_sum.backward();
    pm.EndMicroBatch();
    dp.FinishGradSync();
    dp.Step({});
    const double peak = double(memory.peak()) - state;
    const std::string what = fmt::format("cp {} seq {} {}", cp, t, policy);
    EXPECT_NEAR(plan.acts.kept(), kept, 0.15 * kept) << what << ": activations";
    EXPECT_NEAR(plan.peak.bytes, peak, 0.15 * peak)
        << what << ": peak above the model state (planned at the " << plan.peak.Name() << ")";
    if (TestWorld().rank() == 0) {
      std::printf("%s: activations planned %.0f measured %.0f (%+.1f%%) | peak planned %.0f (%s) "
                  "measured %.0f (%+.1f%%)\n", what.c_str(), plan.acts.kept(), kept,
                  100.0 * (plan.acts.kept() - kept) / kept, plan.peak.bytes, plan.peak.Name(),
                  peak, 100.0 * (plan.peak.bytes - peak) / peak);
    }
  }
}

TEST(PlanActivations, MatchAllocationsUnderContextParallelism) {
  auto self = TestWorld().comm().Split(TestWorld().rank(), 0, "self");
  ExpectContextParallelMatches(*self);
  ExpectContextParallelMatches(TestWorld().comm());
}

TEST(PlanModelState, MatchesDataParallelAtOneRank) {
  auto self = TestWorld().comm().Split(TestWorld().rank(), 0, "self");
  ExpectPlanMatches(*self);
}

TEST(PlanModelState, MatchesDataParallelAtTheJobsRanks) { ExpectPlanMatches(TestWorld().comm()); }

}  // namespace
}  // namespace ftune::runtime
