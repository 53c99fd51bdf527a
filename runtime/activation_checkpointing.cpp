#include "runtime/activation_checkpointing.h"

#include <fmt/format.h>

#include <algorithm>
#include <vector>

#include "parallel/config_fields.h"
#include "parallel/error.h"

namespace ftune::runtime {
namespace {

// The spellings of YAML's booleans that yaml-cpp read for the key while it was a boolean.
bool IsSpelledAs(const std::string& v, const std::vector<std::string>& names) {
  return std::find(names.begin(), names.end(), v) != names.end();
}

}  // namespace

ActivationCheckpointing ActivationCheckpointing::Parse(const std::string& policy, int64_t every) {
  ActivationCheckpointing ac;
  if (policy == "none" || IsSpelledAs(policy, {"false", "False", "FALSE", "no", "No", "NO", "off",
                                               "Off", "OFF", "n", "N"})) {
    ac.policy_ = Policy::kNone;
  } else if (policy == "full" || IsSpelledAs(policy, {"true", "True", "TRUE", "yes", "Yes", "YES",
                                                      "on", "On", "ON", "y", "Y"})) {
    ac.policy_ = Policy::kFull;
  } else if (policy == "every_n") {
    ac.policy_ = Policy::kEveryN;
  } else if (policy == "selective") {
    ac.policy_ = Policy::kSelective;
  } else {
    throw ConfigKeyError("activation_checkpointing",
                         fmt::format("'{}' is not a policy: use none, full, every_n (with "
                                     "train.activation_checkpointing_every: n) or selective "
                                     "(true and false still mean full and none)",
                                     policy));
  }
  if (ac.policy_ == Policy::kEveryN) {
    if (every < 1) {
      throw ConfigKeyError("activation_checkpointing_every",
                           fmt::format("{}: every_n needs n >= 1 (recompute every n-th decoder "
                                       "layer), e.g. train.activation_checkpointing_every: 2",
                                       every));
    }
    ac.every_ = every;
  } else if (every != 0) {
    throw ConfigKeyError("activation_checkpointing_every",
                         fmt::format("{} is set, but only the every_n policy uses it (the policy "
                                     "is '{}'); set train.activation_checkpointing: every_n or "
                                     "leave this key at 0",
                                     every, policy));
  }
  return ac;
}

LayerRecompute ActivationCheckpointing::ForLayer(int64_t layer) const {
  switch (policy_) {
    case Policy::kNone:
      return LayerRecompute::kNone;
    case Policy::kFull:
      return LayerRecompute::kFull;
    case Policy::kEveryN:
      return (layer + 1) % every_ == 0 ? LayerRecompute::kFull : LayerRecompute::kNone;
    case Policy::kSelective:
      return LayerRecompute::kSelective;
  }
  return LayerRecompute::kNone;
}

int64_t ActivationCheckpointing::RecomputedLayers(int64_t num_layers) const {
  int64_t n = 0;
  for (int64_t i = 0; i < num_layers; ++i) n += ForLayer(i) != LayerRecompute::kNone ? 1 : 0;
  return n;
}

void ActivationCheckpointing::CheckLayers(int64_t num_layers) const {
  if (policy_ == Policy::kEveryN && every_ > num_layers) {
    FT_THROW(ConfigError,
             "train.activation_checkpointing_every: {} is more than the model's {} decoder "
             "layers, so every_n would recompute no layer; use n <= {} or "
             "train.activation_checkpointing: none",
             every_, num_layers, num_layers);
  }
}

std::string ActivationCheckpointing::Name() const {
  switch (policy_) {
    case Policy::kNone:
      return "none";
    case Policy::kFull:
      return "full";
    case Policy::kEveryN:
      return fmt::format("every_{}", every_);
    case Policy::kSelective:
      return "selective";
  }
  return "none";
}

std::string ActivationCheckpointing::Settings() const {
  if (policy_ == Policy::kEveryN) {
    return fmt::format(
        "train.activation_checkpointing=every_n train.activation_checkpointing_every={}", every_);
  }
  return "train.activation_checkpointing=" + Name();
}

}  // namespace ftune::runtime
