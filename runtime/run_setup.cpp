#include "runtime/run_setup.h"

#include <filesystem>
#include <fstream>

#include "runtime/log.h"

namespace ftune::runtime {

Config SetUpRun(World& world, const CommonArgs& args, const ConfigCheck& check,
                const std::string& command) {
  Config cfg = LoadConfig(args.config_path, args.overrides, check);
  world.SetThreads(cfg.run.threads);
  const std::filesystem::path dir(cfg.run.output_dir);
  if (world.rank() == 0) {
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec) {
      FT_THROW(IoError, "cannot create run.output_dir '{}': {}", dir.string(), ec.message());
    }
    const auto yaml = dir / fmt::format("{}_config.yaml", command);
    const auto tmp = yaml.string() + ".tmp";
    {
      std::ofstream out(tmp);
      out << "# resolved by ftune " << command << " (CLI --set > "
          << (args.config_path.empty() ? "no file" : args.config_path) << " > defaults)\n"
          << ConfigToYaml(cfg);
      if (!out) FT_THROW(IoError, "cannot write {}", tmp);
    }
    std::filesystem::rename(tmp, yaml);
    LogInfo("ftune {} | {} rank(s) | config {}\n{}", command, world.world_size(),
            args.config_path.empty() ? "(defaults)" : args.config_path, ConfigTable(cfg));
  }
  world.comm().Barrier()->Wait();  // the run directory exists before any rank writes into it
  OpenLogFile((dir / "logs" / fmt::format("rank_{}.log", world.rank())).string());
  return cfg;
}

}  // namespace ftune::runtime
