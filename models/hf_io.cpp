#include "models/hf_io.h"

#include <fmt/ranges.h>  // fmt::join (in <fmt/ranges.h> since fmt 11)
#include <algorithm>
#include <fstream>
#include <functional>
#include <map>
#include <set>

#include "parallel/error.h"
#include "parallel/files.h"

namespace ftune::models {
namespace {

using nlohmann::json;

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Names that HF loaders ignore when present.
bool IgnoredName(const std::string& name, const LlamaConfig& cfg) {
  return EndsWith(name, "rotary_emb.inv_freq") ||
         (cfg.tie_word_embeddings && name == "lm_head.weight");
}

std::string NameList(const std::vector<std::string>& names) {
  constexpr size_t kShown = 12;
  std::string out;
  for (size_t i = 0; i < names.size() && i < kShown; ++i) out += (i ? ", " : "") + names[i];
  if (names.size() > kShown) out += fmt::format(", ... ({} in all)", names.size());
  return out;
}

void WriteText(const std::string& p, const std::string& text) {
  std::ofstream out(p, std::ios::binary);
  out << text;
  out.close();
  if (!out) FT_THROW(IoError, "{}: write failed", p);
}

}  // namespace

std::vector<std::pair<std::string, std::vector<int64_t>>> HfTensorShapes(const LlamaConfig& c) {
  std::vector<std::pair<std::string, std::vector<int64_t>>> out;
  const int64_t q = c.num_attention_heads * c.head_dim, kv = c.num_key_value_heads * c.head_dim;
  out.push_back({"model.embed_tokens.weight", {c.vocab_size, c.hidden_size}});
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = fmt::format("model.layers.{}.", i);
    out.push_back({p + "self_attn.q_proj.weight", {q, c.hidden_size}});
    out.push_back({p + "self_attn.k_proj.weight", {kv, c.hidden_size}});
    out.push_back({p + "self_attn.v_proj.weight", {kv, c.hidden_size}});
    out.push_back({p + "self_attn.o_proj.weight", {c.hidden_size, q}});
    out.push_back({p + "mlp.gate_proj.weight", {c.intermediate_size, c.hidden_size}});
    out.push_back({p + "mlp.up_proj.weight", {c.intermediate_size, c.hidden_size}});
    out.push_back({p + "mlp.down_proj.weight", {c.hidden_size, c.intermediate_size}});
    out.push_back({p + "input_layernorm.weight", {c.hidden_size}});
    out.push_back({p + "post_attention_layernorm.weight", {c.hidden_size}});
  }
  out.push_back({"model.norm.weight", {c.hidden_size}});
  if (!c.tie_word_embeddings) out.push_back({"lm_head.weight", {c.vocab_size, c.hidden_size}});
  return out;
}

void CheckHfTensors(const SafetensorsCheckpoint& ck, const LlamaConfig& cfg,
                    const std::string& config_source) {
  const auto expected = HfTensorShapes(cfg);
  std::set<std::string> want;
  std::vector<std::string> missing, unexpected;
  for (const auto& [name, shape] : expected) {
    want.insert(name);
    if (!ck.Has(name)) missing.push_back(name);
  }
  for (const auto& name : ck.names()) {
    if (!want.count(name) && !IgnoredName(name, cfg)) unexpected.push_back(name);
  }
  if (!missing.empty() || !unexpected.empty()) {
    std::string msg = fmt::format("checkpoint does not match {}:", config_source);
    if (!missing.empty())
      msg += fmt::format(" missing tensors ({}): {};", missing.size(), NameList(missing));
    if (!unexpected.empty()) {
      msg += fmt::format(" unexpected tensors ({}): {};", unexpected.size(), NameList(unexpected));
    }
    msg += " (is config.json from the same model as the weights?)";
    throw ModelError(msg);
  }
  for (const auto& [name, shape] : expected) {
    const auto& info = ck.Info(name);
    if (info.shape != shape) {
      FT_THROW(ModelError, "tensor '{}' in {}: expected shape {} (from {}), found {}", name,
               ck.FileOf(name), ShapeString(shape), config_source, ShapeString(info.shape));
    }
    if (!c10::isFloatingType(info.dtype)) {
      FT_THROW(ModelError, "tensor '{}' in {}: dtype {} is not a floating-point type", name,
               ck.FileOf(name), c10::toString(info.dtype));
    }
  }
}

namespace {

// A model of `cfg` in `dtype` whose parameters are copied from get(name) (checked by the caller).
// Built unmaterialised: the only resident copy is the one the weights are copied into.
LoadedModel FilledModel(const LlamaConfig& cfg, c10::ScalarType dtype,
                        const std::function<torch::Tensor(const std::string&)>& get) {
  LoadedModel out;
  out.config = cfg;
  out.model = std::make_shared<LlamaModel>(cfg, /*materialize=*/false);
  Unmaterialize(*out.model, dtype);
  torch::NoGradGuard no_grad;
  for (auto& p : out.model->named_parameters(/*recurse=*/true)) p.value().copy_(get(p.key()));
  return out;
}

}  // namespace

HfWeights OpenHf(const std::string& dir) {
  HfWeights out;
  out.config_path = files::Join(dir, "config.json");
  if (!files::IsFile(out.config_path)) {
    FT_THROW(ModelError, "{}: no config.json; is this a Hugging Face model directory?", dir);
  }
  out.config = LlamaConfig::FromFile(out.config_path);
  out.tensors = std::make_shared<SafetensorsCheckpoint>(SafetensorsCheckpoint::Open(dir));
  CheckHfTensors(*out.tensors, out.config, out.config_path);
  return out;
}

LoadedModel LoadHf(const std::string& dir, c10::ScalarType dtype) {
  HfWeights hf = OpenHf(dir);
  return FilledModel(hf.config, dtype,
                     [&](const std::string& name) { return hf.tensors->Get(name); });
}

LoadedModel ModelFromTensors(const LlamaConfig& cfg, const NamedTensors& tensors,
                             c10::ScalarType dtype, const std::string& source) {
  // Every user-facing problem (wrong shape, missing, unexpected) is found before any copy.
  std::map<std::string, torch::Tensor> by_name(tensors.begin(), tensors.end());
  std::vector<std::string> missing;
  size_t found = 0;
  for (const auto& [name, shape] : HfTensorShapes(cfg)) {
    auto it = by_name.find(name);
    if (it == by_name.end()) {
      missing.push_back(name);
      continue;
    }
    ++found;
    if (it->second.sizes().vec() != shape) {
      FT_THROW(ModelError, "{}: tensor '{}' has shape {}, its config says {}", source, name,
               ShapeString(it->second.sizes().vec()), ShapeString(shape));
    }
  }
  if (!missing.empty()) {
    FT_THROW(ModelError, "{}: missing tensors ({}): {}", source, missing.size(), NameList(missing));
  }
  if (found != by_name.size()) {
    const auto shapes = HfTensorShapes(cfg);
    std::vector<std::string> extra;
    for (const auto& [name, t] : by_name) {
      const auto same = [&](const auto& shape) { return shape.first == name; };
      if (std::none_of(shapes.begin(), shapes.end(), same)) extra.push_back(name);
    }
    FT_THROW(ModelError, "{}: unexpected tensors ({}): {}", source, extra.size(), NameList(extra));
  }
  return FilledModel(cfg, dtype, [&](const std::string& name) {
    auto it = by_name.find(name);
    FT_CHECK(it != by_name.end(), "parameter {} is not among the config's HF tensors", name);
    return it->second;
  });
}

void WriteHfDir(const NamedTensors& tensors, const LlamaConfig& cfg_in, const std::string& dir,
                const SaveHfOptions& opt) {
  // The tensors must be exactly what config.json describes.
  const auto expected = HfTensorShapes(cfg_in);
  std::map<std::string, std::vector<int64_t>> want(expected.begin(), expected.end());
  if (tensors.size() != want.size()) {
    FT_THROW(ModelError, "export to {}: {} tensors given, the config describes {}", dir,
             tensors.size(), want.size());
  }
  for (const auto& [name, t] : tensors) {
    auto it = want.find(name);
    if (it == want.end()) FT_THROW(ModelError, "export to {}: unexpected tensor '{}'", dir, name);
    if (t.sizes().vec() != it->second) {
      FT_THROW(ModelError, "export to {}: tensor '{}' has shape {}, the config says {}", dir, name,
               ShapeString(t.sizes().vec()), ShapeString(it->second));
    }
  }
  LlamaConfig cfg = cfg_in;
  cfg.torch_dtype = HfDtypeName(tensors.front().second.scalar_type());

  const std::string tmp = dir + ".tmp";
  if (files::Exists(dir)) {
    if (!files::IsDirectory(dir)) FT_THROW(ModelError, "{} exists and is not a directory", dir);
    if (!files::IsEmpty(dir) && !opt.overwrite) {
      FT_THROW(ModelError,
               "{} exists and is not empty; refusing to overwrite it (choose another "
               "output directory, or pass --overwrite / SaveHfOptions::overwrite)",
               dir);
    }
  }
  files::RemoveAllQuietly(tmp);
  files::CreateDirectories(tmp);

  WriteText(files::Join(tmp, "config.json"), cfg.ToJson().dump(2) + "\n");
  WriteSafetensorsSharded(tmp, tensors, opt.max_shard_bytes);

  bool have_generation_config = false;
  if (!opt.tokenizer_src_dir.empty()) {
    for (const char* f : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                          "chat_template.jinja", "chat_template.json", "generation_config.json"}) {
      const std::string src = files::Join(opt.tokenizer_src_dir, f);
      if (!files::IsFile(src)) continue;
      files::CopyFile(src, files::Join(tmp, f), /*overwrite=*/true);
      if (std::string(f) == "generation_config.json") have_generation_config = true;
    }
  }
  if (!opt.chat_template_file.empty()) {
    if (!files::IsFile(opt.chat_template_file)) {
      FT_THROW(IoError, "export to {}: the chat template {} is not a readable file", dir,
               opt.chat_template_file);
    }
    files::CopyFile(opt.chat_template_file, files::Join(tmp, "chat_template.jinja"),
                    /*overwrite=*/true);
  }
  if (!have_generation_config) {
    json gen = {{"_from_model_config", true}};
    const json c = cfg.ToJson();
    gen["bos_token_id"] = c["bos_token_id"];
    gen["eos_token_id"] = c["eos_token_id"];
    WriteText(files::Join(tmp, "generation_config.json"), gen.dump(2) + "\n");
  }

  if (files::Exists(dir)) files::RemoveAll(dir);
  files::Rename(tmp, dir);
}

void SaveHf(LlamaModel& model, const LlamaConfig& cfg, const std::string& dir,
            const SaveHfOptions& opt) {
  NamedTensors tensors;
  for (const auto& p : model.named_parameters(/*recurse=*/true)) {
    tensors.push_back({p.key(), p.value().detach()});
  }
  WriteHfDir(tensors, cfg, dir, opt);
}

}  // namespace ftune::models
