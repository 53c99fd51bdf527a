#include "runtime/checkpoint.h"

#include <ATen/CPUGeneratorImpl.h>
#include <libdeflate.h>

#include <algorithm>
#include <cctype>
#include <ctime>
#include <fstream>
#include <regex>
#include <thread>

#include "parallel/files.h"
#include "runtime/checkpoint_internal.h"
#include "runtime/log.h"

namespace ftune::runtime {
namespace checkpoint_detail {

std::string DatasetName(const std::string& name, int k) {
  static constexpr const char* kKinds[3] = {"", "exp_avg", "exp_avg_sq"};
  return k == 0 ? "/model/" + name : fmt::format("/optim/{}/{}", name, kKinds[k]);
}

// By libdeflate (carry-less multiplication: ~3x zlib's table-driven crc32 here,
// which took a third of a cold checkpoint read).
uint32_t Crc32(const void* p, int64_t bytes) {
  return libdeflate_crc32(0, p, static_cast<size_t>(bytes));
}

int64_t StepOfFile(const std::string& name) {
  static const std::regex re(R"(^step_(\d+)\.h5$)");
  std::smatch m;
  if (!std::regex_match(name, m, re)) return -1;
  return std::stoll(m[1].str());
}

std::vector<std::pair<int64_t, std::string>> CompleteFiles(const std::string& dir) {
  std::vector<std::pair<int64_t, std::string>> out;
  if (!files::IsDirectory(dir)) return out;
  std::vector<std::string> names;
  try {
    names = files::ListDir(dir);
  } catch (const IoError&) {
    return out;  // unreadable: no checkpoints
  }
  for (const auto& name : names) {
    const std::string path = files::Join(dir, name);
    if (!files::IsFile(path)) continue;
    const int64_t s = StepOfFile(name);
    if (s >= 0) out.emplace_back(s, path);
  }
  std::sort(out.rbegin(), out.rend());
  return out;
}

at::Generator CpuGenerator() { return at::detail::getDefaultCPUGenerator(); }

}  // namespace checkpoint_detail

using namespace checkpoint_detail;

CheckpointManager::CheckpointManager(const Config& cfg, parallel::ProcessGrid& grid,
                                     parallel::DataParallel& dp,
                                     const models::LlamaConfig& model_cfg, std::string dir)
    : cfg_(cfg), grid_(grid), dp_(dp), model_cfg_(model_cfg), dir_(std::move(dir)) {
  comm_ = grid_.world().Split(0, grid_.world().rank(), "checkpoint");
  comm_->set_timeout(cfg_.parallel.timeout_s);
  data::QuietHdf5();  // errors come back as exceptions, not on stderr
  plan_ = Plan::Make(dp_, grid_, model_cfg_, *comm_);
}

CheckpointManager::~CheckpointManager() {
  if (thread_.joinable() && std::uncaught_exceptions() > 0) {
    // Unwinding (e.g. a collective timed out because a rank died): an async
    // write may be stuck in MPI-IO, which has no timeout. Wait a bounded time,
    // then abandon it so that main can report the error and abort the job.
    const auto deadline = Clock::now() + std::chrono::duration<double>(cfg_.parallel.timeout_s);
    while (!job_done_.load() && Clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (!job_done_.load()) {
      LogError(
          "an async checkpoint save is still running after "
          "parallel.timeout_s = {} s; "
          "abandoning it (its temporary file stays incomplete and is "
          "never used)",
          cfg_.parallel.timeout_s);
      thread_.detach();
      pending_.release();                      // the detached thread still uses it
      if (pruner_.joinable()) pruner_.join();  // local deletions only: never blocks for long
      return;
    }
  }
  try {
    Wait();
  } catch (const std::exception& e) {
    LogError("the last checkpoint save failed: {}", e.what());
  }
}

void CheckpointManager::Wait() {
  if (thread_.joinable()) thread_.join();
  if (pruner_.joinable()) pruner_.join();
  if (pending_) {
    if (!async_error_) saves_.push_back(pending_->stats);
    pending_.reset();
  }
  if (async_error_) {
    auto e = async_error_;
    async_error_ = nullptr;
    std::rethrow_exception(e);
  }
}

void CheckpointManager::MoveAside() {
  Wait();
  Phase(*comm_, "moving old checkpoints aside in " + dir_, [&]() {
    if (comm_->rank() != 0) return;
    const auto complete = CompleteFiles(dir_);
    if (complete.empty()) return;
    const std::string dest = files::Join(dir_, fmt::format("previous_{}", std::time(nullptr)));
    files::CreateDirectories(dest);
    for (const auto& f : complete) {
      files::Rename(f.second, files::Join(dest, files::BaseName(f.second)));
    }
    try {
      files::Rename(files::Join(dir_, "latest"), files::Join(dest, "latest"));
    } catch (const IoError&) {  // none, or stale: the checkpoints moved are what matters
    }
    LogWarn(
        "starting over (checkpoint.resume is false): moved {} earlier "
        "checkpoint(s) to {}",
        complete.size(), dest);
  });
}

std::string CheckpointFileName(int64_t step) { return fmt::format("step_{:08d}.h5", step); }

std::vector<std::string> CheckpointCandidates(const std::string& dir) {
  std::vector<std::string> out;
  const auto complete = CompleteFiles(dir);
  const std::string latest_path = files::Join(dir, "latest");
  if (files::Exists(latest_path)) {
    // A `latest` that names no usable file is passed over, and said so: the
    // newest complete step_*.h5 is tried first instead.
    std::ifstream in(latest_path);
    std::string latest, reason;
    if (!in || !std::getline(in, latest) || latest.empty()) {
      reason = "is empty or unreadable";
    } else if (StepOfFile(latest) < 0) {
      std::string shown;  // printable, and short: the file may be binary garbage
      for (char c : latest.substr(0, 64)) {
        shown += std::isprint(static_cast<unsigned char>(c)) ? c : '?';
      }
      reason = fmt::format("names '{}'{}, which is not a checkpoint file name (step_N.h5)", shown,
                           latest.size() > 64 ? "..." : "");
    } else {
      for (const auto& f : complete) {
        if (files::BaseName(f.second) == latest) out.push_back(f.second);
      }
      if (out.empty()) reason = fmt::format("names {}, which does not exist", latest);
    }
    if (!reason.empty()) {
      LogWarn("checkpoint pointer {} {}: {}", latest_path, reason,
              complete.empty() ? std::string("and no checkpoint file (step_*.h5) is left there")
                               : "falling back to the newest checkpoint file, " +
                                     files::BaseName(complete.front().second));
    }
  }
  for (const auto& f : complete) {
    if (out.empty() || f.second != out.front()) out.push_back(f.second);
  }
  return out;
}

std::vector<std::string> ResolveCheckpointArg(const std::string& arg, const std::string& option) {
  if (files::IsFile(arg)) {
    data::QuietHdf5();
    H5Lock lock;
    if (H5Fis_hdf5(arg.c_str()) <= 0) {
      H5Eclear2(H5E_DEFAULT);
      FT_THROW(IoError,
               "{} {}: not an HDF5 file, so not an ftune checkpoint (step_N.h5); "
               "pass a "
               "checkpoint, a checkpoint or run directory, or an HF model directory",
               option, arg);
    }
    return {arg};
  }
  if (!files::IsDirectory(arg)) {
    FT_THROW(IoError, "{} {}: no such file or directory", option, arg);
  }
  auto c = CheckpointCandidates(arg);
  if (c.empty()) c = CheckpointCandidates(files::Join(arg, "checkpoints"));
  if (c.empty()) {
    FT_THROW(IoError, "{} {}: no checkpoint (step_*.h5) in it or in {}/checkpoints", option, arg,
             arg);
  }
  return c;
}

}  // namespace ftune::runtime
