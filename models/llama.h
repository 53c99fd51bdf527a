// The Llama decoder (HF `LlamaForCausalLM`) as torch::nn modules.
//
// Parameter names are exactly HF's (`model.embed_tokens.weight`,
// `model.layers.{i}.self_attn.q_proj.weight`, ..., `model.norm.weight`, `lm_head.weight`; the
// last is absent when tie_word_embeddings, and the embedding matrix then serves as lm_head), so
// state dicts, safetensors checkpoints and the collective checkpoint share one naming.
//
// The math follows transformers' modeling_llama: RMSNorm in fp32 then cast back and scaled by
// the weight; RoPE in rotate-half layout with cos/sin computed in fp32 (llama3 frequency scaling
// as `_compute_llama3_parameters`); GQA attention through models/attention.h; SwiGLU MLP; no biases.
//
// Extension points for tensor/vocab parallelism (applied from outside by a Parallelize step):
//  * Attention derives its local head counts at forward time from q_proj / k_proj weight shapes
//    divided by head_dim, so q/k/v/o and gate/up/down can be replaced by shards
//    (`replace_module("q_proj", ...)`; the members are public registered torch::nn::Linear).
//  * LlamaAttention and LlamaMlp apply two optional hooks: `enter_region` to their input before
//    the column-parallel projections (Megatron's copy-to-region) and `exit_region` to the output
//    of o_proj / down_proj (reduce-from-region). Empty hooks are the identity.
//  * LlamaModel's Embed(), Logits() and CrossEntropySum() are virtual: a vocab-parallel model
//    overrides them (the chunked loss reaches the lm_head only through these).
//  * `layer_runner` wraps each decoder layer's call (activation checkpointing, ZeRO-3 gathers),
//    and an OpTape lets such a wrapper keep the layer's matmul and attention outputs and replay
//    them while it recomputes the rest (selective recompute).
//
// Thread safety: a module is used by one thread at a time.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "models/attention.h"
#include "models/llama_config.h"

namespace ftune::models {

class LlamaModel;

// Keys and values of every layer for incremental decoding. One cache serves one batch of
// sequences that advance in lock step. A layer's buffers are allocated at its first forward, at
// full capacity, with the head count its weights have then: under tensor parallelism this rank's
// kv heads only (Hkv / tp), and under ZeRO-3 the layer is whole only while it computes.
struct KVCache {
  std::vector<torch::Tensor> k, v;  // per layer (B, Hkv local, max_len, D): dtype, device of k
  torch::Tensor key_valid;          // (B, max_len) bool; false marks left padding (never attended)
  int64_t length = 0;               // positions filled so far
  int64_t max_len = 0;

  // One (not yet allocated) slot per decoder layer of the model; all keys valid.
  static KVCache Create(const LlamaModel& model, int64_t batch, int64_t max_len);
};

struct ForwardOptions {
  // (B, T) int64 RoPE positions; default cache length + 0..T-1 for every row.
  torch::Tensor positions;
  // (B, T) int32/int64: packed sequences; a token attends only to earlier tokens of its own run
  // of equal ids (a document). The caller passes positions that restart per segment. Not
  // combinable with `cache`. Best on the host (the attention reads the boundaries there).
  torch::Tensor segment_ids;
  // Context parallelism: the cp group (parallel/context_parallel.h). tokens and `positions`
  // (required) are this rank's two chunks of every row, positions global. Not combinable with
  // `cache` or `segment_ids`.
  parallel::Communicator* cp = nullptr;
  // Incremental decoding: keys/values of these T tokens are appended at cache->length, the
  // queries attend to all valid cached keys before them, and cache->length grows by T.
  KVCache* cache = nullptr;
};

using TensorHook = std::function<torch::Tensor(const torch::Tensor&)>;

// Selective activation recomputation inside a decoder layer (torchtitan's op-level policy).
// While a tape records (OpTapeScope with kRecord: the layer's forward, without grad), the layer's
// expensive calls append their outputs to it: each projection (q/k/v/o, gate/up/down, o and down
// with their exit_region hook) and the attention. While it replays (kReplay: the layer run again
// in backward, with grad), the same calls in the same order take those outputs back instead of
// computing them, each behind an autograd node of its own: a projection's backward is its
// linear's (grad input = g W, grad weight = g^T x; exit_region's backward must be the identity,
// as Megatron's reduce-from-region is), the attention's recomputes the attention from its
// inputs and backpropagates through it (the scores are not kept). So only the cheap ops between
// them run twice: RMSNorm, RoPE, SiLU and its product, the residual adds. The tape owns the
// outputs; a scope installs it for the calling thread only.
struct OpTape {
  std::vector<torch::Tensor> outputs;
  size_t next = 0;  // replay position
  // Bytes of the kept outputs.
  int64_t bytes() const;
};
enum class OpTapeMode { kRecord, kReplay };
class OpTapeScope {
 public:
  OpTapeScope(OpTape& tape, OpTapeMode mode);  // replay starts at the tape's first output
  ~OpTapeScope();
  OpTapeScope(const OpTapeScope&) = delete;
  OpTapeScope& operator=(const OpTapeScope&) = delete;

 private:
  OpTape* previous_tape_;
  OpTapeMode previous_mode_;
};

// Runs decoder layer `layer` as `run(x)`. A runner may wrap the call (activation
// checkpointing, ZeRO-3 gathering of the layer's parameters); `run` holds
// everything it needs by value, so it can be called again during backward.
using LayerRunner = std::function<torch::Tensor(int64_t layer, const torch::Tensor& x,
                                                const TensorHook& run)>;

class RmsNorm : public torch::nn::Module {
 public:
  RmsNorm(int64_t dim, double eps);
  torch::Tensor forward(const torch::Tensor& x);  // (..., C)
  torch::Tensor weight;                           // (C)
  double eps;
};

// RoPE frequencies (HF's inv_freq, fp32, not a parameter or buffer).
class Rotary {
 public:
  explicit Rotary(const LlamaConfig& cfg);
  const torch::Tensor& inv_freq() const { return inv_freq_; }  // (D/2) fp32
  // cos and sin, each (B, 1, T, D), computed in fp32 and cast to `dtype`.
  std::pair<torch::Tensor, torch::Tensor> CosSin(const torch::Tensor& positions,
                                                 c10::ScalarType dtype) const;

 private:
  torch::Tensor inv_freq_;
  // inv_freq_ on the device of the last CosSin: copied once, not at every forward (a copy from
  // pageable host memory makes the host wait for the device).
  mutable torch::Tensor inv_freq_on_device_;
};

class LlamaAttention : public torch::nn::Module {
 public:
  // materialize: as LlamaModel's.
  explicit LlamaAttention(const LlamaConfig& cfg, bool materialize = true);
  // x (B, T, C); cos/sin (B, 1, T, D); layout: what the tokens attend to besides causality.
  // Returns (B, T, C).
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        const AttentionLayout& layout, KVCache* cache, int64_t layer);
  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  TensorHook enter_region, exit_region;
  int64_t head_dim;
};

class LlamaMlp : public torch::nn::Module {
 public:
  explicit LlamaMlp(const LlamaConfig& cfg, bool materialize = true);
  torch::Tensor forward(const torch::Tensor& x);  // down(silu(gate(x)) * up(x))
  torch::nn::Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
  TensorHook enter_region, exit_region;
};

class LlamaDecoderLayer : public torch::nn::Module {
 public:
  explicit LlamaDecoderLayer(const LlamaConfig& cfg, bool materialize = true);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        const AttentionLayout& layout, KVCache* cache, int64_t layer);
  std::shared_ptr<RmsNorm> input_layernorm, post_attention_layernorm;
  std::shared_ptr<LlamaAttention> self_attn;
  std::shared_ptr<LlamaMlp> mlp;
};

// HF's `LlamaModel` (registered under the name "model").
class LlamaBackbone : public torch::nn::Module {
 public:
  explicit LlamaBackbone(const LlamaConfig& cfg, bool materialize = true);
  torch::nn::Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};
  std::vector<std::shared_ptr<LlamaDecoderLayer>> layer_list;  // typed view of `layers`
  std::shared_ptr<RmsNorm> norm;
};

// One parameter as training needs to know it.
struct UnitParam {
  std::string name;     // HF name ("model.layers.3.mlp.up_proj.weight")
  torch::Tensor param;
  bool decay = true;    // AdamW weight decay applies (not to norms and embeddings)
  bool late = false;    // its gradient arrives in several pieces per backward: the lm_head behind
                        // the chunked loss, an embedding tied to it
};
// Parameters used together, in forward order: "embed" (the input embedding), "layer.<i>" (one
// decoder layer), "head" (the final norm and an untied lm_head). Data parallelism reduces and,
// under ZeRO-3, gathers them as one unit.
struct ParamUnit {
  std::string name;
  std::vector<UnitParam> params;
};

// HF's `LlamaForCausalLM`. Construction allocates fp32 parameters with libtorch's default init;
// call InitWeights (or BuildLlama) for the HF-style init, or load weights (LoadHf).
// With materialize = false the parameters get uninitialised storage instead (see Unmaterialize)
// and no init runs, so that building even a 70B-shaped model costs address space, not memory or
// time, until its weights (or this rank's shards of them) are written.
class LlamaModel : public torch::nn::Module {
 public:
  explicit LlamaModel(const LlamaConfig& cfg, bool materialize = true);
  ~LlamaModel() override = default;

  // Deterministic HF-style init from `seed`, identical on any machine for a given libtorch:
  // drawn on the CPU in fp32 with one torch generator, parameters in registration order;
  // normal(0, initializer_range) for linears and embeddings, ones for norms.
  void InitWeights(int64_t seed);

  // tokens (B, T) int64 -> final-norm hidden states (B, T, C).
  torch::Tensor ForwardHidden(const torch::Tensor& tokens, const ForwardOptions& opt = {});

  // Vocab-parallel override points.
  virtual torch::Tensor Embed(const torch::Tensor& tokens);   // (B, T) -> (B, T, C)
  virtual torch::Tensor Logits(const torch::Tensor& hidden);  // (..., C) -> (..., V) model dtype
  // Sum over N rows of the fp32 cross-entropy of Logits(hidden) against targets.
  // hidden (N, C), targets (N) int64 -> fp32 scalar.
  virtual torch::Tensor CrossEntropySum(const torch::Tensor& hidden, const torch::Tensor& targets);

  // Every parameter once, grouped into units (see ParamUnit), in registration order.
  std::vector<ParamUnit> Units();

  const torch::Tensor& lm_head_weight() const;  // (V, C): lm_head's, or embed_tokens' when tied
  const LlamaConfig& config() const { return cfg_; }
  const Rotary& rotary() const { return rotary_; }
  c10::ScalarType dtype() const;
  torch::Device device() const;

  std::shared_ptr<LlamaBackbone> model;
  torch::nn::Linear lm_head{nullptr};  // null when tie_word_embeddings
  // Wraps each decoder layer's call when set (ZeRO-3 gathering, activation checkpointing). With a
  // KV cache it must run without autograd (generation's NoGradGuard): a recomputation in
  // backward would append to the cache again.
  LayerRunner layer_runner;

 private:
  LlamaConfig cfg_;
  Rotary rotary_;
};

// Gives every parameter of `module` (recursively) fresh, uninitialised CPU storage of the same
// shape and `dtype`, dropping the old storage. Pages that are never written are never resident,
// so an unmaterialised model holds no memory until its weights are loaded into it.
void Unmaterialize(torch::nn::Module& module, c10::ScalarType dtype);

// A bias-free Linear of `in` -> `out` features. materialize = false: its weight is allocated but
// neither initialised nor written (libtorch's Linear always runs its default init over the whole
// weight, which for a 70B model took longer than loading it); Unmaterialize it next.
torch::nn::Linear MakeLinear(int64_t in, int64_t out, bool materialize = true);

// A randomly initialised model (InitWeights(seed)) cast to `dtype`.
std::shared_ptr<LlamaModel> BuildLlama(const LlamaConfig& cfg, c10::ScalarType dtype, int64_t seed);

struct LossSum {
  torch::Tensor loss_sum;  // fp32 scalar: sum of token cross-entropies (differentiable)
  torch::Tensor count;     // int64 scalar: number of positions with loss_mask == 1
};

// Causal-LM loss of one micro-batch: tokens, targets (B, T) int64 (targets already shifted by the
// caller), loss_mask (B, T) (nonzero = target; on the host or the model's device: a host mask
// spares a device synchronisation). Returns the SUM of the fp32 cross-entropies over
// masked positions and their count; the trainer divides by the global count across ranks.
//
// Only masked rows reach the lm_head. When more than `chunk_tokens` rows remain, they are
// processed in chunks under a custom autograd function that keeps no logits: forward computes each
// chunk's loss without a graph, backward recomputes each chunk's logits and runs a nested
// backward through them (as reentrant activation checkpointing does), so at most
// chunk_tokens x V fp32 logits exist at once. Consequently the lm_head's gradient is
// accumulated into its .grad by that nested backward: use loss.backward(), not
// torch::autograd::grad(), to obtain parameter gradients.
LossSum CausalLmLoss(LlamaModel& model, const torch::Tensor& tokens, const torch::Tensor& targets,
                     const torch::Tensor& loss_mask, const ForwardOptions& opt = {},
                     int64_t chunk_tokens = 1024);

}  // namespace ftune::models
