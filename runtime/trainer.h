// Trainer: the full-parameter finetuning loop over one model replica's shard
// of the work, with gradient sync and ZeRO sharding through DataParallel.
//
// Loss normalisation is exact: the loss of a step is the mean over all target
// tokens (loss mask 1) of all micro-batches on all data-parallel ranks. Each
// micro-batch backpropagates sum(token losses) / N_global, and gradients are
// summed (not averaged) over dp, so k micro-batches of b equal one batch of k*b
// and dp ranks of b equal one rank of dp*b.
//
// All training state reachable from here: model parameters, DataParallel
// (master weights, moments), step counter, and the caller's loader state.
// Collective: every rank of the job constructs it and calls TrainStep in lock step.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "data/loader.h"
#include "models/llama.h"
#include "parallel/data_parallel.h"
#include "parallel/process_grid.h"
#include "runtime/config.h"
#include "runtime/layer_checkpoint.h"
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
};

class Trainer {
 public:
  // `source`: where the parameters' initial values come from when the model is unmaterialised
  // (BuildTrainModel); empty = the model's current values.
  Trainer(World& world, const Config& cfg, std::shared_ptr<models::LlamaModel> model,
          parallel::ProcessGrid& grid, parallel::ParamSource source = {});
  ~Trainer();

  // One optimizer step over this rank's micro-batches (train.grad_accum of them).
  StepStats TrainStep(const std::vector<data::Batch>& micro, int64_t total_steps);

  // Runs `total_steps` steps from step() + 1, fetching micro-batches with
  // `next`, logging to the console and metrics.jsonl. `on_step` runs after
  // each step (checkpoints, eval).
  void Train(const std::function<data::Batch()>& next, int64_t total_steps,
             const std::function<void(const StepStats&)>& on_step = {});

  int64_t step() const { return step_; }
  // Resuming: `s` steps done, `skipped` of them without an update (Adam's bias
  // correction counts applied updates only).
  void set_step(int64_t s, int64_t skipped = 0) {
    step_ = s;
    bad_total_ = skipped;
  }
  int64_t skipped_steps() const { return bad_total_; }
  parallel::DataParallel& data_parallel() { return *dp_; }
  models::LlamaModel& model() { return *model_; }
  // Makes every parameter whole on every rank (ZeRO-3 gathers all units);
  // call ReleaseAll afterwards. For generation during training and for tests.
  void GatherAll();
  void ReleaseAll();
  // A forward pass outside TrainStep (evaluation) under ZeRO-3 without the whole model: Begin
  // gathers the embedding and the head, the layers come and go through the layer hooks as in
  // training; ReleaseAll after. No-ops below ZeRO-3.
  void BeginForward() { GatherEnds(); }
  // Calls fn(name, tensor) for every parameter, in the same order on every rank (collective).
  // Under ZeRO-3 the units are gathered one at a time and released after their calls, so a
  // rank holds one unit whole at a time, unless fn keeps references. For export.
  void VisitParams(const std::function<void(const std::string&, const torch::Tensor&)>& fn);
  // FLOPs per trained token (PaLM: 6N + 12 L d T, N = parameters without the input embedding).
  double FlopsPerToken(int64_t seq_len) const;

 private:
  torch::Tensor MicroBatchLoss(const data::Batch& b, double inv_targets);
  LayerHooks HooksFor(int64_t layer);
  void GatherEnds();
  void ReleaseEnds();

  World& world_;
  const Config& cfg_;
  std::shared_ptr<models::LlamaModel> model_;
  parallel::ProcessGrid& grid_;
  std::unique_ptr<parallel::DataParallel> dp_;
  int64_t step_ = 0;
  int64_t bad_steps_ = 0;    // consecutive skipped steps
  int64_t bad_total_ = 0;    // all skipped steps (Adam counts applied updates only)
  double last_finite_loss_ = NAN;
  int embed_unit_ = -1, head_unit_ = -1;
  std::vector<int> layer_units_;  // DataParallel unit of each decoder layer
};

}  // namespace ftune::runtime
