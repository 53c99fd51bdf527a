// Autoregressive generation on token ids with a KV cache (no tokenizer here: data/ owns it).
#pragma once

#include <cstdint>
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
};

// Continues each prompt (token ids, non-empty) and returns its new ids, prompt excluded; a
// sequence that stopped at EOS ends with that EOS id, as HF's generate() does. Prompts of
// different lengths run as one batch: left-padded, padding masked from attention, RoPE positions
// counted per sequence, so each result equals running that prompt alone (up to floating-point
// reduction order). Sampling happens on the CPU from one generator, so a seed gives the same
// tokens on any device. Runs under NoGradGuard; the model is left unchanged.
std::vector<std::vector<int32_t>> Generate(LlamaModel& model,
                                           const std::vector<std::vector<int32_t>>& prompts,
                                           const GenerateOptions& opt);

// The sampling step alone: logits (B, V) -> next ids (B) int64 on the CPU, with opt's temperature,
// top-k and top-p (greedy when temperature == 0). `gen` must be a CPU generator.
torch::Tensor SampleNext(const torch::Tensor& logits, const GenerateOptions& opt,
                         at::Generator& gen);

}  // namespace ftune::models
