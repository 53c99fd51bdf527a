// `ftune generate`: answer prompts with a model, printing only the new text.
//   ftune generate --model DIR|CKPT --prompt "What is ...?" [--prompt ...] [--template qa|none]
//                  [--max-new-tokens N] [--temperature T --top-k K --top-p P --seed S] [--jsonl]
//   ftune generate --model DIR|CKPT --chat FILE.jsonl|- [--chat-template FILE.jinja|NAME]
//                  [--chat-template-kwarg name=value ...] [...] [--jsonl]
//   mpirun -np N ftune generate ... [--tp T] [--zero 3]
// Prints each answer on a line of its own, or with --jsonl one JSON object per prompt,
// {"prompt": ..., "answer": ...}, so that answers holding newlines stay one record each.
// --chat answers conversations instead: each line of FILE ("-" = standard input) is
// {"messages": [...], "tools"?: [...], "documents"?: [...]}, rendered with the model's chat
// template as transformers' apply_chat_template(..., add_generation_prompt=True) renders it
// (data/chat_template.h: the tokenizer's own template unless --chat-template names a .jinja file
// or one of its named templates) and tokenized without added special tokens (the template
// writes BOS itself); the answer ends at any EOS id (tokenizer_config.json's eos_token,
// generation_config.json's and config.json's eos_token_id: <|eot_id|>, <|im_end|>, ...). With
// --jsonl each output line is the input record with the answer appended to its messages as
// {"role": "assistant", "content": ...}. A line that is not such an object is an error naming
// FILE:line, before any generation.
// --model is an HF model directory (config.json + safetensors), or an ftune checkpoint: a
// step_N.h5 file, a checkpoint directory or a run directory (its newest usable checkpoint,
// falling back past damaged ones as `ftune train` does). A checkpoint's fp32 master weights are
// used with the model config and tokenizer its run recorded in /state (runtime/checkpoint.h), so
// it answers exactly as its `ftune export` does (with --chat: in the chat template the export
// carries, the run's data.chat_template when that is a .jinja file).
// Under mpirun -np N the prompts are shared out by batches over dp = N / --tp ranks (each a
// model replica); --tp T splits every layer and the KV cache by heads over T ranks, --zero 3
// keeps 1/dp of the model (of its tp shard) per rank and gathers one layer at a time for every
// forward (the dp ranks generate in lock step). No rank holds the whole model then: each loads
// only its part of the HF directory or checkpoint (runtime::LoadShardedModel). Answers are the
// same in every layout: greedy ones up to floating-point reduction order, sampled ones because
// every batch samples from a generator seeded with --seed on whatever ranks run it (a tp group
// samples from all-gathered logits). Rank 0 prints.

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "data/chat_template.h"
#include "data/tokenizer.h"
#include "launch/commands.h"
#include "models/generate.h"
#include "models/hf_io.h"
#include "parallel/error.h"
#include "parallel/files.h"
#include "parallel/gather_strings.h"
#include "runtime/checkpoint.h"
#include "runtime/evaluator.h"
#include "runtime/grid_generate.h"
#include "runtime/log.h"
#include "runtime/model_setup.h"

namespace ftune::launch {
namespace {

using Json = data::jinja::Json;

struct GenerateArgs {
  std::string model;
  std::string tokenizer;  // empty = the model directory
  std::vector<std::string> prompts;
  std::string chat;                      // --chat: JSONL of conversations ("-" = stdin)
  std::string chat_template;             // "" = the tokenizer's own
  std::vector<std::string> chat_kwargs;  // extra template variables, "name=value"
  std::string template_name = "qa";
  std::string dtype = "fp32";
  int64_t max_new_tokens = 64;
  double temperature = 0.0;
  int64_t top_k = 0;
  double top_p = 1.0;
  uint64_t seed = 1234;
  int64_t batch_size = 8;
  int64_t tp = 1;    // parallel.tp
  int64_t zero = 0;  // parallel.zero
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

// One conversation of --chat and the line it came from.
struct Conversation {
  int64_t line = 0;
  Json record;  // {"messages": [...], "tools"?: [...], "documents"?: [...]}
};

std::vector<Conversation> ReadConversations(const std::string& path) {
  std::ifstream file;
  if (path != "-") {
    file.open(path, std::ios::binary);
    if (!file) FT_THROW(IoError, "--chat {}: cannot open", path);
  }
  std::istream& in = path == "-" ? std::cin : file;
  std::vector<Conversation> out;
  std::string text;
  int64_t line = 0;
  while (std::getline(in, text)) {
    ++line;
    if (text.find_first_not_of(" \t\r") == std::string::npos) continue;
    Json j = Json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object() || !j.contains("messages") ||
        !j["messages"].is_array()) {
      FT_THROW(DataError, "{}:{}: expected a JSON object with a \"messages\" array, e.g. "
               "{{\"messages\": [{{\"role\": \"user\", \"content\": \"Hi\"}}]}}", path, line);
    }
    out.push_back({line, std::move(j)});
  }
  if (out.empty()) FT_THROW(DataError, "--chat {}: no conversations in it", path);
  return out;
}

// What --model loads: the model (whole on this rank, or this rank's shard of it), the tokenizer
// that goes with it (--tokenizer when given), and for a checkpoint the .jinja file its run
// rendered chat data with (runtime::ChatTemplateFile; `ftune export` writes it as
// chat_template.jinja, so --chat answers as the export does).
struct ModelAndTokenizer {
  std::shared_ptr<models::LlamaModel> whole;  // runtime::WholeModelLayout
  runtime::ShardedModel sharded;              // otherwise
  data::Tokenizer tok;
  std::string trained_chat_template;  // "" = the tokenizer's own
  models::LlamaModel& model() { return whole ? *whole : sharded.pm->model(); }
};

ModelAndTokenizer LoadModelAndTokenizer(const GenerateArgs& a, const runtime::Config& cfg,
                                        parallel::ProcessGrid& grid) {
  const auto dtype = models::ParseDtype(a.dtype);
  const bool whole = runtime::WholeModelLayout(cfg);
  const bool root = grid.world().rank() == 0;
  const std::string what = "--model " + a.model;
  if (files::IsDirectory(a.model) && files::Exists(files::Join(a.model, "config.json"))) {
    auto tok = data::Tokenizer::FromPath(a.tokenizer.empty() ? a.model : a.tokenizer);
    std::shared_ptr<models::LlamaModel> model;
    runtime::ShardedModel sharded;
    LoadNotes notes;
    if (whole) {
      auto loaded = models::LoadHf(a.model, dtype);
      model = loaded.model;
      notes = loaded.config.notes;
    } else {
      sharded = runtime::LoadShardedModel(a.model, cfg, grid, "", what);
      notes = sharded.notes;
    }
    runtime::LogNotesOnce(tok.notes(), /*info=*/false);  // stdout is the answers
    runtime::LogNotesOnce(notes, /*info=*/false);
    return {model, std::move(sharded), std::move(tok), ""};
  }
  if (!files::Exists(a.model)) FT_THROW(IoError, "--model {}: no such file or directory", a.model);
  if (files::IsDirectory(a.model) &&
      runtime::CheckpointCandidates(a.model).empty() &&
      runtime::CheckpointCandidates(files::Join(a.model, "checkpoints")).empty()) {
    FT_THROW(ModelError, "--model {}: neither an HF model directory (no config.json) nor an ftune "
             "checkpoint or run directory (no step_N.h5 in it or in its checkpoints/): pass an HF "
             "directory (e.g. <run>/final) or a checkpoint", a.model);
  }
  std::shared_ptr<models::LlamaModel> model;
  runtime::ShardedModel sharded;
  runtime::CheckpointMeta meta;
  if (whole) {
    const auto ck = runtime::ReadNewestCheckpointModel(a.model, "--model");
    meta = ck.meta;
    const auto mc = models::LlamaConfig::FromJson(nlohmann::json::parse(meta.model_config_json),
                                                  meta.path + " /state model_config");
    model = models::ModelFromTensors(mc, ck.tensors, dtype, "checkpoint " + meta.path).model;
  } else {
    sharded = runtime::LoadShardedModel(a.model, cfg, grid, "", "--model");
    meta.path = sharded.checkpoint;
    meta.state.step = sharded.checkpoint_step;
    meta.tokenizer_dir = sharded.tokenizer_dir;
    meta.config_yaml = sharded.config_yaml;
  }
  std::string tok_path = a.tokenizer;
  if (tok_path.empty()) {
    tok_path = meta.tokenizer_dir;
    if (tok_path.empty() || !files::Exists(files::Join(tok_path, "tokenizer.json"))) {
      FT_THROW(IoError, "checkpoint {}: its run's tokenizer directory '{}' has no tokenizer.json "
               "(moved or deleted?): pass --tokenizer DIR", meta.path, tok_path);
    }
  }
  if (root) {
    fmt::print(stderr, "ftune generate: checkpoint {} (step {})\n", meta.path, meta.state.step);
  }
  auto tok = data::Tokenizer::FromPath(tok_path);
  runtime::LogNotesOnce(tok.notes(), /*info=*/false);
  std::string chat_template;
  if (!a.chat.empty() && root) {
    chat_template = runtime::RecordedChatTemplateFile(meta.config_yaml,
                                                      meta.path + " /state config_yaml");
  }
  return {model, std::move(sharded), std::move(tok), chat_template};
}

// The token ids of each prompt (templated, with the tokenizer's BOS) or --chat conversation
// (rendered with the chat template: --chat-template, else `trained_chat_template`, else the
// tokenizer's own; no added special tokens).
std::vector<std::vector<int32_t>> InputIds(const GenerateArgs& a, const data::Tokenizer& tok,
                                           const std::string& trained_chat_template,
                                           const std::vector<Conversation>& conversations) {
  std::vector<std::vector<int32_t>> ids;
  if (a.chat.empty()) {
    for (const auto& p : a.prompts) {
      ids.push_back(tok.Encode(ApplyTemplate(a.template_name, p), /*add_special_tokens=*/true));
    }
    return ids;
  }
  // tok.path() is the tokenizer the model answers with: --tokenizer, --model's, or the one the
  // checkpoint's run used.
  const auto tmpl = data::ChatTemplate::Resolve(
      tok.path(), a.chat_template.empty() ? trained_chat_template : a.chat_template, a.chat_kwargs);
  tmpl.CheckTokenizer(tok);
  const Json none(nullptr);
  for (const auto& c : conversations) {
    std::string text;
    try {
      const Json& r = c.record;
      text = tmpl.Render(r["messages"], r.contains("tools") ? r["tools"] : none,
                         r.contains("documents") ? r["documents"] : none,
                         /*add_generation_prompt=*/true);
    } catch (const data::jinja::TemplateError& e) {
      FT_THROW(DataError, "{}:{}: the chat template ({}) rejects this conversation: {}", a.chat,
               c.line, tmpl.origin(), e.what());
    }
    ids.push_back(tok.Encode(text, /*add_special_tokens=*/false));
  }
  return ids;
}

// Rank 0's `ids` on every rank of `comm`.
std::vector<std::vector<int32_t>> FromRoot(parallel::Communicator& comm,
                                           const std::vector<std::vector<int32_t>>& ids) {
  if (comm.size() == 1) return ids;
  const std::string mine = comm.rank() == 0 ? nlohmann::json(ids).dump() : "";
  return nlohmann::json::parse(parallel::AllGatherStrings(comm, mine)[0])
      .get<std::vector<std::vector<int32_t>>>();
}

void RunGenerate(const GenerateArgs& a, runtime::World& world) {
  if (a.prompts.empty() && a.chat.empty()) throw CLI::RequiredError("--prompt or --chat");
  if (world.world_size() % a.tp != 0) {
    FT_THROW(ConfigError, "--tp {} does not divide the job's {} ranks: run mpirun -np with a "
             "multiple of it", a.tp, world.world_size());
  }
  const runtime::Config cfg = runtime::LoadConfig(
      "",
      {fmt::format("parallel.tp={}", a.tp), fmt::format("parallel.zero={}", a.zero),
       "parallel.dp=-1", "model.dtype=" + a.dtype},
      {world.world_size(), /*need_train=*/false});
  const auto grid = runtime::MakeGrid(world, cfg, /*log=*/false);  // stdout is the answers
  const bool root = world.rank() == 0;
  // Rank 0 reads the conversations (mpirun gives the standard input to rank 0 only), renders and
  // tokenizes them; the other ranks get the ids.
  std::vector<Conversation> conversations;
  if (root && !a.chat.empty()) conversations = ReadConversations(a.chat);
  auto m = LoadModelAndTokenizer(a, cfg, *grid);
  auto& model = m.model();
  const models::LlamaConfig& mc = model.config();
  if (m.whole) {
    model.to(world.device());
    model.eval();
  }
  if (m.tok.vocab_size() > mc.vocab_size) {
    FT_THROW(ModelError, "tokenizer {} has {} ids but the model's vocab_size is {}", m.tok.path(),
             m.tok.vocab_size(), mc.vocab_size);
  }

  models::GenerateOptions opt = runtime::TokenGenerateOptions(m.tok, mc);
  opt.max_new_tokens = a.max_new_tokens;
  opt.temperature = a.temperature;
  opt.top_k = a.top_k;
  opt.top_p = a.top_p;
  opt.seed = a.seed;

  std::vector<std::vector<int32_t>> inputs;
  if (root) inputs = InputIds(a, m.tok, m.trained_chat_template, conversations);
  inputs = FromRoot(world.comm(), inputs);
  auto print = [&](size_t index, const std::vector<int32_t>& ids) {
    const std::string answer = Trim(m.tok.Decode(ids, /*skip_special_tokens=*/true));
    // Invalid UTF-8 (a byte-level model can stop inside a character) is replaced, not thrown.
    if (a.jsonl && a.chat.empty()) {
      const nlohmann::json line = {{"prompt", a.prompts[index]}, {"answer", answer}};
      fmt::print("{}\n", line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
    } else if (a.jsonl) {
      Json line = conversations[index].record;  // the input's key order kept
      line["messages"].push_back(Json::object({{"role", "assistant"}, {"content", answer}}));
      fmt::print("{}\n", line.dump(-1, ' ', false, Json::error_handler_t::replace));
    } else {
      fmt::print("{}\n", answer);
    }
  };

  // Batch k runs on dp rank k % dp (runtime/grid_generate.h); rank 0 prints the answers of each
  // round of dp batches, in input order.
  int64_t printed = 0;
  runtime::GenerateOnGrid(model, m.whole ? nullptr : m.sharded.pm.get(), *grid, inputs,
                          a.batch_size, opt,
                          [&](int64_t index, const std::vector<int32_t>& ids) {
                            if (!root) return;
                            print(static_cast<size_t>(index), ids);
                            if (++printed % a.batch_size == 0) std::fflush(stdout);
                          });
  if (root) std::fflush(stdout);
}

}  // namespace

void AddGenerateCommand(CLI::App& app, runtime::World& world) {
  auto args = std::make_shared<GenerateArgs>();
  auto* sub = app.add_subcommand(
      "generate", "answer prompts or chat conversations (--chat) with an HF model directory or an "
      "ftune checkpoint; prints only the new text per prompt");
  sub->add_option("--model", args->model,
                  "HF model directory (config.json + safetensors), or an ftune checkpoint: a "
                  "step_N.h5 file, or a checkpoint or run directory (its newest usable checkpoint)")
      ->required();
  sub->add_option("--tokenizer", args->tokenizer,
                  "tokenizer.json or its directory (default: --model's, or the one the "
                  "checkpoint's run used)");
  auto* prompt = sub->add_option("--prompt", args->prompts, "a prompt (repeat for several)");
  auto* templ =
      sub->add_option("--template", args->template_name,
                      "qa: \"### Question:\\n{prompt}\\n\\n### Answer:\"; none: the prompt as is")
          ->check(CLI::IsMember({"qa", "none"}))
          ->capture_default_str();
  auto* chat = sub->add_option(
      "--chat", args->chat,
      "JSONL of conversations to answer, {\"messages\": [...], \"tools\"?: [...]} per line, "
      "rendered with the chat template (- = stdin); instead of --prompt");
  chat->excludes(prompt);
  chat->excludes(templ);
  sub->add_option("--chat-template", args->chat_template,
                  "with --chat: a .jinja file or a named template of the tokenizer (default: its "
                  "own, as data.chat_template)")
      ->needs(chat);
  sub->add_option("--chat-template-kwarg", args->chat_kwargs,
                  "with --chat: an extra template variable, name=value (repeatable; e.g. "
                  "enable_thinking=false)")
      ->needs(chat);
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
  sub->add_option("--tp", args->tp,
                  "tensor parallelism: each rank holds 1/tp of every layer and its KV cache "
                  "(under mpirun; dp = ranks / tp share the prompts)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  sub->add_option("--zero", args->zero,
                  "3: ZeRO-3, each rank keeps 1/dp of the model and gathers one layer at a time "
                  "(0-2: every rank holds its whole model or tp shard)")
      ->check(CLI::Range(0, 3))
      ->capture_default_str();
  sub->add_flag("--jsonl", args->jsonl,
                "one JSON object per prompt, {\"prompt\": ..., \"answer\": ...} (with --chat: "
                "the conversation with the answer appended as an assistant message), instead of "
                "one answer per line (answers may hold newlines)");
  sub->callback([args, &world]() { RunGenerate(*args, world); });
}

}  // namespace ftune::launch
