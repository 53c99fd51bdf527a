#include "runtime/plan.h"

#include <fmt/format.h>

#include <algorithm>
#include <tuple>

#include "runtime/parallelize.h"

namespace ftune::runtime {
namespace {

constexpr double kGiB = double(1 << 30);
constexpr double kLogitsBudget = kGiB;  // CausalLmLoss chunks past 1 GiB of fp32 logits

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

// Bytes backward keeps for one decoder layer and one micro-batch (see the header).
double LayerActivationBytes(const PlanInput& in, int64_t tp) {
  const auto& c = in.model;
  const double sb = double(in.seq_len) * in.micro_batch, e = double(in.elem_bytes);
  const double h = c.hidden_size, qd = double(c.num_attention_heads) * c.head_dim;
  const double kvd = double(c.num_key_value_heads) * c.head_dim, inter = c.intermediate_size;
  double elems = 2 * sb * h;                    // the two RMSNorm inputs
  elems += sb * h + sb * (qd + 2 * kvd) / tp;   // attention input; q, k, v
  elems += sb * qd / tp;                        // attention output (o_proj input)
  if (!in.flash_attention) {                    // softmax probabilities
    elems += double(c.num_attention_heads) / tp * in.seq_len * double(in.seq_len) * in.micro_batch;
  }
  elems += sb * h + 4 * sb * inter / tp;        // MLP input; gate, up, silu(gate), product
  return elems * e;
}

std::string Gib(double bytes) { return fmt::format("{:.1f}", bytes / kGiB); }

}  // namespace

int64_t ParamsPerTpRank(const models::LlamaConfig& cfg, int64_t tp) {
  int64_t n = 0;
  for (const auto& [name, info] : TensorParallelLayout(cfg, tp, 0)) n += Numel(info.local_shape());
  return n;
}

namespace {

// The model state of `params` parameters per tp rank (see the header).
ModelState StateOf(double p, int64_t elem_bytes, int64_t dp, int64_t zero) {
  const double e = double(elem_bytes);
  const double own = zero == 0 ? p : p / dp;  // elements whose optimizer state this GPU keeps
  ModelState s;
  s.params = (zero == 3 ? p / dp : p) * e;
  s.grads = zero >= 2 ? own * 4 : p * e;
  s.optimizer = own * 8 + (elem_bytes != 4 ? own * 4 : 0.0);
  return s;
}

}  // namespace

ModelState PlanModelState(const models::LlamaConfig& cfg, int64_t elem_bytes, int64_t dp,
                          int64_t tp, int64_t zero) {
  return StateOf(double(ParamsPerTpRank(cfg, tp)), elem_bytes, dp, zero);
}

std::vector<LayoutPlan> PlanLayouts(const PlanInput& in) {
  const auto& c = in.model;
  const int64_t world = in.nodes * in.gpus_per_node;
  const double e = double(in.elem_bytes);
  const double sbh = double(in.seq_len) * in.micro_batch * c.hidden_size;
  std::vector<LayoutPlan> out;
  for (int64_t tp = 1; tp <= in.gpus_per_node; ++tp) {
    if (in.gpus_per_node % tp != 0 || !TpAllowed(c, tp)) continue;
    const int64_t dp = world / tp;
    const int64_t params = ParamsPerTpRank(c, tp);
    const UnitSizes u = Units(c, tp);
    const double layer_act = LayerActivationBytes(in, tp);
    const double full_logits =
        4.0 * in.seq_len * in.micro_batch * (double(c.vocab_size) / tp);
    for (int64_t zero = 0; zero <= 3; ++zero) {
      for (bool ckpt : {false, true}) {
        LayoutPlan p;
        p.dp = dp, p.tp = tp, p.zero = zero, p.activation_checkpointing = ckpt;
        p.params_per_gpu = params;
        p.state = StateOf(double(params), in.elem_bytes, dp, zero);
        const double ends = double(u.embed + u.head);
        // DataParallel keeps at most 3 full-size gradient buckets in flight (ZeRO-2/3), plus
        // the embedding / head gradients, which arrive in pieces and are reduced at the end.
        if (zero == 3) {  // units: embedding + head for the micro-batch, a layer + the next one
          p.transient = (ends + 2.0 * u.layer) * e + (ends + 3.0 * u.layer) * e;
        } else if (zero == 2) {
          p.transient = ends * e + 3.0 * std::min(in.bucket_bytes, double(u.layer) * e);
        }
        const double layers = double(c.num_hidden_layers);
        p.activations = ckpt ? layers * sbh * e + layer_act : layers * layer_act;
        p.logits = 2.0 * std::min(full_logits, kLogitsBudget);  // logits and their gradient
        p.overhead = in.overhead_bytes;
        p.total = p.state.total() + p.transient + p.activations + p.logits + p.overhead;
        p.fits = p.total <= in.gpu_mem_bytes;
        p.headroom = p.total <= 0.9 * in.gpu_mem_bytes;
        const double pe = double(p.params_per_gpu) * e, f = dp > 1 ? double(dp - 1) / dp : 0.0;
        const double dp_factor = zero == 1 ? 3.0 : zero == 3 ? 3.0 * in.grad_accum : 2.0;
        p.dp_comm_bytes = dp_factor * f * pe;
        if (tp > 1) {  // 4 all-reduces of s*b*h per layer (2 forward, 2 backward) + the embedding
          const double ft = 2.0 * double(tp - 1) / tp;
          p.tp_comm_bytes = (4.0 * layers + 1.0) * ft * sbh * e * in.grad_accum;
        }
        out.push_back(p);
      }
    }
  }
  return out;
}

int RecommendLayout(const std::vector<LayoutPlan>& plans) {
  auto key = [](const LayoutPlan& p) {
    return std::make_tuple(!p.headroom, p.activation_checkpointing, p.tp, p.zero);
  };
  int best = -1;
  for (size_t i = 0; i < plans.size(); ++i) {
    if (!plans[i].fits) continue;
    if (best < 0 || key(plans[i]) < key(plans[best])) best = static_cast<int>(i);
  }
  return best;
}

std::string PlanReport(const PlanInput& in, const std::vector<LayoutPlan>& plans) {
  const auto& c = in.model;
  std::string r;
  const int64_t total_params = ParamsPerTpRank(c, 1);
  r += fmt::format(
      "model: {:.2f} B parameters ({} layers, hidden {}, {} heads / {} kv heads, ffn {}, vocab {}{})\n"
      "run: {} | seq {} x micro-batch {} x grad_accum {} | {} node(s) x {} GPU(s), {} GiB each "
      "(reserving {} GiB for CUDA/NCCL/allocator) | attention: {}\n\n",
      total_params / 1e9, c.num_hidden_layers, c.hidden_size, c.num_attention_heads,
      c.num_key_value_heads, c.intermediate_size, c.vocab_size,
      c.tie_word_embeddings ? ", tied embeddings" : "", in.elem_bytes == 2 ? "bf16" : "fp32",
      in.seq_len, in.micro_batch, in.grad_accum, in.nodes, in.gpus_per_node,
      Gib(in.gpu_mem_bytes), Gib(in.overhead_bytes),
      in.flash_attention ? "flash (no s^2 term)" : "materialised softmax");
  r += "  dp  tp zero ckpt | params  grads  optim transient   acts logits |  total GiB fits | "
       "comm GB/step dp     tp\n";
  const int best = RecommendLayout(plans);
  for (size_t i = 0; i < plans.size(); ++i) {
    const auto& p = plans[i];
    r += fmt::format("{:4} {:3} {:4} {:>4} | {:>6} {:>6} {:>6} {:>9} {:>6} {:>6} | {:>10} {:>4} | "
                     "{:>15.1f} {:>6.1f}{}\n",
                     p.dp, p.tp, p.zero, p.activation_checkpointing ? "on" : "off",
                     Gib(p.state.params), Gib(p.state.grads), Gib(p.state.optimizer),
                     Gib(p.transient), Gib(p.activations), Gib(p.logits), Gib(p.total),
                     p.fits ? "yes" : "no", p.dp_comm_bytes / 1e9, p.tp_comm_bytes / 1e9,
                     static_cast<int>(i) == best ? "  <- recommended" : "");
  }
  if (best < 0) {
    r += "\nno layout fits: use more GPUs, a shorter data.max_seq_len or a smaller "
         "train.micro_batch (with a larger train.grad_accum)\n";
  } else {
    const auto& p = plans[best];
    r += fmt::format(
        "\nrecommended: --set parallel.dp={} --set parallel.tp={} --set parallel.zero={} --set "
        "train.activation_checkpointing={} ({} GiB of {} GiB per GPU). Chosen among the layouts "
        "that fit with 10% headroom: no activation checkpointing first, then the smallest tp, "
        "then the lowest ZeRO stage.\n",
        p.dp, p.tp, p.zero, p.activation_checkpointing ? "true" : "false", Gib(p.total),
        Gib(in.gpu_mem_bytes));
  }
  return r;
}

}  // namespace ftune::runtime
