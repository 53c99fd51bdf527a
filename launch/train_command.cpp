// `ftune train`: full-parameter finetuning under mpirun / srun.
#include "data/loader.h"
#include "launch/commands.h"
#include "runtime/evaluator.h"
#include "runtime/checkpoint.h"
#include "runtime/log.h"
#include "runtime/metrics.h"
#include "runtime/model_setup.h"
#include "runtime/run_setup.h"
#include "runtime/signals.h"
#include "runtime/trainer.h"

namespace ftune::launch {
namespace {

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
    TrainingSetup run = SetUpTraining(world, cfg);
    Trainer& trainer = *run.trainer;
    // Eval during training (eval.every; runtime/evaluator.h): test loss into metrics.jsonl,
    // best step into best.json.
    TrainingEval eval(cfg, *run.tok, *run.grid);
    // Checkpoints: resume from the newest usable one; save every checkpoint.every steps, on
    // preemption (SIGTERM / SIGUSR1) and at the end.
    CheckpointManager ckpt(cfg, *run.grid, trainer.data_parallel(), trainer.model().config(),
                           RunPath(cfg, cfg.checkpoint.dir));
    trainer.ResumeOrStartOver(ckpt, *run.data.loader);
    InstallPreemptionHandlers();
    const auto outcome = trainer.Train(*run.data.loader, run.data.total_steps, {&eval, &ckpt, {}});
    ckpt.Wait();
    LogSaveSummary(ckpt);
    if (outcome == Trainer::Outcome::kPreempted) throw CLI::RuntimeError(kPreemptedExitCode);
    ExportRunModel(trainer.model(), *run.grid,
                   [&](const NamedTensorFn& fn) { trainer.parallel().VisitParams(fn); },
                   TokenizerDir(cfg), ChatTemplateFile(cfg), RunPath(cfg, "final"));
  });
}

}  // namespace ftune::launch
