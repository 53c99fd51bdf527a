// Step diagnostics: the progress line/bar on rank 0 and metrics.jsonl.
#pragma once

#include <fstream>
#include <string>

#include "runtime/config.h"

namespace ftune::runtime {

struct StepStats;

class StepLogger {
 public:
  // `path` empty: no metrics file. Only rank 0 should construct one that writes.
  StepLogger(const LogConfig& cfg, const std::string& path, double flops_per_token,
             double peak_flops);
  void Log(const StepStats& s, int64_t total_steps);
  // Extra records in metrics.jsonl (e.g. {"eval_loss": ...}); `json` is one object.
  void Record(const std::string& json);

 private:
  LogConfig cfg_;
  std::ofstream out_;
  bool bar_;
  double flops_per_token_, peak_flops_;
  double elapsed_ = 0;
  int64_t first_step_ = -1;
};

// Peak resident memory of this process (VmHWM), bytes.
int64_t PeakRssBytes();

}  // namespace ftune::runtime
