// Causal self-attention of a training or decoding forward, in one entry point for every layout
// the tokens come in, none of which builds a (B, 1, T, T) mask:
//  * a plain row: SDPA's causal kernel (grouped-query attention native on libtorch >= 2.5); on
//    the CPU and on libtorch 1.x, rows of kLongRowTokens or more go block by block (below);
//  * packed rows (`segment_ids`): each run of equal ids is a document that attends only within
//    itself; rows of kLongRowTokens or more are computed document by document (causal), so the
//    cost follows the documents' lengths, not the row's square;
//  * context parallelism (`cp`): q, k, v hold this rank's two chunks of every row
//    (parallel/context_parallel.h). The keys and values of the whole row are gathered over the
//    cp group, and each local query chunk attends to the keys before it block by block, the
//    blocks merged by log-sum-exp in fp32 (BlockCausalAttention); backward reduce-scatters dK, dV;
//  * decoding with a KV cache (`mask`): the explicit (B, 1, T, S) mask of left padding and cached
//    keys, through compat::Attention.
#pragma once

#include <torch/torch.h>

#include <cstdint>

#include "parallel/communicator.h"

namespace ftune::models {

// Rows at least this long never build a T x T tensor: packed rows go document by document, and
// plain rows block-wise on the CPU and wherever libtorch has no fused attention (1.x:
// compat::Attention would materialize the (B, H, T, T) probabilities, 4 GiB per head at 32K; 2.6
// on the CPU takes SDPA's math kernel under grouped-query attention: 637 MB kept at 4096 tokens
// of a 4-head model, where the block-wise path keeps 100 MB). Shorter packed rows take one masked
// call (their mask is small, and one call is faster than many tiny ones).
inline constexpr int64_t kLongRowTokens = 1024;

struct AttentionLayout {
  // KV-cache decoding: bool (B, 1, T, S), true = attend. Undefined otherwise.
  torch::Tensor mask;
  // Packed rows: (B, T) int64 on the host; a run of equal ids is one document.
  torch::Tensor segment_ids;
  // Context parallelism: the cp group (size > 1); the sequence dims of q, k, v are local.
  parallel::Communicator* cp = nullptr;
};

// q (B, H, T, D), k and v (B, Hkv, S, D), H a multiple of Hkv (query head h reads kv head
// h / (H / Hkv), as HF's repeat_kv) -> (B, H, T, D). S = T except with a KV cache (`mask`).
torch::Tensor CausalAttention(const torch::Tensor& q, const torch::Tensor& k,
                              const torch::Tensor& v, const AttentionLayout& layout);

// Causal attention of queries at positions q_start .. q_start + T - 1 over keys at 0 .. S - 1
// (a query at p sees the keys at <= p; S >= q_start + T), in tiles of `block` queries against
// blocks of `block` keys up to the tile's last query (the causal half, at block granularity):
// fp32 (fp64 for fp64 inputs) scores of one block at a time, merged by their log-sum-exp
// (flash attention's online softmax), grouped-query attention without repeated K/V. Backward recomputes each
// block's probabilities from the saved output and log-sum-exp (flash attention's backward), so
// no T x S tensor is kept or built. Plain ATen math: the CPU implementation and the oracle of
// context-parallel attention, the same on libtorch 1.13 and 2.x.
torch::Tensor BlockCausalAttention(const torch::Tensor& q, const torch::Tensor& k,
                                   const torch::Tensor& v, int64_t q_start, int64_t block = 512);

}  // namespace ftune::models
