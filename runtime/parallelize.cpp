#include "runtime/parallelize.h"

#include <fmt/format.h>

#include "parallel/error.h"
#include "parallel/tensor_parallel.h"

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

}  // namespace ftune::runtime
