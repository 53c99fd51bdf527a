// `ftune export`: write a model as an HF directory (config.json, generation_config.json,
// safetensors shards + index, tokenizer files).
//   ftune export --model DIR --out DIR [--max-shard-mb N] [--dtype keep|fp32|bf16] [--overwrite]
//   ftune export [--config C] [--set model.arch.vocab_size=...] --out DIR
//   ftune export --checkpoint RUN_DIR|CKPT_DIR|step_N.h5 --out DIR
// Without --model the config's `model` section decides: model.path (an HF directory), or, when
// empty, the inline architecture randomly initialised from model.init_seed (a demo/test base
// model); tokenizer files come from tokenizer.path (else model.path). With --checkpoint, the
// full-shape fp32 master weights of an ftune checkpoint (runtime/checkpoint.h; a run or
// checkpoint directory means its newest usable checkpoint, falling back past damaged ones) are
// verified against their checksums and written in the run's model.dtype (or --dtype), with the
// tokenizer files of the run's tokenizer directory. Under mpirun a checkpoint is read collectively
// (each rank reads and checksums a slice of every tensor over MPI-IO, rank 0 gathers and writes);
// on one process it is read whole. Otherwise rank 0 does the work.
// The tokenizer files copied include the chat template (chat_template.jinja / .json) and
// generation_config.json, byte for byte; when the run's data.chat_template is a .jinja file (the
// config the checkpoint recorded, or --config's for a config-driven export), that file becomes
// the output's chat_template.jinja, so the model is served with the template it was trained on.
#include <fmt/format.h>

#include <memory>
#include <string>

#include "data/tokenizer.h"
#include "launch/commands.h"
#include "models/hf_io.h"
#include "parallel/error.h"
#include "parallel/files.h"
#include "runtime/checkpoint.h"
#include "runtime/config.h"
#include "runtime/log.h"
#include "runtime/model_setup.h"

namespace ftune::launch {
namespace {

struct ExportArgs {
  runtime::CommonArgs common;
  std::string model;
  std::string checkpoint;
  std::string out;
  int64_t max_shard_mb = 5 * 1024;
  std::string dtype = "keep";
  bool overwrite = false;
};

void ExportCheckpoint(const ExportArgs& a, runtime::World& world) {
  auto ck = world.world_size() > 1
                ? runtime::ReadNewestCheckpointModel(world.comm(), a.checkpoint, "--checkpoint")
                : runtime::ReadNewestCheckpointModel(a.checkpoint, "--checkpoint");
  if (world.rank() != 0) return;
  const runtime::CheckpointMeta& meta = ck.meta;
  models::NamedTensors& tensors = ck.tensors;
  auto cfg = models::LlamaConfig::FromJson(nlohmann::json::parse(meta.model_config_json),
                                           meta.path + " /state model_config");
  const c10::ScalarType dtype = models::ParseDtype(a.dtype == "keep" ? meta.dtype : a.dtype);
  for (auto& [name, t] : tensors) t = t.to(dtype);
  models::SaveHfOptions opt;
  opt.max_shard_bytes = a.max_shard_mb * (int64_t(1) << 20);
  opt.overwrite = a.overwrite;
  if (!meta.tokenizer_dir.empty() && files::IsDirectory(meta.tokenizer_dir)) {
    opt.tokenizer_src_dir = meta.tokenizer_dir;
  } else {
    runtime::LogWarn("the run's tokenizer directory '{}' is gone: exporting without tokenizer "
                     "files", meta.tokenizer_dir);
  }
  opt.chat_template_file =
      runtime::RecordedChatTemplateFile(meta.config_yaml, meta.path + " /state config_yaml");
  models::WriteHfDir(tensors, cfg, a.out, opt);
  runtime::LogInfo("exported checkpoint {} (step {}, {} tokens seen) as {} to {}", meta.path,
                   meta.state.step, meta.state.tokens_seen, models::HfDtypeName(dtype), a.out);
}

}  // namespace

void ExportCheckpointTo(runtime::World& world, const std::string& checkpoint,
                        const std::string& out) {
  ExportArgs a;
  a.checkpoint = checkpoint;
  a.out = out;
  a.overwrite = true;
  ExportCheckpoint(a, world);
}

namespace {

void RunExport(const ExportArgs& a, runtime::World& world) {
  if (!a.checkpoint.empty()) return ExportCheckpoint(a, world);
  if (world.rank() != 0) return;
  std::string model_dir = a.model, tokenizer_dir = a.model, chat_template_file;
  models::ModelConfig inline_cfg;
  if (model_dir.empty()) {
    const auto cfg = runtime::LoadConfig(a.common.config_path, a.common.overrides, {});
    model_dir = cfg.model.path;
    inline_cfg = cfg.model;
    tokenizer_dir = cfg.tokenizer.path.empty() ? cfg.model.path : cfg.tokenizer.path;
    chat_template_file = runtime::ChatTemplateFile(cfg);
  }
  models::LoadedModel loaded;
  c10::ScalarType dtype;
  if (!model_dir.empty()) {
    const auto src_cfg = models::LlamaConfig::FromFile(model_dir + "/config.json");
    dtype = models::ParseDtype(a.dtype == "keep" ? src_cfg.torch_dtype : a.dtype);
    loaded = models::LoadHf(model_dir, dtype);
    runtime::LogNotesOnce(loaded.config.notes);
  } else {
    loaded.config = models::LlamaConfig::FromInline(inline_cfg);
    dtype = models::ParseDtype(a.dtype == "keep" ? inline_cfg.dtype : a.dtype);
    loaded.model = models::BuildLlama(loaded.config, dtype, inline_cfg.init_seed);
    if (!tokenizer_dir.empty()) {  // bos/eos of the tokenizer the model is meant for
      const auto tok = data::Tokenizer::FromPath(tokenizer_dir);
      loaded.config.bos_token_id = tok.bos_id();
      for (int32_t id : tok.eos_ids()) loaded.config.eos_token_ids.push_back(id);
    }
  }
  models::SaveHfOptions opt;
  opt.max_shard_bytes = a.max_shard_mb * (int64_t(1) << 20);
  opt.tokenizer_src_dir = tokenizer_dir;
  opt.chat_template_file = chat_template_file;
  opt.overwrite = a.overwrite;
  models::SaveHf(*loaded.model, loaded.config, a.out, opt);
  runtime::LogInfo(
      "exported {} ({}) to {}",
      model_dir.empty() ? fmt::format("inline model (seed {})", inline_cfg.init_seed) : model_dir,
      models::HfDtypeName(dtype), a.out);
}

}  // namespace

void AddExportCommand(CLI::App& app, runtime::World& world) {
  auto args = std::make_shared<ExportArgs>();
  auto* sub = app.add_subcommand("export", "write a model as a Hugging Face model directory");
  sub->add_option("--model", args->model,
                  "HF model directory to re-export (default: the config's model section)");
  auto* ck = sub->add_option("--checkpoint", args->checkpoint,
                             "ftune checkpoint to export: a step_N.h5 file, or a checkpoint or "
                             "run directory (its newest usable checkpoint)");
  ck->excludes(sub->get_option("--model"));
  AddCommonOptions(sub, args->common);
  sub->add_option("--out", args->out, "output directory (created; must be empty or absent)")
      ->required();
  sub->add_option("--max-shard-mb", args->max_shard_mb, "largest safetensors shard, MiB")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  sub->add_option("--dtype", args->dtype,
                  "keep (config.json's torch_dtype; a checkpoint's model.dtype) | fp32 | bf16")
      ->check(CLI::IsMember({"keep", "fp32", "bf16", "fp16"}))
      ->capture_default_str();
  sub->add_flag("--overwrite", args->overwrite, "replace a non-empty --out directory");
  sub->callback([args, &world]() { RunExport(*args, world); });
}

}  // namespace ftune::launch
