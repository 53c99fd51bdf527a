// Autoregressive generation on token ids with a KV cache (no tokenizer here: data/ owns it).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "models/llama.h"

namespace ftune::models {

struct GenerateOptions {
  int64_t max_new_tokens = 64;   // upper bound of new tokens per prompt
  double temperature = 0.0;      // 0 = greedy (argmax); > 0 = sample from softmax(logits / T)
  int64_t top_k = 0;             // sample among the k most likely tokens (0 = off)
  double top_p = 1.0;            // nucleus: smallest set with probability >= top_p (1 = off)
  uint64_t seed = 1234;          // seeds the one CPU generator all sampling draws from
  std::vector<int64_t> eos_ids;  // a sequence stops after emitting any of these
  int64_t pad_id = 0;            // id placed in left padding (masked out, never attended)
  // Ids >= this are never produced (0 = no limit): a model whose embedding is padded past its
  // tokenizer's vocabulary must not emit ids the tokenizer cannot decode.
  int64_t vocab_limit = 0;
  // Lock step with other processes whose forwards share collectives with this one's while they
  // generate other prompts (ZeRO-3: every layer is all-gathered over the data-parallel ranks).
  // Called after every forward with whether this call wants another; returns whether any process
  // does. A call whose prompts are done (or that has none) makes idle forwards (IdleForward)
  // while any other still generates, so every process makes the same number of forwards.
  // Empty: no lock step (each call on its own).
  std::function<bool(bool more)> lock_step;
};

// Continues each prompt (token ids, non-empty) and returns its new ids, prompt excluded; a
// sequence that stopped at EOS ends with that EOS id, as HF's generate() does. Prompts of
// different lengths run as one batch: left-padded, padding masked from attention, RoPE positions
// counted per sequence, so each result equals running that prompt alone (up to floating-point
// reduction order). Sampling happens on the CPU from one generator, so a seed gives the same
// tokens on any device. Runs under NoGradGuard; the model is left unchanged.
// The model may be a parallelized one (tensor-parallel shard, ZeRO-3 layers gathered by its
// layer runner): its forwards then hold collectives, so every process of its groups calls
// Generate at the same time, a tensor-parallel group with the same prompts and options (its
// logits are all-gathered, so every rank samples the same tokens from the same generator), and
// processes with other prompts under opt.lock_step. With opt.lock_step an empty `prompts` makes
// only the idle forwards.
std::vector<std::vector<int32_t>> Generate(LlamaModel& model,
                                           const std::vector<std::vector<int32_t>>& prompts,
                                           const GenerateOptions& opt);

// One forward of one token without a cache or logits: a process's share of the collectives of
// a forward when it has nothing to generate (GenerateOptions::lock_step).
void IdleForward(LlamaModel& model);

// The sampling step alone: logits (B, V) -> next ids (B) int64 on the CPU, with opt's temperature,
// top-k and top-p (greedy when temperature == 0). `gen` must be a CPU generator.
torch::Tensor SampleNext(const torch::Tensor& logits, const GenerateOptions& opt,
                         at::Generator& gen);

}  // namespace ftune::models
