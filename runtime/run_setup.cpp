#include "runtime/run_setup.h"

#include <fstream>

#include "parallel/files.h"
#include "runtime/log.h"

namespace ftune::runtime {

Config SetUpRun(World& world, const CommonArgs& args, const ConfigCheck& check,
                const std::string& command) {
  Config cfg = LoadConfig(args.config_path, args.overrides, check);
  world.SetThreads(cfg.run.threads);
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
    LogInfo("ftune {} | {} rank(s) | config {}\n{}", command, world.world_size(),
            args.config_path.empty() ? "(defaults)" : args.config_path, ConfigTable(cfg));
  }
  world.comm().Barrier()->Wait();  // the run directory exists before any rank writes into it
  OpenLogFile(files::Join(dir, fmt::format("logs/rank_{}.log", world.rank())));
  return cfg;
}

}  // namespace ftune::runtime
