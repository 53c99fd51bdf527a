#include "models/llama.h"

#include <ATen/CPUGeneratorImpl.h>

#include <sys/mman.h>

#include <cmath>
#include <set>

#include "parallel/compat.h"
#include "parallel/error.h"

namespace ftune::models {
namespace {

namespace F = torch::nn::functional;

// HF rotate_half: (x1, x2) -> (-x2, x1) over the two halves of the last dim.
torch::Tensor RotateHalf(const torch::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return torch::cat({-x.slice(-1, half), x.slice(-1, 0, half)}, -1);
}

torch::Tensor ApplyHook(const TensorHook& hook, const torch::Tensor& x) {
  return hook ? hook(x) : x;
}

// Chunked fp32 cross-entropy that keeps no logits between forward and backward (see
// CausalLmLoss in the header). The model pointer travels as an int64 in saved_data.
class ChunkedCrossEntropy : public torch::autograd::Function<ChunkedCrossEntropy> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& hidden,
                               const torch::Tensor& targets, int64_t model_ptr, int64_t chunk) {
    auto* model = reinterpret_cast<LlamaModel*>(model_ptr);
    const int64_t n = hidden.size(0);
    auto total = torch::zeros({}, hidden.options().dtype(torch::kFloat));
    for (int64_t a = 0; a < n; a += chunk) {
      const int64_t b = std::min(n, a + chunk);
      total += model->CrossEntropySum(hidden.slice(0, a, b), targets.slice(0, a, b));
    }
    ctx->save_for_backward({hidden, targets});
    ctx->saved_data["model"] = model_ptr;
    ctx->saved_data["chunk"] = chunk;
    return total;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    auto saved = ctx->get_saved_variables();
    const auto& hidden = saved[0];
    const auto& targets = saved[1];
    auto* model = reinterpret_cast<LlamaModel*>(ctx->saved_data["model"].toInt());
    const int64_t chunk = ctx->saved_data["chunk"].toInt();
    const int64_t n = hidden.size(0);
    auto grad_hidden = torch::empty_like(hidden);
    const auto g = grad_out[0];
    for (int64_t a = 0; a < n; a += chunk) {
      const int64_t b = std::min(n, a + chunk);
      torch::AutoGradMode enable(true);
      auto h = hidden.slice(0, a, b).detach().requires_grad_(true);
      auto loss = model->CrossEntropySum(h, targets.slice(0, a, b));
      torch::autograd::backward({loss}, {g});
      grad_hidden.slice(0, a, b).copy_(h.grad());
    }
    return {grad_hidden, torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

// sum_i CE(hidden_i W^T, target_i) with fp32 logits, fused with its backward: forward keeps only
// the fp32 logits and their log-sum-exp; backward turns the logits into softmax - onehot in
// place and runs the two GEMMs. Compared with linear -> cross_entropy this skips the
// log_softmax output, the zero-filled NLL gradient and the log_softmax backward: four passes
// over an N x V buffer (262 MB at 2048 tokens x 32000), the largest memory traffic of a small
// model's step. Used once per graph (no double backward).
struct LinearCrossEntropySum : public torch::autograd::Function<LinearCrossEntropySum> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& hidden,
                               const torch::Tensor& weight, const torch::Tensor& targets) {
    auto logits = F::linear(hidden, weight).to(torch::kFloat);  // (N, V)
    auto lse = torch::logsumexp(logits, 1);                      // (N)
    auto t = targets.unsqueeze(1);
    auto loss = (lse - logits.gather(1, t).squeeze(1)).sum();
    ctx->save_for_backward({hidden, weight, targets, logits, lse});
    return loss;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    auto saved = ctx->get_saved_variables();
    const auto& hidden = saved[0];
    const auto& weight = saved[1];
    const auto& targets = saved[2];
    auto probs = saved[3];  // reused in place: softmax(logits) * g - g * onehot(targets)
    const auto g = grad_out[0];
    probs.sub_(saved[4].unsqueeze(1)).exp_().mul_(g);
    probs.scatter_add_(1, targets.unsqueeze(1),
                       (-g).expand({targets.size(0), 1}).to(probs.scalar_type()));
    auto d = probs.to(hidden.scalar_type());
    torch::Tensor grad_hidden, grad_weight;
    if (ctx->needs_input_grad(0)) grad_hidden = d.mm(weight);
    if (ctx->needs_input_grad(1)) grad_weight = d.t().mm(hidden);
    return {grad_hidden, grad_weight, torch::Tensor()};
  }
};

// --- OpTape (selective recompute) --------------------------------------------------------------
thread_local OpTape* current_tape = nullptr;
thread_local OpTapeMode current_tape_mode = OpTapeMode::kRecord;

torch::Tensor TakeFromTape() {
  OpTape& tape = *current_tape;
  FT_CHECK(tape.next < tape.outputs.size(),
           "selective recompute: the layer asked for kept output {} of {} (the replay differs "
           "from the recorded forward)", tape.next + 1, tape.outputs.size());
  return tape.outputs[tape.next++];
}

// A projection's kept output behind the linear's backward: x (..., in), weight (out, in),
// kept (..., out). The gradients are computed as autograd's matmul computes them.
struct KeptProjection : public torch::autograd::Function<KeptProjection> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& weight, const torch::Tensor& kept) {
    FT_CHECK(kept.sizes().back() == weight.size(0), "kept projection output {} for weight {}",
             c10::str(kept.sizes()), c10::str(weight.sizes()));
    ctx->save_for_backward({x, weight});
    return kept;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    const auto saved = ctx->get_saved_variables();
    const auto& x = saved[0];
    const auto& w = saved[1];
    const auto g = grad_out[0].reshape({-1, w.size(0)});  // (N, out)
    torch::Tensor gx, gw;
    if (ctx->needs_input_grad(0)) gx = g.mm(w).view(x.sizes());
    if (ctx->needs_input_grad(1)) gw = x.reshape({-1, w.size(1)}).t().mm(g).t();
    return {gx, gw, torch::Tensor()};
  }
};

// The attention's kept output; backward recomputes the attention and backpropagates through it.
// The layout travels as IValues: its tensors, and the cp communicator as an int64 handle (it
// lives in the grid, for the whole run).
struct KeptAttention : public torch::autograd::Function<KeptAttention> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& q,
                               const torch::Tensor& k, const torch::Tensor& v,
                               const torch::Tensor& kept, const AttentionLayout& layout) {
    ctx->save_for_backward({q, k, v});
    // Undefined tensors (no mask, unpacked rows) are no inputs autograd takes: kept as None.
    auto opt = [](const torch::Tensor& t) { return t.defined() ? c10::IValue(t) : c10::IValue(); };
    ctx->saved_data["mask"] = opt(layout.mask);
    ctx->saved_data["segment_ids"] = opt(layout.segment_ids);
    ctx->saved_data["cp"] = reinterpret_cast<int64_t>(layout.cp);
    return kept;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    const auto saved = ctx->get_saved_variables();
    torch::AutoGradMode enable(true);
    auto q = saved[0].detach().requires_grad_(true);
    auto k = saved[1].detach().requires_grad_(true);
    auto v = saved[2].detach().requires_grad_(true);
    auto tensor = [&](const char* key) {
      const c10::IValue& t = ctx->saved_data[key];
      return t.isTensor() ? t.toTensor() : torch::Tensor();
    };
    AttentionLayout layout{tensor("mask"), tensor("segment_ids"),
                           reinterpret_cast<parallel::Communicator*>(
                               ctx->saved_data["cp"].toInt())};
    auto y = CausalAttention(q, k, v, layout);
    auto g = torch::autograd::grad({y}, {q, k, v}, {grad_out[0]});
    return {g[0], g[1], g[2], torch::Tensor(), torch::Tensor()};
  }
};

// exit(linear(x)), or its kept output while a tape replays.
torch::Tensor Project(torch::nn::Linear linear, const torch::Tensor& x,
                      const TensorHook& exit = nullptr) {
  if (current_tape != nullptr && current_tape_mode == OpTapeMode::kReplay) {
    return KeptProjection::apply(x, linear->weight, TakeFromTape());
  }
  auto y = ApplyHook(exit, linear(x));
  if (current_tape != nullptr) current_tape->outputs.push_back(y);
  return y;
}

torch::Tensor Attend(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                     const AttentionLayout& layout) {
  if (current_tape != nullptr && current_tape_mode == OpTapeMode::kReplay) {
    return KeptAttention::apply(q, k, v, TakeFromTape(), layout);
  }
  auto y = CausalAttention(q, k, v, layout);
  if (current_tape != nullptr) current_tape->outputs.push_back(y);
  return y;
}

}  // namespace

int64_t OpTape::bytes() const {
  int64_t n = 0;
  for (const auto& t : outputs) n += t.numel() * t.element_size();
  return n;
}

OpTapeScope::OpTapeScope(OpTape& tape, OpTapeMode mode)
    : previous_tape_(current_tape), previous_mode_(current_tape_mode) {
  current_tape = &tape;
  current_tape_mode = mode;
  if (mode == OpTapeMode::kReplay) tape.next = 0;
}

OpTapeScope::~OpTapeScope() {
  current_tape = previous_tape_;
  current_tape_mode = previous_mode_;
}

// --- KVCache ----------------------------------------------------------------------------------
KVCache KVCache::Create(const LlamaModel& model, int64_t batch, int64_t max_len) {
  KVCache c;
  c.max_len = max_len;
  const size_t layers = model.model->layer_list.size();
  c.k.resize(layers);
  c.v.resize(layers);
  c.key_valid = torch::ones({batch, max_len}, torch::dtype(torch::kBool).device(model.device()));
  return c;
}

// --- RmsNorm ----------------------------------------------------------------------------------
RmsNorm::RmsNorm(int64_t dim, double eps_) : eps(eps_) {
  weight = register_parameter("weight", torch::ones({dim}));
}

torch::Tensor RmsNorm::forward(const torch::Tensor& x) {
  auto h = x.to(torch::kFloat);
  auto var = h.pow(2).mean(-1, /*keepdim=*/true);
  h = h * torch::rsqrt(var + eps);
  return weight * h.to(x.scalar_type());
}

// --- Rotary -----------------------------------------------------------------------------------
Rotary::Rotary(const LlamaConfig& cfg) {
  // Operation for operation as transformers' _compute_default_rope_parameters and
  // _compute_llama3_parameters, in fp32, so the frequencies match bit for bit.
  const int64_t dim = cfg.head_dim;
  auto exps = torch::arange(0, dim, 2, torch::kLong).to(torch::kFloat) / dim;
  auto inv_freq = torch::pow(cfg.rope_theta, exps).reciprocal() * 1.0;
  if (cfg.rope_scaling.rope_type == "llama3") {
    const auto& rs = cfg.rope_scaling;
    const double old_len = static_cast<double>(rs.original_max_position_embeddings);
    const double low_freq_wavelen = old_len / rs.low_freq_factor;
    const double high_freq_wavelen = old_len / rs.high_freq_factor;
    auto wavelen = inv_freq.reciprocal() * (2 * M_PI);
    auto inv_freq_llama = torch::where(wavelen > low_freq_wavelen, inv_freq / rs.factor, inv_freq);
    auto smooth = (wavelen.reciprocal() * old_len - rs.low_freq_factor) /
                  (rs.high_freq_factor - rs.low_freq_factor);
    auto smoothed = torch::rsub(smooth, 1.0) * inv_freq_llama / rs.factor + smooth * inv_freq_llama;
    auto is_medium =
        (wavelen < high_freq_wavelen).logical_not() & (wavelen > low_freq_wavelen).logical_not();
    inv_freq_llama = torch::where(is_medium, smoothed, inv_freq_llama);
    inv_freq = inv_freq_llama;
  }
  inv_freq_ = inv_freq;
}

std::pair<torch::Tensor, torch::Tensor> Rotary::CosSin(const torch::Tensor& positions,
                                                       c10::ScalarType dtype) const {
  // (B, T, 1) * (D/2) -> (B, T, D/2); one fp32 product per element, like HF's K=1 matmul.
  if (!inv_freq_on_device_.defined() || inv_freq_on_device_.device() != positions.device()) {
    inv_freq_on_device_ = inv_freq_.to(positions.device());
  }
  auto freqs = positions.to(torch::kFloat).unsqueeze(-1) * inv_freq_on_device_;
  auto emb = torch::cat({freqs, freqs}, -1).unsqueeze(1);  // (B, 1, T, D)
  return {emb.cos().to(dtype), emb.sin().to(dtype)};
}

// --- Attention --------------------------------------------------------------------------------
LlamaAttention::LlamaAttention(const LlamaConfig& cfg, bool materialize)
    : head_dim(cfg.head_dim) {
  const int64_t c = cfg.hidden_size, q = cfg.num_attention_heads * head_dim,
                kv = cfg.num_key_value_heads * head_dim;
  q_proj = register_module("q_proj", MakeLinear(c, q, materialize));
  k_proj = register_module("k_proj", MakeLinear(c, kv, materialize));
  v_proj = register_module("v_proj", MakeLinear(c, kv, materialize));
  o_proj = register_module("o_proj", MakeLinear(q, c, materialize));
}

torch::Tensor LlamaAttention::forward(const torch::Tensor& x, const torch::Tensor& cos,
                                      const torch::Tensor& sin, const AttentionLayout& layout,
                                      KVCache* cache, int64_t layer) {
  const int64_t b = x.size(0), t = x.size(1);
  // Local head counts from the (possibly sharded) weights.
  const int64_t nh = q_proj->weight.size(0) / head_dim;
  const int64_t nkv = k_proj->weight.size(0) / head_dim;
  auto h = ApplyHook(enter_region, x);
  auto q = Project(q_proj, h).view({b, t, nh, head_dim}).transpose(1, 2);   // (B, H, T, D)
  auto k = Project(k_proj, h).view({b, t, nkv, head_dim}).transpose(1, 2);  // (B, Hkv, T, D)
  auto v = Project(v_proj, h).view({b, t, nkv, head_dim}).transpose(1, 2);
  q = q * cos + RotateHalf(q) * sin;
  k = k * cos + RotateHalf(k) * sin;
  if (cache != nullptr) {
    const int64_t off = cache->length;
    if (!cache->k[layer].defined()) {
      cache->k[layer] = torch::zeros({b, nkv, cache->max_len, head_dim}, k.options());
      cache->v[layer] = torch::zeros({b, nkv, cache->max_len, head_dim}, v.options());
    }
    cache->k[layer].slice(2, off, off + t).copy_(k);
    cache->v[layer].slice(2, off, off + t).copy_(v);
    k = cache->k[layer].slice(2, 0, off + t);
    v = cache->v[layer].slice(2, 0, off + t);
  }
  auto y = Attend(q, k, v, layout);  // (B, H, T, D)
  y = y.transpose(1, 2).reshape({b, t, nh * head_dim});
  return Project(o_proj, y, exit_region);
}

// --- MLP --------------------------------------------------------------------------------------
LlamaMlp::LlamaMlp(const LlamaConfig& cfg, bool materialize) {
  const int64_t c = cfg.hidden_size, f = cfg.intermediate_size;
  gate_proj = register_module("gate_proj", MakeLinear(c, f, materialize));
  up_proj = register_module("up_proj", MakeLinear(c, f, materialize));
  down_proj = register_module("down_proj", MakeLinear(f, c, materialize));
}

torch::Tensor LlamaMlp::forward(const torch::Tensor& x) {
  auto h = ApplyHook(enter_region, x);
  auto gate = Project(gate_proj, h);  // (B, T, F); gate before up, in record and in replay
  auto up = Project(up_proj, h);
  return Project(down_proj, F::silu(gate) * up, exit_region);
}

// --- Decoder layer ----------------------------------------------------------------------------
LlamaDecoderLayer::LlamaDecoderLayer(const LlamaConfig& cfg, bool materialize) {
  self_attn = register_module("self_attn", std::make_shared<LlamaAttention>(cfg, materialize));
  mlp = register_module("mlp", std::make_shared<LlamaMlp>(cfg, materialize));
  input_layernorm = register_module("input_layernorm",
                                    std::make_shared<RmsNorm>(cfg.hidden_size, cfg.rms_norm_eps));
  post_attention_layernorm = register_module(
      "post_attention_layernorm", std::make_shared<RmsNorm>(cfg.hidden_size, cfg.rms_norm_eps));
}

torch::Tensor LlamaDecoderLayer::forward(const torch::Tensor& x, const torch::Tensor& cos,
                                         const torch::Tensor& sin, const AttentionLayout& layout,
                                         KVCache* cache, int64_t layer) {
  auto h = x + self_attn->forward(input_layernorm->forward(x), cos, sin, layout, cache, layer);
  return h + mlp->forward(post_attention_layernorm->forward(h));
}

// --- Backbone ---------------------------------------------------------------------------------
LlamaBackbone::LlamaBackbone(const LlamaConfig& cfg, bool materialize) {
  torch::nn::EmbeddingOptions embed(cfg.vocab_size, cfg.hidden_size);
  // A given weight skips the default init, which would write (make resident) all V x C of it.
  if (!materialize) embed._weight(torch::empty({cfg.vocab_size, cfg.hidden_size}));
  embed_tokens = register_module("embed_tokens", torch::nn::Embedding(embed));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < cfg.num_hidden_layers; ++i) {
    auto layer = std::make_shared<LlamaDecoderLayer>(cfg, materialize);
    if (!materialize) Unmaterialize(*layer, torch::kFloat);
    layers->push_back(layer);
    layer_list.push_back(layer);
  }
  norm = register_module("norm", std::make_shared<RmsNorm>(cfg.hidden_size, cfg.rms_norm_eps));
}

// --- LlamaModel -------------------------------------------------------------------------------
LlamaModel::LlamaModel(const LlamaConfig& cfg, bool materialize) : cfg_(cfg), rotary_(cfg) {
  cfg_.Validate("LlamaModel config");
  model = register_module("model", std::make_shared<LlamaBackbone>(cfg, materialize));
  if (!cfg.tie_word_embeddings) {
    lm_head = register_module("lm_head",
                              MakeLinear(cfg.hidden_size, cfg.vocab_size, materialize));
    if (!materialize) Unmaterialize(*lm_head, torch::kFloat);
  }
}

std::vector<ParamUnit> LlamaModel::Units() {
  const bool tied = cfg_.tie_word_embeddings;
  std::vector<ParamUnit> units;
  units.push_back({"embed", {{"model.embed_tokens.weight", model->embed_tokens->weight,
                              /*decay=*/false, /*late=*/tied}}});
  for (size_t i = 0; i < model->layer_list.size(); ++i) {
    auto& layer = *model->layer_list[i];
    // Norm weights are not decayed: found by module type, not by name.
    std::set<const void*> norms;
    for (const auto* n : {layer.input_layernorm.get(), layer.post_attention_layernorm.get()}) {
      for (const auto& p : n->parameters()) norms.insert(p.unsafeGetTensorImpl());
    }
    ParamUnit u{fmt::format("layer.{}", i), {}};
    const std::string prefix = fmt::format("model.layers.{}.", i);
    for (const auto& p : layer.named_parameters(/*recurse=*/true)) {
      u.params.push_back({prefix + p.key(), p.value(),
                          norms.count(p.value().unsafeGetTensorImpl()) == 0, false});
    }
    units.push_back(std::move(u));
  }
  ParamUnit head{"head", {{"model.norm.weight", model->norm->weight, /*decay=*/false, false}}};
  if (!tied) head.params.push_back({"lm_head.weight", lm_head->weight, true, /*late=*/true});
  units.push_back(std::move(head));
  return units;
}

torch::nn::Linear MakeLinear(int64_t in, int64_t out, bool materialize) {
  if (materialize) return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(false));
  // Built at 1 x 1 (its default init then costs nothing), then given its real shape.
  auto linear = torch::nn::Linear(torch::nn::LinearOptions(1, 1).bias(false));
  linear->options.in_features(in).out_features(out);
  torch::NoGradGuard no_grad;
  linear->weight.set_data(torch::empty({out, in}));
  return linear;
}

void Unmaterialize(torch::nn::Module& module, c10::ScalarType dtype) {
  torch::NoGradGuard no_grad;
  for (auto& p : module.parameters(/*recurse=*/true)) {
    // Fresh anonymous pages straight from the kernel: malloc could hand back memory that is
    // already resident (freed by the default init a moment ago), defeating the point.
    const size_t bytes = static_cast<size_t>(p.numel()) * c10::elementSize(dtype);
    if (bytes == 0) {
      p.set_data(torch::empty(p.sizes(), torch::dtype(dtype)));
      continue;
    }
    void* mem = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mem == MAP_FAILED) {
      FT_THROW(ModelError, "cannot reserve {} bytes of address space for a parameter of shape {}",
               bytes, c10::str(p.sizes()));
    }
    p.set_data(torch::from_blob(mem, p.sizes(), [bytes](void* d) { ::munmap(d, bytes); },
                                torch::dtype(dtype)));
  }
}

void LlamaModel::InitWeights(int64_t seed) {
  torch::NoGradGuard no_grad;
  auto gen = at::detail::createCPUGenerator(static_cast<uint64_t>(seed));
  for (auto& p : named_parameters(/*recurse=*/true)) {
    const std::string& name = p.key();
    auto cpu = torch::empty(p.value().sizes(), torch::kFloat);
    const bool is_norm =
        name.size() >= 11 && name.compare(name.size() - 11, 11, "norm.weight") == 0;
    if (is_norm) {
      cpu.fill_(1.0);
    } else {
      cpu.normal_(0.0, cfg_.initializer_range, gen);
    }
    p.value().copy_(cpu);
  }
}

torch::Tensor LlamaModel::Embed(const torch::Tensor& tokens) { return model->embed_tokens(tokens); }

const torch::Tensor& LlamaModel::lm_head_weight() const {
  return lm_head ? lm_head->weight : model->embed_tokens->weight;
}

torch::Tensor LlamaModel::Logits(const torch::Tensor& hidden) {
  return F::linear(hidden, lm_head_weight());
}

torch::Tensor LlamaModel::CrossEntropySum(const torch::Tensor& hidden,
                                          const torch::Tensor& targets) {
  if (hidden.dim() == 2 && hidden.size(0) > 0) {
    return LinearCrossEntropySum::apply(hidden, lm_head_weight(), targets);
  }
  auto logits = Logits(hidden).to(torch::kFloat);
  return F::cross_entropy(logits, targets, F::CrossEntropyFuncOptions().reduction(torch::kSum));
}

c10::ScalarType LlamaModel::dtype() const { return model->norm->weight.scalar_type(); }
torch::Device LlamaModel::device() const { return model->norm->weight.device(); }

torch::Tensor LlamaModel::ForwardHidden(const torch::Tensor& tokens, const ForwardOptions& opt) {
  if (tokens.dim() != 2 || tokens.scalar_type() != torch::kLong) {
    FT_THROW(ModelError, "ForwardHidden: tokens must be (B, T) int64, got {} {}",
             c10::str(tokens.sizes()), c10::toString(tokens.scalar_type()));
  }
  const int64_t b = tokens.size(0), t = tokens.size(1);
  const auto dev = tokens.device();
  KVCache* cache = opt.cache;
  const int64_t off = cache != nullptr ? cache->length : 0;
  if (cache != nullptr) {
    if (opt.segment_ids.defined())
      FT_THROW(ModelError, "segment_ids cannot be combined with a KV cache");
    if (off + t > cache->max_len) {
      FT_THROW(ModelError, "KV cache overflow: {} cached + {} new positions > capacity {}", off, t,
               cache->max_len);
    }
    if (cache->key_valid.size(0) != b) {
      FT_THROW(ModelError, "KV cache was made for batch {}, got batch {}", cache->key_valid.size(0),
               b);
    }
  }
  torch::Tensor positions = opt.positions;
  if (positions.defined()) {
    if (positions.sizes() != tokens.sizes()) {
      FT_THROW(ModelError, "positions {} must have the shape of tokens {}",
               c10::str(positions.sizes()), c10::str(tokens.sizes()));
    }
  } else {
    positions = torch::arange(off, off + t, torch::dtype(torch::kLong).device(dev)).expand({b, t});
  }

  AttentionLayout layout;  // what the tokens attend to besides causality (models/attention.h)
  if (cache != nullptr) {
    const int64_t s = off + t;
    auto q_idx =
        torch::arange(off, s, torch::dtype(torch::kLong).device(dev)).unsqueeze(1);  // (T, 1)
    auto k_idx =
        torch::arange(0, s, torch::dtype(torch::kLong).device(dev)).unsqueeze(0);  // (1, S)
    auto valid = cache->key_valid.slice(1, 0, s).unsqueeze(1);                     // (B, 1, S)
    // A padded query sees at least itself, so no softmax row is all -inf.
    auto mask = ((k_idx <= q_idx).unsqueeze(0) & valid) | (k_idx == q_idx).unsqueeze(0);
    layout.mask = mask.unsqueeze(1);
  } else if (opt.segment_ids.defined()) {
    if (opt.segment_ids.sizes() != tokens.sizes()) {
      FT_THROW(ModelError, "segment_ids {} must have the shape of tokens {}",
               c10::str(opt.segment_ids.sizes()), c10::str(tokens.sizes()));
    }
    // On the host: the attention reads the document boundaries there (a device copy would make
    // the host wait once per layer).
    layout.segment_ids = opt.segment_ids.to(torch::kCPU);
  }
  if (opt.cp != nullptr && opt.cp->size() > 1) {
    if (cache != nullptr || opt.segment_ids.defined()) {
      FT_THROW(ModelError, "context parallelism takes neither a KV cache nor packed rows");
    }
    if (!opt.positions.defined()) {
      FT_THROW(ModelError, "context parallelism needs the global positions of this rank's tokens");
    }
    layout.cp = opt.cp;
  }

  auto x = Embed(tokens);  // (B, T, C)
  auto [cos, sin] = rotary_.CosSin(positions, x.scalar_type());
  if (layer_runner && cache != nullptr && torch::GradMode::is_enabled()) {
    FT_THROW(ModelError, "a KV cache with a layer runner needs no-grad mode (torch::NoGradGuard)");
  }
  for (size_t i = 0; i < model->layer_list.size(); ++i) {
    if (layer_runner) {
      auto layer = model->layer_list[i];
      const int64_t li = static_cast<int64_t>(i);
      TensorHook run = [layer, cos = cos, sin = sin, layout, cache, li](const torch::Tensor& h) {
        return layer->forward(h, cos, sin, layout, cache, li);
      };
      x = layer_runner(li, x, run);
    } else {
      x = model->layer_list[i]->forward(x, cos, sin, layout, cache, static_cast<int64_t>(i));
    }
  }
  if (cache != nullptr) cache->length += t;
  return model->norm->forward(x);
}

std::shared_ptr<LlamaModel> BuildLlama(const LlamaConfig& cfg, c10::ScalarType dtype,
                                       int64_t seed) {
  auto m = std::make_shared<LlamaModel>(cfg);
  m->InitWeights(seed);
  m->to(dtype);
  return m;
}

LossSum CausalLmLoss(LlamaModel& model, const torch::Tensor& tokens, const torch::Tensor& targets,
                     const torch::Tensor& loss_mask, const ForwardOptions& opt,
                     int64_t chunk_tokens) {
  if (targets.sizes() != tokens.sizes() || loss_mask.sizes() != tokens.sizes()) {
    FT_THROW(ModelError, "CausalLmLoss: tokens {}, targets {} and loss_mask {} must have one shape",
             c10::str(tokens.sizes()), c10::str(targets.sizes()), c10::str(loss_mask.sizes()));
  }
  FT_CHECK(chunk_tokens > 0, "chunk_tokens must be positive, got {}", chunk_tokens);
  auto hidden = model.ForwardHidden(tokens, opt);  // (B, T, C)
  // The masked rows' indices. nonzero must know its result's size: on a device mask that waits
  // for the device, on a host mask (what training passes: the loader's) it costs the device
  // nothing, and the indices follow from pinned memory without blocking.
  auto rows = loss_mask.reshape({-1}).ne(0).nonzero().squeeze(1);
  if (rows.device() != hidden.device()) {
    rows = (hidden.is_cuda() ? rows.pin_memory() : rows).to(hidden.device(), /*non_blocking=*/true);
  }
  auto h = hidden.reshape({-1, hidden.size(-1)}).index_select(0, rows);   // (N, C)
  auto t = targets.reshape({-1}).to(torch::kLong).index_select(0, rows);  // (N)
  LossSum out;
  out.count = torch::full({}, rows.size(0), torch::dtype(torch::kLong).device(rows.device()));
  if (rows.size(0) <= chunk_tokens) {
    out.loss_sum = model.CrossEntropySum(h, t);
  } else {
    out.loss_sum =
        ChunkedCrossEntropy::apply(h, t, reinterpret_cast<int64_t>(&model), chunk_tokens);
  }
  return out;
}

}  // namespace ftune::models
