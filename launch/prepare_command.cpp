// `ftune prepare --config C`: JSONL -> templated, tokenized, split HDF5 shards (data/prepare.h).
#include <fmt/format.h>

#include <cstdio>

#include "data/prepare.h"
#include "launch/commands.h"
#include "runtime/log.h"

namespace ftune::launch {

void AddPrepareCommand(CLI::App& app, runtime::World& world) {
  auto* sub = app.add_subcommand(
      "prepare", "JSONL -> templated, tokenized, split HDF5 shards (train/test) in data.dir");
  static runtime::CommonArgs args;
  static bool overwrite = false;
  static int64_t preview = 0;
  AddCommonOptions(sub, args);
  sub->add_flag("--overwrite", overwrite,
                "replace a different dataset already in data.dir");
  sub->add_option("--preview", preview,
                  "print N rendered examples ([PROMPT]...[/PROMPT] = not trained on) and exit "
                  "without writing");
  sub->callback([&world]() {
    // prepare does not use the process layout: whatever parallel.* says, any rank count works.
    runtime::ConfigCheck check;
    check.world_size = world.world_size();
    check.layout = false;
    const runtime::Config cfg = runtime::SetUpRun(world, args, check, "prepare");

    data::PrepareOptions opts;
    opts.data = cfg.data;
    opts.tokenizer_path = cfg.tokenizer.path.empty() ? cfg.model.path : cfg.tokenizer.path;
    opts.out_dir = runtime::RunPath(cfg, cfg.data.dir);
    opts.overwrite = overwrite;
    opts.preview = preview;
    const data::PrepareSummary s = data::Prepare(opts, &world.comm());
    if (world.rank() != 0 || preview > 0) return;
    runtime::LogNotesOnce(s.tokenizer_notes);
    fmt::print("{}", s.ToText());
    const int64_t tokens = s.train.tokens + s.test.tokens;
    fmt::print("prepared {} in {:.2f} s on {} rank(s): {:.1f} MB/s input, {:.0f} tokens/s\n",
               opts.out_dir, s.seconds, world.world_size(), s.input_bytes / 1e6 / s.seconds,
               tokens / s.seconds);
    std::fflush(stdout);
  });
}

}  // namespace ftune::launch
