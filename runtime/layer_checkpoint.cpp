#include "runtime/layer_checkpoint.h"

namespace ftune::runtime {
namespace {

// The layer's function, hooks and (selective) tape ride along in the autograd context.
struct LayerCall : torch::CustomClassHolder {
  models::TensorHook run;
  LayerHooks hooks;
  bool selective = false;
  models::OpTape tape;  // selective: the matmul and attention outputs of the forward
};

void Call(const std::function<void()>& f) {
  if (f) f();
}

// `run(x)` keeping only x (and, selective, the tape); recomputed in backward.
struct CheckpointFunction : torch::autograd::Function<CheckpointFunction> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, torch::Tensor x,
                               c10::IValue call_capsule) {
    auto call = c10::static_intrusive_pointer_cast<LayerCall>(call_capsule.toCapsule());
    torch::Tensor y;
    Call(call->hooks.before_forward);
    {
      torch::NoGradGuard no_grad;
      if (call->selective) {
        models::OpTapeScope record(call->tape, models::OpTapeMode::kRecord);
        y = call->run(x);
      } else {
        y = call->run(x);
      }
    }
    Call(call->hooks.after_forward);
    ctx->save_for_backward({x});
    ctx->saved_data["call"] = call_capsule;
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto call = c10::static_intrusive_pointer_cast<LayerCall>(ctx->saved_data["call"].toCapsule());
    auto x = ctx->get_saved_variables()[0].detach().requires_grad_(true);
    Call(call->hooks.before_backward);
    {
      torch::AutoGradMode enable(true);
      torch::Tensor y;
      if (call->selective) {
        models::OpTapeScope replay(call->tape, models::OpTapeMode::kReplay);
        y = call->run(x);
      } else {
        y = call->run(x);
      }
      torch::autograd::backward({y}, {grads[0]});
    }
    call->tape.outputs.clear();  // the layer's backward is done: its kept outputs are not needed
    Call(call->hooks.after_backward);
    return {x.grad(), torch::Tensor()};
  }
};

// What an OnBackwardHook node runs.
struct BackwardHook : torch::CustomClassHolder {
  std::function<void()> fn;
};

// Identity in forward; in backward, the hook runs once the gradient of the output is complete,
// before that gradient moves on. Marks where a layer's backward begins (on its output) and ends
// (on its input) when nothing is recomputed.
struct OnBackwardHook : torch::autograd::Function<OnBackwardHook> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, torch::Tensor x,
                               c10::IValue hook_capsule) {
    ctx->saved_data["hook"] = hook_capsule;
    return x;  // returned as a view with this node as its gradient function
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto hook =
        c10::static_intrusive_pointer_cast<BackwardHook>(ctx->saved_data["hook"].toCapsule());
    Call(hook->fn);
    return {grads[0], torch::Tensor()};
  }
};

torch::Tensor WithBackwardHook(const torch::Tensor& x, const std::function<void()>& fn) {
  if (!fn) return x;
  auto hook = c10::make_intrusive<BackwardHook>();
  hook->fn = fn;
  return OnBackwardHook::apply(x, c10::IValue::make_capsule(std::move(hook)));
}

}  // namespace

torch::Tensor RunLayer(const torch::Tensor& x, const models::TensorHook& run, LayerRecompute mode,
                       const LayerHooks& hooks) {
  const bool backward = torch::GradMode::is_enabled();
  if (mode == LayerRecompute::kNone || !backward) {
    // The layer's weights are released after forward and gathered again for backward (before
    // its first node runs); autograd's saved views of them read the new gather.
    const auto in = backward ? WithBackwardHook(x, hooks.after_backward) : x;
    Call(hooks.before_forward);
    auto y = run(in);
    Call(!backward && hooks.after_forward_no_grad ? hooks.after_forward_no_grad
                                                  : hooks.after_forward);
    return backward ? WithBackwardHook(y, hooks.before_backward) : y;
  }
  auto call = c10::make_intrusive<LayerCall>();
  call->run = run;
  call->hooks = hooks;
  call->selective = mode == LayerRecompute::kSelective;
  return CheckpointFunction::apply(x, c10::IValue::make_capsule(std::move(call)));
}

}  // namespace ftune::runtime
