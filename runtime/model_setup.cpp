#include "runtime/model_setup.h"

#include <filesystem>

#include "models/hf_io.h"
#include "models/llama_config.h"
#include "runtime/log.h"
#include "runtime/parallelize.h"

namespace ftune::runtime {

std::string TokenizerDir(const Config& cfg) {
  std::string p = cfg.tokenizer.path.empty() ? cfg.model.path : cfg.tokenizer.path;
  if (p.empty()) {
    FT_THROW(ConfigError, "tokenizer.path is not set (and model.path is empty): set it to the "
             "directory holding tokenizer.json (e.g. --set tokenizer.path=DIR)");
  }
  if (std::filesystem::is_regular_file(p)) p = std::filesystem::path(p).parent_path().string();
  return p;
}

data::Tokenizer LoadRunTokenizer(const Config& cfg) {
  return data::Tokenizer::FromPath(TokenizerDir(cfg));
}

std::shared_ptr<models::LlamaModel> BuildRunModel(const Config& cfg, const data::Tokenizer& tok,
                                                  parallel::ProcessGrid& grid) {
  std::shared_ptr<models::LlamaModel> model;
  if (!cfg.model.path.empty()) {
    model = models::LoadHf(cfg.model.path, torch::kFloat).model;
  } else {
    model = models::BuildLlama(models::LlamaConfig::FromInline(cfg.model), torch::kFloat,
                               cfg.model.init_seed);
  }
  const auto& mc = model->config();
  if (mc.vocab_size < tok.vocab_size()) {
    FT_THROW(ConfigError, "the model's vocab_size {} is smaller than the tokenizer's {} ({}): set "
             "model.arch.vocab_size >= {} or use the model's own tokenizer",
             mc.vocab_size, tok.vocab_size(), tok.path(), tok.vocab_size());
  }
  if (grid.tp() > 1) model = MakeTensorParallel(*model, grid);
  if (cfg.model.dtype == "bf16") model->to(torch::kBFloat16);
  return model;
}

void ExportRunModel(models::LlamaModel& model, parallel::ProcessGrid& grid,
                    const std::string& tokenizer_dir, const std::string& out_dir) {
  models::NamedTensors full;
  auto* tp = dynamic_cast<TensorParallelLlama*>(&model);
  for (const auto& p : model.named_parameters()) {
    torch::Tensor t = p.value().detach();
    if (tp) t = GatherFull(t.contiguous(), tp->layout().at(p.key()), grid.tp_comm());
    full.emplace_back(p.key(), t.to(torch::kFloat).contiguous());
  }
  if (grid.world().rank() == 0) {
    models::SaveHfOptions opt;
    opt.tokenizer_src_dir = tokenizer_dir;
    opt.overwrite = true;
    models::WriteHfDir(full, model.config(), out_dir, opt);
    LogInfo("wrote the model as an HF directory: {}", out_dir);
  }
  grid.world().Barrier()->Wait();
}

}  // namespace ftune::runtime
