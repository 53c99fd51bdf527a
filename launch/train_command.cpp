// `ftune train`: full-parameter finetuning under mpirun / srun.
#include <fstream>
#include <nlohmann/json.hpp>

#include "data/loader.h"
#include "launch/commands.h"
#include "parallel/files.h"
#include "runtime/checkpoint.h"
#include "runtime/evaluator.h"
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

// The step <run>/best.json names (rank 0 reads it; -1 when there is none), on every rank.
int64_t BestStep(runtime::World& world, const runtime::Config& cfg) {
  auto step = torch::tensor({int64_t(-1)}, torch::kLong);
  if (world.rank() == 0) {
    const std::string path = runtime::RunPath(cfg, "best.json");
    if (files::Exists(path)) {
      std::ifstream in(path);
      const auto j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
      if (j.is_object() && j.contains("step") && j["step"].is_number_integer()) {
        step[0] = j["step"].get<int64_t>();
      }
    }
  }
  world.comm().Broadcast(step, 0)->Wait();
  return step[0].item<int64_t>();
}

// Records in best.json whether <run>/final holds the best step's weights ("final": true) or the
// last step's (false).
void MarkFinal(runtime::World& world, const runtime::Config& cfg, bool best_is_final) {
  const std::string path = runtime::RunPath(cfg, "best.json");
  if (world.rank() != 0 || !files::Exists(path)) return;
  std::ifstream in(path);
  auto j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return;
  j["final"] = best_is_final;
  {
    std::ofstream out(path + ".tmp", std::ios::trunc);
    out << j.dump(2) << '\n';
  }
  files::Rename(path + ".tmp", path);
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
    // <run>/final: the last weights, or (train.export: best) the best eval step's checkpoint,
    // which the pruning kept; best.json says which.
    const int64_t best = cfg.train.export_which == "best" ? BestStep(world, cfg) : -1;
    if (best > 0) {
      const std::string path = files::Join(ckpt.dir(), CheckpointFileName(best));
      ExportCheckpointTo(world, path, RunPath(cfg, "final"));
    } else {
      if (cfg.train.export_which == "best") {
        LogWarn("train.export is best but no eval found a best step (best.json): exporting the "
                "last step's weights");
      }
      ExportRunModel(trainer.model(), *run.grid,
                     [&](const NamedTensorFn& fn) { trainer.parallel().VisitParams(fn); },
                     TokenizerDir(cfg), ChatTemplateFile(cfg), RunPath(cfg, "final"));
    }
    MarkFinal(world, cfg, best > 0);
  });
}

}  // namespace ftune::launch
