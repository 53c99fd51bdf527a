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
// `ftune chat-render` (launch/chat_render_command.cpp).
void AddChatRenderCommand(CLI::App& app);
// `ftune generate --model DIR --prompt ...` and `ftune export --model DIR --out DIR`.
void AddGenerateCommand(CLI::App& app, runtime::World& world);
void AddExportCommand(CLI::App& app, runtime::World& world);
// What `ftune export --checkpoint CHECKPOINT --out OUT --overwrite` does (collective over the
// world): the checkpoint's weights in its dtype, with its run's tokenizer and chat template.
void ExportCheckpointTo(runtime::World& world, const std::string& checkpoint,
                        const std::string& out);
// `ftune prepare` (launch/prepare_command.cpp).
void AddPrepareCommand(CLI::App& app, runtime::World& world);
// `ftune train` (launch/train_command.cpp).
void AddTrainCommand(CLI::App& app, runtime::World& world);
// `ftune eval` (launch/eval_command.cpp).
void AddEvalCommand(CLI::App& app, runtime::World& world);
// `ftune plan` (launch/plan_command.cpp).
void AddPlanCommand(CLI::App& app, runtime::World& world);

}  // namespace ftune::launch
