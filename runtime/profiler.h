// Profiling a window of training steps (train.profile; `ftune bench train --profile DIR`).
//
// libtorch's profiler (Kineto where libtorch has it) records every op of the window's steps,
// and on a GPU every kernel; the phase ranges (parallel/trace_range.h: ftune::forward,
// ftune::backward, ftune::optimizer, ftune::communication) enclose them. At the end of the
// window each rank writes <dir>/rank<r>.pt.trace.json in the Chrome trace format
// (chrome://tracing, ui.perfetto.dev, TensorBoard's profiler plugin), and rank 0 logs a short
// table: the top ops by self CPU time, or on a GPU the top kernels by device time, and the
// phases' times. A libtorch built without Kineto (Debian 12's 1.13) collects the ops but
// cannot save Kineto's trace: the trace is then written from the collected events.
//
// Not collective; one window per process at a time (libtorch's profiler is per process).
#pragma once

#include <cstdint>
#include <string>

#include "parallel/trace_range.h"  // the phases' ranges, placed by the trainer
#include "runtime/config.h"

namespace ftune::runtime {

// A scope around one training step. At a step of the window (train.profile.start ..
// start + steps - 1, the last at most `total_steps`) it starts the profiler unless running; when
// the window's last step ends, it stops it, writes this rank's trace and (rank 0) logs the
// table. Unwinding from an exception it stops the profiler and writes nothing.
class ProfileWindow {
 public:
  ProfileWindow(const Config& cfg, int64_t step, int64_t total_steps, int rank);
  ~ProfileWindow();
  ProfileWindow(const ProfileWindow&) = delete;
  ProfileWindow& operator=(const ProfileWindow&) = delete;

 private:
  const Config& cfg_;
  int64_t step_, last_;
  int rank_;
};

}  // namespace ftune::runtime
