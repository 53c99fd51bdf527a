#include "runtime/profiler.h"

#include <fmt/format.h>
#include <torch/csrc/autograd/profiler_kineto.h>

#include <algorithm>
#include <exception>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <vector>

#include "parallel/compat.h"
#include "parallel/error.h"
#include "parallel/files.h"
#include "runtime/log.h"

namespace ftune::runtime {
namespace {

namespace kineto_api = torch::autograd::profiler;
using KEvent = torch::autograd::profiler::KinetoEvent;

// This process's libtorch profiler, started by a window at step profiler_first.
bool profiler_running = false;
int64_t profiler_first = 0;

void StartProfiler(int64_t step) {
  namespace impl = torch::profiler::impl;
  const impl::ProfilerConfig config(impl::ProfilerState::KINETO);
  std::set<impl::ActivityType> activities{impl::ActivityType::CPU};
  if (compat::CudaAvailable()) activities.insert(impl::ActivityType::CUDA);
  kineto_api::prepareProfiler(config, activities);
  kineto_api::enableProfiler(config, activities);  // every RecordFunction scope
  profiler_running = true;
  profiler_first = step;
}

bool IsRange(const KEvent& e) { return e.scope() == uint8_t(at::RecordScope::USER_SCOPE); }

// The events as a Chrome trace (what Kineto's own save writes, less its device details).
void WriteEventsTrace(const std::vector<KEvent>& events, int rank, const std::string& path) {
  nlohmann::json list = nlohmann::json::array();
  for (const auto& e : events) {
    list.push_back({{"ph", "X"},
                    {"name", e.name()},
                    {"cat", IsRange(e) ? "user_annotation" : "cpu_op"},
                    {"ts", double(compat::EventStartNs(e)) / 1e3},
                    {"dur", double(compat::EventDurationNs(e)) / 1e3},
                    {"pid", rank},
                    {"tid", e.startThreadId()}});
  }
  std::ofstream out(path);
  out << nlohmann::json{{"traceEvents", list}, {"displayTimeUnit", "ms"}}.dump() << "\n";
  if (!out) FT_THROW(IoError, "cannot write the profiler trace {}", path);
}

struct OpTotal {
  int64_t calls = 0;
  int64_t ns = 0;  // self CPU time, or device time of kernels
};

// Self CPU time per op name: each op's duration less that of the events directly inside it
// (on its thread). Ranges (TraceRange) enclose ops but are not ops themselves.
std::map<std::string, OpTotal> SelfCpuTimes(const std::vector<KEvent>& events) {
  std::vector<const KEvent*> cpu;
  for (const auto& e : events) {
    if (e.deviceType() == c10::DeviceType::CPU) cpu.push_back(&e);
  }
  std::sort(cpu.begin(), cpu.end(), [](const KEvent* a, const KEvent* b) {
    if (a->startThreadId() != b->startThreadId()) return a->startThreadId() < b->startThreadId();
    const int64_t sa = compat::EventStartNs(*a), sb = compat::EventStartNs(*b);
    return sa != sb ? sa < sb : compat::EventDurationNs(*a) > compat::EventDurationNs(*b);
  });
  std::vector<int64_t> self(cpu.size());
  std::vector<size_t> open;  // indices of the enclosing events of the current one
  for (size_t i = 0; i < cpu.size(); ++i) {
    const int64_t start = compat::EventStartNs(*cpu[i]);
    self[i] = compat::EventDurationNs(*cpu[i]);
    while (!open.empty()) {
      const KEvent& p = *cpu[open.back()];
      const bool inside = p.startThreadId() == cpu[i]->startThreadId() &&
                          start < compat::EventStartNs(p) + compat::EventDurationNs(p);
      if (inside) break;
      open.pop_back();
    }
    if (!open.empty()) self[open.back()] -= compat::EventDurationNs(*cpu[i]);
    open.push_back(i);
  }
  std::map<std::string, OpTotal> totals;
  for (size_t i = 0; i < cpu.size(); ++i) {
    if (IsRange(*cpu[i])) continue;
    auto& t = totals[cpu[i]->name()];
    ++t.calls;
    t.ns += std::max<int64_t>(self[i], 0);
  }
  return totals;
}

std::map<std::string, OpTotal> DeviceTimes(const std::vector<KEvent>& events) {
  std::map<std::string, OpTotal> totals;
  for (const auto& e : events) {
    if (e.deviceType() != c10::DeviceType::CUDA) continue;
    auto& t = totals[e.name()];
    ++t.calls;
    t.ns += compat::EventDurationNs(e);
  }
  return totals;
}

// Rank 0's table: the top ops (or kernels) and the phases' inclusive times.
std::string ProfileTable(const std::vector<KEvent>& events, int64_t top) {
  auto totals = DeviceTimes(events);
  const bool device = !totals.empty();
  if (!device) totals = SelfCpuTimes(events);
  int64_t all = 0;
  std::vector<std::pair<std::string, OpTotal>> rows(totals.begin(), totals.end());
  for (const auto& r : rows) all += r.second.ns;
  std::sort(rows.begin(), rows.end(),
            [](const auto& a, const auto& b) { return a.second.ns > b.second.ns; });
  rows.resize(std::min<size_t>(rows.size(), size_t(top)));
  std::string s =
      fmt::format("top {} {} by {} (%: of all {}' time):\n  {:<48} {:>8} {:>11} {:>7}\n",
                  rows.size(), device ? "kernels" : "ops", device ? "device time" : "self CPU time",
                  device ? "kernels" : "ops", device ? "kernel" : "op", "calls", "ms", "%");
  for (const auto& [name, t] : rows) {
    s += fmt::format("  {:<48} {:>8} {:>11.3f} {:>6.1f}%\n",
                     name.size() > 48 ? name.substr(0, 45) + "..." : name, t.calls, t.ns / 1e6,
                     all > 0 ? 100.0 * double(t.ns) / double(all) : 0.0);
  }
  std::map<std::string, int64_t> phases;
  for (const auto& e : events) {
    if (IsRange(e) && e.name().rfind("ftune::", 0) == 0) {
      phases[e.name()] += compat::EventDurationNs(e);
    }
  }
  s += "  phases (inclusive):";
  for (const auto& [name, ns] : phases) s += fmt::format(" {} {:.3f} ms,", name, ns / 1e6);
  if (phases.empty()) s += " none recorded,";
  s.back() = '\n';
  return s;
}

// Stops the profiler; `save`: writes this rank's trace and logs rank 0's table.
void StopProfiler(const ProfileConfig& cfg, const std::string& dir, int64_t last, int rank,
                  bool save) {
  profiler_running = false;
  std::unique_ptr<kineto_api::ProfilerResult> result = kineto_api::disableProfiler();
  if (!save || result == nullptr) return;
  files::CreateDirectories(dir);
  const std::string path = files::Join(dir, fmt::format("rank{}.pt.trace.json", rank));
  try {
    result->save(path);
  } catch (const c10::Error&) {
    WriteEventsTrace(result->events(), rank, path);  // libtorch without Kineto
  }
  if (rank != 0) return;
  LogInfo("profiled steps {}-{}: traces {} (one per rank; chrome://tracing or ui.perfetto.dev)\n{}",
          profiler_first, last, files::Join(dir, "rank<r>.pt.trace.json"),
          ProfileTable(result->events(), cfg.top));
}

}  // namespace

ProfileWindow::ProfileWindow(const Config& cfg, int64_t step, int64_t total_steps, int rank)
    : cfg_(cfg), step_(step), rank_(rank) {
  const ProfileConfig& p = cfg.train.profile;
  last_ = std::min(p.start + p.steps - 1, total_steps);
  if (p.start > 0 && !profiler_running && step >= p.start && step <= last_) StartProfiler(step);
}

ProfileWindow::~ProfileWindow() {
  if (!profiler_running || step_ < last_) return;
  const bool unwinding = std::uncaught_exceptions() > 0;
  try {
    const ProfileConfig& p = cfg_.train.profile;
    StopProfiler(p, RunPath(cfg_, p.dir), last_, rank_, !unwinding);
  } catch (const std::exception& e) {
    LogWarn("profiler: {} (the trace of steps up to {} is lost)", e.what(), last_);
  }
}

}  // namespace ftune::runtime
