#include "runtime/trainer.h"

#include <atomic>
#include <chrono>
#include <cmath>

#include "runtime/log.h"
#include "runtime/lr_schedule.h"
#include "runtime/metrics.h"
#include "runtime/profiler.h"
#include "runtime/run_setup.h"
#include "runtime/signals.h"
#include "runtime/tensorboard.h"

namespace ftune::runtime {
namespace {

using Clock = std::chrono::steady_clock;
double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::atomic<int64_t> host_reads{0};

// The step's one device-to-host read: `t`'s values as host doubles (on a GPU this waits for the
// step's queued work).
std::vector<double> ReadToHost(const torch::Tensor& t) {
  ++host_reads;
  const auto host = t.to(torch::kCPU, torch::kDouble).contiguous();
  const double* p = host.data_ptr<double>();
  return std::vector<double>(p, p + host.numel());
}

// A micro-batch's inputs on `device`: copied from pinned host memory without blocking the host
// (the copy is ordered before the compute on the same stream).
data::Batch ToDevice(const data::Batch& b, const torch::Device& device) {
  if (device.is_cpu()) return b;
  auto move = [&](const torch::Tensor& t) {
    if (!t.defined()) return t;
    return (t.is_pinned() ? t : t.pin_memory()).to(device, /*non_blocking=*/true);
  };
  data::Batch d = b;
  d.tokens = move(b.tokens);
  d.targets = move(b.targets);
  // loss_mask and segment_ids stay on the host: CausalLmLoss selects the target rows there, and
  // the attention reads the document boundaries there, without a sync.
  d.positions = move(b.positions);
  return d;
}

}  // namespace

int64_t Trainer::HostReads() { return host_reads.load(); }

Trainer::Trainer(World& world, const Config& cfg, std::unique_ptr<ParallelModel> model)
    : world_(world), cfg_(cfg), pm_(std::move(model)), grid_(pm_->grid()) {}

Trainer::Trainer(World& world, const Config& cfg, std::shared_ptr<models::LlamaModel> model,
                 parallel::ProcessGrid& grid, parallel::ParamSource source)
    : Trainer(world, cfg,
              std::make_unique<ParallelModel>(std::move(model), grid, cfg, std::move(source))) {}

Trainer::~Trainer() = default;

torch::Tensor Trainer::MicroBatchLoss(const data::Batch& b, double inv_targets) {
  models::ForwardOptions opt;
  opt.positions = b.positions;
  opt.segment_ids = b.segment_ids;
  if (grid_.cp() > 1) opt.cp = &grid_.cp_comm();  // the batch holds this rank's chunks
  // Chunk the cross-entropy (recomputing logits in backward) only when this
  // rank's fp32 logits would exceed 1 GiB: below that, recomputing the lm_head
  // costs more time than the memory it saves.
  const int64_t local_vocab = pm_->model().config().vocab_size / grid_.tp();
  const int64_t chunk = std::max<int64_t>(1024, (int64_t(1) << 30) / (4 * local_vocab));
  parallel::TraceRange phase("ftune::forward");
  auto ls = models::CausalLmLoss(pm_->model(), b.tokens, b.targets, b.loss_mask, opt, chunk);
  phase.Next("ftune::backward");
  (ls.loss_sum * inv_targets).backward();
  return ls.loss_sum.detach().to(torch::kDouble);
}

StepStats Trainer::TrainStep(const std::vector<data::Batch>& micro, int64_t total_steps) {
  const auto t0 = Clock::now();
  const double comm0 = parallel::CommWaitSeconds();
  auto& dp = pm_->data_parallel();
  StepStats s;
  s.step = step_ + 1;
  ProfileWindow profile(cfg_, s.step, total_steps, world_.rank());
  // The loss denominator: target tokens of all micro-batches on all dp x cp ranks (host integers
  // from the loader, over the control communicator: no device involved).
  int64_t local_targets = 0, local_tokens = 0;
  for (const auto& b : micro) local_targets += b.num_targets, local_tokens += b.tokens.numel();
  auto counts = torch::tensor({local_targets, local_tokens}, torch::kLong);
  grid_.dp_control().AllReduce(counts)->Wait();
  s.targets = counts[0].item<int64_t>();
  s.tokens = counts[1].item<int64_t>();
  if (s.targets == 0) {
    FT_THROW(DataError, "step {}: the global batch has no target tokens (every loss_mask is 0); "
             "check data.train_on_prompt and the template", s.step);
  }
  auto loss_sum = torch::zeros({}, torch::dtype(torch::kDouble).device(grid_.device()));
  for (size_t i = 0; i < micro.size(); ++i) {
    const bool last = i + 1 == micro.size();
    dp.StartMicroBatch(last);
    pm_->BeginMicroBatch();
    loss_sum += MicroBatchLoss(ToDevice(micro[i], grid_.device()),
                               1.0 / static_cast<double>(s.targets));
    pm_->EndMicroBatch();
    if (last || dp.zero() == 3) dp.FinishGradSync();
  }
  // Loss and gradient norm of the whole job: [loss, replicated sq, tp-sharded sq]
  // reduced over dp x cp, the sharded part over tp too. Under ZeRO-0 every replica
  // holds the whole (identical) gradient: count it once.
  auto sq = dp.ShardGradSquaredNorms();
  if (dp.zero() == 0) sq = sq / grid_.replicas();
  auto stats = torch::cat({loss_sum.reshape({1}), sq});
  grid_.dp_comm().AllReduce(stats)->Wait();
  if (grid_.tp() > 1) {
    auto sharded = stats.slice(0, 2, 3).clone();
    grid_.tp_comm().AllReduce(sharded)->Wait();
    stats[2] = sharded[0];
  }
  const std::vector<double> host = ReadToHost(stats);
  s.loss = host[0] / static_cast<double>(s.targets);
  s.grad_norm = std::sqrt(host[1] + host[2]);
  s.lr = LearningRate(cfg_.optim, s.step, total_steps);
  if (std::isfinite(s.loss) && std::isfinite(s.grad_norm)) {
    const double clip = cfg_.train.clip;
    const double scale = clip > 0 ? std::min(1.0, clip / (s.grad_norm + 1e-6)) : 1.0;
    parallel::TraceRange phase("ftune::optimizer");
    dp.Step({s.lr, cfg_.optim.beta1, cfg_.optim.beta2, cfg_.optim.eps, cfg_.optim.weight_decay,
             scale, s.step - bad_total_, cfg_.optim.fused});
    bad_steps_ = 0;
    last_finite_loss_ = s.loss;
  } else {
    dp.ZeroGrads();
    s.skipped = true;
    ++bad_total_;
    if (++bad_steps_ >= cfg_.train.max_bad_steps) {
      FT_THROW(Error, "step {}: {} consecutive steps with a non-finite loss or gradient norm "
               "(loss {}, grad norm {}); the last finite loss was {}. Lower optim.lr, enable "
               "train.clip, or check the data", s.step, bad_steps_, s.loss, s.grad_norm,
               last_finite_loss_);
    }
  }
  step_ = s.step;
  s.seconds = Since(t0);
  s.comm_wait = parallel::CommWaitSeconds() - comm0;
  return s;
}

Trainer::Outcome Trainer::Train(data::Loader& loader, int64_t total_steps, const Loop& loop) {
  ThroughputModel tm;
  tm.flops_per_token = pm_->FlopsPerToken(cfg_.data.max_seq_len);
  tm.dp = grid_.replicas();  // the devices sharing the tokens: dp x cp (x tp in the model)
  const std::string device_name = compat::DeviceName(grid_.device());
  const double peak_tflops = cfg_.run.peak_tflops > 0
                                 ? cfg_.run.peak_tflops
                                 : KnownPeakTflops(device_name, pm_->model().dtype());
  tm.peak_flops = peak_tflops * 1e12;
  if (world_.rank() == 0 && step_ < total_steps) {
    if (peak_tflops > 0) {
      LogInfo("MFU against {} TFLOP/s per device ({})", peak_tflops,
              cfg_.run.peak_tflops > 0 ? "run.peak_tflops" : device_name + "'s data-sheet peak");
    } else {
      LogInfo("MFU is not reported: no known peak for '{}' in {} (set run.peak_tflops)",
              device_name, c10::toString(pm_->model().dtype()));
    }
  }
  TensorBoardWriter* tb = world_.rank() == 0 && cfg_.log.tensorboard
                              ? &RunTensorBoard(RunPath(cfg_, "tensorboard"))
                              : nullptr;
  if (tb != nullptr && step_ < total_steps) {
    tb->AddText("config", "```yaml\n" + ConfigToYaml(cfg_) + "```", step_);
  }
  StepLogger logger(cfg_.log,
                    world_.rank() == 0 && cfg_.log.jsonl ? RunPath(cfg_, "metrics.jsonl") : "",
                    tm, tb);
  state_.total_steps = total_steps;
  while (step_ < total_steps) {
    const auto t0 = Clock::now();
    std::vector<data::Batch> micro;
    for (int64_t i = 0; i < cfg_.train.grad_accum; ++i) micro.push_back(loader.Next());
    const double wait = Since(t0);
    StepStats s = TrainStep(micro, total_steps);
    s.data_wait = wait;
    s.device_memory = compat::DeviceMemoryStats(grid_.device());
    auto rss = torch::tensor({PeakRssBytes()}, torch::kLong);  // max over ranks: one small reduce
    grid_.world().AllReduce(rss, parallel::ReduceOp::kMax)->Wait();
    s.host_rss_max = rss.item<int64_t>();
    if (world_.rank() == 0) logger.Log(s, total_steps);
    if (loop.on_step) loop.on_step(s);
    const bool best = MaybeEval(loop.eval, s, total_steps);
    if (loop.checkpoints != nullptr) {
      const int signal = MaybeCheckpoint(*loop.checkpoints, s, total_steps, loader, best);
      if (signal != 0) {
        loop.checkpoints->Wait();
        LogInfo("preempted (signal {}) after step {}: checkpoint {} saved; exiting with status {} "
                "(run the same command again to resume)", signal, s.step,
                CheckpointFileName(s.step), kPreemptedExitCode);
        return Outcome::kPreempted;
      }
    }
  }
  return Outcome::kDone;
}

bool Trainer::MaybeEval(TrainingEval* eval, const StepStats& s, int64_t total_steps) {
  if (eval == nullptr || !eval->Due(s.step, total_steps)) return false;
  // On the training layout: ZeRO-3 layers gathered one at a time, for the loss and for every
  // generated token alike.
  return eval->Run(*pm_, s.step);
}

int Trainer::MaybeCheckpoint(CheckpointManager& ckpt, const StepStats& s, int64_t total_steps,
                             data::Loader& loader, bool best) {
  state_.step = s.step;
  state_.tokens_seen += s.tokens;
  state_.skipped_steps += s.skipped ? 1 : 0;
  state_.lr = s.lr;
  state_.loader = loader.state();
  // A signal seen by any rank stops every rank after the same step.
  auto flag = torch::tensor({PreemptionSignal()}, torch::kInt);
  grid_.world().AllReduce(flag, parallel::ReduceOp::kMax)->Wait();
  const int signal = flag.item<int>();
  const bool every = cfg_.checkpoint.every > 0 && s.step % cfg_.checkpoint.every == 0;
  // The best eval step gets a checkpoint of its own (kept by the pruning, train.export: best).
  if (signal != 0 || every || best || s.step >= total_steps) ckpt.Save(state_);
  return signal;
}

void Trainer::ResumeOrStartOver(CheckpointManager& ckpt, data::Loader& loader) {
  state_ = TrainState();
  if (!cfg_.checkpoint.resume) {
    ckpt.MoveAside();
    return;
  }
  auto meta = ckpt.LoadLatest();
  if (!meta) {
    LogInfo("no checkpoint in {}: starting from step 0", ckpt.dir());
    return;
  }
  state_ = meta->state;
  set_step(state_.step, state_.skipped_steps);
  loader.Restore(state_.loader);
  LogInfo("resumed from {}: step {}, {} tokens seen, loader epoch {} cursor {} (written with dp {} "
          "tp {} zero {} on {} rank(s))", meta->path, state_.step, state_.tokens_seen,
          state_.loader.epoch, state_.loader.cursor, meta->dp, meta->tp, meta->zero,
          meta->world_size);
}

TrainingSetup SetUpTraining(World& world, const Config& cfg) {
  TrainingSetup t;
  t.grid = MakeGrid(world, cfg);
  // Everything that can be wrong with the inputs is checked before any compute.
  t.tok = std::make_unique<data::Tokenizer>(LoadRunTokenizer(cfg));
  t.data = OpenTrainData(cfg, *t.grid, *t.tok);
  // Sharded loading: each rank reads only the weights it keeps (runtime/model_setup.h).
  const int64_t rss_before = PeakRssBytes();
  t.trainer = std::make_unique<Trainer>(world, cfg, Parallelize(cfg, *t.tok, *t.grid));
  int64_t params = 0;  // from the recorded shapes: ZeRO-3 has released the parameters by now
  auto& dp = t.trainer->data_parallel();
  for (size_t p = 0; p < dp.params().size(); ++p) {
    int64_t n = 1;
    for (int64_t d : dp.ShapeOf(static_cast<int>(p))) n *= d;
    params += n;
  }
  LogInfo("training {} steps: {} samples per epoch, global batch {} ({} steps/epoch), dp {} cp {} "
          "tp {} zero {}, {} parameters on this rank, model state {:.1f} MB on rank 0",
          t.data.total_steps, t.data.loader->samples_per_epoch(), t.data.global_batch,
          t.data.steps_per_epoch, t.grid->dp(), t.grid->cp(), t.grid->tp(), cfg.parallel.zero,
          params,
          t.trainer->data_parallel().ModelStateBytes() / 1e6);
  LogInfo("model loaded: peak resident memory {:.1f} MB on this rank so far ({:.1f} MB before "
          "the model and its optimizer state)", PeakRssBytes() / 1e6, rss_before / 1e6);
  return t;
}

}  // namespace ftune::runtime
