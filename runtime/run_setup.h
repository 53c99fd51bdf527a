// What every config-driven subcommand does first: load the config (CLI > YAML
// > defaults), set threads, create the run directory, write the resolved YAML
// there and print it as a table on rank 0, and open this rank's log file.
#pragma once

#include <string>
#include <vector>

#include "runtime/config.h"
#include "runtime/world.h"

namespace ftune::runtime {

struct CommonArgs {
  std::string config_path;             // --config
  std::vector<std::string> overrides;  // --set key=value, in order
};

Config SetUpRun(World& world, const CommonArgs& args, const ConfigCheck& check,
                const std::string& command);

}  // namespace ftune::runtime
