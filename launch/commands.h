// The ftune subcommands. Each Add*Command registers a CLI11 subcommand whose
// callback does the work; errors propagate as ftune::Error to main, which
// prints them and ends the whole job.
#pragma once

#include <CLI/CLI.hpp>

#include "runtime/run_setup.h"
#include "runtime/world.h"

namespace ftune::launch {

// Adds --config and --set to a subcommand.
void AddCommonOptions(CLI::App* sub, runtime::CommonArgs& args);

void AddEnvCommand(CLI::App& app, runtime::World& world);
void AddBenchCommand(CLI::App& app, runtime::World& world);
void AddTokenizeCommand(CLI::App& app);
// Subcommands whose issues have not landed yet: they say so and exit non-zero.
void AddPendingCommands(CLI::App& app, runtime::World& world);

}  // namespace ftune::launch
