#include "runtime/metrics.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "runtime/tensorboard.h"
#include "runtime/trainer.h"

namespace ftune::runtime {

int64_t PeakRssBytes() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  }
  return -1;
}

double ModelFlopsPerDevice(const ThroughputModel& m, double tokens, double seconds) {
  return m.flops_per_token * tokens / std::max(1e-9, seconds) / double(std::max<int64_t>(1, m.dp));
}

double KnownPeakTflops(const std::string& name, c10::ScalarType dtype) {
  if (dtype != c10::kBFloat16 && dtype != c10::kHalf) return 0;
  const std::pair<const char*, double> table[] = {
      {"H100 PCIe", 756}, {"H100 NVL", 835}, {"H100", 989}, {"H200", 989},
      {"GH200", 989},     {"A100", 312},     {"L40S", 362}, {"B200", 2250},
  };
  for (const auto& [key, tflops] : table) {
    if (name.find(key) != std::string::npos) return tflops;
  }
  return 0;
}

StepLogger::StepLogger(const LogConfig& cfg, const std::string& path,
                       const ThroughputModel& throughput, TensorBoardWriter* tb)
    : cfg_(cfg), tm_(throughput), tb_(tb) {
  if (!path.empty()) out_.open(path, std::ios::app);
  // mpirun hands ranks a pseudo-terminal even when its own output is a pipe or
  // a file, so `auto` also wants a TERM that can redraw a line.
  const char* term = std::getenv("TERM");
  const bool redraw = term != nullptr && std::string(term) != "dumb" && std::string(term) != "";
  bar_ = cfg.progress == "bar" || (cfg.progress == "auto" && isatty(STDOUT_FILENO) && redraw);
}

void StepLogger::Log(const StepStats& s, int64_t total) {
  if (first_step_ < 0) first_step_ = s.step;
  elapsed_ += s.seconds;
  const double tps = s.tokens / std::max(1e-9, s.seconds);
  const double flops = tps * tm_.flops_per_token;
  // Per device, over the step's wall time (compute + data wait), as `ftune bench train` counts.
  const double device_flops = ModelFlopsPerDevice(tm_, double(s.tokens), s.seconds + s.data_wait);
  const double mfu = tm_.peak_flops > 0 ? device_flops / tm_.peak_flops : -1;
  const double eta = elapsed_ / (s.step - first_step_ + 1) * (total - s.step);
  if (out_.is_open()) {
    nlohmann::json j = {{"step", s.step},         {"loss", s.loss},
                        {"grad_norm", s.grad_norm}, {"lr", s.lr},
                        {"tokens", s.tokens},     {"targets", s.targets},
                        {"tokens_per_s", tps},    {"step_s", s.seconds},
                        {"model_tflops", flops / 1e12},
                        {"model_tflops_per_device", device_flops / 1e12},
                        {"peak_rss_bytes", PeakRssBytes()},
                        {"host_rss_max_bytes", s.host_rss_max}, {"data_wait_s", s.data_wait},
                        {"comm_wait_s", s.comm_wait},
                        {"skipped", s.skipped}};
    if (mfu >= 0) j["mfu"] = mfu;
    if (s.device_memory.reserved > 0) {
      j["device_allocated_bytes"] = s.device_memory.allocated;
      j["device_reserved_bytes"] = s.device_memory.reserved;
      j["device_peak_bytes"] = s.device_memory.peak;
    }
    if (!std::isfinite(s.loss)) j["loss"] = nullptr;
    out_ << j.dump() << '\n';
    out_.flush();
  }
  if (tb_ != nullptr) {
    if (std::isfinite(s.loss)) tb_->AddScalar("train/loss", s.loss, s.step);
    tb_->AddScalar("train/lr", s.lr, s.step);
    if (std::isfinite(s.grad_norm)) tb_->AddScalar("train/grad_norm", s.grad_norm, s.step);
    tb_->AddScalar("throughput/tokens_per_s", tps, s.step);
    tb_->AddScalar("throughput/model_tflops_per_device", device_flops / 1e12, s.step);
    if (mfu >= 0) tb_->AddScalar("throughput/mfu", mfu, s.step);
    tb_->AddScalar("time/data_wait_s", s.data_wait, s.step);
    tb_->AddScalar("time/comm_wait_s", s.comm_wait, s.step);
    if (s.host_rss_max > 0) tb_->AddScalar("memory/host_rss_max_gib", double(s.host_rss_max) / (1 << 30), s.step);
    if (s.device_memory.peak > 0) {
      tb_->AddScalar("memory/device_peak_gib", double(s.device_memory.peak) / (1 << 30), s.step);
      tb_->AddScalar("memory/device_reserved_gib", double(s.device_memory.reserved) / (1 << 30), s.step);
    }
  }
  const bool last = s.step == total;
  if (bar_) {
    const int width = 24;
    const int filled = static_cast<int>(width * s.step / std::max<int64_t>(1, total));
    std::printf("\r[%s%s] %lld/%lld loss %.4f lr %.2e %.0f tok/s ETA %.0fs%s",
                std::string(filled, '#').c_str(), std::string(width - filled, '.').c_str(),
                static_cast<long long>(s.step), static_cast<long long>(total), s.loss, s.lr, tps,
                eta, last ? "\n" : "");
    std::fflush(stdout);
  } else if (s.step % cfg_.every == 0 || last || s.skipped) {
    std::string extra;
    if (mfu >= 0) extra += fmt::format(" | MFU {:.1f}%", 100 * mfu);
    if (s.device_memory.peak > 0) {
      extra += fmt::format(" | dev peak {:.2f} GiB", double(s.device_memory.peak) / (1 << 30));
    }
    if (s.host_rss_max > 0) extra += fmt::format(" | rss {:.2f} GiB", double(s.host_rss_max) / (1 << 30));
    std::printf("step %lld/%lld | loss %.4f | grad norm %.3f | lr %.3e | %.0f tok/s%s | %.2f s%s\n",
                static_cast<long long>(s.step), static_cast<long long>(total), s.loss,
                s.grad_norm, s.lr, tps, extra.c_str(), s.seconds,
                s.skipped ? " | SKIPPED (non-finite)" : "");
    std::fflush(stdout);
  }
}

void StepLogger::Record(const std::string& json) {
  if (out_.is_open()) {
    out_ << json << '\n';
    out_.flush();
  }
}

}  // namespace ftune::runtime
