#include "models/llama_config.h"

#include <fstream>

#include "parallel/error.h"

namespace ftune::models {
namespace {

using nlohmann::json;

// Typed access to config.json keys, every error naming the key and the file.
class Reader {
 public:
  Reader(const json& j, std::string source) : j_(j), source_(std::move(source)) {}

  bool Has(const char* key) const { return j_.contains(key) && !j_[key].is_null(); }

  int64_t Int(const char* key) const {
    Require(key);
    return AsInt(j_[key], key);
  }
  int64_t Int(const char* key, int64_t def) const { return Has(key) ? AsInt(j_[key], key) : def; }
  double Float(const char* key, double def) const {
    if (!Has(key)) return def;
    if (!j_[key].is_number()) throw Bad(key, "is not a number");
    return j_[key].get<double>();
  }
  bool Bool(const char* key, bool def) const {
    if (!Has(key)) return def;
    if (!j_[key].is_boolean()) throw Bad(key, "is not true/false");
    return j_[key].get<bool>();
  }
  std::string Str(const char* key, const std::string& def) const {
    if (!Has(key)) return def;
    if (!j_[key].is_string()) throw Bad(key, "is not a string");
    return j_[key].get<std::string>();
  }
  void Require(const char* key) const {
    if (!Has(key)) {
      FT_THROW(ModelError, "{}: required key '{}' is missing", source_, key);
    }
  }
  int64_t AsInt(const json& v, const std::string& key) const {
    if (!v.is_number_integer()) throw Bad(key, "is not an integer");
    return v.get<int64_t>();
  }
  ModelError Bad(const std::string& key, const std::string& why) const {
    return ModelError(fmt::format("{}: key '{}' {} (found {})", source_, key, why,
                                  j_.contains(key) ? j_[key].dump() : "nothing"));
  }
  const json& j() const { return j_; }
  const std::string& source() const { return source_; }

 private:
  const json& j_;
  std::string source_;
};

}  // namespace

LlamaConfig LlamaConfig::FromJson(const json& j, const std::string& source) {
  if (!j.is_object()) FT_THROW(ModelError, "{}: not a JSON object", source);
  Reader r(j, source);
  if (r.Has("architectures")) {
    const auto& a = j["architectures"];
    if (!a.is_array() || a.size() != 1 || a[0] != "LlamaForCausalLM") {
      FT_THROW(ModelError,
               "{}: architectures is {}, but ftune supports only [\"LlamaForCausalLM\"]", source,
               a.dump());
    }
  }
  if (r.Has("model_type") && r.Str("model_type", "") != "llama") {
    FT_THROW(ModelError, "{}: model_type is '{}', but ftune supports only 'llama'", source,
             r.Str("model_type", ""));
  }
  if (r.Str("hidden_act", "silu") != "silu") {
    throw r.Bad("hidden_act", "must be 'silu' (SwiGLU), the only activation ftune implements");
  }
  if (r.Bool("attention_bias", false))
    throw r.Bad("attention_bias", "must be false (ftune's Llama has no biases)");
  if (r.Bool("mlp_bias", false))
    throw r.Bad("mlp_bias", "must be false (ftune's Llama has no biases)");

  LlamaConfig c;
  c.vocab_size = r.Int("vocab_size");
  c.hidden_size = r.Int("hidden_size");
  c.intermediate_size = r.Int("intermediate_size");
  c.num_hidden_layers = r.Int("num_hidden_layers");
  c.num_attention_heads = r.Int("num_attention_heads");
  c.num_key_value_heads = r.Int("num_key_value_heads", c.num_attention_heads);
  if (c.num_attention_heads <= 0) throw r.Bad("num_attention_heads", "must be positive");
  c.head_dim = r.Int("head_dim", c.hidden_size / c.num_attention_heads);
  c.max_position_embeddings = r.Int("max_position_embeddings", 2048);
  c.rms_norm_eps = r.Float("rms_norm_eps", 1e-6);
  c.rope_theta = r.Float("rope_theta", 10000.0);
  c.tie_word_embeddings = r.Bool("tie_word_embeddings", false);
  c.bos_token_id = r.Int("bos_token_id", -1);
  c.torch_dtype = r.Str("torch_dtype", "float32");
  c.initializer_range = r.Float("initializer_range", 0.02);
  if (r.Has("eos_token_id")) {
    const auto& e = j["eos_token_id"];
    if (e.is_array()) {
      for (const auto& v : e) c.eos_token_ids.push_back(r.AsInt(v, "eos_token_id"));
    } else {
      c.eos_token_ids.push_back(r.AsInt(e, "eos_token_id"));
    }
  }
  if (r.Has("rope_scaling")) {
    const auto& rs = j["rope_scaling"];
    if (!rs.is_object()) throw r.Bad("rope_scaling", "is not an object or null");
    Reader s(rs, source + " rope_scaling");
    std::string type = s.Str("rope_type", s.Str("type", ""));
    if (type == "default" || type.empty()) {
      // HF treats "default" as plain RoPE.
    } else if (type == "llama3") {
      c.rope_scaling.rope_type = "llama3";
      s.Require("factor");
      s.Require("low_freq_factor");
      s.Require("high_freq_factor");
      s.Require("original_max_position_embeddings");
      c.rope_scaling.factor = s.Float("factor", 8.0);
      c.rope_scaling.low_freq_factor = s.Float("low_freq_factor", 1.0);
      c.rope_scaling.high_freq_factor = s.Float("high_freq_factor", 4.0);
      c.rope_scaling.original_max_position_embeddings = s.Int("original_max_position_embeddings");
      if (c.rope_scaling.high_freq_factor <= c.rope_scaling.low_freq_factor) {
        FT_THROW(ModelError,
                 "{}: rope_scaling high_freq_factor ({}) must exceed low_freq_factor ({})", source,
                 c.rope_scaling.high_freq_factor, c.rope_scaling.low_freq_factor);
      }
    } else {
      FT_THROW(ModelError,
               "{}: rope_scaling type '{}' is not supported (ftune implements none and "
               "'llama3')",
               source, type);
    }
  }
  c.Validate(source);
  return c;
}

LlamaConfig LlamaConfig::FromFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) FT_THROW(IoError, "{}: cannot open", path);
  json j = json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) FT_THROW(IoError, "{}: not valid JSON", path);
  return FromJson(j, path);
}

LlamaConfig LlamaConfig::FromInline(const ModelConfig& cfg) {
  const InlineArch& a = cfg.arch;
  LlamaConfig c;
  c.vocab_size = a.vocab_size;
  c.hidden_size = a.hidden_size;
  c.intermediate_size = a.intermediate_size;
  c.num_hidden_layers = a.num_hidden_layers;
  c.num_attention_heads = a.num_attention_heads;
  c.num_key_value_heads = a.num_key_value_heads;
  c.head_dim = a.num_attention_heads > 0 ? a.hidden_size / a.num_attention_heads : 0;
  c.max_position_embeddings = a.max_position_embeddings;
  c.rms_norm_eps = a.rms_norm_eps;
  c.rope_theta = a.rope_theta;
  c.tie_word_embeddings = a.tie_word_embeddings;
  c.torch_dtype = HfDtypeName(ParseDtype(cfg.dtype));
  c.Validate("model.arch");
  return c;
}

void LlamaConfig::Validate(const std::string& source) const {
  auto positive = [&](const char* key, int64_t v) {
    if (v <= 0) FT_THROW(ModelError, "{}: {} must be positive, got {}", source, key, v);
  };
  positive("vocab_size", vocab_size);
  positive("hidden_size", hidden_size);
  positive("intermediate_size", intermediate_size);
  positive("num_hidden_layers", num_hidden_layers);
  positive("num_attention_heads", num_attention_heads);
  positive("num_key_value_heads", num_key_value_heads);
  positive("head_dim", head_dim);
  positive("max_position_embeddings", max_position_embeddings);
  if (head_dim % 2 != 0)
    FT_THROW(ModelError, "{}: head_dim {} must be even (RoPE)", source, head_dim);
  if (num_attention_heads % num_key_value_heads != 0) {
    FT_THROW(ModelError, "{}: num_attention_heads {} is not divisible by num_key_value_heads {}",
             source, num_attention_heads, num_key_value_heads);
  }
  if (!(rms_norm_eps > 0)) FT_THROW(ModelError, "{}: rms_norm_eps must be positive", source);
  if (!(rope_theta > 0)) FT_THROW(ModelError, "{}: rope_theta must be positive", source);
}

json LlamaConfig::ToJson() const {
  json j = {
      {"architectures", {"LlamaForCausalLM"}},
      {"model_type", "llama"},
      {"attention_bias", false},
      {"attention_dropout", 0.0},
      {"hidden_act", "silu"},
      {"hidden_size", hidden_size},
      {"head_dim", head_dim},
      {"initializer_range", initializer_range},
      {"intermediate_size", intermediate_size},
      {"max_position_embeddings", max_position_embeddings},
      {"mlp_bias", false},
      {"num_attention_heads", num_attention_heads},
      {"num_hidden_layers", num_hidden_layers},
      {"num_key_value_heads", num_key_value_heads},
      {"pretraining_tp", 1},
      {"rms_norm_eps", rms_norm_eps},
      {"rope_theta", rope_theta},
      {"tie_word_embeddings", tie_word_embeddings},
      {"torch_dtype", torch_dtype},
      {"use_cache", true},
      {"vocab_size", vocab_size},
  };
  j["bos_token_id"] = bos_token_id >= 0 ? json(bos_token_id) : json(nullptr);
  if (eos_token_ids.empty()) {
    j["eos_token_id"] = nullptr;
  } else if (eos_token_ids.size() == 1) {
    j["eos_token_id"] = eos_token_ids[0];
  } else {
    j["eos_token_id"] = eos_token_ids;
  }
  if (rope_scaling.rope_type.empty()) {
    j["rope_scaling"] = nullptr;
  } else {
    j["rope_scaling"] = {
        {"rope_type", rope_scaling.rope_type},
        {"factor", rope_scaling.factor},
        {"low_freq_factor", rope_scaling.low_freq_factor},
        {"high_freq_factor", rope_scaling.high_freq_factor},
        {"original_max_position_embeddings", rope_scaling.original_max_position_embeddings},
    };
  }
  return j;
}

c10::ScalarType ParseDtype(const std::string& name) {
  if (name == "fp32" || name == "float32") return c10::kFloat;
  if (name == "bf16" || name == "bfloat16") return c10::kBFloat16;
  if (name == "fp16" || name == "float16") return c10::kHalf;
  FT_THROW(ConfigError, "dtype '{}' is not one of fp32, bf16, fp16 (or float32, bfloat16, float16)",
           name);
}

std::string HfDtypeName(c10::ScalarType t) {
  switch (t) {
    case c10::kFloat:
      return "float32";
    case c10::kBFloat16:
      return "bfloat16";
    case c10::kHalf:
      return "float16";
    default:
      FT_THROW(ModelError, "no HF name for dtype {}", c10::toString(t));
  }
}

}  // namespace ftune::models
