// Per-layer activation checkpointing, optionally with ZeRO-3 parameter
// gathering: a decoder layer runs without keeping its activations, and is
// recomputed in backward. Hooks around both runs gather / release the layer's
// parameters, so under ZeRO-3 a layer is whole only while it computes.
#pragma once

#include <functional>

#include <torch/torch.h>

#include "models/llama.h"

namespace ftune::runtime {

struct LayerHooks {
  std::function<void()> before_forward;   // e.g. wait for this layer's gather, prefetch the next
  std::function<void()> after_forward;    // e.g. release the layer
  std::function<void()> before_backward;  // e.g. gather again, prefetch the previous layer
  std::function<void()> after_backward;   // e.g. release (its gradients are already handed off)
};

// `run(x)` without storing activations; in backward, `run` is recomputed with
// grad enabled and backpropagated, accumulating parameter gradients into
// .grad (so use loss.backward(), not torch::autograd::grad). Collective only
// through the hooks.
torch::Tensor CheckpointedLayer(const torch::Tensor& x, const models::TensorHook& run,
                                const LayerHooks& hooks);

}  // namespace ftune::runtime
