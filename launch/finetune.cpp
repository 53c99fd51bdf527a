#include "launch/finetune.h"

#include <fstream>

#include "launch/commands.h"
#include "parallel/error.h"
#include "parallel/files.h"

namespace ftune {
namespace {

runtime::World& ProcessWorld() {
  static runtime::World world(nullptr, nullptr);
  return world;
}

// Runs one subcommand line ("prepare --config C ...") through the CLI, as main does.
void RunSubcommand(const std::vector<std::string>& line) {
  runtime::World& world = ProcessWorld();
  CLI::App app{"ftune (in-process)"};
  app.require_subcommand(1);
  launch::AddPrepareCommand(app, world);
  launch::AddTrainCommand(app, world);
  std::vector<std::string> reversed(line.rbegin(), line.rend());  // CLI11's vector form
  try {
    app.parse(reversed);
  } catch (const CLI::ParseError& e) {
    FT_THROW(ConfigError, "Finetune: bad arguments for `ftune {}`: {}", line.front(), e.what());
  }
}

}  // namespace

std::string Finetune(const std::string& config_path, const std::vector<std::string>& overrides) {
  for (const char* command : {"prepare", "train"}) {
    std::vector<std::string> line = {command, "--config", config_path};
    for (const auto& o : overrides) {
      line.push_back("--set");
      line.push_back(o);
    }
    RunSubcommand(line);
  }
  const auto cfg = runtime::LoadConfig(config_path, overrides, {});
  return runtime::RunPath(cfg, "final");
}

std::string Finetune(const runtime::Config& cfg) {
  files::CreateDirectories(cfg.run.output_dir);
  const std::string path = runtime::RunPath(cfg, "finetune_api.yaml");
  {
    std::ofstream out(path, std::ios::trunc);
    out << runtime::ConfigToYaml(cfg);
    if (!out) FT_THROW(IoError, "cannot write {}", path);
  }
  return Finetune(path);
}

}  // namespace ftune
