// Trainer: the full-parameter finetuning loop over one model replica's shard of the work, and
// its policy (STYLE.md 8): for each step, the step, logging, maybe eval, the preemption
// agreement, maybe a checkpoint. The model arrives parallelized (ParallelModel: tensor
// parallelism, DataParallel/ZeRO, layer hooks); the launch layer only sets up and calls Train.
//
// Loss normalisation is exact: the loss of a step is the mean over all target tokens (loss mask
// 1) of all micro-batches on all data-parallel ranks. Each micro-batch backpropagates
// sum(token losses) / N_global, and gradients are summed (not averaged) over dp, so k
// micro-batches of b equal one batch of k*b and dp ranks of b equal one rank of dp*b.
//
// Device residency: batches are copied to grid.device() (from pinned memory, non-blocking);
// the loss and the gradient norm accumulate there and reach the host once per step (one
// ReadToHost: logging, the non-finite skip and clipping need them). Token counts travel on the
// control communicator, as host integers, without touching the device.
//
// All training state reachable from here: model parameters, DataParallel (master weights,
// moments), the step counter and TrainState (what a checkpoint holds besides the tensors).
// Collective: every rank of the job constructs it and calls TrainStep / Train in lock step.
#pragma once

#include "parallel/compat.h"

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "data/loader.h"
#include "models/llama.h"
#include "parallel/data_parallel.h"
#include "parallel/process_grid.h"
#include "runtime/checkpoint.h"
#include "runtime/config.h"
#include "runtime/evaluator.h"
#include "runtime/model_setup.h"
#include "runtime/parallelize.h"
#include "runtime/world.h"

namespace ftune::runtime {

struct StepStats {
  int64_t step = 0;
  double loss = 0;          // mean token loss over the global batch (NaN if non-finite)
  double grad_norm = 0;     // global norm before clipping
  double lr = 0;
  int64_t tokens = 0;       // input tokens of the global batch
  int64_t targets = 0;      // target tokens of the global batch
  double seconds = 0;       // wall time of the step
  double data_wait = 0;     // seconds spent waiting for batches (set by Train)
  double comm_wait = 0;     // seconds this rank was blocked waiting for collectives
  bool skipped = false;     // non-finite loss or gradient: no update was made
  int64_t host_rss_max = 0;  // peak resident memory, max over ranks (set by Train)
  compat::DeviceMemory device_memory;  // this rank's device memory after the step (CUDA only)
};

class Trainer {
 public:
  Trainer(World& world, const Config& cfg, std::unique_ptr<ParallelModel> model);
  // Parallelizes `model` itself (tests): `source` as ParallelModel's.
  Trainer(World& world, const Config& cfg, std::shared_ptr<models::LlamaModel> model,
          parallel::ProcessGrid& grid, parallel::ParamSource source = {});
  ~Trainer();

  // One optimizer step over this rank's micro-batches (train.grad_accum of them).
  StepStats TrainStep(const std::vector<data::Batch>& micro, int64_t total_steps);

  // What the loop does besides stepping; every part optional.
  struct Loop {
    TrainingEval* eval = nullptr;                   // eval.every (and at the last step)
    CheckpointManager* checkpoints = nullptr;       // checkpoint.every, preemption, the last step
    std::function<void(const StepStats&)> on_step;  // diagnostics (ftune bench train)
  };
  enum class Outcome { kDone, kPreempted };
  // Runs steps step() + 1 .. total_steps, micro-batches from `loader`, logging to the console
  // and metrics.jsonl. With checkpoints, a preemption signal (SIGTERM / SIGUSR1 on any rank,
  // agreed after each step) saves a checkpoint and returns kPreempted.
  Outcome Train(data::Loader& loader, int64_t total_steps, const Loop& loop);

  // checkpoint.resume: loads the newest usable checkpoint into the model, the optimizer, the
  // step counter and `loader`; else (or with resume off) moves earlier checkpoints aside so that
  // they cannot be mistaken for this run's. Collective.
  void ResumeOrStartOver(CheckpointManager& ckpt, data::Loader& loader);

  int64_t step() const { return step_; }
  // Resuming: `s` steps done, `skipped` of them without an update (Adam's bias correction
  // counts applied updates only).
  void set_step(int64_t s, int64_t skipped = 0) {
    step_ = s;
    bad_total_ = skipped;
  }
  int64_t skipped_steps() const { return bad_total_; }
  ParallelModel& parallel() { return *pm_; }
  parallel::DataParallel& data_parallel() { return pm_->data_parallel(); }
  models::LlamaModel& model() { return pm_->model(); }
  const TrainState& state() const { return state_; }

  // Device-to-host reads made by TrainStep in this process (the designed one per step); tests
  // compare it with the steps taken.
  static int64_t HostReads();

 private:
  torch::Tensor MicroBatchLoss(const data::Batch& b, double inv_targets);
  // Returns whether the eval found the best step so far.
  bool MaybeEval(TrainingEval* eval, const StepStats& s, int64_t total_steps);
  // Saves when due or preempted; the agreed preemption signal (0: none).
  int MaybeCheckpoint(CheckpointManager& ckpt, const StepStats& s, int64_t total_steps,
                      data::Loader& loader, bool best);

  World& world_;
  const Config& cfg_;
  std::unique_ptr<ParallelModel> pm_;
  parallel::ProcessGrid& grid_;
  int64_t step_ = 0;
  int64_t bad_steps_ = 0;    // consecutive skipped steps
  int64_t bad_total_ = 0;    // all skipped steps (Adam counts applied updates only)
  double last_finite_loss_ = NAN;
  TrainState state_;
};

// Everything `ftune train` and `ftune bench train` build before the first step, in this order:
// the placement (MakeGrid), the tokenizer, the training split (checked against the tokenizer
// before any compute) and the parallelized model (Parallelize) inside a Trainer.
struct TrainingSetup {
  std::unique_ptr<parallel::ProcessGrid> grid;
  std::unique_ptr<data::Tokenizer> tok;
  TrainData data;
  std::unique_ptr<Trainer> trainer;
};
TrainingSetup SetUpTraining(World& world, const Config& cfg);

}  // namespace ftune::runtime
