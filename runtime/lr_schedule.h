// Learning-rate schedule: linear warmup from 0, then cosine / linear decay to
// min_lr_ratio * lr at total_steps, or constant.
#pragma once

#include <cmath>
#include <cstdint>

#include "runtime/config.h"

namespace ftune::runtime {

// lr for 1-based optimizer step `step` of `total_steps`.
inline double LearningRate(const OptimConfig& o, int64_t step, int64_t total_steps) {
  if (o.warmup_steps > 0 && step <= o.warmup_steps) {
    return o.lr * static_cast<double>(step) / static_cast<double>(o.warmup_steps);
  }
  if (o.schedule == "constant") return o.lr;
  const double floor = o.lr * o.min_lr_ratio;
  const int64_t decay_steps = std::max<int64_t>(1, total_steps - o.warmup_steps);
  const double t = std::min(1.0, static_cast<double>(step - o.warmup_steps) / decay_steps);
  if (o.schedule == "linear") return floor + (o.lr - floor) * (1.0 - t);
  return floor + (o.lr - floor) * 0.5 * (1.0 + std::cos(M_PI * t));  // cosine
}

}  // namespace ftune::runtime
