// Context parallelism: the sequence of every row split over the cp ranks of one data-parallel
// rank (long context: each rank keeps the activations of T / cp tokens).
//
// Load balance (Llama 3's and torchtitan's choice): a row of T tokens is cut into 2 * cp equal
// chunks of c = T / (2 * cp), and cp rank r holds chunks r and 2 * cp - 1 - r, in that order.
// Under causal attention chunk g costs about (g + 1/2) c^2 query-key pairs, so every rank's pair
// costs the same (2 * cp - 1) c^2 + c (c + 1); contiguous halves would give rank cp - 1 almost
// 2 * cp - 1 times rank 0's work. RoPE takes each token's global position, so it needs nothing.
//
// Attention gathers the keys and values of the whole row over the cp communicator
// (GatherSequence; with grouped-query attention they are small next to the queries) and each
// local query chunk attends to the keys before it (models/attention.h). The loss is each rank's
// own tokens' and the target count is summed over dp x cp, so the loss is the one-rank loss.
#pragma once

#include <torch/torch.h>

#include <array>
#include <cstdint>
#include <vector>

#include "parallel/communicator.h"

namespace ftune::parallel {

// The global chunk indices cp rank `rank` holds, in its local order: {rank, 2 * cp - 1 - rank}.
std::array<int64_t, 2> ContextChunks(int64_t cp, int64_t rank);

// This rank's part of `x` along `dim` (the sequence, length T divisible by 2 * cp): its two
// chunks, concatenated in local order (length T / cp). Throws naming T and cp otherwise.
torch::Tensor ShardSequence(const torch::Tensor& x, int64_t cp, int64_t rank, int64_t dim = 1);

// Causal attention work per cp rank for a row of T tokens (T divisible by 2 * cp): the
// query-key pairs (a query at position p sees p + 1 keys) of each rank's tokens, with the
// balanced chunks above or with contiguous blocks of T / cp (rank r: [r T / cp, (r + 1) T / cp)).
std::vector<int64_t> AttentionWork(int64_t t, int64_t cp, bool balanced);

// Forward: all-gathers `x` (this rank's ShardSequence along `dim`) from every rank of `comm`
// (the cp group, rank order = cp rank) and returns the whole sequence in global order.
// Backward: reduce-scatters the gradient, so each rank receives the sum over the cp group of the
// gradient of its own chunks (every rank's queries read every rank's keys). Collective over
// `comm` in forward and in backward: all ranks of the group call it in the same order.
torch::Tensor GatherSequence(const torch::Tensor& x, Communicator& comm, int64_t dim);

}  // namespace ftune::parallel
