#include "runtime/model_setup.h"

#include <algorithm>
#include <cmath>

#include "models/hf_io.h"
#include "models/llama_config.h"
#include "parallel/files.h"
#include "runtime/log.h"
#include "runtime/parallelize.h"

namespace ftune::runtime {

std::string TokenizerDir(const Config& cfg) {
  std::string p = cfg.tokenizer.path.empty() ? cfg.model.path : cfg.tokenizer.path;
  if (p.empty()) {
    FT_THROW(ConfigError, "tokenizer.path is not set (and model.path is empty): set it to the "
             "directory holding tokenizer.json (e.g. --set tokenizer.path=DIR)");
  }
  if (files::IsFile(p)) p = files::Parent(p);
  return p;
}

std::string ChatTemplateFile(const Config& cfg) {
  const std::string& t = cfg.data.chat_template;
  if (t.empty()) return "";
  if (files::IsFile(t)) return t;
  const bool ends_jinja = t.size() >= 6 && t.compare(t.size() - 6, 6, ".jinja") == 0;
  if (ends_jinja || t.find('/') != std::string::npos) {
    LogWarn("data.chat_template {} is not a file (any more?): the exported model keeps the "
            "tokenizer's own chat template, not the one the run was trained with", t);
  }
  return "";
}

std::string RecordedChatTemplateFile(const std::string& config_yaml, const std::string& origin) {
  try {
    return ChatTemplateFile(
        LoadConfigText(config_yaml, origin, {1, /*need_train=*/false, /*layout=*/false}));
  } catch (const ConfigError& e) {
    LogWarn("cannot read the run's config {} ({}): its data.chat_template, if it named a .jinja "
            "file, is not used", origin, e.what());
    return "";
  }
}

data::Tokenizer LoadRunTokenizer(const Config& cfg) {
  auto tok = data::Tokenizer::FromPath(TokenizerDir(cfg));
  LogNotesOnce(tok.notes());
  return tok;
}

namespace {

void CheckVocab(const models::LlamaConfig& mc, const data::Tokenizer& tok) {
  if (mc.vocab_size < tok.vocab_size()) {
    FT_THROW(ConfigError, "the model's vocab_size {} is smaller than the tokenizer's {} ({}): set "
             "model.arch.vocab_size >= {} or use the model's own tokenizer",
             mc.vocab_size, tok.vocab_size(), tok.path(), tok.vocab_size());
  }
}

c10::ScalarType RunDtype(const Config& cfg) {
  return cfg.model.dtype == "bf16" ? torch::kBFloat16 : torch::kFloat;
}

// Elements [begin, begin + out.numel()) of this rank's (tensor-parallel) shard of `name`,
// flattened, read from the safetensors: only the rows covering that range (and, for a shard
// along dim 1, only its columns of them) are copied out of the mapping.
void ReadShardRange(const models::SafetensorsCheckpoint& st, const std::string& name,
                    const ShardInfo& info, int64_t begin, at::Tensor out) {
  const auto local = info.local_shape();
  int64_t cols = 1;  // elements per row of the local tensor
  for (size_t d = 1; d < local.size(); ++d) cols *= local[d];
  const int64_t n = out.numel();
  const int64_t r0 = begin / cols, r1 = (begin + n + cols - 1) / cols;
  torch::Tensor rows;
  if (info.sharded() && info.dim == 1) {
    rows = st.GetSlice(name, 0, r0, r1).narrow(1, info.offset, info.size);
  } else {
    const int64_t off = info.sharded() ? info.offset : 0;
    rows = st.GetSlice(name, 0, off + r0, off + r1);
  }
  out.copy_(rows.reshape(-1).narrow(0, begin - r0 * cols, n));
}

}  // namespace

models::GenerateOptions TokenGenerateOptions(const data::Tokenizer& tok,
                                             const models::LlamaConfig& cfg) {
  models::GenerateOptions opt;
  for (int32_t id : tok.eos_ids()) opt.eos_ids.push_back(id);
  for (int64_t id : cfg.eos_token_ids) {
    if (std::find(opt.eos_ids.begin(), opt.eos_ids.end(), id) == opt.eos_ids.end()) {
      opt.eos_ids.push_back(id);
    }
  }
  opt.pad_id = std::max<int32_t>(tok.pad_id(), 0);
  opt.vocab_limit = tok.vocab_size();
  return opt;
}

TrainData OpenTrainData(const Config& cfg, const parallel::ProcessGrid& grid,
                        const data::Tokenizer& tok) {
  data::LoaderOptions lo;
  lo.dir = RunPath(cfg, cfg.data.dir);
  lo.split = "train";
  lo.seq_len = cfg.data.max_seq_len;
  lo.micro_batch = cfg.train.micro_batch;
  lo.packing = cfg.data.packing;
  lo.pad_to_multiple = cfg.data.pad_to_multiple;
  lo.seed = cfg.data.shuffle_seed;
  lo.dp_rank = grid.dp_rank();
  lo.dp_size = grid.dp();
  lo.cp_rank = grid.cp_rank();
  lo.cp_size = grid.cp();
  lo.expected_tokenizer_sha256 = tok.sha256();
  TrainData d;
  d.loader = std::make_unique<data::Loader>(lo);
  d.global_batch = cfg.train.micro_batch * cfg.train.grad_accum * grid.dp();
  d.steps_per_epoch = d.loader->samples_per_epoch() / d.global_batch;
  if (d.steps_per_epoch == 0) {
    FT_THROW(ConfigError, "the training split has {} samples per epoch, fewer than one global "
             "batch of {} (train.micro_batch {} x train.grad_accum {} x dp {}): lower them or "
             "add data", d.loader->samples_per_epoch(), d.global_batch, cfg.train.micro_batch,
             cfg.train.grad_accum, grid.dp());
  }
  d.total_steps = cfg.train.steps > 0
                      ? cfg.train.steps
                      : static_cast<int64_t>(std::ceil(cfg.train.epochs * d.steps_per_epoch));
  return d;
}

std::shared_ptr<models::LlamaModel> BuildRunModel(const Config& cfg, const data::Tokenizer& tok,
                                                  parallel::ProcessGrid& grid) {
  std::shared_ptr<models::LlamaModel> model;
  if (!cfg.model.path.empty()) {
    auto loaded = models::LoadHf(cfg.model.path, torch::kFloat);
    LogNotesOnce(loaded.config.notes);
    model = loaded.model;
  } else {
    model = models::BuildLlama(models::LlamaConfig::FromInline(cfg.model), torch::kFloat,
                               cfg.model.init_seed);
  }
  CheckVocab(model->config(), tok);
  if (grid.tp() > 1) model = MakeTensorParallel(*model, grid);
  model->to(RunDtype(cfg));
  return model;
}

TrainModel BuildTrainModel(const Config& cfg, const data::Tokenizer& tok,
                           parallel::ProcessGrid& grid) {
  if (cfg.model.path.empty()) return {BuildRunModel(cfg, tok, grid), {}};
  models::HfWeights hf = models::OpenHf(cfg.model.path);  // checks names and shapes, reads none
  LogNotesOnce(hf.config.notes);
  CheckVocab(hf.config, tok);
  ModelShard shard = UnmaterialisedShard(hf.config, RunDtype(cfg), grid);
  TrainModel out;
  out.model = shard.model;
  out.source = SafetensorsSource(hf.tensors, std::move(shard.layout));
  return out;
}

ModelShard UnmaterialisedShard(const models::LlamaConfig& mc, c10::ScalarType dtype,
                               parallel::ProcessGrid& grid) {
  ModelShard out;
  if (grid.tp() > 1) {
    auto tp = std::make_shared<TensorParallelLlama>(mc, grid);
    out.layout = tp->layout();
    out.model = tp;
  } else {
    out.model = std::make_shared<models::LlamaModel>(mc, /*materialize=*/false);
    out.layout = TensorParallelLayout(mc, 1, 0);
  }
  models::Unmaterialize(*out.model, dtype);
  return out;
}

parallel::ParamSource SafetensorsSource(std::shared_ptr<models::SafetensorsCheckpoint> st,
                                        std::map<std::string, ShardInfo> layout) {
  return [st = std::move(st), layout = std::move(layout)](const parallel::ParamSpec& spec,
                                                          int64_t begin, at::Tensor dst) {
    ReadShardRange(*st, spec.name, layout.at(spec.name), begin, dst);
  };
}

void ExportRunModel(models::LlamaModel& model, parallel::ProcessGrid& grid,
                    const ParamVisit& visit, const std::string& tokenizer_dir,
                    const std::string& chat_template_file, const std::string& out_dir) {
  models::NamedTensors full;
  auto* tp = dynamic_cast<TensorParallelLlama*>(&model);
  const bool root = grid.world().rank() == 0;
  visit([&](const std::string& name, const torch::Tensor& param) {
    torch::Tensor t = param.detach();
    if (tp) t = GatherFull(t.contiguous(), tp->layout().at(name), grid.tp_comm());
    // A reference keeps a released ZeRO-3 unit's storage alive: only rank 0 holds any.
    if (root) full.emplace_back(name, t.to(torch::kCPU, torch::kFloat).contiguous());
  });
  if (root) {
    models::SaveHfOptions opt;
    opt.tokenizer_src_dir = tokenizer_dir;
    opt.chat_template_file = chat_template_file;
    opt.overwrite = true;
    models::WriteHfDir(full, model.config(), out_dir, opt);
    LogInfo("wrote the model as an HF directory: {}", out_dir);
  }
  grid.world().Barrier()->Wait();
}

}  // namespace ftune::runtime
