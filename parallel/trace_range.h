// TraceRange: a named range of the timeline, for profiles (runtime/profiler.h). It is an
// at::RecordFunction user scope, so it shows in libtorch's profiler trace around the ops it
// encloses, and in CUDA builds also an NVTX range, so `nsys` shows it. While no profiler runs
// both cost a few nanoseconds. Used for the training step's phases: ftune::forward,
// ftune::backward, ftune::optimizer, ftune::communication.
//
// Not copyable; opened and closed on one thread. `name` must outlive the range (a literal).
#pragma once

#include <ATen/record_function.h>

#include <optional>

#include "parallel/compat.h"

namespace ftune::parallel {

class TraceRange {
 public:
  explicit TraceRange(const char* name) { Open(name); }
  ~TraceRange() { Close(); }
  TraceRange(const TraceRange&) = delete;
  TraceRange& operator=(const TraceRange&) = delete;

  // Closes this range and opens `name` in its place (forward, then backward).
  void Next(const char* name) {
    Close();
    Open(name);
  }

 private:
  void Open(const char* name) {
    record_.emplace(at::RecordScope::USER_SCOPE);
    if (record_->isActive()) record_->before(name, c10::ArrayRef<const c10::IValue>{});
    compat::NvtxPush(name);
  }
  void Close() {
    if (!record_) return;
    record_.reset();  // ends the RecordFunction
    compat::NvtxPop();
  }

  std::optional<at::RecordFunction> record_;
};

}  // namespace ftune::parallel
