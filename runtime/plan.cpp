#include "runtime/plan.h"

#include "models/attention.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <tuple>

#include "models/attention.h"
#include "parallel/compat.h"
#include "runtime/parallelize.h"

namespace ftune::runtime {
namespace {

constexpr double kGiB = double(1 << 30);

bool TpAllowed(const models::LlamaConfig& c, int64_t tp) {
  return c.num_attention_heads % tp == 0 && c.num_key_value_heads % tp == 0 &&
         c.intermediate_size % tp == 0 && c.vocab_size % tp == 0;
}

int64_t Numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// Parameters of this tp rank's embedding, head (final norm + lm_head) and one decoder layer.
struct UnitSizes {
  int64_t embed = 0, head = 0, layer = 0;
};

UnitSizes Units(const models::LlamaConfig& cfg, int64_t tp) {
  UnitSizes u;
  for (const auto& [name, info] : TensorParallelLayout(cfg, tp, 0)) {
    const int64_t n = Numel(info.local_shape());
    if (name.rfind("model.embed_tokens", 0) == 0) {
      u.embed += n;
    } else if (name.rfind("model.layers.0.", 0) == 0) {
      u.layer += n;
    } else if (name.rfind("model.layers.", 0) != 0) {
      u.head += n;
    }
  }
  return u;
}

// Sizes of one micro-batch on one tp rank, in elements; q, kv, inter, heads and v are this tp
// rank's share.
struct Shapes {
  double s, b, sb, e, h, q, kv, inter, heads, v, d;
  double row = 0, cp = 1;  // the whole row's tokens (s = row / cp under context parallelism)
};

Shapes ShapesOf(const PlanInput& in, int64_t tp) {
  const auto& c = in.model;
  Shapes x;
  x.row = double(in.seq_len), x.cp = double(in.cp);
  x.s = x.row / x.cp, x.b = double(in.micro_batch), x.e = double(in.elem_bytes);
  x.sb = x.s * x.b;
  x.h = double(c.hidden_size);
  x.q = double(c.num_attention_heads) * c.head_dim / tp;
  x.kv = double(c.num_key_value_heads) * c.head_dim / tp;
  x.inter = double(c.intermediate_size) / tp;
  x.heads = double(c.num_attention_heads) / tp;
  x.v = double(c.vocab_size) / tp;
  x.d = double(c.head_dim);
  return x;
}

// An RMSNorm keeps its input in fp32 (the input itself in fp32, a copy in bf16), on libtorch 1.x
// the squared input too (mean's backward keeps its input there), the rsqrt and its output.
double NormBytes(const Shapes& x) {
  const double squared = compat::kTorch2 ? 0.0 : 4.0;
  return x.sb * x.h * (4.0 + squared + x.e) + x.sb * 4.0;
}

// Block-wise attention (models/attention.h): context parallelism, and long rows where libtorch
// has no fused attention.
bool BlockAttention(const PlanInput& in) {
  return in.cp > 1 || (!in.flash_attention && in.seq_len >= models::kLongRowTokens);
}

// Block-wise attention's working set in its backward, besides what it keeps: for one tile of 512
// queries against one block of 512 keys, the fp32 probabilities and their gradient; the
// fp32 copies of q and of its gradient, the fp32 gradients of the row's K and V, and under cp the
// gathered K/V gradient the reduce-scatter sends.
double BlockAttentionBackBytes(const Shapes& x) {
  const double tile = std::min(512.0, x.cp > 1 ? x.s / 2 : x.s);
  return 2 * x.b * x.heads * tile * std::min(512.0, x.row) * 4 + 2 * x.sb * x.q * 4 +
         2 * x.b * x.row * x.kv * 4 + (x.cp > 1 ? 2 * x.b * x.row * x.kv * x.e : 0.0);
}

// What the attention keeps, the o_proj input included.
double AttentionBytes(const PlanInput& in, const Shapes& x) {
  if (BlockAttention(in)) {
    // q, the output and the o_proj input of this rank's tokens, the K/V of the whole row
    // (gathered over cp), the fp32 log-sum-exp.
    return x.sb * 3 * x.q * x.e + x.b * x.row * 2 * x.kv * x.e + x.b * x.heads * x.s * 4.0;
  }
  if (in.flash_attention) {  // q, k, v, the output, the o_proj input; the log-sum-exp
    return x.sb * (3 * x.q + 2 * x.kv) * x.e + x.b * x.heads * x.s * 4.0;
  }
  // Contiguous copies of q, k and v (k, v repeated to q's width under GQA), the o_proj input, the
  // fp32 probabilities (and their copy in the model's dtype), the causal mask.
  const double kv = std::max(x.kv, x.q);
  const double scores = x.b * x.heads * x.s * x.s;
  return x.sb * (2 * x.q + 2 * kv) * x.e + scores * (4.0 + (x.e != 4 ? x.e : 0.0)) + x.s * x.s;
}

// One decoder layer's bytes kept between forward and backward.
double LayerBytes(const PlanInput& in, const Shapes& x, LayerRecompute mode) {
  switch (mode) {
    case LayerRecompute::kFull:
      return x.sb * x.h * x.e;
    case LayerRecompute::kSelective:
      return x.sb * (3 * x.h + 2 * x.q + 2 * x.kv + 2 * x.inter) * x.e;
    case LayerRecompute::kNone:
      break;
  }
  return 2 * NormBytes(x) + 2 * x.sb * x.h * x.e + AttentionBytes(in, x) +
         4 * x.sb * x.inter * x.e;
}

// Rows of fp32 logits the loss computes at once: all target rows up to 1 GiB of them, else
// chunks of this many, recomputed in backward (Trainer::MicroBatchLoss).
double LossChunkRows(const Shapes& x) { return std::max(1024.0, kGiB / (4 * x.v)); }

// fp32 logits of `rows` rows and their log-sum-exp.
double LogitsBytes(const Shapes& x, double rows) { return rows * x.v * 4 + rows * 4; }

// Forward FLOPs of the attention's two products (full s x s, as the materialized path computes;
// a cp rank's queries against the whole row's keys).
double AttentionFlops(const Shapes& x) { return 4 * x.b * x.s * x.row * x.q; }

// Forward FLOPs of one decoder layer.
double LayerFlops(const Shapes& x) {
  return 2 * x.sb * x.h * (2 * x.q + 2 * x.kv + 3 * x.inter) + AttentionFlops(x);
}

std::string Gib(double bytes) { return fmt::format("{:.1f}", bytes / kGiB); }

// The model state of `params` parameters per tp rank (see the header).
ModelState StateOf(double p, int64_t elem_bytes, int64_t dp, int64_t zero, bool offload) {
  const double e = double(elem_bytes);
  const double own = zero == 0 ? p : p / dp;  // elements whose optimizer state this GPU keeps
  ModelState s;
  s.params = (zero == 3 ? p / dp : p) * e;
  s.grads = zero >= 2 ? own * 4 : p * e;
  if (offload) {
    s.host = own * 16;
  } else {
    s.optimizer = own * 8 + (elem_bytes != 4 ? own * 4 : 0.0);
  }
  return s;
}

}  // namespace

std::vector<ActivationCheckpointing> PlanPolicies(const ActivationCheckpointing& config) {
  std::vector<ActivationCheckpointing> out = {
      ActivationCheckpointing::Parse("none", 0), ActivationCheckpointing::Parse("selective", 0),
      ActivationCheckpointing::Parse("every_n", 2), ActivationCheckpointing::Parse("full", 0)};
  bool listed = false;
  for (const auto& p : out) listed = listed || p.Name() == config.Name();
  if (!listed) out.insert(out.begin() + 2, config);
  return out;
}

PlanInput PlanInputFor(const Config& cfg, const models::LlamaConfig& model, int64_t nodes,
                       int64_t gpus_per_node, double gpu_mem_bytes) {
  PlanInput in;
  in.model = model;
  in.elem_bytes = cfg.model.dtype == "bf16" ? 2 : 4;
  in.seq_len = cfg.data.max_seq_len;
  in.micro_batch = cfg.train.micro_batch;
  in.grad_accum = cfg.train.grad_accum;
  in.bucket_bytes = cfg.parallel.bucket_mb * double(1 << 20);
  in.nodes = nodes;
  in.gpus_per_node = gpus_per_node;
  in.gpu_mem_bytes = gpu_mem_bytes;
  in.policies = PlanPolicies(cfg.train.Checkpointing());
  in.offload_threads = cfg.parallel.offload_threads;
  in.cp = cfg.parallel.cp;
  return in;
}

LayoutPlan PlanConfigLayout(const PlanInput& in, const Config& cfg) {
  const int64_t gpus = in.nodes * in.gpus_per_node, tp = cfg.parallel.tp, ct = in.cp * tp;
  const int64_t dp = cfg.parallel.dp == -1 ? gpus / ct : cfg.parallel.dp;
  if (gpus % ct != 0 || dp != gpus / ct) {
    FT_THROW(ConfigError, "parallel.dp {} x parallel.cp {} x parallel.tp {} does not fill the {} "
             "GPU(s) planned; set parallel.dp: -1 or plan for dp x cp x tp GPUs",
             cfg.parallel.dp, in.cp, tp, gpus);
  }
  const auto policy = cfg.train.Checkpointing();
  policy.CheckLayers(in.model.num_hidden_layers);
  CheckTensorParallel(in.model, tp);
  return PlanLayout(in, dp, tp, cfg.parallel.zero, policy, cfg.parallel.offload == "optimizer");
}

int64_t ParamsPerTpRank(const models::LlamaConfig& cfg, int64_t tp) {
  int64_t n = 0;
  for (const auto& [name, info] : TensorParallelLayout(cfg, tp, 0)) n += Numel(info.local_shape());
  return n;
}

ModelState PlanModelState(const models::LlamaConfig& cfg, int64_t elem_bytes, int64_t dp,
                          int64_t tp, int64_t zero) {
  return StateOf(double(ParamsPerTpRank(cfg, tp)), elem_bytes, dp, zero, false);
}

ActivationPlan PlanActivations(const PlanInput& in, int64_t tp,
                               const ActivationCheckpointing& policy) {
  const Shapes x = ShapesOf(in, tp);
  ActivationPlan a;
  for (int64_t i = 0; i < in.model.num_hidden_layers; ++i) {
    a.layers += LayerBytes(in, x, policy.ForLayer(i));
  }
  // The final norm, the hidden rows the loss reads (every token a target at most), RoPE's cos/sin.
  a.head = NormBytes(x) + x.sb * x.h * x.e + 2 * x.sb * x.d * x.e;
  a.logits_kept = x.sb <= LossChunkRows(x) ? LogitsBytes(x, x.sb) : 0.0;
  return a;
}

const char* StepPeak::Name() const {
  switch (when) {
    case When::kLoss:
      return "loss";
    case When::kLayer:
      return "layer";
    case When::kUpdate:
      return "update";
  }
  return "loss";
}

LayoutPlan PlanLayout(const PlanInput& in, int64_t dp, int64_t tp, int64_t zero,
                      const ActivationCheckpointing& policy, bool offload) {
  const auto& c = in.model;
  const double e = double(in.elem_bytes);
  const Shapes x = ShapesOf(in, tp);
  const UnitSizes u = Units(c, tp);
  const int64_t layers = c.num_hidden_layers;
  LayoutPlan p;
  p.dp = dp, p.cp = in.cp, p.tp = tp, p.zero = zero, p.checkpointing = policy;
  p.offload = offload;
  p.params_per_gpu = ParamsPerTpRank(c, tp);
  const int64_t replicas = dp * in.cp;  // gradients and ZeRO shards span dp x cp
  p.state = StateOf(double(p.params_per_gpu), in.elem_bytes, replicas, zero, offload);
  p.acts = PlanActivations(in, tp, policy);

  // The step's peak (see the header): the loss's backward, each layer's backward, the optimizer.
  const double ends = double(u.embed + u.head) * e, layer = double(u.layer) * e;
  const double lm_head = x.v * x.h * e;  // its gradient (the embedding's when tied)
  std::vector<double> kept(layers);
  for (int64_t i = 0; i < layers; ++i) kept[i] = LayerBytes(in, x, policy.ForLayer(i));
  const double none = LayerBytes(in, x, LayerRecompute::kNone);
  // fp32 staging bytes per byte of a 16-bit gradient being reduced (staged_reductions).
  const double wire = in.staged_reductions && x.e != 4 ? 4 / x.e : 0.0;
  StepPeak loss;
  loss.when = StepPeak::When::kLoss;
  const double rows = std::min(x.sb, LossChunkRows(x));
  loss.activations = p.acts.layers + p.acts.head + LogitsBytes(x, rows) +
                     (x.e != 4 ? rows * x.v * x.e : 0.0) + rows * x.h * x.e +
                     x.sb * x.h * x.e + lm_head;
  loss.gathered = zero == 3 ? ends + layer : 0.0;  // the last layer stays whole into backward
  loss.bytes = loss.activations + loss.gathered;
  StepPeak worst = loss;
  // ZeRO-2/3 buckets: a unit each under ZeRO-3; under ZeRO-0-2 about bucket_mb, a parameter
  // larger than that alone, the lm_head (whose gradient arrives in pieces) apart.
  const double late = c.tie_word_embeddings ? double(u.embed) : x.v * x.h;  // elements
  const double biggest = std::max(x.v * x.h, x.inter * x.h);
  const double bucket =
      zero == 3 ? layer
                : std::max(std::min(in.bucket_bytes, (double(p.params_per_gpu) - late) * e),
                           biggest * e);
  double below = 0;  // kept by the layers under i
  for (int64_t i = 0; i < layers; ++i) below += kept[i];
  for (int64_t i = layers - 1; i >= 0; --i) {
    below -= kept[i];
    StepPeak b;
    b.when = StepPeak::When::kLayer;
    b.layer = i;
    const double back = policy.ForLayer(i) == LayerRecompute::kNone ? 0.0 : none - kept[i];
    // Gradients through the SwiGLU (product, silu, gate) and of the layer's output; later in the
    // layer's backward, block-wise attention's working set if larger, by when the SwiGLU's
    // activations are gone (silu and product; gate and up too unless selective keeps them).
    const double swiglu = (policy.ForLayer(i) == LayerRecompute::kSelective ? 2 : 4) * x.inter *
                          x.sb * x.e;
    const double flowing =
        std::max((3 * x.inter + x.h) * x.sb * x.e,
                 BlockAttention(in) ? BlockAttentionBackBytes(x) + x.sb * x.h * x.e - swiglu
                                    : 0.0);
    b.activations = below + kept[i] + back + flowing;
    if (zero == 3) b.gathered = ends + (i > 0 ? 2 : 1) * layer;
    // The layers after i have produced their gradients (this layer's arrive at the end of its
    // backward). Complete buckets are reduced: under ZeRO-2/3 reduce-scattered two at a time,
    // each with its flattened gradient and the owned slice it reduces into; the rest still fills.
    const double produced = double(layers - 1 - i) * layer;
    const double complete = std::floor(produced / bucket);
    if (zero >= 2) {
      const double filling = produced - complete * bucket;
      b.grads = lm_head + filling + std::min(complete, 2.0) * (bucket + bucket / replicas) * (1 + wire);
    } else {
      b.grads = complete * bucket * wire;  // all-reduced in place, staged while in flight
    }
    b.bytes = b.activations + b.gathered + b.grads;
    if (b.bytes > worst.bytes) worst = b;
  }
  StepPeak opt;
  opt.when = StepPeak::When::kUpdate;
  const double largest =  // elements of the largest bucket
      zero == 3 ? double(std::max({u.embed, u.head, u.layer})) : std::max(bucket / e, late);
  const double owned = zero == 0 ? largest : largest / replicas;
  // The update's fp32 temporaries: two of the plain ops (none fused), in bf16 under ZeRO-0/1 the
  // gradient slice in fp32. Offloaded they are host memory, once per update thread at most.
  double temps = compat::kFusedAdamW ? 0.0 : 2 * 4 * owned;
  if (offload) {
    const double buckets =
        zero == 3 ? double(layers + 2) : std::ceil(double(p.params_per_gpu) * e / bucket);
    p.host = p.state.host + std::min(buckets, double(in.offload_threads)) * temps;
  } else {
    if (zero <= 1 && x.e != 4) temps += 4 * owned;
    opt.bytes += temps;
  }
  if ((zero == 1 || zero == 2) && replicas > 1) {
    opt.bytes += double(p.params_per_gpu) * e / replicas;
  }
  // Before it, at the end of backward: ZeRO-0/1's all-reduces of every bucket still in flight.
  if (zero <= 1) opt.bytes = std::max(opt.bytes, double(p.params_per_gpu) * e * wire);
  if (opt.bytes > worst.bytes) worst = opt;
  p.peak = worst;

  p.overhead = in.overhead_bytes;
  p.total = p.state.total() + p.peak.bytes + p.overhead;
  p.fits = p.total <= in.gpu_mem_bytes;
  p.headroom = p.total <= 0.9 * in.gpu_mem_bytes;
  // Recompute: a full layer's forward again per recomputed layer; selective's backward recomputes
  // the attention's two products (and element-wise ops, negligible in FLOPs). A step is about
  // three forwards (forward, and backward's two products per matmul).
  double extra = 0, full_layers = 0;
  for (int64_t i = 0; i < layers; ++i) {
    switch (policy.ForLayer(i)) {
      case LayerRecompute::kFull:
        extra += LayerFlops(x);
        full_layers += 1;
        break;
      case LayerRecompute::kSelective:
        extra += AttentionFlops(x);
        break;
      case LayerRecompute::kNone:
        break;
    }
  }
  const double forward = double(layers) * LayerFlops(x) + 2 * x.sb * x.h * x.v;
  p.recompute = extra / (3 * forward);
  const double pe = double(p.params_per_gpu) * e;
  const double f = replicas > 1 ? double(replicas - 1) / replicas : 0.0;
  const double dp_factor = zero == 1 ? 3.0 : zero == 3 ? 3.0 * in.grad_accum : 2.0;
  p.dp_comm_bytes = dp_factor * f * pe;
  if (in.cp > 1) {
    // Per layer the K/V of the whole row all-gathered in forward (again when the layer is
    // recomputed in full, or when selective recompute re-runs the attention) and their gradient
    // reduce-scattered in backward: each (cp - 1) / cp of b * row * 2kv elements sent per rank.
    const double kv = double(in.cp - 1) / in.cp * x.b * x.row * 2 * x.kv * e;
    double passes = 0;
    for (int64_t i = 0; i < layers; ++i) {
      passes += policy.ForLayer(i) == LayerRecompute::kNone ? 2.0 : 3.0;
    }
    p.cp_comm_bytes = passes * kv * in.grad_accum;
  }
  if (tp > 1) {
    // 4 all-reduces of s*b*h per layer (2 forward, 2 backward) + the embedding; a fully
    // recomputed layer repeats its 2 forward ones (selective replays their kept results).
    const double ft = 2.0 * double(tp - 1) / tp;
    p.tp_comm_bytes =
        (4.0 * double(layers) + 2.0 * full_layers + 1.0) * ft * x.sb * x.h * e * in.grad_accum;
  }
  return p;
}

std::vector<LayoutPlan> PlanLayouts(const PlanInput& in) {
  const auto& c = in.model;
  const int64_t world = in.nodes * in.gpus_per_node;
  std::vector<LayoutPlan> out;
  for (int64_t tp = 1; tp <= in.gpus_per_node; ++tp) {
    if (in.gpus_per_node % tp != 0 || world % (tp * in.cp) != 0 || !TpAllowed(c, tp)) continue;
    for (int64_t zero = 0; zero <= 3; ++zero) {
      for (bool offload : {false, true}) {
        for (const auto& policy : in.policies) {
          if (policy.policy() == ActivationCheckpointing::Policy::kEveryN &&
              policy.every() > c.num_hidden_layers) {
            continue;  // recomputes no layer: the trainer refuses it
          }
          out.push_back(PlanLayout(in, world / (tp * in.cp), tp, zero, policy, offload));
        }
      }
    }
  }
  return out;
}

int64_t PlanMaxSeqLen(PlanInput in, const Config& cfg) {
  const int64_t step = 2 * in.cp * 64;  // rows cut into 2 * cp chunks of a multiple of 64
  auto fits = [&](int64_t seq) {
    in.seq_len = seq;
    return PlanConfigLayout(in, cfg).fits;
  };
  if (!fits(step)) return 0;
  int64_t lo = 1, hi = 2;  // in steps: lo fits, hi unknown
  while (hi < (int64_t(1) << 24) / step && fits(hi * step)) lo = hi, hi *= 2;
  if (hi >= (int64_t(1) << 24) / step) return lo * step;
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    (fits(mid * step) ? lo : hi) = mid;
  }
  return lo * step;
}

int RecommendLayout(const std::vector<LayoutPlan>& plans) {
  auto key = [](const LayoutPlan& p) {
    const bool whole_layers = p.checkpointing.policy() == ActivationCheckpointing::Policy::kFull ||
                              p.checkpointing.policy() == ActivationCheckpointing::Policy::kEveryN;
    return std::make_tuple(!p.headroom, p.offload, whole_layers, p.tp, p.recompute,
                           p.dp_comm_bytes, p.zero);
  };
  int best = -1;
  for (size_t i = 0; i < plans.size(); ++i) {
    if (!plans[i].fits) continue;
    if (best < 0 || key(plans[i]) < key(plans[best])) best = static_cast<int>(i);
  }
  return best;
}

std::string PlanReport(const PlanInput& in, const std::vector<LayoutPlan>& plans,
                       const LayoutPlan* config) {
  const auto& c = in.model;
  std::string r;
  const int64_t total_params = ParamsPerTpRank(c, 1);
  r += fmt::format(
      "model: {:.2f} B parameters ({} layers, hidden {}, {} heads / {} kv heads, ffn {}, vocab {}{})\n"
      "run: {} | seq {}{} x micro-batch {} x grad_accum {} | {} node(s) x {} GPU(s), {} GiB each "
      "(reserving {} GiB for CUDA/NCCL/allocator) | attention: {}\n\n",
      total_params / 1e9, c.num_hidden_layers, c.hidden_size, c.num_attention_heads,
      c.num_key_value_heads, c.intermediate_size, c.vocab_size,
      c.tie_word_embeddings ? ", tied embeddings" : "", in.elem_bytes == 2 ? "bf16" : "fp32",
      in.seq_len,
      in.cp > 1 ? fmt::format(" over cp {} ({} tokens per rank)", in.cp, in.seq_len / in.cp)
                : "",
      in.micro_batch, in.grad_accum, in.nodes, in.gpus_per_node, Gib(in.gpu_mem_bytes),
      Gib(in.overhead_bytes),
      BlockAttention(in)      ? "block-wise (no s^2 term)"
      : in.flash_attention    ? "fused (no s^2 term)"
                              : "materialized softmax");
  r += "  dp  tp zero recompute  +flops offload | params  grads  optim   acts |   peak at       | "
       " total GiB fits | host GiB | comm GB/step dp     tp\n";
  const int best = RecommendLayout(plans);
  auto row = [&](const LayoutPlan& p, bool recommended) {
    return fmt::format(
        "{:4} {:3} {:4} {:>9} {:>6.1f}% {:>7} | {:>6} {:>6} {:>6} {:>6} | {:>6} {:<9} | {:>10} "
        "{:>4} | {:>8} | {:>15.1f} {:>6.1f}{}\n",
        p.dp, p.tp, p.zero, p.checkpointing.Name(), 100 * p.recompute,
        p.offload ? "optim" : "-", Gib(p.state.params), Gib(p.state.grads),
        Gib(p.state.optimizer), Gib(p.acts.kept()), Gib(p.peak.bytes), p.peak.Name(),
        Gib(p.total), p.fits ? "yes" : "no", p.offload ? Gib(p.host) : "-",
        p.dp_comm_bytes / 1e9, p.tp_comm_bytes / 1e9, recommended ? "  <- recommended" : "");
  };
  // Offload rows only where the same layout without offload lacks 10 % headroom (the others
  // are planned and considered, but offload would only cost there).
  std::set<std::tuple<int64_t, int64_t, std::string>> roomy;
  for (const auto& p : plans) {
    if (!p.offload && p.headroom) roomy.insert({p.tp, p.zero, p.checkpointing.Name()});
  }
  for (size_t i = 0; i < plans.size(); ++i) {
    const auto& p = plans[i];
    const bool shown = !p.offload || !roomy.count({p.tp, p.zero, p.checkpointing.Name()});
    if (shown || static_cast<int>(i) == best) r += row(p, static_cast<int>(i) == best);
  }
  r += "\nacts: activations kept from forward to backward (one micro-batch). peak: the most the "
       "step holds besides the model state, at the loss's backward, a layer's backward or the "
       "update (activations, recompute, ZeRO-3's gathered layers, gradients in flight, the "
       "optimizer's temporaries). total = params + grads + optim + peak + the reserve. offload "
       "optim: parallel.offload=optimizer, its state and update in host memory (host GiB per GPU; "
       "listed where the layout without it lacks 10% headroom).\n";
  if (config != nullptr) {
    const auto& p = *config;
    r += fmt::format(
        "this config: dp {} cp {} tp {} zero {} {}{}: {} GiB of {} GiB per GPU ({}), {:.1f}% of "
        "the step's FLOPs recomputed{}\n",
        p.dp, p.cp, p.tp, p.zero, p.checkpointing.Name(),
        p.offload ? fmt::format(", optimizer offloaded ({} GiB of host memory per GPU)", Gib(p.host))
                  : "",
        Gib(p.total), Gib(in.gpu_mem_bytes),
        p.headroom ? "fits with 10% headroom" : p.fits ? "fits, without 10% headroom"
                                                        : "DOES NOT FIT",
        100 * p.recompute,
        p.cp > 1 ? fmt::format(", {:.1f} GB sent per GPU per step over cp", p.cp_comm_bytes / 1e9)
                 : "");
  }
  if (best < 0) {
    r += "\nno layout fits: use more GPUs, a shorter data.max_seq_len or a smaller "
         "train.micro_batch (with a larger train.grad_accum)\n";
  } else {
    const auto& p = plans[best];
    const auto settings = p.checkpointing.Settings();
    const auto space = settings.find(' ');
    const std::string sets =
        space == std::string::npos
            ? "--set " + settings
            : "--set " + settings.substr(0, space) + " --set " + settings.substr(space + 1);
    r += fmt::format(
        "\nrecommended: --set parallel.dp={}{} --set parallel.tp={} --set parallel.zero={} {}{} ({} "
        "GiB of {} GiB per GPU{}). Chosen among the layouts that fit with 10% headroom: without "
        "optimizer offload first, then no whole layer recomputed (none or selective), then the "
        "smallest tp, then the least recompute, then the fewest bytes sent over dp.\n",
        p.dp, p.cp > 1 ? fmt::format(" --set parallel.cp={}", p.cp) : "", p.tp, p.zero, sets,
        p.offload ? " --set parallel.offload=optimizer" : "",
        Gib(p.total), Gib(in.gpu_mem_bytes),
        p.offload ? fmt::format("; host: {} GiB per GPU, {} GiB per node", Gib(p.host),
                                Gib(p.host * double(in.gpus_per_node)))
                  : "");
  }
  return r;
}

}  // namespace ftune::runtime
