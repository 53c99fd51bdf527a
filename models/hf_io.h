// Hugging Face model directories: import (config.json + safetensors) and export.
//
// An HF Llama directory holds config.json, generation_config.json, model.safetensors or
// model-0000i-of-0000n.safetensors + model.safetensors.index.json, and the tokenizer files
// (tokenizer.json, tokenizer_config.json, special_tokens_map.json, chat_template.jinja).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "models/llama.h"
#include "models/llama_config.h"
#include "models/safetensors.h"

namespace ftune::models {

// Every tensor an HF checkpoint of `cfg` holds, in HF's module order, with its full shape.
std::vector<std::pair<std::string, std::vector<int64_t>>> HfTensorShapes(const LlamaConfig& cfg);

// Checks that `ck` holds exactly the tensors of HfTensorShapes(cfg) (ignoring legacy
// `*.rotary_emb.inv_freq` buffers, and `lm_head.weight` when the embeddings are tied, as HF does)
// with the right shapes. Throws ModelError listing all missing and unexpected names together, or
// naming the tensor, its file, the expected shape (from `config_source`) and the found one.
void CheckHfTensors(const SafetensorsCheckpoint& ck, const LlamaConfig& cfg,
                    const std::string& config_source);

// An HF Llama directory opened for reading, its tensors checked against its config.json
// (CheckHfTensors) but none of them read: callers read whole tensors or slices (sharded loading).
struct HfWeights {
  LlamaConfig config;
  std::string config_path;
  std::shared_ptr<SafetensorsCheckpoint> tensors;
};
HfWeights OpenHf(const std::string& dir);

struct LoadedModel {
  LlamaConfig config;
  std::shared_ptr<LlamaModel> model;
};

// Loads an HF Llama directory (single-file or sharded safetensors) with its weights converted to
// `dtype`. Throws ModelError / IoError naming the file and tensor on any mismatch.
LoadedModel LoadHf(const std::string& dir, c10::ScalarType dtype = c10::kFloat);

// A model of `cfg` with its weights converted to `dtype` from `tensors`: full shapes, named as
// HfTensorShapes(cfg) says (e.g. an ftune checkpoint's /model datasets). ModelError naming
// `source` and the tensor when one is missing, unexpected or of another shape.
LoadedModel ModelFromTensors(const LlamaConfig& cfg, const NamedTensors& tensors,
                             c10::ScalarType dtype, const std::string& source);

struct SaveHfOptions {
  int64_t max_shard_bytes = int64_t(5) << 30;  // HF's default "5GB" shards
  // Copy tokenizer.json, tokenizer_config.json, special_tokens_map.json, the chat template
  // (chat_template.jinja, transformers 5; chat_template.json, the older processor format) and
  // generation_config.json from here, byte for byte, those present.
  std::string tokenizer_src_dir;
  // A .jinja file (data.chat_template) written as the output's chat_template.jinja, replacing
  // the copied one: the template the model was trained with, which transformers prefers over
  // tokenizer_config.json's "chat_template". Empty = none.
  std::string chat_template_file;
  bool overwrite = false;  // replace a non-empty existing `dir`
};

// Writes an HF directory from full-shape tensors named as HfTensorShapes(cfg) says (the function
// a checkpoint export reuses). config.json's torch_dtype becomes the tensors' dtype. Everything is
// written into `dir.tmp` and renamed to `dir` at the end; a non-empty existing `dir` is refused
// (ModelError) unless opt.overwrite. generation_config.json is copied from tokenizer_src_dir when
// it has one, else written from cfg's bos/eos ids. IoError naming opt.chat_template_file when it
// cannot be read.
void WriteHfDir(const NamedTensors& tensors, const LlamaConfig& cfg, const std::string& dir,
                const SaveHfOptions& opt);

// WriteHfDir with the model's parameters, in the model's dtype.
void SaveHf(LlamaModel& model, const LlamaConfig& cfg, const std::string& dir,
            const SaveHfOptions& opt = {});

}  // namespace ftune::models
