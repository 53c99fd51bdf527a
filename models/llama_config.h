// The architecture of a Llama model, as HF's config.json states it.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "models/config.h"
#include "parallel/load_notes.h"

namespace ftune::models {

// rope_scaling of config.json. Only "llama3" (Llama 3.1/3.2) is supported; null/absent = none.
struct RopeScaling {
  std::string rope_type;          // "" (none) | "llama3"
  double factor = 8.0;            // long-context stretch of low frequencies
  double low_freq_factor = 1.0;   // wavelengths above orig/low are divided by factor
  double high_freq_factor = 4.0;  // wavelengths below orig/high are kept
  int64_t original_max_position_embeddings = 8192;  // context the base model was trained on
};

struct LlamaConfig {
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;  // GQA; default num_attention_heads
  int64_t head_dim = 0;             // default hidden_size / num_attention_heads
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;  // HF LlamaConfig default
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  int64_t bos_token_id = -1;            // -1: none
  std::vector<int64_t> eos_token_ids;   // config.json's eos_token_id (int or list)
  std::string torch_dtype = "float32";  // dtype the weights were saved in
  double initializer_range = 0.02;      // std of the normal init of linears and embeddings
  // What FromJson assumed for absent keys (info) and the keys it did not know (warn), for the
  // caller to log. Not part of the model.
  LoadNotes notes;

  // Parses HF config.json as transformers 4.x and 5.x write it: RoPE from `rope_parameters`
  // (transformers >= 5) or else `rope_theta` + `rope_scaling` (`rope_type` or the legacy
  // `type`), the dtype from `dtype` or else `torch_dtype`. Nothing that changes the math is
  // ignored: throws ModelError naming `source` (the file) and the key for a missing required key
  // (vocab_size, hidden_size, intermediate_size, num_hidden_layers, num_attention_heads), a wrong
  // type, an architecture other than LlamaForCausalLM, a rope type other than default/llama3,
  // per-layer-type rope_parameters, rope_parameters that contradict the legacy keys, and any key
  // ftune does not implement at a value that changes the model (biases, dropout, a sliding
  // window, an activation other than silu, partial_rotary_factor != 1, quantisation, ...).
  // Defaults assumed for absent keys and keys it does not know go to `notes`.
  static LlamaConfig FromJson(const nlohmann::json& j, const std::string& source);
  // Reads and parses `path` (IoError if unreadable or not JSON).
  static LlamaConfig FromFile(const std::string& path);
  // The inline architecture of the `model` config section (model.path empty).
  static LlamaConfig FromInline(const ModelConfig& cfg);

  // HF-compatible config.json contents (LlamaForCausalLM, model_type llama).
  nlohmann::json ToJson() const;

  // Throws ModelError (naming `source`) unless the shapes are consistent.
  void Validate(const std::string& source) const;
};

// "fp32"/"float32" -> kFloat, "bf16"/"bfloat16" -> kBFloat16, "fp16"/"float16" -> kHalf;
// ConfigError otherwise. And HF's name of a dtype ("float32", "bfloat16", "float16").
c10::ScalarType ParseDtype(const std::string& name);
std::string HfDtypeName(c10::ScalarType t);

}  // namespace ftune::models
