// Building the model a run trains or evaluates, and writing it back out.
#pragma once

#include <memory>
#include <string>

#include "data/tokenizer.h"
#include "models/llama.h"
#include "parallel/process_grid.h"
#include "runtime/config.h"

namespace ftune::runtime {

// The tokenizer of a run: tokenizer.path, else model.path. ConfigError when neither is set.
data::Tokenizer LoadRunTokenizer(const Config& cfg);
std::string TokenizerDir(const Config& cfg);  // the directory holding tokenizer.json

// The model of a run, full (unsharded) on every rank: model.path (an HF directory) or a random
// inline model from model.arch and model.init_seed; then tensor-parallel sharded when
// parallel.tp > 1 and cast to model.dtype. Checks the vocabulary covers the tokenizer's ids.
std::shared_ptr<models::LlamaModel> BuildRunModel(const Config& cfg, const data::Tokenizer& tok,
                                                  parallel::ProcessGrid& grid);

// Writes the (whole: ZeRO-3 units gathered, TP shards gathered by the caller's model) model as
// an HF directory from rank 0 of `grid`; collective over the grid. `tokenizer_dir` files are copied.
void ExportRunModel(models::LlamaModel& model, parallel::ProcessGrid& grid,
                    const std::string& tokenizer_dir, const std::string& out_dir);

}  // namespace ftune::runtime
