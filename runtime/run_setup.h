// What every config-driven subcommand does first: load the config (CLI > YAML
// > defaults), set threads, create the run directory, write the resolved YAML
// there and print it as a table on rank 0, open this rank's log file, and start publishing this
// rank's flight record into run_dir/logs/flight (parallel/watchdog.h: what a collective timeout
// reports).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "parallel/process_grid.h"
#include "runtime/config.h"
#include "runtime/world.h"

namespace ftune::runtime {

struct CommonArgs {
  std::string config_path;             // --config
  std::vector<std::string> overrides;  // --set key=value, in order
};

Config SetUpRun(World& world, const CommonArgs& args, const ConfigCheck& check,
                const std::string& command);

// The run's placement, decided here and nowhere else: parallel.dp x parallel.tp over the world,
// this rank's device (World's), the data communicators' backend (parallel.backend; auto = NCCL on
// a GPU no other rank of the node shares, else MPI) and parallel.timeout_s on every
// communicator. Logs the placement on rank 0 unless `log` is false (a command whose standard
// output is its result). Collective over the world.
std::unique_ptr<parallel::ProcessGrid> MakeGrid(World& world, const Config& cfg, bool log = true);

}  // namespace ftune::runtime
