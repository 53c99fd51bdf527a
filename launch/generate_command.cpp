// `ftune generate`: answer prompts with a model, printing only the new text.
//   ftune generate --model DIR|CKPT --prompt "What is ...?" [--prompt ...] [--template qa|none]
//                  [--max-new-tokens N] [--temperature T --top-k K --top-p P --seed S] [--jsonl]
// Prints each answer on a line of its own, or with --jsonl one JSON object per prompt,
// {"prompt": ..., "answer": ...}, so that answers holding newlines stay one record each.
// --model is an HF model directory (config.json + safetensors), or an ftune checkpoint: a
// step_N.h5 file, a checkpoint directory or a run directory (its newest usable checkpoint,
// falling back past damaged ones as `ftune train` does). A checkpoint's fp32 master weights are
// used with the model config and tokenizer its run recorded in /state (runtime/checkpoint.h), so
// it answers exactly as its `ftune export` does.
// Rank 0 does the work (generation is not distributed); other ranks return at once.
#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "data/tokenizer.h"
#include "launch/commands.h"
#include "models/generate.h"
#include "models/hf_io.h"
#include "parallel/error.h"
#include "parallel/files.h"
#include "runtime/checkpoint.h"
#include "runtime/log.h"
#include "runtime/model_setup.h"

namespace ftune::launch {
namespace {

struct GenerateArgs {
  std::string model;
  std::string tokenizer;  // empty = the model directory
  std::vector<std::string> prompts;
  std::string template_name = "qa";
  std::string dtype = "fp32";
  int64_t max_new_tokens = 64;
  double temperature = 0.0;
  int64_t top_k = 0;
  double top_p = 1.0;
  uint64_t seed = 1234;
  int64_t batch_size = 8;
  bool jsonl = false;
};

std::string ApplyTemplate(const std::string& name, const std::string& prompt) {
  if (name == "qa") return "### Question:\n" + prompt + "\n\n### Answer:";
  return prompt;
}

std::string Trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}

// The model of --model (an HF directory or a checkpoint) and the tokenizer that goes with it
// (--tokenizer when given).
std::pair<models::LoadedModel, data::Tokenizer> LoadModelAndTokenizer(const GenerateArgs& a) {
  const auto dtype = models::ParseDtype(a.dtype);
  if (files::IsDirectory(a.model) && files::Exists(files::Join(a.model, "config.json"))) {
    auto tok = data::Tokenizer::FromPath(a.tokenizer.empty() ? a.model : a.tokenizer);
    auto loaded = models::LoadHf(a.model, dtype);
    runtime::LogNotesOnce(tok.notes(), /*info=*/false);  // stdout is the answers
    runtime::LogNotesOnce(loaded.config.notes, /*info=*/false);
    return {std::move(loaded), std::move(tok)};
  }
  if (!files::Exists(a.model)) FT_THROW(IoError, "--model {}: no such file or directory", a.model);
  if (files::IsDirectory(a.model) &&
      runtime::CheckpointCandidates(a.model).empty() &&
      runtime::CheckpointCandidates(files::Join(a.model, "checkpoints")).empty()) {
    FT_THROW(ModelError, "--model {}: neither an HF model directory (no config.json) nor an ftune "
             "checkpoint or run directory (no step_N.h5 in it or in its checkpoints/): pass an HF "
             "directory (e.g. <run>/final) or a checkpoint", a.model);
  }
  const auto ck = runtime::ReadNewestCheckpointModel(a.model, "--model");
  const auto cfg = models::LlamaConfig::FromJson(nlohmann::json::parse(ck.meta.model_config_json),
                                                 ck.meta.path + " /state model_config");
  std::string tok_path = a.tokenizer;
  if (tok_path.empty()) {
    tok_path = ck.meta.tokenizer_dir;
    if (tok_path.empty() || !files::Exists(files::Join(tok_path, "tokenizer.json"))) {
      FT_THROW(IoError, "checkpoint {}: its run's tokenizer directory '{}' has no tokenizer.json "
               "(moved or deleted?): pass --tokenizer DIR", ck.meta.path, tok_path);
    }
  }
  auto loaded = models::ModelFromTensors(cfg, ck.tensors, dtype, "checkpoint " + ck.meta.path);
  fmt::print(stderr, "ftune generate: checkpoint {} (step {})\n", ck.meta.path, ck.meta.state.step);
  auto tok = data::Tokenizer::FromPath(tok_path);
  runtime::LogNotesOnce(tok.notes(), /*info=*/false);
  return {std::move(loaded), std::move(tok)};
}

void RunGenerate(const GenerateArgs& a, runtime::World& world) {
  if (world.rank() != 0) return;
  auto [loaded, tok] = LoadModelAndTokenizer(a);
  auto& model = *loaded.model;
  model.to(world.device());
  model.eval();
  if (tok.vocab_size() > loaded.config.vocab_size) {
    FT_THROW(ModelError, "tokenizer {} has {} ids but the model's vocab_size is {}", tok.path(),
             tok.vocab_size(), loaded.config.vocab_size);
  }

  models::GenerateOptions opt = runtime::TokenGenerateOptions(tok, loaded.config);
  opt.max_new_tokens = a.max_new_tokens;
  opt.temperature = a.temperature;
  opt.top_k = a.top_k;
  opt.top_p = a.top_p;
  opt.seed = a.seed;

  for (size_t first = 0; first < a.prompts.size(); first += a.batch_size) {
    const size_t last = std::min(a.prompts.size(), first + static_cast<size_t>(a.batch_size));
    std::vector<std::vector<int32_t>> ids;
    for (size_t i = first; i < last; ++i) {
      ids.push_back(tok.Encode(ApplyTemplate(a.template_name, a.prompts[i]),
                               /*add_special_tokens=*/true));
    }
    auto out = models::Generate(model, ids, opt);
    for (size_t i = 0; i < out.size(); ++i) {
      const std::string answer = Trim(tok.Decode(out[i], /*skip_special_tokens=*/true));
      if (a.jsonl) {
        const nlohmann::json line = {{"prompt", a.prompts[first + i]}, {"answer", answer}};
        // Invalid UTF-8 (a byte-level model can stop inside a character) is replaced, not thrown.
        fmt::print("{}\n", line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
      } else {
        fmt::print("{}\n", answer);
      }
    }
    std::fflush(stdout);
  }
}

}  // namespace

void AddGenerateCommand(CLI::App& app, runtime::World& world) {
  auto args = std::make_shared<GenerateArgs>();
  auto* sub = app.add_subcommand(
      "generate", "answer prompts with an HF model directory or an ftune checkpoint; prints only "
      "the new text per prompt");
  sub->add_option("--model", args->model,
                  "HF model directory (config.json + safetensors), or an ftune checkpoint: a "
                  "step_N.h5 file, or a checkpoint or run directory (its newest usable checkpoint)")
      ->required();
  sub->add_option("--tokenizer", args->tokenizer,
                  "tokenizer.json or its directory (default: --model's, or the one the "
                  "checkpoint's run used)");
  sub->add_option("--prompt", args->prompts, "a prompt (repeat for several)")->required();
  sub->add_option("--template", args->template_name,
                  "qa: \"### Question:\\n{prompt}\\n\\n### Answer:\"; none: the prompt as is")
      ->check(CLI::IsMember({"qa", "none"}))
      ->capture_default_str();
  sub->add_option("--max-new-tokens", args->max_new_tokens, "new tokens per prompt at most")
      ->check(CLI::Range(int64_t(0), int64_t(1) << 20))
      ->capture_default_str();
  sub->add_option("--temperature", args->temperature, "0 = greedy; > 0 samples")
      ->check(CLI::Range(0.0, 100.0))
      ->capture_default_str();
  sub->add_option("--top-k", args->top_k, "sample among the k most likely tokens (0 = off)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  sub->add_option("--top-p", args->top_p, "nucleus sampling threshold (1 = off)")
      ->check(CLI::Range(1e-9, 1.0))
      ->capture_default_str();
  sub->add_option("--seed", args->seed, "sampling seed")->capture_default_str();
  sub->add_option("--dtype", args->dtype, "compute dtype")
      ->check(CLI::IsMember({"fp32", "bf16"}))
      ->capture_default_str();
  sub->add_option("--batch-size", args->batch_size, "prompts generated together")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  sub->add_flag("--jsonl", args->jsonl,
                "one JSON object per prompt, {\"prompt\": ..., \"answer\": ...}, instead of one "
                "answer per line (answers may hold newlines)");
  sub->callback([args, &world]() { RunGenerate(*args, world); });
}

}  // namespace ftune::launch
