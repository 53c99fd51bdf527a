// Tensor parallelism (Megatron style) applied to a Llama from outside its math.
//
// MakeTensorParallel turns a full model (identical on every rank) into this rank's shard of the
// tp group grid.tp_comm():
//   * column-parallel q_proj / k_proj / v_proj (whole heads: rows [r*H/tp*D, (r+1)*H/tp*D)),
//     gate_proj / up_proj (rows [r*I/tp, (r+1)*I/tp));
//   * row-parallel o_proj / down_proj (the matching columns);
//   * attention and MLP hooks: enter_region = CopyToRegion, exit_region = ReduceFromRegion;
//   * vocab-parallel embedding and lm_head (rows [r*V/tp, (r+1)*V/tp)); with tied embeddings the
//     one (V/tp, C) shard serves both. Cross-entropy is vocab-parallel and never materialises
//     full-vocab logits; Logits() all-gathers them (generation, tests).
// Norm weights are replicated; their gradients come out identical on every tp rank (the
// mapping functions all-reduce the gradients that reach them), equal to the full model's.
//
// Vocab parallelism needs LlamaModel's virtual Embed / Logits / CrossEntropySum overridden, so
// the result is a new TensorParallelLlama (a LlamaModel subclass) rather than an in-place edit.
// Parameter names stay HF's; only shapes shrink. TensorParallelLayout maps each name to where
// the local tensor sits in the full one (checkpoints write hyperslabs from it).
//
// Collective ordering: the model's forward and backward issue tp collectives (see
// parallel/tensor_parallel.h); the ranks of one tp group must run the same calls on the same
// micro-batch. The grid (and its tp Communicator) must outlive the model.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "data/tokenizer.h"
#include "models/llama.h"
#include "parallel/data_parallel.h"
#include "parallel/process_grid.h"
#include "runtime/config.h"
#include "runtime/layer_checkpoint.h"

namespace ftune::runtime {

// Where one rank's local tensor sits inside the full (unsharded) tensor of the same HF name.
struct ShardInfo {
  int64_t dim = -1;                 // the sharded dim; -1 = replicated (local == full)
  int64_t offset = 0;               // start of the local slice along `dim` in the full tensor
  int64_t size = 0;                 // length of the local slice along `dim` (0 when replicated)
  std::vector<int64_t> full_shape;  // shape of the full tensor

  bool sharded() const { return dim >= 0; }
  std::vector<int64_t> local_shape() const;
};

// Throws ConfigError naming the value and the divisor when num_attention_heads,
// num_key_value_heads, intermediate_size or vocab_size is not divisible by `tp`.
void CheckTensorParallel(const models::LlamaConfig& cfg, int64_t tp);

// HF parameter name -> ShardInfo for rank `tp_rank` of `tp` (every parameter of the model,
// replicated ones included). Pure: needs no communicator, so a checkpoint written with one
// layout can be read with another.
std::map<std::string, ShardInfo> TensorParallelLayout(const models::LlamaConfig& cfg, int64_t tp,
                                                      int64_t tp_rank);

// `full`'s slice described by `info` (a view; `full` itself when replicated).
torch::Tensor SliceFull(const torch::Tensor& full, const ShardInfo& info);

// Collective over `tp_comm`: the full tensor rebuilt from every rank's `local` shard (a copy of
// `local` when replicated). Every rank of the group must call it for the same parameter.
torch::Tensor GatherFull(const torch::Tensor& local, const ShardInfo& info,
                         parallel::Communicator& tp_comm);

// A Llama holding this rank's tensor-parallel shard. Owns its parameters (no aliasing of the
// full model it was built from). Used by one thread at a time.
class TensorParallelLlama : public models::LlamaModel {
 public:
  // Copies and shards `full` (any dtype and device; the result has the same). Collective-free.
  TensorParallelLlama(const models::LlamaModel& full, parallel::ProcessGrid& grid);
  // This rank's shard of a `cfg` model, unmaterialised (models::Unmaterialize) in fp32 on the
  // CPU: no full-size tensor is ever allocated; load the weights into it afterwards.
  TensorParallelLlama(const models::LlamaConfig& cfg, parallel::ProcessGrid& grid);

  // Vocab-parallel lookup (all-reduce over tp). (B, T) -> (B, T, C). ModelError for ids outside
  // [0, vocab_size) on CPU tensors (on CUDA such ids give zero rows instead).
  torch::Tensor Embed(const torch::Tensor& tokens) override;
  // Full-vocab logits, all-gathered over tp: (..., C) -> (..., V). For generation and tests;
  // the loss uses LocalLogits.
  torch::Tensor Logits(const torch::Tensor& hidden) override;
  // Vocab-parallel fp32 cross-entropy sum; never gathers full-vocab logits. hidden (N, C),
  // targets (N) -> fp32 scalar, identical on every tp rank.
  torch::Tensor CrossEntropySum(const torch::Tensor& hidden, const torch::Tensor& targets) override;
  // This rank's vocab columns [vocab_start(), vocab_end()) of the logits: (..., C) -> (..., V/tp).
  torch::Tensor LocalLogits(const torch::Tensor& hidden);

  int64_t vocab_start() const { return vocab_start_; }
  int64_t vocab_end() const { return vocab_end_; }
  parallel::Communicator& tp_comm() const { return tp_comm_; }
  // TensorParallelLayout for this rank.
  const std::map<std::string, ShardInfo>& layout() const { return layout_; }

 private:
  parallel::Communicator& tp_comm_;
  int64_t vocab_start_ = 0;
  int64_t vocab_end_ = 0;
  std::map<std::string, ShardInfo> layout_;
};

// The tensor-parallel shard of `full` for this rank of grid.tp_comm() (see the file comment).
// Validates the layout first (CheckTensorParallel). With grid.tp() == 1 it is an unsharded copy.
std::shared_ptr<TensorParallelLlama> MakeTensorParallel(const models::LlamaModel& full,
                                                        parallel::ProcessGrid& grid);

// A model parallelized for training, from outside its math (STYLE.md 4, torchtitan's
// parallelize): the model (its tensor-parallel shard when grid.tp() > 1) with DataParallel/ZeRO
// over grid.dp_comm(), the model's units (models::ParamUnit: embedding, each decoder layer, head)
// as the buckets that are reduced together and, under ZeRO-3, gathered together; and around each
// decoder layer the ZeRO-3 gather/release hooks (the next layer prefetched, in forward and in
// backward) and what backward recomputes (train.activation_checkpointing's policy, the same object
// `ftune plan` reads; independent of the ZeRO stage). Parameters, gradients and optimizer state
// live on grid.device().
//
// Outside autograd (evaluation, generation) a layer runs between its ZeRO-3 hooks without the
// checkpointing wrapper; with a KV cache too, so generation gathers one layer at a time as
// training does and no rank ever holds the whole model (its tensor-parallel shard) at once.
//
// Collective: every rank of the grid builds it and calls its gathers in the same order.
class ParallelModel {
 public:
  // `source`: where the parameters' initial values come from when the model is unmaterialised
  // (BuildTrainModel); empty = the model's current values. `params_only`: for evaluation and
  // generation (parallel::DataParallelOptions::params_only: no gradients, master weights or
  // optimizer state).
  ParallelModel(std::shared_ptr<models::LlamaModel> model, parallel::ProcessGrid& grid,
                const Config& cfg, parallel::ParamSource source = {}, bool params_only = false);
  ~ParallelModel();

  models::LlamaModel& model() { return *model_; }
  const std::shared_ptr<models::LlamaModel>& shared_model() const { return model_; }
  parallel::DataParallel& data_parallel() { return *dp_; }
  parallel::ProcessGrid& grid() { return grid_; }
  const ActivationCheckpointing& checkpointing() const { return checkpointing_; }

  // Around each micro-batch's forward and backward: under ZeRO-3 the embedding and the head stay
  // whole for the whole micro-batch (the head computes last in forward and first in backward; a
  // tied embedding is used at both ends); the layers come and go through the layer hooks, and
  // EndMicroBatch releases whatever is still whole. No-ops below ZeRO-3.
  void BeginMicroBatch();
  void EndMicroBatch();
  // A forward pass outside training (evaluation) under ZeRO-3 without the whole model:
  // BeginMicroBatch's gathers; ReleaseAll after.
  void BeginForward() { BeginMicroBatch(); }
  // Makes every parameter whole on every rank (ZeRO-3 gathers all units; generation, tests);
  // ReleaseAll afterwards.
  void GatherAll();
  void ReleaseAll();
  // Calls fn(name, tensor) for every parameter, in the same order on every rank (collective).
  // Under ZeRO-3 the units are gathered one at a time and released after their calls, so a rank
  // holds one unit whole at a time, unless fn keeps references. For export.
  void VisitParams(const std::function<void(const std::string&, const torch::Tensor&)>& fn);
  // For models::GenerateOptions::lock_step. Under ZeRO-3 with dp > 1 every forward gathers the
  // layers over the dp ranks, which generate different prompts: an all-reduce (max) over the dp
  // axis' control communicator of "this rank wants another forward". Empty otherwise: no forward
  // collective crosses dp ranks then (tensor-parallel ranks generate the same prompts).
  std::function<bool(bool more)> GenerationLockStep();
  bool zero3() const;
  // FLOPs per trained token (PaLM: 6N + 12 L d T, N = parameters without the input embedding).
  double FlopsPerToken(int64_t seq_len) const;

 private:
  LayerHooks HooksFor(int64_t layer);

  std::shared_ptr<models::LlamaModel> model_;
  parallel::ProcessGrid& grid_;
  ActivationCheckpointing checkpointing_;
  std::unique_ptr<parallel::DataParallel> dp_;
  int embed_unit_ = -1, head_unit_ = -1;
  std::vector<int> layer_units_;  // DataParallel unit of each decoder layer
};

// The training model of `cfg`, built and parallelized in one step: loaded shard by shard
// (BuildTrainModel: each rank reads only the weights it keeps; the tensor-parallel shard when
// parallel.tp > 1), then a ParallelModel on grid.device().
std::unique_ptr<ParallelModel> Parallelize(const Config& cfg, const data::Tokenizer& tok,
                                           parallel::ProcessGrid& grid);

}  // namespace ftune::runtime
