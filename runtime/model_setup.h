// Building the model a run trains or evaluates, and writing it back out.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>

#include "data/loader.h"
#include "data/tokenizer.h"
#include "models/generate.h"
#include "models/llama.h"
#include "models/safetensors.h"
#include "parallel/data_parallel.h"
#include "parallel/process_grid.h"
#include "runtime/config.h"
#include "runtime/parallelize.h"

namespace ftune::runtime {

// The tokenizer of a run: tokenizer.path, else model.path. ConfigError when neither is set.
data::Tokenizer LoadRunTokenizer(const Config& cfg);
std::string TokenizerDir(const Config& cfg);  // the directory holding tokenizer.json
// The .jinja file a run's chat data was rendered with: data.chat_template when it names a file,
// else "" (the tokenizer's own template, or one of its named ones, which the tokenizer files an
// export copies keep). A data.chat_template that looks like a path (a '/' or ".jinja") but is no
// longer a file is a warning naming it, and "".
std::string ChatTemplateFile(const Config& cfg);
// ChatTemplateFile of a run's resolved config given as YAML text (a checkpoint's /state
// config_yaml), named `origin` in messages. A config this build cannot read is a warning, and "".
std::string RecordedChatTemplateFile(const std::string& config_yaml, const std::string& origin);

// The model of a run, full (unsharded) on every rank: model.path (an HF directory) or a random
// inline model from model.arch and model.init_seed; then tensor-parallel sharded when
// parallel.tp > 1 and cast to model.dtype. Checks the vocabulary covers the tokenizer's ids.
std::shared_ptr<models::LlamaModel> BuildRunModel(const Config& cfg, const data::Tokenizer& tok,
                                                  parallel::ProcessGrid& grid);

// Generation options that follow from a tokenizer and a model: stop at the tokenizer's EOS ids
// and the model config's, pad with the tokenizer's pad id, and never emit an id the tokenizer
// cannot decode (a vocabulary padded past the tokenizer's). Sampling settings stay default.
models::GenerateOptions TokenGenerateOptions(const data::Tokenizer& tok,
                                             const models::LlamaConfig& cfg);

// The training split of a run, opened for this rank: data.dir's train shards checked against the
// tokenizer (sha256), micro-batches of train.micro_batch rows of data.max_seq_len, this rank's
// share of each global batch (train.micro_batch x train.grad_accum x dp). ConfigError, before
// any compute, when one global batch does not fit in an epoch.
struct TrainData {
  std::unique_ptr<data::Loader> loader;
  int64_t global_batch = 0;     // samples per optimizer step, all ranks
  int64_t steps_per_epoch = 0;
  int64_t total_steps = 0;      // train.steps, or train.epochs x steps_per_epoch rounded up
};
TrainData OpenTrainData(const Config& cfg, const parallel::ProcessGrid& grid,
                        const data::Tokenizer& tok);

// The model `ftune train` trains, and where DataParallel takes its initial values from.
struct TrainModel {
  std::shared_ptr<models::LlamaModel> model;
  parallel::ParamSource source;  // empty: the model's parameters hold the values
};

// With model.path set, the model (this rank's tensor-parallel shard when parallel.tp > 1) is
// built unmaterialised in model.dtype and `source` reads from the memory-mapped safetensors
// exactly the element ranges DataParallel keeps on this rank: with parallel.zero = 3 or tp > 1 no
// rank reads or holds the whole model, which is what makes a 70B model loadable. An inline
// model (model.arch) is built whole, as BuildRunModel does, and `source` stays empty.
TrainModel BuildTrainModel(const Config& cfg, const data::Tokenizer& tok,
                           parallel::ProcessGrid& grid);

// This rank's part of a `mc` model before its weights are loaded: the tensor-parallel shard
// (TensorParallelLlama) when grid.tp() > 1, else the whole shape, unmaterialised
// (models::Unmaterialize) in `dtype`; and where each of its parameters sits in the full tensor.
struct ModelShard {
  std::shared_ptr<models::LlamaModel> model;
  std::map<std::string, ShardInfo> layout;
};
ModelShard UnmaterialisedShard(const models::LlamaConfig& mc, c10::ScalarType dtype,
                               parallel::ProcessGrid& grid);
// A ParamSource (sharded loading) copying each requested range of a parameter's local tensor,
// as `layout` places it, out of the memory-mapped safetensors `st`: only the rows covering it.
parallel::ParamSource SafetensorsSource(std::shared_ptr<models::SafetensorsCheckpoint> st,
                                        std::map<std::string, ShardInfo> layout);

// Calls its argument with each parameter's name and tensor (this rank's tensor-parallel slice,
// else the whole tensor), in the same order on every rank; Trainer::VisitParams is one.
using NamedTensorFn = std::function<void(const std::string&, const torch::Tensor&)>;
using ParamVisit = std::function<void(const NamedTensorFn&)>;

// Writes the model as an HF directory from rank 0 of `grid`; collective over the grid.
// Parameters come from `visit` (under ZeRO-3 Trainer::VisitParams gathers one unit at a time),
// tensor-parallel slices are gathered here, and only rank 0 keeps the whole tensors (fp32) to
// write them. `tokenizer_dir` files are copied, and `chat_template_file` (ChatTemplateFile;
// "" = none) is written as chat_template.jinja (models::SaveHfOptions).
void ExportRunModel(models::LlamaModel& model, parallel::ProcessGrid& grid,
                    const ParamVisit& visit, const std::string& tokenizer_dir,
                    const std::string& chat_template_file, const std::string& out_dir);

}  // namespace ftune::runtime
