// How one decoder layer runs in training: what backward keeps of it (LayerRecompute, from the
// ActivationCheckpointing policy) and, around its forward and its backward, hooks that gather and
// release its parameters under ZeRO-3. The two are independent: a layer that recomputes nothing
// is released after its forward too (autograd's saved views of its weights stay valid across a
// release and the next gather, parallel/data_parallel.h), and gathered again for its backward.
#pragma once

#include <functional>

#include <torch/torch.h>

#include "models/llama.h"
#include "runtime/activation_checkpointing.h"

namespace ftune::runtime {

// Each hook is optional. Under ZeRO-3, forward calls before_forward, computes, after_forward;
// backward calls before_backward when the gradient of the layer's output is complete (before
// any of the layer's backward runs, and before its recompute) and after_backward once the
// gradient of its input is (the layer's parameter gradients have been accumulated by then).
struct LayerHooks {
  std::function<void()> before_forward;   // e.g. wait for this layer's gather, prefetch the next
  std::function<void()> after_forward;    // e.g. release the layer
  std::function<void()> before_backward;  // e.g. gather again, prefetch the previous layer
  std::function<void()> after_backward;   // e.g. release (its gradients are already handed off)
  // Instead of after_forward in a forward without grad (evaluation, generation), where no
  // backward will come; empty = after_forward.
  std::function<void()> after_forward_no_grad;
};

// `run(x)` with `mode` deciding what backward keeps (see LayerRecompute) and `hooks` around the
// forward and the backward. kFull and kSelective recompute in a nested backward that accumulates
// parameter gradients into .grad (so use loss.backward(), not torch::autograd::grad). Without
// grad (evaluation) only the forward hooks run. Collective only through the hooks.
torch::Tensor RunLayer(const torch::Tensor& x, const models::TensorHook& run, LayerRecompute mode,
                       const LayerHooks& hooks);

}  // namespace ftune::runtime
