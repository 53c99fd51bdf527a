// Finetuning from code, in this process (one rank, no mpirun needed):
//
//   #include "launch/finetune.h"
//   std::string model_dir = ftune::Finetune("configs/demo_finetune.yaml");  // prepare + train
//   ftune::Runner runner(model_dir);                                       // runtime/runner.h
//
// Runs exactly what `ftune prepare --config C` and `ftune train --config C` run (the same
// subcommand code, the same checks, logs and run directory) and returns the exported HF model
// directory, <run.output_dir>/final. MPI is initialised on first use (a single-process job) and
// finalised at exit; the process must not initialise MPI itself. Errors throw ftune::Error.
#pragma once

#include <string>
#include <vector>

#include "runtime/config.h"

namespace ftune {

// `overrides` are --set entries ("train.steps=10"), applied over the YAML file.
std::string Finetune(const std::string& config_path,
                     const std::vector<std::string>& overrides = {});
// The same with a config built in code (written to <run.output_dir>/finetune_api.yaml first).
std::string Finetune(const runtime::Config& cfg);

}  // namespace ftune
