// `ftune plan --config C --nodes N --gpus-per-node G [--gpu-mem GiB]`: per-GPU memory and
// per-step communication of every layout (dp, tp, zero, activation checkpointing policy) for the
// config's model, batch and sequence length, which fit, the config's own layout, and the one to
// use (runtime/plan.h).
// Needs no GPU and no data; under mpirun only rank 0 prints.
#include <nlohmann/json.hpp>

#include "launch/commands.h"
#include "models/llama_config.h"
#include "parallel/files.h"
#include "runtime/config.h"
#include "runtime/log.h"
#include "runtime/plan.h"

namespace ftune::launch {

void AddPlanCommand(CLI::App& app, runtime::World& world) {
  auto* sub = app.add_subcommand(
      "plan", "per-GPU memory and communication of every layout for a config; recommends one");
  static runtime::CommonArgs args;
  AddCommonOptions(sub, args);
  sub->get_option("--config")->required();
  static int64_t nodes = 1, gpus = 8;
  static double gpu_mem_gib = 80;
  static std::string attention = "flash";
  static bool max_seq = false, json = false;
  sub->add_option("--nodes", nodes, "nodes in the job")->check(CLI::PositiveNumber);
  sub->add_option("--gpus-per-node", gpus, "GPUs per node (tp stays within a node)")
      ->check(CLI::PositiveNumber);
  sub->add_option("--gpu-mem", gpu_mem_gib, "memory per GPU in GiB (H100 80GB: 80)")
      ->check(CLI::PositiveNumber);
  sub->add_option("--attention", attention,
                  "flash (GPU, libtorch >= 2: no s^2 score memory) or materialized")
      ->check(CLI::IsMember({"flash", "materialized"}));
  sub->add_flag("--max-seq", max_seq,
                "also the longest data.max_seq_len the config's own layout (parallel.cp, tp, "
                "zero, checkpointing) trains on these GPUs");
  sub->add_flag("--json", json,
                "print the config's own layout as one JSON line (bytes) instead of the table");
  sub->callback([&world]() {
    runtime::ConfigCheck check;
    check.layout = false;  // the layouts are what plan enumerates
    runtime::Config cfg = runtime::LoadConfig(args.config_path, args.overrides, check);
    const auto model =
        cfg.model.path.empty()
            ? models::LlamaConfig::FromInline(cfg.model)
            : models::LlamaConfig::FromFile(files::Join(cfg.model.path, "config.json"));
    runtime::LogNotesOnce(model.notes);
    runtime::PlanInput in =
        runtime::PlanInputFor(cfg, model, nodes, gpus, gpu_mem_gib * double(1 << 30));
    in.flash_attention = attention == "flash";
    cfg.train.Checkpointing().CheckLayers(model.num_hidden_layers);  // a policy it cannot run
    const auto plans = runtime::PlanLayouts(in);
    // The config's own layout, as the trainer would run it on these GPUs.
    std::unique_ptr<runtime::LayoutPlan> own;
    try {
      own = std::make_unique<runtime::LayoutPlan>(runtime::PlanConfigLayout(in, cfg));
    } catch (const ConfigError& e) {
      runtime::LogWarn("plan: the config's own layout is not planned: {}", e.what());
    }
    if (json) {
      if (!own) throw ConfigError("plan --json: the config's own layout is not planned (above)");
      nlohmann::json j = {{"dp", own->dp}, {"cp", own->cp}, {"tp", own->tp}, {"zero", own->zero},
                          {"activation_checkpointing", own->checkpointing.Name()},
                          {"seq_len", in.seq_len}, {"model_state_bytes", own->state.total()},
                          {"activations_bytes", own->acts.kept()},
                          {"peak_bytes", own->peak.bytes}, {"peak_at", own->peak.Name()},
                          {"total_bytes", own->total}, {"fits", own->fits},
                          {"dp_comm_bytes", own->dp_comm_bytes},
                          {"cp_comm_bytes", own->cp_comm_bytes},
                          {"tp_comm_bytes", own->tp_comm_bytes}};
      if (max_seq) j["max_seq_len"] = runtime::PlanMaxSeqLen(in, cfg);
      if (world.rank() == 0) fmt::print("{}\n", j.dump());
      return;
    }
    if (world.rank() == 0) fmt::print("{}", runtime::PlanReport(in, plans, own.get()));
    if (max_seq && own && world.rank() == 0) {
      const int64_t longest = runtime::PlanMaxSeqLen(in, cfg);
      fmt::print("longest sequence of this config's layout (dp {} cp {} tp {} zero {} {}): {}\n",
                 own->dp, own->cp, own->tp, own->zero, own->checkpointing.Name(),
                 longest > 0 ? fmt::format("{} tokens ({} per rank)", longest, longest / own->cp)
                             : std::string("none fits"));
    }
  });
}

}  // namespace ftune::launch
