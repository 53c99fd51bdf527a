// ftune: one binary for the whole finetuning workflow, launched by mpirun or srun.
#include <cstdlib>
#include <iostream>

#include "launch/commands.h"
#include "parallel/error.h"
#include "runtime/log.h"

namespace {

// Config errors are the same on every rank: print once (rank 0) and, when every
// rank agrees within a few seconds, exit cleanly; anything else aborts the job
// so no rank waits forever in a collective.
int HandleError(ftune::runtime::World& world, const ftune::Error& e) {
  using namespace ftune;
  const bool config = dynamic_cast<const ConfigError*>(&e) != nullptr;
  if (!config || world.rank() == 0) {
    runtime::LogError("{}", e.what());
  }
  if (world.world_size() == 1) return config ? 2 : 1;
  if (config) {
    world.comm().set_timeout(10);
    try {
      world.comm().Barrier()->Wait();
      return 2;
    } catch (const Error&) {
    }
  }
  std::cerr << std::flush;
  world.Abort(config ? 2 : 1);
}

}  // namespace

int main(int argc, char** argv) {
  using namespace ftune;
  runtime::World world(&argc, &argv);
  runtime::InitLogging(world.rank(), world.world_size());

  CLI::App app{"ftune: full-parameter finetuning of Llama-family models"};
  app.require_subcommand(1);
  app.fallthrough(false);
  launch::AddEnvCommand(app, world);
  launch::AddTokenizeCommand(app);
  launch::AddBenchCommand(app, world);
  launch::AddPrepareCommand(app, world);
  launch::AddGenerateCommand(app, world);
  launch::AddExportCommand(app, world);
  launch::AddTrainCommand(app, world);
  launch::AddEvalCommand(app, world);
  launch::AddPlanCommand(app, world);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (world.rank() == 0) return app.exit(e);
    return e.get_exit_code();
  } catch (const Error& e) {
    return HandleError(world, e);
  } catch (const std::exception& e) {
    runtime::LogError("unexpected error: {}", e.what());
    if (world.world_size() > 1) world.Abort(1);
    return 1;
  }
  return 0;
}
