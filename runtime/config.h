// The one typed config tree of ftune, and its loader.
//
// Sections owned by lower layers (model, tokenizer, data, parallel) are defined
// there; the rest here. Every section lists its fields once in VisitFields (see
// parallel/config_fields.h). This header's LoadConfig is the only way to build
// a Config from YAML: CLI --set > YAML file > defaults, unknown keys rejected,
// every error naming the key, the file and the line.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/config.h"
#include "models/config.h"
#include "parallel/config.h"
#include "parallel/config_fields.h"
#include "runtime/activation_checkpointing.h"

namespace ftune::runtime {

struct RunConfig {
  std::string name = "ftune";           // shown in logs and reports
  std::string output_dir = "runs/ftune";  // run directory: resolved config, logs, checkpoints, reports
  int64_t seed = 1234;                  // seeds dropout-free init, sampling and shuffles
  int64_t threads = 0;                  // torch intra-op threads per rank; 0 = cores per node / ranks per node
  // libtorch's deterministic algorithms: a GPU run repeats bit for bit (a resumed run equals an
  // uninterrupted one) at some cost in speed; CPU runs are deterministic anyway.
  bool deterministic = false;
  // The device's dense peak TFLOP/s for MFU; 0 = the data-sheet bf16/fp16 peak of a known GPU
  // (H100, H200, A100, ...), else MFU is not reported (CPU ranks: set it to report one).
  double peak_tflops = 0;

  template <class V>
  void VisitFields(V& v) {
    v("name", name, "run name shown in logs and reports");
    v("output_dir", output_dir, "run directory (resolved config, logs, checkpoints, reports)");
    v("seed", seed, "global seed");
    v("threads", threads, "torch threads per rank; 0 = cores per node / ranks per node");
    v("deterministic", deterministic, "deterministic GPU kernels (bit-exact reruns; slower)");
    v("peak_tflops", peak_tflops,
      "device peak TFLOP/s for MFU; 0 = a known GPU's bf16 peak, else no MFU");
  }
  void Validate() const {
    CheckRange<int64_t>("threads", threads, 0, 4096);
    CheckRange("peak_tflops", peak_tflops, 0.0, 1e6);
  }
};

// A window of profiled training steps (runtime/profiler.h): a trace per rank and, on rank 0,
// a table of the top ops at the end of the window.
struct ProfileConfig {
  int64_t start = 0;               // first profiled step (1-based); 0 = no profiling
  int64_t steps = 3;               // steps in the window: start .. start + steps - 1
  std::string dir = "profile";     // <dir>/rank<r>.pt.trace.json, relative to run.output_dir
  int64_t top = 15;                // rows of rank 0's table of ops (CPU) or kernels (GPU)

  template <class V>
  void VisitFields(V& v) {
    v("start", start, "first profiled step (1-based); 0 = no profiling");
    v("steps", steps, "profiled steps from start on");
    v("dir", dir, "trace directory, one rank<r>.pt.trace.json per rank (relative to "
      "run.output_dir unless absolute)");
    v("top", top, "rows of the top-ops table printed on rank 0 at the end of the window");
  }
  void Validate() const {
    CheckRange<int64_t>("start", start, 0, int64_t(1) << 40);
    CheckRange<int64_t>("steps", steps, 1, 1 << 20);
    CheckRange<int64_t>("top", top, 1, 1000);
    if (dir.empty()) throw ConfigKeyError("dir", "must name a directory");
  }
};

struct TrainConfig {
  int64_t steps = -1;         // optimizer steps; exactly one of steps / epochs is set
  double epochs = -1;         // passes over the training split (fractions allowed)
  int64_t micro_batch = 4;    // sequences per rank per micro-batch
  int64_t grad_accum = 1;     // micro-batches per optimizer step
  double clip = 1.0;          // global gradient-norm clip; 0 disables
  // What backward recomputes (runtime/activation_checkpointing.h): none | full | every_n |
  // selective, for every ZeRO stage; true / false (the old boolean) mean full / none.
  std::string activation_checkpointing = "none";
  int64_t activation_checkpointing_every = 0;  // every_n's n: layers n-1, 2n-1, ... recompute
  int64_t max_bad_steps = 5;  // consecutive non-finite steps before the run stops
  // Which weights become <run>/final: "last" (the end of training) or "best" (the checkpoint of
  // the eval step with the lowest eval loss, <run>/best.json; needs eval.every).
  std::string export_which = "last";
  ProfileConfig profile;      // a window of profiled steps (off by default)

  template <class V>
  void VisitFields(V& v) {
    v("steps", steps, "optimizer steps (-1: use epochs)");
    v("epochs", epochs, "passes over the training split (-1: use steps)");
    v("micro_batch", micro_batch, "sequences per rank per micro-batch");
    v("grad_accum", grad_accum, "micro-batches per optimizer step");
    v("clip", clip, "global gradient-norm clip (0 = off)");
    v("activation_checkpointing", activation_checkpointing,
      "none | full | every_n | selective: what backward recomputes (true/false = full/none)");
    v("activation_checkpointing_every", activation_checkpointing_every,
      "every_n: recompute every n-th decoder layer (layers n-1, 2n-1, ...); 0 otherwise");
    v("max_bad_steps", max_bad_steps, "consecutive non-finite steps tolerated");
    v("export", export_which,
      "last | best: <run>/final from the last step or the best eval step's checkpoint");
    v("profile", profile, "a window of profiled steps: traces per rank and a top-ops table");
  }
  void Validate() const {
    if (steps == 0 || steps < -1) throw ConfigKeyError("steps", "must be > 0 or -1");
    if (epochs == 0 || epochs < -1) throw ConfigKeyError("epochs", "must be > 0 or -1");
    CheckRange<int64_t>("micro_batch", micro_batch, 1, 1 << 20);
    CheckRange<int64_t>("grad_accum", grad_accum, 1, 1 << 20);
    CheckRange("clip", clip, 0.0, 1e9);
    CheckRange<int64_t>("max_bad_steps", max_bad_steps, 1, 1 << 20);
    CheckOneOf("export", export_which, {"last", "best"});
    CheckRange<int64_t>("activation_checkpointing_every", activation_checkpointing_every, 0,
                        1 << 20);
    Checkpointing();  // throws ConfigKeyError for an unknown policy
  }
  // The policy object the trainer and `ftune plan` share.
  ActivationCheckpointing Checkpointing() const {
    return ActivationCheckpointing::Parse(activation_checkpointing,
                                          activation_checkpointing_every);
  }
};

struct OptimConfig {
  double lr = 1e-4;            // peak learning rate
  double beta1 = 0.9;          // AdamW first-moment decay
  double beta2 = 0.95;         // AdamW second-moment decay
  double eps = 1e-8;           // AdamW denominator epsilon
  double weight_decay = 0.0;   // decoupled; norms and embeddings excluded
  std::string schedule = "cosine";  // cosine | linear | constant
  int64_t warmup_steps = 0;    // linear warmup from 0
  double min_lr_ratio = 0.1;   // floor of the decay, as a fraction of lr
  bool fused = true;           // one fused AdamW kernel per bucket where libtorch has it (>= 2.4)

  template <class V>
  void VisitFields(V& v) {
    v("lr", lr, "peak learning rate");
    v("beta1", beta1, "AdamW beta1");
    v("beta2", beta2, "AdamW beta2");
    v("eps", eps, "AdamW epsilon");
    v("weight_decay", weight_decay, "decoupled weight decay (norms, embeddings excluded)");
    v("schedule", schedule, "cosine | linear | constant");
    v("warmup_steps", warmup_steps, "linear warmup steps");
    v("min_lr_ratio", min_lr_ratio, "final lr as a fraction of lr");
    v("fused", fused, "fused AdamW kernel where libtorch has one (>= 2.4); false: plain ops");
  }
  void Validate() const {
    CheckRange("lr", lr, 0.0, 10.0);
    CheckRange("beta1", beta1, 0.0, 0.999999);
    CheckRange("beta2", beta2, 0.0, 0.999999999);
    CheckRange("eps", eps, 0.0, 1.0);
    CheckRange("weight_decay", weight_decay, 0.0, 10.0);
    CheckOneOf("schedule", schedule, {"cosine", "linear", "constant"});
    CheckRange<int64_t>("warmup_steps", warmup_steps, 0, int64_t(1) << 40);
    CheckRange("min_lr_ratio", min_lr_ratio, 0.0, 1.0);
  }
};

struct CheckpointConfig {
  int64_t every = 0;       // save every N steps (0: only at the end)
  int64_t keep = 2;        // newest complete checkpoints kept
  bool async = false;      // write in a background thread while training continues
  bool direct_io = true;   // bulk tensor data around the page cache (O_DIRECT) where supported
  std::string dir = "checkpoints";  // relative to run.output_dir unless absolute
  bool resume = true;      // resume from `latest` in dir when present

  template <class V>
  void VisitFields(V& v) {
    v("every", every, "save every N steps (0 = only at the end)");
    v("keep", keep, "newest complete checkpoints kept");
    v("async", async, "write checkpoints in a background thread");
    v("direct_io", direct_io, "write tensor data with O_DIRECT where the file system allows "
      "(false: independent MPI-IO transfers through the page cache)");
    v("dir", dir, "checkpoint directory (relative to run.output_dir unless absolute)");
    v("resume", resume, "resume from the latest checkpoint when present");
  }
  void Validate() const {
    CheckRange<int64_t>("every", every, 0, int64_t(1) << 40);
    CheckRange<int64_t>("keep", keep, 1, 1 << 20);
  }
};

struct EvalConfig {
  int64_t every = 0;           // eval loss every N training steps (0: only at the end)
  int64_t max_samples = 200;   // test examples (trained turns: one per assistant turn of a chat
                               // document) used for generation metrics (-1: all)
  int64_t batch_size = 8;      // prompts per generation batch
  int64_t max_new_tokens = 64; // generation length limit
  std::string normalize = "none";  // none | lower | punct | lower,punct, before exact match
  double temperature = 0.0;    // 0 = greedy
  int64_t top_k = 0;           // 0 = off
  double top_p = 1.0;          // 1 = off
  bool generate = false;       // during training: also exact match / F1 at each eval (slower)

  template <class V>
  void VisitFields(V& v) {
    v("every", every, "eval every N training steps (0 = at the end only)");
    v("max_samples", max_samples,
      "test examples for generation metrics, one per trained (assistant) turn (-1 = all)");
    v("batch_size", batch_size, "prompts per generation batch");
    v("max_new_tokens", max_new_tokens, "generation length limit");
    v("normalize", normalize, "none | lower | punct | lower,punct");
    v("temperature", temperature, "sampling temperature (0 = greedy)");
    v("top_k", top_k, "top-k sampling (0 = off)");
    v("top_p", top_p, "nucleus sampling (1 = off)");
    v("generate", generate,
      "during training: also generation metrics on max_samples examples at each eval");
  }
  void Validate() const {
    CheckRange<int64_t>("every", every, 0, int64_t(1) << 40);
    CheckRange<int64_t>("max_samples", max_samples, -1, int64_t(1) << 40);
    CheckRange<int64_t>("batch_size", batch_size, 1, 1 << 16);
    CheckRange<int64_t>("max_new_tokens", max_new_tokens, 1, 1 << 20);
    CheckOneOf("normalize", normalize, {"none", "lower", "punct", "lower,punct"});
    CheckRange("temperature", temperature, 0.0, 100.0);
    CheckRange("top_p", top_p, 0.0, 1.0);
  }
};

struct LogConfig {
  int64_t every = 1;          // log a line every N steps
  bool jsonl = true;          // write metrics.jsonl in the run directory
  std::string progress = "auto";  // auto (bar on a terminal) | bar | lines
  // TensorBoard event files in <run>/tensorboard (runtime/tensorboard.h): `tensorboard --logdir`
  bool tensorboard = true;

  template <class V>
  void VisitFields(V& v) {
    v("every", every, "log every N steps");
    v("jsonl", jsonl, "write metrics.jsonl in the run directory");
    v("progress", progress, "auto | bar | lines");
    v("tensorboard", tensorboard, "write TensorBoard event files in <run>/tensorboard");
  }
  void Validate() const {
    CheckRange<int64_t>("every", every, 1, int64_t(1) << 40);
    CheckOneOf("progress", progress, {"auto", "bar", "lines"});
  }
};

struct Config {
  RunConfig run;
  models::ModelConfig model;
  data::TokenizerConfig tokenizer;
  data::DataConfig data;
  TrainConfig train;
  OptimConfig optim;
  parallel::ParallelConfig parallel;
  CheckpointConfig checkpoint;
  EvalConfig eval;
  LogConfig log;

  template <class V>
  void VisitFields(V& v) {
    v("run", run, "run identity and directory");
    v("model", model, "model to finetune");
    v("tokenizer", tokenizer, "tokenizer files");
    v("data", data, "inputs, templates and shards");
    v("train", train, "training loop");
    v("optim", optim, "AdamW and learning-rate schedule");
    v("parallel", parallel, "process layout");
    v("checkpoint", checkpoint, "checkpoints and resume");
    v("eval", eval, "evaluation");
    v("log", log, "logging");
  }
};

// Which checks LoadConfig runs beyond per-key ones.
struct ConfigCheck {
  int world_size = 1;          // ranks of the job (checks parallel.dp * parallel.tp)
  bool need_train = false;     // train.steps / train.epochs must be set (ftune train)
  bool layout = true;          // parallel.* must fit world_size (not for prepare, which ignores it)
};

// Builds the config: defaults, then `yaml_path` (may be empty), then each
// `overrides` entry "a.b=value" (value parsed as YAML). Throws ConfigError
// naming key, file and line for: unreadable file, bad YAML, unknown key (with
// the closest valid key), wrong type, out-of-range or inconsistent values.
Config LoadConfig(const std::string& yaml_path, const std::vector<std::string>& overrides,
                  const ConfigCheck& check);

// LoadConfig from YAML text (e.g. the resolved config a checkpoint records), named `origin` in
// errors; no overrides.
Config LoadConfigText(const std::string& yaml_text, const std::string& origin,
                      const ConfigCheck& check);

// The resolved config as YAML (loadable by LoadConfig) and as a
// "parameter | value" table.
std::string ConfigToYaml(const Config& cfg);
// The keys whose values differ from the defaults, as a table (the console's view of a run;
// the run directory keeps the whole resolved config, ConfigToYaml).
std::string ConfigTable(const Config& cfg);

// A path from the config: absolute as is; else relative to run.output_dir.
std::string RunPath(const Config& cfg, const std::string& p);

}  // namespace ftune::runtime
