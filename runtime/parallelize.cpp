#include "runtime/parallelize.h"

#include <fmt/format.h>

#include "parallel/error.h"
#include "parallel/tensor_parallel.h"
#include "runtime/model_setup.h"

namespace ftune::runtime {
namespace {

namespace F = torch::nn::functional;

// The full config, after checking that it can be split `tp` ways (runs before the base class
// allocates anything).
const models::LlamaConfig& Checked(const models::LlamaConfig& cfg, int64_t tp) {
  CheckTensorParallel(cfg, tp);
  return cfg;
}

}  // namespace

std::vector<int64_t> ShardInfo::local_shape() const {
  auto shape = full_shape;
  if (sharded()) shape[dim] = size;
  return shape;
}

void CheckTensorParallel(const models::LlamaConfig& cfg, int64_t tp) {
  if (tp < 1) FT_THROW(ConfigError, "parallel.tp must be >= 1, got {}", tp);
  const std::pair<const char*, int64_t> values[] = {
      {"num_attention_heads", cfg.num_attention_heads},
      {"num_key_value_heads", cfg.num_key_value_heads},
      {"intermediate_size", cfg.intermediate_size},
      {"vocab_size", cfg.vocab_size},
  };
  for (const auto& [name, value] : values) {
    if (value % tp != 0) {
      FT_THROW(ConfigError,
               "tensor parallelism: {} {} is not divisible by parallel.tp {}; pick a parallel.tp "
               "that divides num_attention_heads ({}), num_key_value_heads ({}), "
               "intermediate_size ({}) and vocab_size ({})",
               name, value, tp, cfg.num_attention_heads, cfg.num_key_value_heads,
               cfg.intermediate_size, cfg.vocab_size);
    }
  }
}

std::map<std::string, ShardInfo> TensorParallelLayout(const models::LlamaConfig& cfg, int64_t tp,
                                                      int64_t tp_rank) {
  CheckTensorParallel(cfg, tp);
  FT_CHECK(tp_rank >= 0 && tp_rank < tp, "tp_rank {} out of range for tp {}", tp_rank, tp);
  std::map<std::string, ShardInfo> out;
  // Column-parallel (out, in) weight: rows split. Row-parallel: columns split.
  auto split = [&](const std::string& name, int64_t dim, std::vector<int64_t> full) {
    ShardInfo s;
    s.dim = tp > 1 ? dim : -1;
    s.size = tp > 1 ? full[dim] / tp : 0;
    s.offset = tp_rank * s.size;
    s.full_shape = std::move(full);
    out[name] = s;
  };
  auto replicated = [&](const std::string& name, std::vector<int64_t> full) {
    ShardInfo s;
    s.full_shape = std::move(full);
    out[name] = s;
  };
  const int64_t c = cfg.hidden_size, hd = cfg.head_dim, v = cfg.vocab_size;
  const int64_t q = cfg.num_attention_heads * hd, kv = cfg.num_key_value_heads * hd;
  const int64_t inter = cfg.intermediate_size;
  split("model.embed_tokens.weight", 0, {v, c});
  for (int64_t i = 0; i < cfg.num_hidden_layers; ++i) {
    const std::string p = fmt::format("model.layers.{}.", i);
    split(p + "self_attn.q_proj.weight", 0, {q, c});
    split(p + "self_attn.k_proj.weight", 0, {kv, c});
    split(p + "self_attn.v_proj.weight", 0, {kv, c});
    split(p + "self_attn.o_proj.weight", 1, {c, q});
    split(p + "mlp.gate_proj.weight", 0, {inter, c});
    split(p + "mlp.up_proj.weight", 0, {inter, c});
    split(p + "mlp.down_proj.weight", 1, {c, inter});
    replicated(p + "input_layernorm.weight", {c});
    replicated(p + "post_attention_layernorm.weight", {c});
  }
  replicated("model.norm.weight", {c});
  if (!cfg.tie_word_embeddings) split("lm_head.weight", 0, {v, c});
  return out;
}

torch::Tensor SliceFull(const torch::Tensor& full, const ShardInfo& info) {
  if (!info.sharded()) return full;
  return full.narrow(info.dim, info.offset, info.size);
}

torch::Tensor GatherFull(const torch::Tensor& local, const ShardInfo& info,
                         parallel::Communicator& tp_comm) {
  if (!info.sharded()) return local.clone();
  const int64_t n = tp_comm.size();
  FT_CHECK(info.offset == tp_comm.rank() * info.size && info.size * n == info.full_shape[info.dim],
           "shard (dim {}, offset {}, size {}) is not rank {}'s of {} equal shards", info.dim,
           info.offset, info.size, tp_comm.rank(), n);
  auto in = local.contiguous();
  std::vector<int64_t> shape(local.sizes().begin(), local.sizes().end());
  shape.insert(shape.begin(), n);
  auto out = torch::empty(shape, local.options());  // (n, local...)
  tp_comm.AllGather(in, out)->Wait();
  return out.movedim(0, info.dim).reshape(info.full_shape);
}

TensorParallelLlama::TensorParallelLlama(const models::LlamaConfig& full_cfg,
                                         parallel::ProcessGrid& grid)
    : models::LlamaModel(Checked(full_cfg, grid.tp()), /*materialize=*/false),
      tp_comm_(grid.tp_comm()) {
  const auto& cfg = config();
  const int64_t tp = grid.tp();
  layout_ = TensorParallelLayout(cfg, tp, grid.tp_rank());
  const int64_t c = cfg.hidden_size, hd = cfg.head_dim;
  const int64_t q = cfg.num_attention_heads / tp * hd, kv = cfg.num_key_value_heads / tp * hd;
  const int64_t inter = cfg.intermediate_size / tp, vocab = cfg.vocab_size / tp;
  vocab_start_ = grid.tp_rank() * vocab;
  vocab_end_ = vocab_start_ + vocab;

  parallel::Communicator* comm = &tp_comm_;
  auto enter = [comm](const torch::Tensor& x) { return parallel::CopyToRegion(x, *comm); };
  auto exit = [comm](const torch::Tensor& x) { return parallel::ReduceFromRegion(x, *comm); };
  for (auto& layer : model->layer_list) {
    auto& a = *layer->self_attn;
    a.q_proj = a.replace_module("q_proj", models::MakeLinear(c, q, false));
    a.k_proj = a.replace_module("k_proj", models::MakeLinear(c, kv, false));
    a.v_proj = a.replace_module("v_proj", models::MakeLinear(c, kv, false));
    a.o_proj = a.replace_module("o_proj", models::MakeLinear(q, c, false));
    auto& m = *layer->mlp;
    m.gate_proj = m.replace_module("gate_proj", models::MakeLinear(c, inter, false));
    m.up_proj = m.replace_module("up_proj", models::MakeLinear(c, inter, false));
    m.down_proj = m.replace_module("down_proj", models::MakeLinear(inter, c, false));
    models::Unmaterialize(*layer, torch::kFloat);
    if (tp > 1) {
      a.enter_region = m.enter_region = enter;
      a.exit_region = m.exit_region = exit;
    }
  }
  model->embed_tokens = model->replace_module(
      "embed_tokens",
      torch::nn::Embedding(torch::nn::EmbeddingOptions(vocab, c)._weight(torch::empty({vocab, c}))));
  if (lm_head) {
    lm_head = replace_module("lm_head", models::MakeLinear(c, vocab, false));
    models::Unmaterialize(*lm_head, torch::kFloat);
  }
  const auto params = named_parameters(/*recurse=*/true);
  FT_CHECK(params.size() == layout_.size(), "layout has {} tensors, the shard {}", layout_.size(),
           params.size());
  for (const auto& p : params) {
    const auto it = layout_.find(p.key());
    FT_CHECK(it != layout_.end(), "parameter {} missing from the tensor-parallel layout", p.key());
    FT_CHECK(p.value().sizes() == c10::IntArrayRef(it->second.local_shape()),
             "{}: local {} does not match the layout", p.key(), c10::str(p.value().sizes()));
  }
}

TensorParallelLlama::TensorParallelLlama(const models::LlamaModel& full,
                                         parallel::ProcessGrid& grid)
    : TensorParallelLlama(full.config(), grid) {
  to(full.device(), full.dtype());
  torch::NoGradGuard no_grad;
  const auto src = full.named_parameters(/*recurse=*/true);
  FT_CHECK(src.size() == layout_.size(), "layout has {} tensors, the full model {}",
           layout_.size(), src.size());
  for (auto& p : named_parameters(/*recurse=*/true)) {
    const auto* s = src.find(p.key());
    FT_CHECK(s != nullptr, "parameter {} missing from the full model", p.key());
    const ShardInfo& info = layout_.at(p.key());
    FT_CHECK(s->sizes() == c10::IntArrayRef(info.full_shape), "{}: full {} does not match the "
             "layout", p.key(), c10::str(s->sizes()));
    p.value().copy_(SliceFull(*s, info));
  }
}

torch::Tensor TensorParallelLlama::Embed(const torch::Tensor& tokens) {
  // The unsharded lookup rejects ids outside the vocab; the sharded one would give zeros. Checked
  // on the CPU only, where it costs no device sync.
  if (tokens.is_cpu() && tokens.numel() > 0) {
    const int64_t lo = tokens.min().item<int64_t>(), hi = tokens.max().item<int64_t>();
    if (lo < 0 || hi >= config().vocab_size) {
      FT_THROW(ModelError, "token ids [{}, {}] are outside the vocabulary [0, {})", lo, hi,
               config().vocab_size);
    }
  }
  return parallel::VocabParallelEmbedding(tokens, model->embed_tokens->weight, vocab_start_,
                                          tp_comm_);
}

torch::Tensor TensorParallelLlama::LocalLogits(const torch::Tensor& hidden) {
  // Column-parallel lm_head: its input's gradient is summed over the vocab shards.
  return F::linear(parallel::CopyToRegion(hidden, tp_comm_), lm_head_weight());
}

torch::Tensor TensorParallelLlama::Logits(const torch::Tensor& hidden) {
  return parallel::GatherFromRegionLastDim(LocalLogits(hidden), tp_comm_);
}

torch::Tensor TensorParallelLlama::CrossEntropySum(const torch::Tensor& hidden,
                                                   const torch::Tensor& targets) {
  return parallel::VocabParallelCrossEntropy(LocalLogits(hidden), targets, vocab_start_, tp_comm_)
      .sum();
}

std::shared_ptr<TensorParallelLlama> MakeTensorParallel(const models::LlamaModel& full,
                                                        parallel::ProcessGrid& grid) {
  return std::make_shared<TensorParallelLlama>(full, grid);
}

// --- ParallelModel ------------------------------------------------------------------------------

ParallelModel::ParallelModel(std::shared_ptr<models::LlamaModel> model,
                             parallel::ProcessGrid& grid, const Config& cfg,
                             parallel::ParamSource source, bool params_only)
    : model_(std::move(model)), grid_(grid), checkpointing_(cfg.train.Checkpointing()) {
  checkpointing_.CheckLayers(model_->config().num_hidden_layers);
  const auto* tp = dynamic_cast<const TensorParallelLlama*>(model_.get());
  std::vector<parallel::ParamSpec> specs;
  std::vector<std::vector<int>> units;
  std::vector<std::string> unit_names;
  for (auto& u : model_->Units()) {
    units.emplace_back();
    unit_names.push_back(u.name);
    for (auto& p : u.params) {
      parallel::ParamSpec s;
      s.name = p.name;
      s.param = p.param;
      s.decay = p.decay;
      s.late = p.late;
      s.model_parallel_shard = tp != nullptr && tp->layout().at(p.name).sharded();
      units.back().push_back(static_cast<int>(specs.size()));
      specs.push_back(std::move(s));
    }
  }
  parallel::DataParallelOptions opt;
  opt.zero = static_cast<int>(cfg.parallel.zero);
  opt.bucket_mb = cfg.parallel.bucket_mb;
  opt.device = grid.device();
  opt.source = std::move(source);
  opt.params_only = params_only;
  opt.offload_optimizer = cfg.parallel.offload == "optimizer";
  opt.offload_threads = static_cast<int>(cfg.parallel.offload_threads);
  // Units whose first parameter is known, before DataParallel takes the specs.
  std::vector<int> first_param;
  for (const auto& u : units) first_param.push_back(u.empty() ? -1 : u.front());
  dp_ = std::make_unique<parallel::DataParallel>(std::move(specs), std::move(units),
                                                 grid_.dp_comm(), opt);
  layer_units_.assign(model_->config().num_hidden_layers, -1);
  for (size_t u = 0; u < unit_names.size(); ++u) {
    const int unit = first_param[u] < 0 ? -1 : dp_->UnitOf(first_param[u]);
    const std::string& name = unit_names[u];
    if (name == "embed") {
      embed_unit_ = unit;
    } else if (name == "head") {
      head_unit_ = unit;
    } else {
      layer_units_.at(std::stoi(name.substr(name.find('.') + 1))) = unit;  // "layer.<i>"
    }
  }
  // The layer runner: ZeRO-3's gather/release hooks around every layer, and recompute where
  // the checkpointing policy asks for it (never for parameters-only models: eval, generation).
  if (dp_->zero() == 3 ||
      (checkpointing_.policy() != ActivationCheckpointing::Policy::kNone && !params_only)) {
    model_->layer_runner = [this](int64_t layer, const torch::Tensor& x,
                                  const models::TensorHook& run) {
      return RunLayer(x, run, checkpointing_.ForLayer(layer), HooksFor(layer));
    };
  }
}

ParallelModel::~ParallelModel() {
  if (model_) model_->layer_runner = nullptr;  // it points into this object
}

// ZeRO-3: a layer is gathered just before it computes (the next one is prefetched meanwhile)
// and released right after, in forward and in backward, whether or not it is recomputed. The
// last layer stays whole from its forward to its backward, which comes right after the head's
// (it would be gathered again at once).
LayerHooks ParallelModel::HooksFor(int64_t layer) {
  if (dp_->zero() != 3) return {};
  const int u = layer_units_[layer];
  const int64_t n = static_cast<int64_t>(layer_units_.size());
  const int next = layer + 1 < n ? layer_units_[layer + 1] : -1;
  const int prev = layer > 0 ? layer_units_[layer - 1] : -1;
  auto* dp = dp_.get();
  LayerHooks h;
  h.before_forward = [dp, u, next]() {
    dp->WaitUnit(u);
    if (next >= 0) dp->GatherUnit(next);
  };
  if (layer + 1 < n) h.after_forward = [dp, u]() { dp->ReleaseUnitUntilBackward(u); };
  // No backward to come (eval, generation: each layer runs again for every token): every layer,
  // the last one too, is released outright.
  h.after_forward_no_grad = [dp, u]() { dp->ReleaseUnit(u); };
  h.before_backward = [dp, u, prev]() {
    dp->WaitUnit(u);
    if (prev >= 0) dp->GatherUnit(prev);
  };
  h.after_backward = [dp, u]() { dp->ReleaseUnit(u); };
  return h;
}

void ParallelModel::BeginMicroBatch() {
  if (dp_->zero() != 3) return;
  dp_->GatherUnit(embed_unit_);
  if (head_unit_ >= 0) dp_->GatherUnit(head_unit_);
  if (!layer_units_.empty()) dp_->GatherUnit(layer_units_[0]);
  dp_->WaitUnit(embed_unit_);
  if (head_unit_ >= 0) dp_->WaitUnit(head_unit_);
}

void ParallelModel::EndMicroBatch() {
  if (dp_->zero() != 3) return;
  // The layers' backward hooks have released them (a no-op then); a layer whose backward never
  // ran (its input needed no gradient) must not stay whole into the next step's update.
  ReleaseAll();
}

void ParallelModel::GatherAll() {
  if (dp_->zero() != 3) return;
  for (int u = 0; u < dp_->num_units(); ++u) dp_->GatherUnit(u);  // all in flight at once
  for (int u = 0; u < dp_->num_units(); ++u) dp_->WaitUnit(u);
}

void ParallelModel::ReleaseAll() {
  if (dp_->zero() != 3) return;
  for (int u = 0; u < dp_->num_units(); ++u) dp_->ReleaseUnit(u);
}

void ParallelModel::VisitParams(
    const std::function<void(const std::string&, const torch::Tensor&)>& fn) {
  const auto& params = dp_->params();
  if (dp_->zero() != 3) {
    for (const auto& p : params) fn(p.name, p.param);
    return;
  }
  std::vector<std::vector<int>> by_unit(dp_->num_units());
  for (size_t p = 0; p < params.size(); ++p) {
    by_unit[dp_->UnitOf(static_cast<int>(p))].push_back(static_cast<int>(p));
  }
  for (int u = 0; u < dp_->num_units(); ++u) {
    dp_->GatherUnit(u);
    dp_->WaitUnit(u);
    for (int p : by_unit[u]) fn(params[p].name, params[p].param);
    dp_->ReleaseUnit(u);
  }
}

bool ParallelModel::zero3() const { return dp_->zero() == 3; }

std::function<bool(bool)> ParallelModel::GenerationLockStep() {
  if (dp_->zero() != 3 || grid_.replicas() == 1) return {};
  parallel::Communicator* dp = &grid_.dp_control();
  return [dp](bool more) {
    auto flag = torch::tensor({more ? 1 : 0}, torch::kInt);
    dp->AllReduce(flag, parallel::ReduceOp::kMax)->Wait();
    return flag.item<int>() != 0;
  };
}

double ParallelModel::FlopsPerToken(int64_t seq_len) const {
  const auto& c = model_->config();
  int64_t n = 0;
  for (size_t p = 0; p < dp_->params().size(); ++p) {
    if (dp_->params()[p].name == "model.embed_tokens.weight" && !c.tie_word_embeddings) continue;
    int64_t k = 1;
    for (int64_t d : dp_->ShapeOf(static_cast<int>(p))) k *= d;
    n += k;
  }
  return 6.0 * n + 12.0 * c.num_hidden_layers * c.hidden_size * seq_len;
}

std::unique_ptr<ParallelModel> Parallelize(const Config& cfg, const data::Tokenizer& tok,
                                           parallel::ProcessGrid& grid) {
  TrainModel built = BuildTrainModel(cfg, tok, grid);
  return std::make_unique<ParallelModel>(built.model, grid, cfg, std::move(built.source));
}

}  // namespace ftune::runtime
