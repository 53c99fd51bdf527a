// ftune's small C++ API for using a model from code, after the course's BasicModelRunner:
//
//   #include "runtime/runner.h"
//   ftune::Runner runner("runs/demo/finetune/final");
//   std::cout << runner("Tell me how to train my dog to sit") << "\n";
//
// A Runner loads an HF model directory (config.json + safetensors + tokenizer.json) once and
// answers prompts: the prompt is put into the template (qa by default: exactly the
// "### Question:\n{prompt}\n\n### Answer:" prefix `ftune prepare` trains on, tokenized the same
// way), completed with the KV cache (greedy by default) and returned as text without the prompt
// and special tokens, trimmed. Several prompts at once run as one batch.
//
// Single process, no MPI; a Runner is used by one thread at a time. Errors throw ftune::Error
// subclasses (parallel/error.h) naming the file and the fix.
// Finetuning from code is launch/finetune.h (ftune::Finetune).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace ftune {

struct RunnerOptions {
  std::string template_name = "qa";  // qa | alpaca | none (the prompt as is)
  std::string tokenizer;             // tokenizer.json or its directory; empty = the model dir
  std::string dtype = "fp32";        // fp32 | bf16
  int64_t max_new_tokens = 64;       // answer length limit
  double temperature = 0.0;          // 0 = greedy
  int64_t top_k = 0;                 // 0 = off
  double top_p = 1.0;                // 1 = off
  uint64_t seed = 1234;              // sampling seed (temperature > 0)
};

class Runner {
 public:
  explicit Runner(const std::string& model_dir, const RunnerOptions& options = {});
  ~Runner();
  Runner(Runner&&) noexcept;
  Runner& operator=(Runner&&) noexcept;

  std::string operator()(const std::string& prompt);
  std::vector<std::string> operator()(const std::vector<std::string>& prompts);

  // The token ids the model sees for `prompt` (BOS + templated prompt).
  std::vector<int32_t> PromptIds(const std::string& prompt) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ftune
