// The `model` config section: which model to finetune and in which precision.
#pragma once

#include <cstdint>
#include <string>

#include "parallel/config_fields.h"

namespace ftune::models {

// Architecture of an inline (randomly initialised) Llama, used when model.path is
// empty: tests, the demo's base model and benchmarks. Names follow HF config.json.
struct InlineArch {
  int64_t vocab_size = 32000;
  int64_t hidden_size = 128;
  int64_t intermediate_size = 384;
  int64_t num_hidden_layers = 2;
  int64_t num_attention_heads = 4;
  int64_t num_key_value_heads = 2;
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-5;
  double rope_theta = 10000.0;
  bool tie_word_embeddings = false;

  template <class V>
  void VisitFields(V& v) {
    v("vocab_size", vocab_size, "vocabulary size (must cover the tokenizer's ids)");
    v("hidden_size", hidden_size, "model width");
    v("intermediate_size", intermediate_size, "SwiGLU MLP width");
    v("num_hidden_layers", num_hidden_layers, "decoder layers");
    v("num_attention_heads", num_attention_heads, "query heads");
    v("num_key_value_heads", num_key_value_heads, "key/value heads (GQA)");
    v("max_position_embeddings", max_position_embeddings, "longest sequence");
    v("rms_norm_eps", rms_norm_eps, "RMSNorm epsilon");
    v("rope_theta", rope_theta, "RoPE base frequency");
    v("tie_word_embeddings", tie_word_embeddings, "share embedding and lm_head weights");
  }
  void Validate() const {
    CheckRange<int64_t>("hidden_size", hidden_size, 1, 1 << 20);
    CheckRange<int64_t>("num_attention_heads", num_attention_heads, 1, 1 << 12);
    Divide("hidden_size", hidden_size, num_attention_heads);
    Divide("num_attention_heads", num_attention_heads, num_key_value_heads);
  }
};

struct ModelConfig {
  std::string path;             // HF model directory or ftune checkpoint; empty = inline arch
  std::string dtype = "fp32";   // fp32 | bf16 compute (master weights and optimizer stay fp32)
  int64_t init_seed = 1234;     // seed of the random init of an inline model
  InlineArch arch;

  template <class V>
  void VisitFields(V& v) {
    v("path", path, "HF model directory or checkpoint; empty = random inline model");
    v("dtype", dtype, "fp32 | bf16 compute dtype");
    v("init_seed", init_seed, "seed of the random initialisation of an inline model");
    v("arch", arch, "inline architecture used when path is empty");
  }
  void Validate() const { CheckOneOf("dtype", dtype, {"fp32", "bf16"}); }
};

}  // namespace ftune::models
