// RunLayer (runtime/layer_checkpoint.h): what backward keeps of a decoder layer changes no
// number, every recompute mode calls the ZeRO-3 hooks in the order the gathers rely on, and the
// modes keep what they say (fewer bytes from none to selective to full).
#include "runtime/layer_checkpoint.h"

#include <gtest/gtest.h>

#include "models/llama.h"
#include "tests/tensor_memory.h"

namespace ftune::runtime {
namespace {

models::LlamaConfig Tiny() {
  models::LlamaConfig c;
  c.vocab_size = 64;
  c.hidden_size = 64;
  c.intermediate_size = 160;
  c.num_hidden_layers = 3;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  c.max_position_embeddings = 64;
  c.tie_word_embeddings = false;
  return c;
}

struct Outcome {
  double loss = 0;
  std::map<std::string, torch::Tensor> grads;
  int64_t kept_bytes = 0;  // tensor bytes alive between forward and backward
  std::vector<std::string> hooks;
};

Outcome Train(models::LlamaModel& model, const std::optional<LayerRecompute>& mode) {
  Outcome r;
  if (mode) {
    model.layer_runner = [&r, m = *mode](int64_t layer, const torch::Tensor& x,
                                         const models::TensorHook& run) {
      auto log = [&r, layer](const char* what) {
        return [&r, layer, what]() { r.hooks.push_back(what + std::to_string(layer)); };
      };
      return RunLayer(x, run, m, {log("bf"), log("af"), log("bb"), log("ab")});
    };
  }
  for (auto& p : model.parameters()) p.mutable_grad() = torch::Tensor();
  auto gen = at::detail::createCPUGenerator(3);
  const auto tokens = torch::randint(64, {2, 48}, gen, torch::kLong);
  const auto targets = torch::randint(64, {2, 48}, gen, torch::kLong);
  const auto mask = torch::ones({2, 48});
  testing::TensorMemoryCounter memory;
  models::LossSum ls = models::CausalLmLoss(model, tokens, targets, mask);
  r.kept_bytes = memory.in_use();
  r.hooks.push_back("|");
  ls.loss_sum.backward();
  r.loss = ls.loss_sum.item<double>();
  for (const auto& p : model.named_parameters()) r.grads[p.key()] = p.value().grad().clone();
  model.layer_runner = nullptr;
  return r;
}

TEST(RunLayer, EveryModeGivesThePlainGradientsAndKeepsLess) {
  auto model = models::BuildLlama(Tiny(), torch::kFloat, 5);
  const Outcome plain = Train(*model, std::nullopt);
  const std::vector<std::pair<std::string, LayerRecompute>> modes = {
      {"none", LayerRecompute::kNone},
      {"selective", LayerRecompute::kSelective},
      {"full", LayerRecompute::kFull}};
  std::map<std::string, int64_t> kept;
  for (const auto& [name, mode] : modes) {
    const Outcome got = Train(*model, mode);
    EXPECT_NEAR(got.loss, plain.loss, 1e-6 * plain.loss) << name;
    for (const auto& [param, g] : plain.grads) {
      const double err = (got.grads.at(param) - g).abs().max().item<double>();
      EXPECT_LT(err, 1e-6 * (1 + g.abs().max().item<double>())) << name << ": " << param;
    }
    // The ZeRO-3 order: each layer's forward between its two forward hooks; backward from the
    // last layer down, each layer's between its two backward hooks.
    const std::vector<std::string> order = {"bf0", "af0", "bf1", "af1", "bf2", "af2", "|",
                                            "bb2", "ab2", "bb1", "ab1", "bb0", "ab0"};
    EXPECT_EQ(got.hooks, order) << name;
    kept[name] = got.kept_bytes;
    std::printf("%s: %ld bytes kept between forward and backward (no hooks: %ld)\n", name.c_str(),
                static_cast<long>(got.kept_bytes), static_cast<long>(plain.kept_bytes));
  }
  EXPECT_EQ(kept["none"], plain.kept_bytes);
  EXPECT_LT(kept["selective"], 0.8 * kept["none"]);
  EXPECT_LT(kept["full"], 0.6 * kept["selective"]);
}

TEST(RunLayer, WithoutGradOnlyTheForwardHooksRun) {
  auto model = models::BuildLlama(Tiny(), torch::kFloat, 5);
  for (auto mode : {LayerRecompute::kNone, LayerRecompute::kSelective, LayerRecompute::kFull}) {
    std::vector<std::string> hooks;
    model->layer_runner = [&hooks, mode](int64_t layer, const torch::Tensor& x,
                                         const models::TensorHook& run) {
      auto log = [&hooks, layer](const char* what) {
        return [&hooks, layer, what]() { hooks.push_back(what + std::to_string(layer)); };
      };
      return RunLayer(x, run, mode, {log("bf"), log("af"), log("bb"), log("ab")});
    };
    torch::NoGradGuard no_grad;
    const auto tokens = torch::arange(8, torch::kLong).reshape({1, 8});
    auto with = model->ForwardHidden(tokens);
    model->layer_runner = nullptr;
    auto without = model->ForwardHidden(tokens);
    EXPECT_TRUE(with.equal(without));
    EXPECT_EQ(hooks, (std::vector<std::string>{"bf0", "af0", "bf1", "af1", "bf2", "af2"}));
  }
}

}  // namespace
}  // namespace ftune::runtime
