// The activation checkpointing policy: which decoder layers recompute what in backward. One
// object, read by the trainer (ParallelModel's layer runner, runtime/layer_checkpoint.h) and by
// `ftune plan` (runtime/plan.h), so a plan describes the run that happens. Decided by
// train.activation_checkpointing alone, for every ZeRO stage and tp (ZeRO-3 gathers and releases
// layers with or without recompute).
//
//   none       backward keeps everything autograd saves; nothing is recomputed.
//   full       each layer keeps only its input and runs again in backward (a third more compute).
//   every_n    every n-th layer (train.activation_checkpointing_every: layers n-1, 2n-1, ...; as
//              torchtitan's ac_freq) as `full`, the others as `none`.
//   selective  each layer keeps its input and the outputs of its matmuls and attention, and runs
//              the cheap ops between them again in backward: RMSNorm, RoPE, SiLU and its product,
//              the residual adds (torchtitan's op-level policy; models/llama.h OpTape).
// `true` and `false`, the key's values before the policies existed, still mean full and none
// (checkpoints record the config they were written with).
#pragma once

#include <cstdint>
#include <string>

namespace ftune::runtime {

// What backward keeps of one decoder layer.
enum class LayerRecompute {
  kNone,       // everything autograd saves
  kFull,       // the layer's input; the whole layer runs again
  kSelective,  // the input and the matmul and attention outputs; the element-wise ops run again
};

class ActivationCheckpointing {
 public:
  enum class Policy { kNone, kFull, kEveryN, kSelective };

  ActivationCheckpointing() = default;
  // From train.activation_checkpointing and train.activation_checkpointing_every. Throws
  // ConfigKeyError naming the key (relative to `train`) for an unknown policy, every_n without
  // an n >= 1, or an n given to another policy.
  static ActivationCheckpointing Parse(const std::string& policy, int64_t every);

  Policy policy() const { return policy_; }
  int64_t every() const { return every_; }  // every_n's n (0 otherwise)
  // What layer `layer` (0-based) keeps.
  LayerRecompute ForLayer(int64_t layer) const;
  // Layers of a `num_layers` model that recompute anything.
  int64_t RecomputedLayers(int64_t num_layers) const;
  // Throws ConfigError naming train.activation_checkpointing_every when the policy cannot run on
  // a model of `num_layers` decoder layers (every_n with n > num_layers checkpoints nothing).
  void CheckLayers(int64_t num_layers) const;
  // "none", "full", "every_2", "selective".
  std::string Name() const;
  // The config values that select this policy ("train.activation_checkpointing=every_n
  // train.activation_checkpointing_every=2"), for messages that tell the user what to set.
  std::string Settings() const;

 private:
  Policy policy_ = Policy::kNone;
  int64_t every_ = 0;
};

}  // namespace ftune::runtime
