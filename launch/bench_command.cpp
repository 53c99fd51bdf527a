// `ftune bench comm`: Communicator all-reduce bandwidth beside raw MPI.
// `ftune bench train --config C [--warmup N] [--steps M] [--profile DIR]`: N untimed and M timed
// steps of the real training step (data from the shards, gradient sync, optimizer), then the
// device's practical GEMM ceiling on the same threads; one JSON line on rank 0 (the last line of
// stdout). --profile: the timed steps are the profiler's window (runtime/profiler.h).
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>

#include "launch/commands.h"
#include "parallel/comm_bench.h"
#include "parallel/compat.h"
#include "parallel/files.h"
#include "runtime/metrics.h"
#include "runtime/model_setup.h"
#include "runtime/trainer.h"

namespace ftune::launch {
namespace {

double Percentile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  const double pos = q * double(v.size() - 1);
  const size_t lo = static_cast<size_t>(pos);
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - double(lo));
}

// FLOP/s of an n x n x n matmul in `dtype` on `device`, median of `iters` after 2 untimed ones:
// the practical ceiling the model's GEMMs can reach with these threads.
double GemmFlops(const torch::Device& device, c10::ScalarType dtype, int64_t n, int iters) {
  torch::NoGradGuard no_grad;
  auto opts = torch::TensorOptions().device(device).dtype(dtype);
  auto a = torch::randn({n, n}, opts), b = torch::randn({n, n}, opts);
  auto c = torch::empty({n, n}, opts);
  std::vector<double> t;
  for (int i = 0; i < iters + 2; ++i) {
    ftune::compat::SynchronizeDevice(device);
    const auto t0 = std::chrono::steady_clock::now();
    at::matmul_out(c, a, b);
    ftune::compat::SynchronizeDevice(device);
    const auto dt = std::chrono::steady_clock::now() - t0;
    if (i >= 2) t.push_back(std::chrono::duration<double>(dt).count());
  }
  return 2.0 * double(n) * n * n / Percentile(t, 0.5);
}

}  // namespace

void AddBenchCommand(CLI::App& app, runtime::World& world) {
  auto* bench = app.add_subcommand("bench", "benchmarks (not tests): comm, train");
  bench->require_subcommand(1);
  auto* comm = bench->add_subcommand("comm", "all-reduce busbw: Communicator vs raw MPI_Allreduce");
  static int64_t min_bytes = 1 << 10, max_bytes = int64_t(256) << 20;
  static int iters = 20, warmup = 3;
  comm->add_option("--min-bytes", min_bytes, "smallest message")->capture_default_str();
  comm->add_option("--max-bytes", max_bytes, "largest message")->capture_default_str();
  comm->add_option("--iters", iters, "timed iterations per size")->capture_default_str();
  comm->add_option("--warmup", warmup, "untimed iterations per size")->capture_default_str();
  comm->callback([&world]() {
    std::vector<int64_t> sizes;
    for (int64_t b = min_bytes; b <= max_bytes; b *= 4) sizes.push_back(b);
    auto rows = parallel::BenchAllReduce(world.comm(), sizes, warmup, iters);
    if (world.rank() != 0) return;
    fmt::print("all-reduce fp32 sum, {} ranks, {} iters (median, slowest rank)\n",
               world.world_size(), iters);
    fmt::print("{:>12} {:>12} {:>12} {:>14} {:>14} {:>8}\n", "bytes", "ftune_us", "mpi_us",
               "ftune_busbw", "mpi_busbw", "ratio");
    for (const auto& r : rows) {
      fmt::print("{:>12} {:>12.1f} {:>12.1f} {:>11.3f}GB/s {:>11.3f}GB/s {:>8.3f}\n", r.bytes,
                 r.comm_us, r.raw_us, r.comm_busbw_gbs, r.raw_busbw_gbs,
                 r.comm_busbw_gbs / r.raw_busbw_gbs);
    }
  });

  auto* train = bench->add_subcommand(
      "train", "timed steps of the real training step + the GEMM ceiling; one JSON line");
  static runtime::CommonArgs targs;
  AddCommonOptions(train, targs);
  static int64_t bench_warmup = 3, bench_steps = 10, gemm_n = 0;
  static double peak_tflops = 0;
  train->add_option("--warmup", bench_warmup, "untimed steps first")->capture_default_str();
  train->add_option("--steps", bench_steps, "timed steps")->capture_default_str()
      ->check(CLI::PositiveNumber);
  train->add_option("--peak-tflops", peak_tflops,
                    "the device's dense peak (TFLOP/s) for MFU; 0 = the known bf16 peak of an "
                    "H100/H200/A100 (else no MFU)")
      ->capture_default_str();
  train->add_option("--gemm-n", gemm_n, "size of the GEMM-ceiling matmul (0: 2048 CPU, 8192 GPU)");
  static std::string profile_dir;
  train->add_option("--profile", profile_dir,
                    "profile the timed steps: a trace per rank in DIR (DIR/rank<r>.pt.trace.json) "
                    "and the top ops on rank 0 (the timings then include the profiler's cost)");
  train->callback([&world]() {
    using namespace runtime;
    // The bench's own step count replaces the config's length, whether given in steps or in
    // epochs (a config with train.epochs would otherwise fail "set exactly one of ...").
    targs.overrides.push_back(fmt::format("train.steps={}", bench_warmup + bench_steps));
    targs.overrides.push_back("train.epochs=-1");
    targs.overrides.push_back("log.every=1000000000");
    if (!profile_dir.empty()) {
      targs.overrides.push_back(fmt::format("train.profile.start={}", bench_warmup + 1));
      targs.overrides.push_back(fmt::format("train.profile.steps={}", bench_steps));
      targs.overrides.push_back("train.profile.dir=" + files::Absolute(profile_dir));
    }
    Config cfg = SetUpRun(world, targs, {world.world_size(), /*need_train=*/true}, "bench_train");
    TrainingSetup run = SetUpTraining(world, cfg);
    Trainer& trainer = *run.trainer;
    const parallel::ProcessGrid& grid = *run.grid;
    std::vector<StepStats> stats;
    Trainer::Loop loop;
    loop.on_step = [&stats](const StepStats& s) { stats.push_back(s); };
    trainer.Train(*run.data.loader, bench_warmup + bench_steps, loop);
    stats.erase(stats.begin(), stats.begin() + bench_warmup);

    std::vector<double> step_s;
    double tokens = 0, wall = 0, wait = 0, comm = 0;
    for (const auto& s : stats) {
      step_s.push_back(s.seconds + s.data_wait);
      tokens += double(s.tokens);
      wall += s.seconds + s.data_wait;
      wait += s.data_wait;
      comm += s.comm_wait;
    }
    const double median = Percentile(step_s, 0.5);
    const double tokens_per_step = tokens / double(stats.size());
    const double tokens_per_s = tokens_per_step / median;
    const double flops_per_token = trainer.parallel().FlopsPerToken(cfg.data.max_seq_len);
    // Per device: the tokens of this rank's tp group run on tp devices (runtime/metrics.h, the
    // same formula as metrics.jsonl's per step).
    ThroughputModel tm;
    tm.flops_per_token = flops_per_token;
    tm.dp = grid.replicas();  // the devices sharing the tokens: dp x cp (x tp in the model)
    const double model_flops = ModelFlopsPerDevice(tm, tokens_per_step, median);
    const auto dtype = trainer.model().dtype();
    const torch::Device device = grid.device();
    const int64_t n = gemm_n > 0 ? gemm_n : (device.is_cuda() ? 8192 : 2048);
    const double gemm = GemmFlops(device, dtype, n, device.is_cuda() ? 20 : 5);
    if (world.rank() != 0) return;
    nlohmann::json j = {
        {"world_size", world.world_size()}, {"dp", grid.dp()}, {"cp", grid.cp()},
        {"tp", grid.tp()},
        {"zero", cfg.parallel.zero}, {"dtype", cfg.model.dtype}, {"device", device.str()},
        {"threads", world.threads()}, {"seq_len", cfg.data.max_seq_len},
        {"micro_batch", cfg.train.micro_batch}, {"grad_accum", cfg.train.grad_accum},
        {"activation_checkpointing", trainer.parallel().checkpointing().Name()},
        {"warmup_steps", bench_warmup}, {"timed_steps", bench_steps},
        {"tokens_per_step", tokens_per_step}, {"tokens_per_s", tokens_per_s},
        {"step_ms_median", 1e3 * median}, {"step_ms_p10", 1e3 * Percentile(step_s, 0.1)},
        {"step_ms_p90", 1e3 * Percentile(step_s, 0.9)},
        {"flops_per_token", flops_per_token},
        {"flops_convention", "PaLM: 6N + 12*L*d*T, N = parameters (of one tp shard) without the "
                             "input embedding"},
        {"model_tflops_per_s_per_device", model_flops / 1e12},
        {"gemm_n", n}, {"gemm_tflops_per_s", gemm / 1e12},
        {"fraction_of_gemm_ceiling", model_flops / gemm},
        {"data_wait_fraction", wait / wall},
        {"comm_wait_fraction", comm / wall},  // rank 0 blocked in Communicator waits: exposed comm
        {"peak_rss_bytes", PeakRssBytes()},
    };
    if (!profile_dir.empty()) j["profile_dir"] = files::Absolute(profile_dir);
    const std::string device_name = compat::DeviceName(device);
    const double peak = peak_tflops > 0   ? peak_tflops
                        : cfg.run.peak_tflops > 0 ? cfg.run.peak_tflops
                                                  : KnownPeakTflops(device_name, dtype);
    j["device_name"] = device_name;
    if (peak > 0) {
      j["peak_tflops"] = peak;
      j["mfu"] = model_flops / (peak * 1e12);
    }
    if (device.is_cuda()) j["peak_gpu_bytes"] = compat::PeakDeviceMemory(device);
    fmt::print("{}\n", j.dump());
  });
}

}  // namespace ftune::launch
