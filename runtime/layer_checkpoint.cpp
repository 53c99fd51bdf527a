#include "runtime/layer_checkpoint.h"

namespace ftune::runtime {
namespace {

// The layer's function and hooks ride along in the autograd context.
struct LayerCall : torch::CustomClassHolder {
  models::TensorHook run;
  LayerHooks hooks;
};

void Call(const std::function<void()>& f) {
  if (f) f();
}

struct CheckpointFunction : torch::autograd::Function<CheckpointFunction> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, torch::Tensor x,
                               c10::IValue call_capsule) {
    auto call = c10::static_intrusive_pointer_cast<LayerCall>(call_capsule.toCapsule());
    torch::Tensor y;
    Call(call->hooks.before_forward);
    {
      torch::NoGradGuard no_grad;
      y = call->run(x);
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
      auto y = call->run(x);
      torch::autograd::backward({y}, {grads[0]});
    }
    Call(call->hooks.after_backward);
    return {x.grad(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor CheckpointedLayer(const torch::Tensor& x, const models::TensorHook& run,
                                const LayerHooks& hooks) {
  auto call = c10::make_intrusive<LayerCall>();
  call->run = run;
  call->hooks = hooks;
  return CheckpointFunction::apply(x, c10::IValue::make_capsule(std::move(call)));
}

}  // namespace ftune::runtime
