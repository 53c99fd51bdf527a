#include "runtime/run_setup.h"

#include <algorithm>
#include <fstream>
#include <random>

#include "parallel/compat.h"
#include "parallel/files.h"
#include "parallel/watchdog.h"
#include "runtime/log.h"

namespace ftune::runtime {

Config SetUpRun(World& world, const CommonArgs& args, const ConfigCheck& check,
                const std::string& command) {
  if (args.config_path.empty() && command != "env") {
    std::string name = command;  // "bench_train" -> "bench train"
    std::replace(name.begin(), name.end(), '_', ' ');
    FT_THROW(ConfigError,
             "ftune {} needs a config: --config FILE (a YAML file with the sections run, model, "
             "data, train, ...). configs/tiny.yaml is a small complete one that runs in seconds, "
             "configs/demo_finetune.yaml finetunes the demo model, and configs/llama3_8b.yaml / "
             "llama3_70b.yaml are real models; change any key with --set key=value",
             name);
  }
  Config cfg = LoadConfig(args.config_path, args.overrides, check);
  world.SetThreads(cfg.run.threads);
  compat::SetDeterministic(cfg.run.deterministic);
  const std::string& dir = cfg.run.output_dir;
  if (world.rank() == 0) {
    try {
      files::CreateDirectories(dir);
    } catch (const IoError& e) {
      FT_THROW(IoError, "run.output_dir '{}': {}", dir, e.what());
    }
    const auto yaml = files::Join(dir, fmt::format("{}_config.yaml", command));
    const auto tmp = yaml + ".tmp";
    {
      std::ofstream out(tmp);
      out << "# resolved by ftune " << command << " (CLI --set > "
          << (args.config_path.empty() ? "no file" : args.config_path) << " > defaults)\n"
          << ConfigToYaml(cfg);
      if (!out) FT_THROW(IoError, "cannot write {}", tmp);
    }
    files::Rename(tmp, yaml);
    LogInfo("ftune {} | {} rank(s) | config {} (resolved in full: {})\n{}", command,
            world.world_size(), args.config_path.empty() ? "(defaults)" : args.config_path, yaml,
            ConfigTable(cfg));
  }
  // Rank 0 names this run's flight records (files an earlier run left in the directory are
  // ignored); the broadcast also orders: the run directory exists before any rank writes into it.
  auto run_token = at::zeros({1}, at::kLong);
  if (world.rank() == 0) {
    std::random_device random;
    run_token[0] = static_cast<int64_t>((uint64_t{random()} << 32) | random());
  }
  world.comm().Broadcast(run_token, 0)->Wait();
  OpenLogFile(files::Join(dir, fmt::format("logs/rank_{}.log", world.rank())));
  parallel::PublishFlightRecords(
      files::Join(dir, "logs/flight"),
      fmt::format("{:016x}", static_cast<uint64_t>(run_token[0].item<int64_t>())),
      [](bool error, const std::string& text) {
        LogToFile(error ? LogLevel::kError : LogLevel::kWarn, text);
      });
  return cfg;
}

std::unique_ptr<parallel::ProcessGrid> MakeGrid(World& world, const Config& cfg, bool log) {
  parallel::GridOptions opt;
  opt.dp = cfg.parallel.dp;
  opt.cp = cfg.parallel.cp;
  opt.tp = cfg.parallel.tp;
  opt.device = world.device();
  opt.backend = cfg.parallel.backend;
  opt.device_shared = world.device_shared();
  opt.timeout_s = cfg.parallel.timeout_s;
  auto grid = std::make_unique<parallel::ProcessGrid>(world.comm(), opt);
  if (!log) return grid;
  LogInfo("placement: dp {} x cp {} x tp {} on {} (rank 0's device), data communicators {}, "
          "control MPI", grid->dp(), grid->cp(), grid->tp(), grid->device().str(),
          grid->backend());
  return grid;
}

}  // namespace ftune::runtime
