// `ftune env`: what each rank sees (placement, device, threads, library versions).
#include <fmt/format.h>
#include <cstdlib>

#include "launch/commands.h"

#include "parallel/communicator.h"
#include "parallel/gather_strings.h"
#include "runtime/log.h"

namespace ftune::launch {

void AddCommonOptions(CLI::App* sub, runtime::CommonArgs& args) {
  sub->add_option("--config,-c", args.config_path, "YAML config file")->check(CLI::ExistingFile);
  sub->add_option("--set", args.overrides, "override a config key: --set train.steps=10")
      ->allow_extra_args(false);
}

void AddEnvCommand(CLI::App& app, runtime::World& world) {
  auto* sub = app.add_subcommand(
      "env", "print each rank's placement, device and library versions (and, with --config, "
             "check and print the resolved config)");
  static runtime::CommonArgs args;
  AddCommonOptions(sub, args);
  sub->callback([&world]() {
    if (!args.config_path.empty() || !args.overrides.empty()) {
      runtime::SetUpRun(world, args, {world.world_size(), false}, "env");
    }
    const char* wait = std::getenv("OMP_WAIT_POLICY");
    const std::string line = fmt::format(
        "rank {}/{} | local rank {}/{} | host {} | device {} | torch threads {} | "
        "OMP_WAIT_POLICY {}", world.rank(), world.world_size(), world.local_rank(),
        world.local_size(), world.host(), world.device().str(), world.threads(),
        wait != nullptr ? wait : "unset (train, bench, eval and generate run with PASSIVE)");
    auto lines = parallel::AllGatherStrings(world.comm(), line);
    if (world.rank() != 0) return;
    fmt::print("ftune env\n");
    fmt::print("  libtorch {} | MPI: {} (thread level {}) | HDF5 {} | NCCL {}\n",
               runtime::TorchVersion(), parallel::MpiLibraryVersion(), world.mpi_thread_level(),
               runtime::HdfVersion(),
               parallel::HasNccl() ? parallel::NcclVersion() : std::string("not built"));
    for (const auto& l : lines) fmt::print("  {}\n", l);
  });
}

}  // namespace ftune::launch
