// Deterministic, learnable training data for the mpi tests: global samples [first, first + count)
// of step `step`, each a random start token followed by next = (3 * token + 1) mod vocab, with a
// loss mask that skips a sample-dependent prompt of (index mod prompt_mod) tokens, so the exact
// loss normalisation over ranks matters.
#pragma once

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "data/loader.h"

namespace ftune::testing {

inline data::Batch LearnableBatch(int64_t step, int64_t first, int64_t count, int64_t seq,
                                  int64_t vocab, int64_t prompt_mod) {
  data::Batch b;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(1000 + step);
  auto all = at::empty({first + count, seq + 1}, at::kLong);
  all.select(1, 0).copy_(at::randint(vocab, {first + count}, gen, at::kLong));
  for (int64_t t = 1; t <= seq; ++t) {
    all.select(1, t).copy_((all.select(1, t - 1) * 3 + 1) % vocab);
  }
  all = all.slice(0, first);
  b.tokens = all.slice(1, 0, seq).contiguous();
  b.targets = all.slice(1, 1, seq + 1).contiguous();
  auto t = at::arange(seq, at::kLong).unsqueeze(0);
  auto start = (at::arange(first, first + count, at::kLong) % prompt_mod).unsqueeze(1);
  b.loss_mask = (t >= start).to(at::kFloat);
  b.positions = t.expand({count, seq}).contiguous();
  b.num_targets = static_cast<int64_t>(b.loss_mask.sum().item<double>());
  return b;
}

}  // namespace ftune::testing
