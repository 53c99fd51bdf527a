// Step diagnostics: the progress line/bar on rank 0 and metrics.jsonl.
#pragma once

#include <c10/core/ScalarType.h>

#include <fstream>
#include <string>

#include "runtime/config.h"

namespace ftune::runtime {

struct StepStats;
class TensorBoardWriter;

// What a step's throughput and memory figures are computed from (the same as `ftune bench
// train`'s): model FLOPs per token of one tp shard (PaLM's 6N + 12*L*d*T), the data-parallel
// degree, and the device's peak (0 = no MFU).
struct ThroughputModel {
  double flops_per_token = 0;
  int64_t dp = 1;
  double peak_flops = 0;
};

// Model FLOP/s per device and MFU of a step that processed `tokens` (the global batch) in
// `seconds` (compute + data wait): flops_per_token * tokens / seconds / dp, over the peak.
double ModelFlopsPerDevice(const ThroughputModel& m, double tokens, double seconds);

// Dense bf16 (fp16) peak TFLOP/s of the GPUs MFU is usually quoted for, from NVIDIA's data
// sheets (without sparsity); 0 when unknown or not a 16-bit run.
double KnownPeakTflops(const std::string& device_name, c10::ScalarType dtype);

class StepLogger {
 public:
  // `path` empty: no metrics file. Only rank 0 should construct one that writes.
  // `tb`: TensorBoard writer for the step scalars (nullptr: none).
  StepLogger(const LogConfig& cfg, const std::string& path, const ThroughputModel& throughput,
             TensorBoardWriter* tb = nullptr);
  void Log(const StepStats& s, int64_t total_steps);
  // Extra records in metrics.jsonl (e.g. {"eval_loss": ...}); `json` is one object.
  void Record(const std::string& json);

 private:
  LogConfig cfg_;
  std::ofstream out_;
  bool bar_;
  ThroughputModel tm_;
  TensorBoardWriter* tb_;
  double elapsed_ = 0;
  int64_t first_step_ = -1;
};

// Peak resident memory of this process (VmHWM), bytes.
int64_t PeakRssBytes();

}  // namespace ftune::runtime
