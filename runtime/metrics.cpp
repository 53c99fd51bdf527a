#include "runtime/metrics.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>

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

StepLogger::StepLogger(const LogConfig& cfg, const std::string& path, double flops_per_token,
                       double peak_flops)
    : cfg_(cfg), flops_per_token_(flops_per_token), peak_flops_(peak_flops) {
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
  const double flops = tps * flops_per_token_;
  const double eta = elapsed_ / (s.step - first_step_ + 1) * (total - s.step);
  if (out_.is_open()) {
    nlohmann::json j = {{"step", s.step},         {"loss", s.loss},
                        {"grad_norm", s.grad_norm}, {"lr", s.lr},
                        {"tokens", s.tokens},     {"targets", s.targets},
                        {"tokens_per_s", tps},    {"step_s", s.seconds},
                        {"model_tflops", flops / 1e12},
                        {"peak_rss_bytes", PeakRssBytes()}, {"data_wait_s", s.data_wait},
                        {"comm_wait_s", s.comm_wait},
                        {"skipped", s.skipped}};
    if (peak_flops_ > 0) j["mfu"] = flops / peak_flops_;
    if (!std::isfinite(s.loss)) j["loss"] = nullptr;
    out_ << j.dump() << '\n';
    out_.flush();
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
    std::printf("step %lld/%lld | loss %.4f | grad norm %.3f | lr %.3e | %.0f tok/s | %.2f s%s\n",
                static_cast<long long>(s.step), static_cast<long long>(total), s.loss,
                s.grad_norm, s.lr, tps, s.seconds, s.skipped ? " | SKIPPED (non-finite)" : "");
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
