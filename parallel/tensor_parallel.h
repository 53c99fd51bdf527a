// Megatron-style tensor-parallel building blocks over one tensor-parallel Communicator.
//
// Nothing here knows what a model is: these are the autograd-aware collectives and shard helpers
// from which a Parallelize step (runtime/parallelize.h) builds column-parallel, row-parallel and
// vocab-parallel layers. (Megatron `core/tensor_parallel/mappings.py`, `cross_entropy.py`.)
//
// Mirrored mapping pair, on the ranks of one tp group that hold the same activations:
//   CopyToRegion      forward identity,        backward all-reduce (sum) of the gradient.
//   ReduceFromRegion  forward all-reduce (sum), backward identity.
// A column-parallel linear takes CopyToRegion(x); a row-parallel linear's partial output goes
// through ReduceFromRegion. Between the two, every rank computes on its own shard.
//
// Ordering rule: every function here that takes a Communicator is collective over it, in forward
// and/or in backward (as documented per function). All ranks of the tp group must call them in
// the same order with tensors of the same shape and dtype, and must run backward over the same
// graph: in practice, the ranks of one tp group see identical inputs (the same micro-batch) and
// execute the same model code. With comm.size() == 1 every function is local (no collective).
//
// Tensors may live on any device the Communicator supports; collectives operate on contiguous
// copies, so callers need not make inputs contiguous. Not thread-safe (the Communicator is used
// from one thread at a time).
#pragma once

#include <torch/torch.h>

#include <cstdint>

#include "parallel/communicator.h"

namespace ftune::parallel {

// Forward identity, backward all-reduce sum of the gradient over `comm`. Collective in backward.
torch::Tensor CopyToRegion(const torch::Tensor& x, Communicator& comm);

// Forward all-reduce sum over `comm`, backward identity. Collective in forward.
torch::Tensor ReduceFromRegion(const torch::Tensor& x, Communicator& comm);

// Forward all-gathers the shards of `x` along its last dim (rank order: rank r's shard lands at
// [r*n, (r+1)*n)); backward keeps this rank's slice of the gradient (the downstream computation
// is replicated over the tp group, so every rank holds the same full gradient). Collective in
// forward.
torch::Tensor GatherFromRegionLastDim(const torch::Tensor& x, Communicator& comm);

// Vocab-parallel embedding lookup: `weight_shard` (V/n, C) holds rows [vocab_start, vocab_start +
// V/n) of the full (V, C) embedding. tokens (...) int64 -> (..., C): each rank looks up the ids it
// owns, writes zeros for the others, and the partial results are all-reduced (ReduceFromRegion).
// The gradient reaches only the owned rows. Collective in forward.
torch::Tensor VocabParallelEmbedding(const torch::Tensor& tokens, const torch::Tensor& weight_shard,
                                     int64_t vocab_start, Communicator& comm);

// Per-row cross-entropy over logits sharded on the vocab dim, without gathering full-vocab
// logits: `logits_shard` (N, V/n) holds columns [vocab_start, vocab_start + V/n) of the full
// (N, V) logits; targets (N) int64 are full-vocab ids. Computed in fp32 (the logits are upcast),
// numerically stable: all-reduce max, all-reduce sum of exp(logit - max), target logit taken from
// the owning rank and all-reduced. Rows whose target is `ignore_index` get loss 0 and no
// gradient. Returns (N) fp32 losses. Backward is local: (softmax - onehot) * grad on this shard.
// Collective in forward (three all-reduces), not in backward.
torch::Tensor VocabParallelCrossEntropy(const torch::Tensor& logits_shard,
                                        const torch::Tensor& targets, int64_t vocab_start,
                                        Communicator& comm, int64_t ignore_index = -100);

// Rows [rank*m, (rank+1)*m) of `full` (m = full.size(0) / n), as a new contiguous tensor (no
// aliasing of `full`). Throws ConfigError "<rows> is not divisible by <n>" otherwise.
torch::Tensor ShardRows(const torch::Tensor& full, int64_t rank, int64_t n);
// Columns (dim 1) likewise.
torch::Tensor ShardCols(const torch::Tensor& full, int64_t rank, int64_t n);

}  // namespace ftune::parallel
