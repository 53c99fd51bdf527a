// Generation of many prompts on a process grid, in the layout a model trained in (`ftune generate`
// under mpirun, tests): the prompts are cut into batches, batch k runs on data-parallel rank
// k % dp, on every rank of its tensor-parallel group alike.
//
//   * whole models (tp 1, ZeRO < 3): each dp rank generates its batches on its own;
//   * tensor parallelism: the ranks of a tp group run the same batch through their shards (each
//     with its own kv heads in the KV cache) and sample the same tokens from the all-gathered
//     logits with identically seeded generators;
//   * ZeRO-3 (a ParallelModel): the embedding and head stay gathered for the whole call, each
//     decoder layer is gathered for every forward and released after it, and the dp ranks step
//     in lock step (ParallelModel::GenerationLockStep), idle ranks making idle forwards.
//
// Every batch samples from a generator seeded with opt.seed, whatever rank runs it, so sampled
// answers too are the same in every layout (greedy ones up to floating-point reduction order,
// which can only matter where two logits are within rounding of each other).
//
// Collective over the grid: every rank calls it with the same inputs and options.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "models/generate.h"
#include "models/llama.h"
#include "parallel/process_grid.h"
#include "runtime/parallelize.h"

namespace ftune::runtime {

// Called with each input's index and its new ids (models::Generate's), in input order, on every
// rank; all answers of a round of dp batches arrive together, after that round.
using AnswerFn = std::function<void(int64_t index, const std::vector<int32_t>& ids)>;

// Generates `inputs` (token ids, the same on every rank) in batches of `batch_size` with `model`:
// whole or a tensor-parallel shard when `pm` is null, else pm->model() (any layout; opt.lock_step
// is set here from `pm`). `emit` receives every answer.
void GenerateOnGrid(models::LlamaModel& model, ParallelModel* pm, parallel::ProcessGrid& grid,
                    const std::vector<std::vector<int32_t>>& inputs, int64_t batch_size,
                    models::GenerateOptions opt, const AnswerFn& emit);

}  // namespace ftune::runtime
