// ftune: one binary for the whole finetuning workflow, launched by mpirun or srun.
#include <unistd.h>
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <iterator>
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

// OpenMP threads that have finished a parallel region spin-wait for the next one by default
// (libgomp with OMP_WAIT_POLICY unset). libtorch runs its element-wise ops on OpenMP threads and
// its GEMMs on OpenBLAS's own threads, so with run.threads > 1 the spinning OpenMP threads take
// the cores OpenBLAS's threads need: on the 2-core VM, 2 threads trained the ~100M shape at
// 187-197 tokens/s spinning and 250-276 with OMP_WAIT_POLICY=PASSIVE (PERFORMANCE.md).
// libgomp reads its environment once, while it is loaded, before main, so the commands that
// compute re-execute ftune (same process, same arguments) with OMP_WAIT_POLICY=PASSIVE when the
// user has not set it. This happens before MPI_Init and costs one more start (~0.7 s on the VM);
// a value the user sets is kept and skips it. If exec fails, ftune goes on as it is.
void DefaultThreadEnvironment(int argc, char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") != nullptr) return;
  const char* command = nullptr;
  for (int i = 1; i < argc && command == nullptr; ++i) {
    if (argv[i][0] != '-') command = argv[i];
  }
  static const char* const kComputing[] = {"train", "bench", "eval", "generate"};
  if (command == nullptr ||
      std::none_of(std::begin(kComputing), std::end(kComputing),
                   [&](const char* c) { return std::strcmp(c, command) == 0; })) {
    return;
  }
  setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
  execv("/proc/self/exe", argv);
}

}  // namespace

int main(int argc, char** argv) {
  using namespace ftune;
  DefaultThreadEnvironment(argc, argv);
  runtime::World world(&argc, &argv);
  runtime::InitLogging(world.rank(), world.world_size());

  CLI::App app{"ftune: full-parameter finetuning of Llama-family models"};
  app.require_subcommand(1);
  app.fallthrough(false);
  launch::AddEnvCommand(app, world);
  launch::AddTokenizeCommand(app);
  launch::AddChatRenderCommand(app);
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
