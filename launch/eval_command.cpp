// `ftune eval`: loss, perplexity, exact match and token F1 on the test split, optionally base
// vs finetuned side by side.
//   mpirun -np N ftune eval --config C [--model DIR|CKPT] [--compare DIR|CKPT] [--set k=v ...]
// --model defaults to <run.output_dir>/final (what `ftune train` exports). Evaluation runs in the
// config's layout over all ranks: parallel.tp and parallel.zero as given, dp the rest of the
// world (parallel.dp is ignored, so a training config evaluates on any number of ranks that tp
// divides). With tp 1 and zero < 3 every rank holds whole models (LoadModelForEval); with tp > 1
// or zero 3 each rank loads and holds only its shard (LoadShardedModel), ZeRO-3 layers gathered
// one at a time. Everything that can be wrong with the inputs (dataset, tokenizers,
// vocabularies, model paths) is checked before any compute. Rank 0 writes eval.json,
// eval_examples.jsonl, report.md and loss_curve.svg into the run directory (runtime/report.h).
#include <fmt/format.h>

#include <chrono>
#include <memory>
#include <string>

#include "launch/commands.h"
#include "models/llama_config.h"
#include "parallel/error.h"
#include "runtime/evaluator.h"
#include "runtime/parallelize.h"
#include "runtime/log.h"
#include "runtime/model_setup.h"
#include "runtime/report.h"

namespace ftune::launch {
namespace {

struct EvalArgs {
  runtime::CommonArgs common;
  std::string model;    // default <run>/final
  std::string compare;  // base model, optional
};

// A model to evaluate: whole on this rank, or this rank's shard of it.
struct EvalModel {
  std::shared_ptr<models::LlamaModel> whole;  // runtime::WholeModelLayout
  runtime::ShardedModel sharded;              // otherwise
  models::LlamaModel& model() { return whole ? *whole : sharded.pm->model(); }
};

EvalModel LoadEvalModel(const std::string& path, const runtime::Config& cfg,
                        parallel::ProcessGrid& grid, const std::string& tokenizer_sha256,
                        const std::string& what) {
  using namespace runtime;
  EvalModel m;
  if (WholeModelLayout(cfg)) {
    m.whole = LoadModelForEval(path, models::ParseDtype(cfg.model.dtype), tokenizer_sha256);
  } else {
    m.sharded = LoadShardedModel(path, cfg, grid, tokenizer_sha256, what);
    LogNotesOnce(m.sharded.notes);
    if (!m.sharded.checkpoint.empty()) {
      LogInfo("loaded checkpoint {} (step {}) for evaluation", m.sharded.checkpoint,
              m.sharded.checkpoint_step);
    }
  }
  return m;
}

void RunEval(EvalArgs a, runtime::World& world) {
  using namespace runtime;
  // The config's tp and ZeRO stage; dp is what the world leaves.
  a.common.overrides.push_back("parallel.dp=-1");
  Config cfg = SetUpRun(world, a.common, {world.world_size(), /*need_train=*/false}, "eval");
  const auto grid_ptr = MakeGrid(world, cfg);
  parallel::ProcessGrid& grid = *grid_ptr;

  // Inputs first, compute later.
  const data::Tokenizer tok = LoadRunTokenizer(cfg);
  const std::string data_dir = RunPath(cfg, cfg.data.dir);
  Evaluator evaluator(cfg, data_dir, tok, grid);
  const std::string model_path = a.model.empty() ? RunPath(cfg, "final") : a.model;
  const std::string sha = evaluator.manifest().meta.tokenizer_sha256;
  EvalModel model = LoadEvalModel(model_path, cfg, grid, sha, "--model " + model_path);
  CheckModelTokenizer(model.model(), tok, "--model " + model_path);
  std::unique_ptr<EvalModel> base;
  if (!a.compare.empty()) {
    base = std::make_unique<EvalModel>(
        LoadEvalModel(a.compare, cfg, grid, sha, "--compare " + a.compare));
    CheckModelTokenizer(base->model(), tok, "--compare " + a.compare);
    if (base->model().config().vocab_size != model.model().config().vocab_size) {
      FT_THROW(DataError, "--compare {} has vocab_size {} but --model {} has {}: base and "
               "finetuned models must share one vocabulary (the same tokenizer) to be compared "
               "on the same prompts", a.compare, base->model().config().vocab_size, model_path,
               model.model().config().vocab_size);
    }
    if (base->whole) {
      base->whole->to(grid.device());
      base->whole->eval();
    }
  }
  if (model.whole) {
    model.whole->to(grid.device());
    model.whole->eval();
  }
  LogInfo("evaluating {} on {} test examples ({} tokens) of {}{}; {} rank(s): dp {} x cp {} x tp "
          "{}, {}", model_path, evaluator.num_test_examples(), evaluator.num_test_tokens(),
          data_dir, base ? " against --compare " + a.compare : "", world.world_size(), grid.dp(),
          grid.cp(), grid.tp(),
          model.whole ? "whole models on every rank"
                      : fmt::format("each rank its shard (ZeRO {})", cfg.parallel.zero));

  auto evaluate = [&](EvalModel& m, const std::string& label, const std::string& path) {
    ModelEval e;
    e.label = label;
    e.path = path;
    const auto t0 = std::chrono::steady_clock::now();
    e.loss = m.whole ? evaluator.Loss(*m.whole) : evaluator.Loss(*m.sharded.pm);
    e.loss_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    LogInfo("{}: eval loss {:.4f} | perplexity {:.3f} over {} answer tokens ({:.1f} s)", label,
            e.loss.MeanNll(), e.loss.Perplexity(), e.loss.targets, e.loss_seconds);
    if (cfg.eval.max_samples != 0) {
      e.generation = m.whole ? evaluator.Generate(*m.whole, cfg.eval.max_samples)
                             : evaluator.Generate(*m.sharded.pm, cfg.eval.max_samples);
      const auto& g = e.generation->totals;
      LogInfo("{}: exact match {:.1f}% ({}/{}) | token F1 {:.3f} ({:.1f} s)", label,
              100 * g.ExactMatchRate(), g.exact, g.examples, g.MeanF1(), e.generation->seconds);
    }
    return e;
  };

  EvalReport report;
  report.run_name = cfg.run.name;
  report.data_dir = data_dir;
  report.normalize = cfg.eval.normalize;
  report.test_examples = evaluator.num_test_examples();
  report.world_size = world.world_size();
  if (base) report.base = evaluate(*base, "base", a.compare);
  report.model = evaluate(model, base ? "finetuned" : "model", model_path);

  if (world.rank() == 0) {
    const std::string md = WriteEvalReport(report, cfg.run.output_dir);
    auto headline = [](const ModelEval& e) {
      std::string s = fmt::format("perplexity {:.3f}", e.loss.Perplexity());
      if (e.generation) {
        s += fmt::format(", exact match {:.1f}% ({}/{})", 100 * e.generation->totals.ExactMatchRate(),
                         e.generation->totals.exact, e.generation->totals.examples);
      }
      return s;
    };
    if (report.base) fmt::print("base:      {}\n", headline(*report.base));
    fmt::print("{}{}\n", base ? "finetuned: " : "model: ", headline(report.model));
    fmt::print("report: {}\n", md);
    std::fflush(stdout);
  }
  world.comm().Barrier()->Wait();
}

}  // namespace

void AddEvalCommand(CLI::App& app, runtime::World& world) {
  auto args = std::make_shared<EvalArgs>();
  auto* sub = app.add_subcommand(
      "eval", "loss, perplexity, exact match and F1 on the test split; base vs finetuned");
  AddCommonOptions(sub, args->common);
  sub->add_option("--model", args->model,
                  "model to evaluate: HF directory or checkpoint (step_N.h5, checkpoint or run "
                  "directory; default: <run.output_dir>/final)");
  sub->add_option("--compare", args->compare,
                  "base model answering the same prompts (HF directory or checkpoint), shown "
                  "side by side");
  sub->callback([args, &world]() { RunEval(*args, world); });
}

}  // namespace ftune::launch
