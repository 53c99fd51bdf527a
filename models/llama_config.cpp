#include "models/llama_config.h"

#include <algorithm>
#include <fstream>
#include <set>

#include <fmt/ranges.h>  // fmt::join (in <fmt/ranges.h> since fmt 11)

#include "parallel/error.h"

namespace ftune::models {
namespace {

using nlohmann::json;

// Typed access to config.json keys, every error naming the key and the file. Every default it
// assumes for an absent key is recorded in *notes, for the caller to log.
class Reader {
 public:
  Reader(const json& j, std::string source, LoadNotes* notes)
      : j_(j), source_(std::move(source)), notes_(notes) {}

  bool Has(const char* key) const { return j_.contains(key) && !j_[key].is_null(); }

  int64_t Int(const char* key) const {
    Require(key);
    return AsInt(j_[key], key);
  }
  int64_t Int(const char* key, int64_t def, const char* why) const {
    if (Has(key)) return AsInt(j_[key], key);
    Assume(key, std::to_string(def), why);
    return def;
  }
  double Float(const char* key) const {
    Require(key);
    return Float(key, 0.0, "");
  }
  double Float(const char* key, double def, const char* why) const {
    if (!Has(key)) {
      Assume(key, fmt::format("{}", def), why);
      return def;
    }
    if (!j_[key].is_number()) throw Bad(key, "is not a number");
    return j_[key].get<double>();
  }
  bool Bool(const char* key, bool def, const char* why) const {
    if (!Has(key)) {
      Assume(key, def ? "true" : "false", why);
      return def;
    }
    if (!j_[key].is_boolean()) throw Bad(key, "is not true/false");
    return j_[key].get<bool>();
  }
  std::string Str(const char* key, const std::string& def, const char* why) const {
    if (!Has(key)) {
      Assume(key, json(def).dump(), why);
      return def;
    }
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
  void Note(const std::string& what) const { notes_->info.push_back(source_ + ": " + what); }
  void Warn(const std::string& what) const { notes_->warn.push_back(source_ + ": " + what); }
  const std::string& source() const { return source_; }

 private:
  // A key written as null states "none" on purpose: only a missing key is an assumption.
  void Assume(const char* key, const std::string& value, const char* why) const {
    if (j_.contains(key)) return;
    Note(fmt::format("'{}' is absent: assuming {}{}{}", key, value, *why ? " " : "", why));
  }

  const json& j_;
  std::string source_;
  LoadNotes* notes_;
};

// Keys of a Llama config.json that describe the file, HF's runtime or generation defaults, and
// never the model's math: read by nothing, accepted at any value.
const std::set<std::string> kMetadataKeys = {
    "_name_or_path", "architectures", "model_type", "transformers_version", "use_cache",
    "pad_token_id", "sep_token_id", "decoder_start_token_id", "output_attentions",
    "output_hidden_states", "return_dict", "torchscript", "id2label", "label2id", "problem_type",
    "tokenizer_class", "prefix", "task_specific_params", "finetuning_task", "is_decoder",
    "is_encoder_decoder", "add_cross_attention", "tie_encoder_decoder", "chunk_size_feed_forward",
    "pruned_heads", "cross_attention_hidden_size", "_attn_implementation_autoset",
    "_commit_hash", "use_return_dict", "output_scores", "return_dict_in_generate",
    // HF 4.x split the projections into pretraining_tp slices: the same products, summed.
    "pretraining_tp",
    // Generation defaults of old config.json files (generation_config.json holds them now).
    "max_length", "min_length", "do_sample", "early_stopping", "num_beams", "num_beam_groups",
    "diversity_penalty", "temperature", "top_k", "top_p", "typical_p", "repetition_penalty",
    "length_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "bad_words_ids",
    "num_return_sequences", "forced_bos_token_id", "forced_eos_token_id",
    "remove_invalid_values", "exponential_decay_length_penalty", "suppress_tokens",
    "begin_suppress_tokens"};

// Keys ftune does not implement that change the model unless they hold the value given here
// (HF's default, which is what ftune computes). Any other value is an error.
struct FixedKey {
  const char* key;
  json value;  // the one accepted value (null: absent or null)
  const char* what;
};
const std::vector<FixedKey>& FixedKeys() {
  static const std::vector<FixedKey> keys = {
      {"hidden_act", "silu", "SwiGLU with silu is the only MLP activation ftune implements"},
      {"attention_bias", false, "ftune's Llama has no biases"},
      {"mlp_bias", false, "ftune's Llama has no biases"},
      {"attention_dropout", 0.0, "ftune trains without dropout"},
      {"partial_rotary_factor", 1.0, "ftune rotates every dimension of a head"},
      {"sliding_window", nullptr, "ftune's attention is full causal attention"},
      {"use_sliding_window", false, "ftune's attention is full causal attention"},
      {"quantization_config", nullptr, "ftune loads and trains unquantised weights"},
      {"no_rope_layers", nullptr, "ftune applies RoPE in every layer"},
      {"attn_logit_softcapping", nullptr, "ftune does not cap attention logits"},
      {"final_logit_softcapping", nullptr, "ftune does not cap output logits"},
  };
  return keys;
}

bool SameValue(const json& a, const json& b) {
  if (a.is_number() && b.is_number()) return a.get<double>() == b.get<double>();
  return a == b;
}

// The RoPE settings of one object: transformers 5's rope_parameters, or the legacy top-level
// rope_theta plus rope_scaling (whose keys are read from `scaling`, which may be null).
struct Rope {
  double theta = 10000.0;
  RopeScaling scaling;
};

// Reads a rope_type and its parameters from `r` (an object reader); `theta` is read from it too
// when `theta_inside` (rope_parameters holds rope_theta; legacy rope_scaling does not).
void ReadRopeType(const Reader& r, const json& obj, Rope* rope) {
  // rope_type, or the key `type` that configs written before transformers 4.43 use.
  std::string type;
  if (r.Has("rope_type")) {
    type = r.Str("rope_type", "", "");
  } else if (r.Has("type")) {
    type = r.Str("type", "", "");
  } else {
    type = r.Str("rope_type", "default", "(plain RoPE)");
  }
  std::set<std::string> known = {"rope_type", "type", "rope_theta", "partial_rotary_factor"};
  if (type == "default") {
    // plain RoPE
  } else if (type == "llama3") {
    RopeScaling& s = rope->scaling;
    s.rope_type = "llama3";
    s.factor = r.Float("factor");
    s.low_freq_factor = r.Float("low_freq_factor");
    s.high_freq_factor = r.Float("high_freq_factor");
    s.original_max_position_embeddings = r.Int("original_max_position_embeddings");
    known.insert({"factor", "low_freq_factor", "high_freq_factor",
                  "original_max_position_embeddings"});
    if (s.high_freq_factor <= s.low_freq_factor) {
      FT_THROW(ModelError, "{}: high_freq_factor ({}) must exceed low_freq_factor ({})",
               r.source(), s.high_freq_factor, s.low_freq_factor);
    }
  } else {
    FT_THROW(ModelError,
             "{}: rope_type '{}' is not supported: ftune implements 'default' and 'llama3' RoPE "
             "(Llama 1/2/3/3.1/3.2); a model needing another type would train with wrong "
             "positions",
             r.source(), type);
  }
  if (r.Has("partial_rotary_factor") && r.Float("partial_rotary_factor", 1.0, "") != 1.0) {
    throw r.Bad("partial_rotary_factor", "must be 1 (ftune rotates every dimension of a head)");
  }
  for (const auto& [key, value] : obj.items()) {
    if (!known.count(key)) {
      FT_THROW(ModelError,
               "{}: key '{}' is not a parameter of rope_type '{}' that ftune knows; remove it if "
               "the model does not need it",
               r.source(), key, type);
    }
  }
}

Rope ReadRope(const json& j, const Reader& top, LoadNotes* notes) {
  const std::string& source = top.source();
  Rope legacy;
  legacy.theta = j.contains("rope_theta") && !j["rope_theta"].is_null()
                     ? top.Float("rope_theta", 0.0, "")
                     : 10000.0;
  const bool has_scaling = top.Has("rope_scaling");
  if (has_scaling) {
    const json& rs = j["rope_scaling"];
    if (!rs.is_object()) throw top.Bad("rope_scaling", "is not an object or null");
    ReadRopeType(Reader(rs, source + " rope_scaling", notes), rs, &legacy);
  }
  if (!top.Has("rope_parameters")) {
    if (!top.Has("rope_theta")) top.Float("rope_theta", 10000.0, "(HF LlamaConfig's default)");
    if (!j.contains("rope_scaling")) {
      top.Note("neither 'rope_parameters' nor 'rope_scaling': plain RoPE");
    }
    return legacy;
  }
  // transformers >= 5 (rope_parameters) takes precedence over the legacy keys.
  const json& rp = j["rope_parameters"];
  if (!rp.is_object()) throw top.Bad("rope_parameters", "is not an object or null");
  for (const auto& [key, value] : rp.items()) {
    if (value.is_object()) {
      FT_THROW(ModelError,
               "{}: rope_parameters has per-layer-type entries ('{}', ...): ftune implements one "
               "RoPE for every layer",
               source, key);
    }
  }
  Reader r(rp, source + " rope_parameters", notes);
  Rope rope;
  if (r.Has("rope_theta")) {
    rope.theta = r.Float("rope_theta", 0.0, "");
  } else {
    rope.theta = top.Has("rope_theta") ? legacy.theta
                                       : r.Float("rope_theta", 10000.0, "(HF's default)");
  }
  ReadRopeType(r, rp, &rope);
  // Both forms present (a file edited by hand or by two tools): they must agree.
  const bool theta_differs = top.Has("rope_theta") && legacy.theta != rope.theta;
  const RopeScaling &a = legacy.scaling, &b = rope.scaling;
  const bool scaling_differs =
      has_scaling && (a.rope_type != b.rope_type ||
                      (!a.rope_type.empty() &&
                       (a.factor != b.factor || a.low_freq_factor != b.low_freq_factor ||
                        a.high_freq_factor != b.high_freq_factor ||
                        a.original_max_position_embeddings != b.original_max_position_embeddings)));
  if (theta_differs || scaling_differs) {
    FT_THROW(ModelError,
             "{}: rope_parameters and the legacy {} disagree; keep one of them (transformers 5 "
             "reads rope_parameters)",
             source, theta_differs ? "rope_theta" : "rope_scaling");
  }
  return rope;
}

}  // namespace

LlamaConfig LlamaConfig::FromJson(const json& j, const std::string& source) {
  if (!j.is_object()) FT_THROW(ModelError, "{}: not a JSON object", source);
  LlamaConfig c;
  Reader r(j, source, &c.notes);
  if (r.Has("architectures")) {
    const auto& a = j["architectures"];
    if (!a.is_array() || a.size() != 1 || a[0] != "LlamaForCausalLM") {
      FT_THROW(ModelError,
               "{}: architectures is {}, but ftune supports only [\"LlamaForCausalLM\"]", source,
               a.dump());
    }
  }
  if (r.Has("model_type") && r.Str("model_type", "", "") != "llama") {
    FT_THROW(ModelError, "{}: model_type is '{}', but ftune supports only 'llama'", source,
             r.Str("model_type", "", ""));
  }
  for (const FixedKey& f : FixedKeys()) {
    if (!j.contains(f.key)) continue;
    const json& v = j[f.key];
    if (!v.is_null() && !SameValue(v, f.value) && !(f.value.is_null() && v == false)) {
      throw r.Bad(f.key, fmt::format("must be {} ({})", f.value.dump(), f.what));
    }
  }
  if (r.Has("layer_types")) {
    for (const auto& t : j["layer_types"]) {
      if (t != "full_attention") {
        throw r.Bad("layer_types", "must list only \"full_attention\" (ftune's attention is full "
                                   "causal attention in every layer)");
      }
    }
  }

  c.vocab_size = r.Int("vocab_size");
  c.hidden_size = r.Int("hidden_size");
  c.intermediate_size = r.Int("intermediate_size");
  c.num_hidden_layers = r.Int("num_hidden_layers");
  c.num_attention_heads = r.Int("num_attention_heads");
  if (c.num_attention_heads <= 0) throw r.Bad("num_attention_heads", "must be positive");
  c.num_key_value_heads =
      r.Int("num_key_value_heads", c.num_attention_heads, "(= num_attention_heads: no GQA)");
  c.head_dim = r.Int("head_dim", c.hidden_size / c.num_attention_heads,
                     "(= hidden_size / num_attention_heads)");
  c.max_position_embeddings = r.Int("max_position_embeddings", 2048, "(HF's default)");
  c.rms_norm_eps = r.Float("rms_norm_eps", 1e-6, "(HF's default)");
  c.tie_word_embeddings = r.Bool("tie_word_embeddings", false, "(HF's default)");
  c.bos_token_id = r.Int("bos_token_id", -1, "(none; the tokenizer's applies)");
  // transformers >= 5 writes `dtype`, older versions `torch_dtype`.
  c.torch_dtype = r.Has("dtype") ? r.Str("dtype", "", "")
                                 : r.Str("torch_dtype", "float32", "(the weights' own dtype)");
  c.initializer_range = r.Float("initializer_range", 0.02, "(HF's default; used only by init)");
  if (r.Has("eos_token_id")) {
    const auto& e = j["eos_token_id"];
    if (e.is_array()) {
      for (const auto& v : e) c.eos_token_ids.push_back(r.AsInt(v, "eos_token_id"));
    } else {
      c.eos_token_ids.push_back(r.AsInt(e, "eos_token_id"));
    }
  } else if (!j.contains("eos_token_id")) {
    r.Note("'eos_token_id' is absent: the tokenizer's EOS ids apply");
  }
  const Rope rope = ReadRope(j, r, &c.notes);
  c.rope_theta = rope.theta;
  c.rope_scaling = rope.scaling;

  static const std::set<std::string> kRead = {
      "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
      "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings",
      "rms_norm_eps", "tie_word_embeddings", "bos_token_id", "eos_token_id", "dtype",
      "torch_dtype", "initializer_range", "rope_theta", "rope_scaling", "rope_parameters",
      "layer_types"};
  std::vector<std::string> unknown;
  for (const auto& item : j.items()) {
    const std::string& key = item.key();  // (a lambda cannot capture a structured binding in C++17)
    const bool fixed = std::any_of(FixedKeys().begin(), FixedKeys().end(),
                                   [&](const FixedKey& f) { return key == f.key; });
    if (!kRead.count(key) && !fixed && !kMetadataKeys.count(key)) unknown.push_back(key);
  }
  if (!unknown.empty()) {
    r.Warn(fmt::format("ftune does not know the key(s) {}; it assumes they do not change the "
                       "model (check the model card if this is a Llama variant)",
                       fmt::join(unknown, ", ")));
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
