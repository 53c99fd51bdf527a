#include "models/generate.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <limits>

#include "parallel/error.h"

namespace ftune::models {

torch::Tensor SampleNext(const torch::Tensor& logits, const GenerateOptions& opt,
                         at::Generator& gen) {
  auto l = logits.to(torch::kCPU, torch::kFloat);  // (B, V)
  if (opt.temperature <= 0.0) return l.argmax(-1);
  l = l / opt.temperature;
  const double neg_inf = -std::numeric_limits<double>::infinity();
  if (opt.top_k > 0 && opt.top_k < l.size(-1)) {
    auto kth = std::get<0>(l.topk(opt.top_k, -1)).select(-1, opt.top_k - 1).unsqueeze(-1);
    l = l.masked_fill(l < kth, neg_inf);
  }
  if (opt.top_p < 1.0) {
    auto [sorted, idx] = l.sort(-1, /*descending=*/true);
    auto probs = sorted.softmax(-1);
    // Drop a token when the tokens before it already reach top_p (the first always stays).
    auto drop_sorted = (probs.cumsum(-1) - probs) > opt.top_p;
    auto drop = torch::zeros_like(drop_sorted).scatter(-1, idx, drop_sorted);
    l = l.masked_fill(drop, neg_inf);
  }
  return torch::multinomial(l.softmax(-1), 1, /*replacement=*/false, gen).squeeze(-1);
}

void IdleForward(LlamaModel& model) {
  torch::NoGradGuard no_grad;
  model.ForwardHidden(torch::zeros({1, 1}, torch::dtype(torch::kLong).device(model.device())));
}

std::vector<std::vector<int32_t>> Generate(LlamaModel& model,
                                           const std::vector<std::vector<int32_t>>& prompts,
                                           const GenerateOptions& opt) {
  const int64_t b = static_cast<int64_t>(prompts.size());
  std::vector<std::vector<int32_t>> out(b);
  if (b == 0 || opt.max_new_tokens <= 0) {
    if (opt.lock_step) {
      do {
        IdleForward(model);
      } while (opt.lock_step(false));
    }
    return out;
  }
  if (opt.temperature < 0 || opt.top_p <= 0 || opt.top_p > 1 || opt.top_k < 0) {
    FT_THROW(ConfigError,
             "generation: temperature {} must be >= 0, top_p {} in (0, 1], top_k {} >= 0",
             opt.temperature, opt.top_p, opt.top_k);
  }
  int64_t max_len = 0;
  for (int64_t i = 0; i < b; ++i) {
    if (prompts[i].empty()) FT_THROW(ModelError, "generation: prompt {} is empty", i);
    max_len = std::max<int64_t>(max_len, static_cast<int64_t>(prompts[i].size()));
  }
  const int64_t vocab = model.config().vocab_size;
  torch::NoGradGuard no_grad;
  const auto dev = model.device();

  // Left padding: row i's prompt occupies the last len_i columns.
  auto tokens = torch::full({b, max_len}, opt.pad_id, torch::kLong);
  auto valid = torch::zeros({b, max_len}, torch::kBool);
  auto tok_a = tokens.accessor<int64_t, 2>();
  auto valid_a = valid.accessor<bool, 2>();
  for (int64_t i = 0; i < b; ++i) {
    const int64_t n = static_cast<int64_t>(prompts[i].size());
    for (int64_t j = 0; j < n; ++j) {
      const int64_t id = prompts[i][j];
      if (id < 0 || id >= vocab) {
        FT_THROW(ModelError, "generation: prompt {} has token id {} outside the vocabulary [0, {})",
                 i, id, vocab);
      }
      tok_a[i][max_len - n + j] = id;
      valid_a[i][max_len - n + j] = true;
    }
  }
  auto positions = (valid.to(torch::kLong).cumsum(1) - 1).clamp_min(0);
  KVCache cache = KVCache::Create(model, b, max_len + opt.max_new_tokens);
  cache.key_valid.slice(1, 0, max_len).copy_(valid);

  ForwardOptions fo;
  fo.cache = &cache;
  fo.positions = positions.to(dev);
  auto hidden = model.ForwardHidden(tokens.to(dev), fo);
  auto logits = model.Logits(hidden.select(1, -1));          // (B, V)
  auto next_pos = positions.select(1, -1).unsqueeze(1) + 1;  // (B, 1)

  auto gen = at::detail::createCPUGenerator(opt.seed);
  std::vector<bool> done(b, false);
  int64_t remaining = b;
  for (int64_t step = 0; step < opt.max_new_tokens; ++step) {
    if (opt.vocab_limit > 0 && opt.vocab_limit < logits.size(-1)) {
      logits.slice(-1, opt.vocab_limit).fill_(-std::numeric_limits<float>::infinity());
    }
    auto next = SampleNext(logits, opt, gen);  // (B) int64 CPU
    auto acc = next.accessor<int64_t, 1>();
    for (int64_t i = 0; i < b; ++i) {
      if (done[i]) continue;
      out[i].push_back(static_cast<int32_t>(acc[i]));
      if (std::find(opt.eos_ids.begin(), opt.eos_ids.end(), acc[i]) != opt.eos_ids.end()) {
        done[i] = true;
        --remaining;
      }
    }
    const bool more = remaining > 0 && step + 1 < opt.max_new_tokens;
    if (opt.lock_step) {
      bool any = opt.lock_step(more);
      if (!more) {
        while (any) {
          IdleForward(model);
          any = opt.lock_step(false);
        }
      }
    }
    if (!more) break;
    fo.positions = next_pos.to(dev);
    hidden = model.ForwardHidden(next.unsqueeze(1).to(dev), fo);  // (B, 1, C)
    logits = model.Logits(hidden.select(1, -1));
    next_pos = next_pos + 1;
  }
  return out;
}

}  // namespace ftune::models
