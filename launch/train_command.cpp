// `ftune train`: full-parameter finetuning under mpirun / srun.
#include "data/loader.h"
#include "launch/commands.h"
#include "runtime/evaluator.h"
#include "runtime/checkpoint.h"
#include "runtime/log.h"
#include "runtime/metrics.h"
#include "runtime/model_setup.h"
#include "runtime/signals.h"
#include "runtime/trainer.h"

namespace ftune::launch {
namespace {

// checkpoint.resume: loads the newest usable checkpoint into the trainer and the loader; else
// moves earlier checkpoints aside so that they cannot be mistaken for this run's.
runtime::TrainState ResumeOrStartOver(const runtime::Config& cfg, runtime::CheckpointManager& ckpt,
                                      runtime::Trainer& trainer, data::Loader& loader) {
  using namespace runtime;
  TrainState state;
  if (!cfg.checkpoint.resume) {
    ckpt.MoveAside();
    return state;
  }
  auto meta = ckpt.LoadLatest();
  if (!meta) {
    LogInfo("no checkpoint in {}: starting from step 0", ckpt.dir());
    return state;
  }
  state = meta->state;
  trainer.set_step(state.step, state.skipped_steps);
  loader.Restore(state.loader);
  LogInfo("resumed from {}: step {}, {} tokens seen, loader epoch {} cursor {} (written with dp {} "
          "tp {} zero {} on {} rank(s))", meta->path, state.step, state.tokens_seen,
          state.loader.epoch, state.loader.cursor, meta->dp, meta->tp, meta->zero,
          meta->world_size);
  return state;
}

// Blocking time per save (what checkpoint.async buys) and write throughput, on rank 0.
void LogSaveSummary(const runtime::CheckpointManager& ckpt) {
  const auto& saves = ckpt.saves();
  if (saves.empty()) return;
  double block = 0, block_max = 0, write = 0;
  for (const auto& s : saves) {
    block += s.blocking_s, write += s.write_s;
    block_max = std::max(block_max, s.blocking_s);
  }
  runtime::LogInfo("checkpoints: {} saved ({}), training held {:.3f} s per save on average "
                   "(max {:.3f} s), write {:.3f} s per save", saves.size(),
                   saves.front().async ? "async" : "sync", block / saves.size(), block_max,
                   write / saves.size());
}

}  // namespace

void AddTrainCommand(CLI::App& app, runtime::World& world) {
  auto* sub = app.add_subcommand("train", "full-parameter finetuning (mpirun -np N ftune train)");
  static runtime::CommonArgs args;
  AddCommonOptions(sub, args);
  static bool no_resume = false;
  sub->add_flag("--no-resume", no_resume,
                "start over even when the checkpoint directory holds a checkpoint "
                "(= --set checkpoint.resume=false)");
  sub->callback([&world]() {
    using namespace runtime;
    if (no_resume) args.overrides.push_back("checkpoint.resume=false");
    Config cfg = SetUpRun(world, args, {world.world_size(), /*need_train=*/true}, "train");
    parallel::ProcessGrid grid(world.comm(), cfg.parallel.dp, cfg.parallel.tp);
    grid.world().set_timeout(cfg.parallel.timeout_s);
    grid.dp_comm().set_timeout(cfg.parallel.timeout_s);
    grid.tp_comm().set_timeout(cfg.parallel.timeout_s);

    // Everything that can be wrong with the inputs is checked before any compute.
    data::Tokenizer tok = LoadRunTokenizer(cfg);
    TrainData train_data = OpenTrainData(cfg, grid, tok);
    data::Loader& loader = *train_data.loader;
    const int64_t global_batch = train_data.global_batch;
    const int64_t steps_per_epoch = train_data.steps_per_epoch;
    const int64_t total_steps = train_data.total_steps;

    // Sharded loading: each rank reads only the weights it keeps (runtime/model_setup.h).
    const int64_t rss_before = PeakRssBytes();
    TrainModel built = BuildTrainModel(cfg, tok, grid);
    auto model = built.model;
    int64_t params = 0;
    for (const auto& p : model->parameters()) params += p.numel();
    Trainer trainer(world, cfg, model, grid, std::move(built.source));
    LogInfo("training {} steps: {} samples per epoch, global batch {} ({} steps/epoch), dp {} "
            "tp {} zero {}, {} parameters on this rank, model state {:.1f} MB on rank 0",
            total_steps, loader.samples_per_epoch(), global_batch, steps_per_epoch, grid.dp(),
            grid.tp(), cfg.parallel.zero, params,
            trainer.data_parallel().ModelStateBytes() / 1e6);
    LogInfo("model loaded: peak resident memory {:.1f} MB on this rank so far ({:.1f} MB before "
            "the model and its optimizer state)", PeakRssBytes() / 1e6, rss_before / 1e6);
    // Eval during training (eval.every; runtime/evaluator.h): test loss into metrics.jsonl,
    // best step into best.json.
    TrainingEval training_eval(cfg, tok, grid);
    auto on_step = [&](const StepStats& s) {
      if (training_eval.Due(s.step, total_steps)) {
        // ZeRO-3: the loss pass gathers one layer at a time, as training does; generation
        // (eval.generate) runs the model once per new token, so it gets the whole model.
        if (cfg.eval.generate) {
          trainer.GatherAll();
        } else {
          trainer.BeginForward();
        }
        training_eval.Run(*model, s.step);
        trainer.ReleaseAll();
      }
    };
    // Checkpoints: resume from the newest usable one; save every checkpoint.every steps, on
    // preemption (SIGTERM / SIGUSR1, agreed over all ranks after each step) and at the end.
    CheckpointManager ckpt(cfg, grid, trainer.data_parallel(), model->config(),
                           RunPath(cfg, cfg.checkpoint.dir));
    TrainState state = ResumeOrStartOver(cfg, ckpt, trainer, loader);
    state.total_steps = total_steps;
    InstallPreemptionHandlers();
    auto checkpoint_on_step = [&](const StepStats& s) {
      state.step = s.step;
      state.tokens_seen += s.tokens;
      state.skipped_steps += s.skipped ? 1 : 0;
      state.lr = s.lr;
      state.loader = loader.state();
      auto flag = torch::tensor({PreemptionSignal()}, torch::kInt);
      grid.world().AllReduce(flag, parallel::ReduceOp::kMax)->Wait();
      const int signal = flag.item<int>();
      const bool every = cfg.checkpoint.every > 0 && s.step % cfg.checkpoint.every == 0;
      if (signal != 0 || every || s.step >= total_steps) ckpt.Save(state);
      if (signal != 0) {
        ckpt.Wait();
        LogInfo("preempted (signal {}) after step {}: checkpoint {} saved; exiting with status {} "
                "(run the same command again to resume)", signal, s.step,
                CheckpointFileName(s.step), kPreemptedExitCode);
        throw CLI::RuntimeError(kPreemptedExitCode);
      }
    };
    trainer.Train([&loader]() { return loader.Next(); }, total_steps, [&](const StepStats& s) {
      on_step(s);
      checkpoint_on_step(s);
    });
    ckpt.Wait();
    LogSaveSummary(ckpt);

    ExportRunModel(*model, grid, [&](const NamedTensorFn& fn) { trainer.VisitParams(fn); },
                   TokenizerDir(cfg), RunPath(cfg, "final"));
  });
}

}  // namespace ftune::launch
