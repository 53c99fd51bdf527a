// The only code that touches YAML::Node: loads, overrides, validates, prints
// and writes the typed Config by walking each section's VisitFields.
#include "runtime/config.h"

#include <fmt/ranges.h>  // fmt::join (in <fmt/ranges.h> since fmt 11)
#include <yaml-cpp/yaml.h>

#include <cmath>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <type_traits>

#include "parallel/files.h"

namespace ftune::runtime {
namespace {

template <class T, class = void>
struct IsSection : std::false_type {};
template <class T>
struct IsSection<T, std::void_t<decltype(std::declval<T&>().template VisitFields<int>(
                        std::declval<int&>()))>> : std::true_type {};
// (VisitFields<int> is never instantiated; the probe only checks the member exists.)

template <class T>
constexpr bool kIsSection = IsSection<T>::value;

template <class T, class = void>
struct HasValidate : std::false_type {};
template <class T>
struct HasValidate<T, std::void_t<decltype(std::declval<const T&>().Validate())>>
    : std::true_type {};

template <class T>
const char* TypeName() {
  if constexpr (std::is_same_v<T, bool>) return "a boolean (true/false)";
  else if constexpr (std::is_integral_v<T>) return "an integer";
  else if constexpr (std::is_floating_point_v<T>) return "a finite number";
  else if constexpr (std::is_same_v<T, std::string>) return "a string";
  else if constexpr (std::is_same_v<T, std::vector<std::string>>) return "a list of strings";
  else if constexpr (std::is_same_v<T, std::vector<int64_t>>) return "a list of integers";
  else return "a section (mapping)";
}

size_t EditDistance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1])});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

// The names users bring from HF Trainer, axolotl and torchtune (and TRL, DeepSpeed), with
// ftune's key for each: an unknown key with one of these names gets this suggestion.
struct ForeignKey {
  const char* name;
  const char* key;  // ftune's key
  const char* from;
};
const std::vector<ForeignKey>& ForeignKeys() {
  static const std::vector<ForeignKey> keys = {
      {"learning_rate", "optim.lr", "HF Trainer, axolotl"},
      {"num_train_epochs", "train.epochs", "HF Trainer"},
      {"num_epochs", "train.epochs", "axolotl, torchtune"},
      {"max_steps", "train.steps", "HF Trainer, axolotl"},
      {"max_steps_per_epoch", "train.steps", "torchtune"},
      {"per_device_train_batch_size", "train.micro_batch", "HF Trainer"},
      {"micro_batch_size", "train.micro_batch", "axolotl"},
      {"batch_size", "train.micro_batch", "torchtune"},
      {"gradient_accumulation_steps", "train.grad_accum", "HF Trainer, axolotl, torchtune"},
      {"max_grad_norm", "train.clip", "HF Trainer, axolotl"},
      {"clip_grad_norm", "train.clip", "torchtune"},
      {"gradient_checkpointing", "train.activation_checkpointing", "HF Trainer, axolotl"},
      {"enable_activation_checkpointing", "train.activation_checkpointing", "torchtune"},
      {"num_warmup_steps", "optim.warmup_steps", "torchtune"},
      {"warmup_ratio", "optim.warmup_steps (in steps: ratio x total steps)", "HF Trainer, axolotl"},
      {"adam_beta1", "optim.beta1", "HF Trainer"},
      {"adam_beta2", "optim.beta2", "HF Trainer"},
      {"adam_epsilon", "optim.eps", "HF Trainer"},
      {"lr_scheduler_type", "optim.schedule", "HF Trainer"},
      {"lr_scheduler", "optim.schedule", "axolotl, torchtune"},
      {"optimizer", "optim (ftune's optimizer is AdamW)", "axolotl, torchtune"},
      {"optim", "optim (a section: lr, beta1, ...)", "HF Trainer"},
      {"bf16", "model.dtype: bf16", "HF Trainer, axolotl"},
      {"fp16", "model.dtype: bf16 (ftune computes in fp32 or bf16)", "HF Trainer, axolotl"},
      {"torch_dtype", "model.dtype", "HF"},
      {"save_steps", "checkpoint.every", "HF Trainer, axolotl"},
      {"save_total_limit", "checkpoint.keep", "HF Trainer, axolotl"},
      {"resume_from_checkpoint", "checkpoint.resume", "HF Trainer, axolotl"},
      {"eval_steps", "eval.every", "HF Trainer, axolotl"},
      {"per_device_eval_batch_size", "eval.batch_size", "HF Trainer"},
      {"eval_batch_size", "eval.batch_size", "axolotl"},
      {"logging_steps", "log.every", "HF Trainer, axolotl"},
      {"log_every_n_steps", "log.every", "torchtune"},
      {"output_dir", "run.output_dir", "HF Trainer, axolotl, torchtune"},
      {"run_name", "run.name", "HF Trainer"},
      {"base_model", "model.path", "axolotl"},
      {"model_name_or_path", "model.path", "HF Trainer scripts"},
      {"tokenizer_config", "tokenizer.path", "axolotl"},
      {"datasets", "data.inputs", "axolotl"},
      {"dataset", "data.inputs", "torchtune"},
      {"sequence_len", "data.max_seq_len", "axolotl"},
      {"max_seq_length", "data.max_seq_len", "TRL"},
      {"sample_packing", "data.packing", "axolotl"},
      {"packed", "data.packing", "torchtune"},
      {"train_on_inputs", "data.train_on_prompt", "axolotl"},
      {"val_set_size", "data.split.test_ratio (or test_count)", "axolotl"},
      {"chat_template", "data.template", "axolotl"},
      {"deepspeed", "parallel.zero (ZeRO stage 0-3)", "HF Trainer, axolotl"},
      {"zero_stage", "parallel.zero", "DeepSpeed"},
      {"fsdp", "parallel.zero: 3 (parameters sharded over data-parallel ranks)", "HF, axolotl"},
      {"tensor_parallel_size", "parallel.tp", "torchtune, vLLM"},
      {"tensor_parallel_dim", "parallel.tp", "torchtune"},
      {"data_parallel_shard_dim", "parallel.dp", "torchtitan"},
  };
  return keys;
}

// Where a key's value came from, for messages: "file:line" or "--set key=value".
struct Origins {
  std::string file;
  std::map<std::string, std::string> where;  // dotted key -> origin
  std::string Of(const std::string& key) const {
    // The closest recorded origin: the key, else its nearest parent section.
    std::string k = key;
    while (true) {
      auto it = where.find(k);
      if (it != where.end()) return it->second;
      auto dot = k.rfind('.');
      if (dot == std::string::npos) break;
      k = k.substr(0, dot);
    }
    return file.empty() ? "defaults" : file;
  }
};

std::string MarkOf(const Origins& o, const YAML::Node& n) {
  if (!n.Mark().is_null()) return fmt::format("{}:{}", o.file, n.Mark().line + 1);
  return o.file;
}

[[noreturn]] void KeyError(const std::string& origin, const std::string& key,
                           const std::string& msg) {
  throw ConfigError(fmt::format("{}: {}: {}", origin, key, msg));
}

// Reads one section from a YAML mapping node.
class Reader {
 public:
  Reader(const YAML::Node& node, std::string prefix, Origins& origins,
         const std::vector<std::string>& all_keys)
      : node_(node), prefix_(std::move(prefix)), origins_(origins), all_keys_(all_keys) {}

  template <class T>
  void operator()(const char* name, T& field, const char* /*doc*/) {
    names_.insert(name);
    const std::string key = prefix_.empty() ? name : prefix_ + "." + name;
    const YAML::Node child = node_[name];
    if (!child) {
      if constexpr (kIsSection<T>) {
        ReadSection(YAML::Node(YAML::NodeType::Map), key, field);  // validate defaults too
      }
      return;
    }
    if (!origins_.where.count(key)) origins_.where[key] = MarkOf(origins_, child);
    const std::string at = origins_.Of(key);
    if constexpr (kIsSection<T>) {
      if (!child.IsMap() && !child.IsNull()) {
        KeyError(at, key, fmt::format("expected {}, got '{}'", TypeName<T>(), Dump(child)));
      }
      ReadSection(child.IsMap() ? child : YAML::Node(YAML::NodeType::Map), key, field);
    } else if constexpr (std::is_same_v<T, std::vector<std::string>> ||
                         std::is_same_v<T, std::vector<int64_t>>) {
      using E = typename T::value_type;
      field.clear();
      if (child.IsNull()) return;
      if (child.IsScalar()) {
        field.push_back(Scalar<E>(child, key, at));
      } else if (child.IsSequence()) {
        for (const auto& e : child) field.push_back(Scalar<E>(e, key, at));
      } else {
        KeyError(at, key, fmt::format("expected {}, got a mapping", TypeName<T>()));
      }
    } else {
      field = Scalar<T>(child, key, at);
    }
  }

  // Rejects keys the section does not define, suggesting the closest one.
  void CheckUnknown() const {
    if (!node_ || !node_.IsMap()) return;
    for (const auto& kv : node_) {
      const std::string k = kv.first.as<std::string>();
      if (names_.count(k)) continue;
      const std::string key = prefix_.empty() ? k : prefix_ + "." + k;
      std::string best;
      size_t best_d = 1000;
      for (const auto& n : names_) {
        size_t d = EditDistance(k, n);
        if (d < best_d) best_d = d, best = prefix_.empty() ? n : prefix_ + "." + n;
      }
      // A key that exists in another section is a likelier intent; a name from another
      // framework likelier still.
      for (const auto& full : all_keys_) {
        auto dot = full.rfind('.');
        if (full.substr(dot + 1) == k) best = full, best_d = 0;
      }
      std::string hint = best.empty() ? "" : fmt::format("; did you mean '{}'?", best);
      for (const auto& f : ForeignKeys()) {
        if (k == f.name && best_d != 0) {
          hint = fmt::format("; did you mean '{}'? ('{}' is the name in {})", f.key, k, f.from);
        }
      }
      std::string origin = origins_.where.count(key) ? origins_.where.at(key)
                                                     : MarkOf(origins_, kv.first);
      KeyError(origin, key, "unknown key" + hint);
    }
  }

 private:
  static std::string Dump(const YAML::Node& n) {
    YAML::Emitter e;
    e << YAML::Flow << n;
    return e.c_str();
  }

  template <class T>
  T Scalar(const YAML::Node& n, const std::string& key, const std::string& at) {
    if (!n.IsScalar()) {
      KeyError(at, key, fmt::format("expected {}, got '{}'", TypeName<T>(), Dump(n)));
    }
    try {
      if constexpr (std::is_same_v<T, bool>) {
        return n.as<bool>();
      } else if constexpr (std::is_integral_v<T>) {
        // yaml-cpp accepts "1.5" as int by truncation on some versions; be strict.
        const std::string s = n.Scalar();
        size_t pos = 0;
        long long v = std::stoll(s, &pos, 0);
        if (pos != s.size()) throw std::invalid_argument(s);
        return static_cast<T>(v);
      } else if constexpr (std::is_floating_point_v<T>) {
        // .nan and .inf are YAML numbers, but no key means them (a range check lets NaN
        // through) and ConfigToYaml could not write them back.
        const T v = n.as<T>();
        if (!std::isfinite(v)) throw std::invalid_argument(n.Scalar());
        return v;
      } else {
        return n.as<std::string>();
      }
    } catch (const std::exception&) {
      KeyError(at, key, fmt::format("expected {}, got '{}'", TypeName<T>(), n.Scalar()));
    }
  }

  template <class S>
  void ReadSection(const YAML::Node& child, const std::string& key, S& section) {
    Reader sub(child, key, origins_, all_keys_);
    section.VisitFields(sub);
    sub.CheckUnknown();
    if constexpr (HasValidate<S>::value) {
      try {
        section.Validate();
      } catch (const ConfigKeyError& e) {
        const std::string full = key + "." + e.key();
        KeyError(origins_.Of(full), full, e.what());
      }
    }
  }

  const YAML::Node node_;
  std::string prefix_;
  Origins& origins_;
  const std::vector<std::string>& all_keys_;
  std::set<std::string> names_;
};

// Collects every dotted key (for suggestions) and "key | value" rows.
class Flattener {
 public:
  explicit Flattener(std::string prefix = "") : prefix_(std::move(prefix)) {}
  template <class T>
  void operator()(const char* name, T& field, const char* doc) {
    const std::string key = prefix_.empty() ? name : prefix_ + "." + name;
    if constexpr (kIsSection<T>) {
      Flattener sub(key);
      field.VisitFields(sub);
      rows.insert(rows.end(), sub.rows.begin(), sub.rows.end());
    } else {
      rows.push_back({key, ToString(field), doc});
    }
  }
  struct Row {
    std::string key, value, doc;
  };
  std::vector<Row> rows;

 private:
  template <class T>
  static std::string ToString(const T& v) {
    if constexpr (std::is_same_v<T, bool>) return v ? "true" : "false";
    else if constexpr (std::is_same_v<T, std::string>) return v;
    else if constexpr (std::is_same_v<T, std::vector<std::string>> ||
                       std::is_same_v<T, std::vector<int64_t>>)
      return fmt::format("[{}]", fmt::join(v, ", "));
    else return fmt::format("{}", v);
  }
  std::string prefix_;
};

class Emitter {
 public:
  explicit Emitter(YAML::Emitter& out) : out_(out) {}
  template <class T>
  void operator()(const char* name, T& field, const char* /*doc*/) {
    out_ << YAML::Key << name << YAML::Value;
    if constexpr (kIsSection<T>) {
      out_ << YAML::BeginMap;
      Emitter sub(out_);
      field.VisitFields(sub);
      out_ << YAML::EndMap;
    } else if constexpr (std::is_same_v<T, std::vector<std::string>> ||
                         std::is_same_v<T, std::vector<int64_t>>) {
      out_ << YAML::Flow << YAML::BeginSeq;
      for (const auto& e : field) out_ << e;
      out_ << YAML::EndSeq;
    } else if constexpr (std::is_same_v<T, std::string>) {
      out_ << YAML::DoubleQuoted << field;
    } else if constexpr (std::is_floating_point_v<T>) {
      out_ << fmt::format("{}", field);  // shortest round-trip form
    } else {
      out_ << field;
    }
  }

 private:
  YAML::Emitter& out_;
};

// yaml-cpp keeps both entries of a key written twice in one mapping, and lookups see the first
// one: every duplicate key or section is an error naming both lines.
void CheckDuplicateKeys(const YAML::Node& node, const std::string& prefix, const Origins& o) {
  if (node.IsSequence()) {
    for (const auto& e : node) CheckDuplicateKeys(e, prefix, o);
    return;
  }
  if (!node.IsMap()) return;
  std::map<std::string, YAML::Node> seen;
  for (const auto& kv : node) {
    const std::string k = kv.first.IsScalar() ? kv.first.Scalar() : "?";
    const std::string key = prefix.empty() ? k : prefix + "." + k;
    const auto [it, fresh] = seen.emplace(k, kv.first);
    if (!fresh) {
      KeyError(MarkOf(o, kv.first), key,
               fmt::format("written twice (first at {}); only one can hold, keep one",
                           MarkOf(o, it->second)));
    }
    CheckDuplicateKeys(kv.second, key, o);
  }
}

// Sets root[a][b]... = value for "a.b=value", creating maps as needed.
void ApplyOverride(YAML::Node& root, const std::string& ov, Origins& origins) {
  auto eq = ov.find('=');
  if (eq == std::string::npos || eq == 0) {
    throw ConfigError(fmt::format("--set '{}': expected key.sub=value", ov));
  }
  const std::string key = ov.substr(0, eq);
  YAML::Node value;
  try {
    value = YAML::Load(ov.substr(eq + 1));
  } catch (const YAML::Exception& e) {
    throw ConfigError(fmt::format("--set '{}': the value is not valid YAML: {}", ov, e.msg));
  }
  if (!value.IsDefined() || value.IsNull()) value = YAML::Node(std::string());
  std::vector<std::string> parts;
  std::stringstream ss(key);
  for (std::string p; std::getline(ss, p, '.');) parts.push_back(p);
  // yaml-cpp node handles alias on assignment, so walk with fresh nodes.
  std::vector<YAML::Node> chain{root};
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    YAML::Node next = chain.back()[parts[i]];
    if (!next || !next.IsMap()) {
      if (next && !next.IsNull()) {
        throw ConfigError(fmt::format("--set '{}': '{}' is a value, not a section", ov,
                                      parts[i]));
      }
      chain.back()[parts[i]] = YAML::Node(YAML::NodeType::Map);
      next = chain.back()[parts[i]];
    }
    chain.push_back(next);
  }
  chain.back()[parts.back()] = value;
  origins.where[key] = fmt::format("--set {}", ov);
}

// LoadConfig and LoadConfigText: `yaml_text` (null = none) named `origin` in errors.
Config ParseConfig(const std::string* yaml_text, const std::string& origin,
                   const std::vector<std::string>& overrides, const ConfigCheck& check) {
  Config cfg;
  Origins origins;
  YAML::Node root(YAML::NodeType::Map);
  if (yaml_text) {
    origins.file = origin;
    try {
      root = YAML::Load(*yaml_text);
    } catch (const YAML::Exception& e) {
      FT_THROW(ConfigError, "{}:{}: invalid YAML: {}", origin, e.mark.line + 1, e.msg);
    }
    if (root.IsNull()) root = YAML::Node(YAML::NodeType::Map);
    if (!root.IsMap()) {
      FT_THROW(ConfigError, "{}: the top level must be a mapping of sections (run:, model:, ...)",
               origin);
    }
    CheckDuplicateKeys(root, "", origins);
  }
  for (const auto& ov : overrides) ApplyOverride(root, ov, origins);

  Flattener keys;
  cfg.VisitFields(keys);
  std::vector<std::string> all_keys;
  for (const auto& r : keys.rows) all_keys.push_back(r.key);

  Reader reader(root, "", origins, all_keys);
  cfg.VisitFields(reader);
  reader.CheckUnknown();

  // Checks across sections, naming every key involved.
  const auto& p = cfg.parallel;
  // dp == world_size / (cp * tp), not dp * cp * tp == world_size: that product of user numbers
  // can overflow (parallel.dp=2^62+1 with tp 4 "fit" 4 ranks). cp and tp are at most 2^16.
  const int64_t ct = p.cp * p.tp;
  const int64_t dp = p.dp == -1 ? (check.world_size % ct == 0 ? check.world_size / ct : -1) : p.dp;
  if (check.layout && (check.world_size % ct != 0 || dp != check.world_size / ct)) {
    FT_THROW(ConfigError,
             "{}: parallel.dp * parallel.cp * parallel.tp = {} * {} * {} does not equal the world "
             "size {} (ranks launched); set parallel.dp: -1 or launch dp * cp * tp ranks",
             origins.Of("parallel"), p.dp, p.cp, p.tp, check.world_size);
  }
  if (check.layout && p.cp > 1 && cfg.data.max_seq_len % (2 * p.cp) != 0) {
    const int64_t up = (cfg.data.max_seq_len / (2 * p.cp) + 1) * 2 * p.cp;
    FT_THROW(ConfigError,
             "{}: data.max_seq_len {} is not divisible by 2 * parallel.cp = {} (context parallelism "
             "cuts every row into 2 * cp equal chunks); set data.max_seq_len to {} (the padding "
             "is masked out of the loss)", origins.Of("data.max_seq_len"), cfg.data.max_seq_len,
             2 * p.cp, up);
  }
  if (check.layout && p.cp > 1 && cfg.data.packing) {
    FT_THROW(ConfigError,
             "{}: data.packing with parallel.cp > 1 is not supported yet: context-parallel "
             "attention treats each row as one sequence, and packed rows hold several documents "
             "that must not attend to each other; set data.packing: false (rows are single "
             "documents) or parallel.cp: 1", origins.Of("data.packing"));
  }
  if (check.need_train && (cfg.train.steps > 0) == (cfg.train.epochs > 0)) {
    FT_THROW(ConfigError, "{}: set exactly one of train.steps ({}) and train.epochs ({}); leave "
             "the other at -1", origins.Of("train.steps"), cfg.train.steps, cfg.train.epochs);
  }
  if (cfg.train.export_which == "best" && cfg.eval.every <= 0) {
    FT_THROW(ConfigError, "{}: train.export: best needs evaluations during training to know the "
             "best step: set eval.every (now {}) to a number of steps, or train.export: last",
             origins.Of("train.export"), cfg.eval.every);
  }
  if (check.layout && cfg.model.path.empty()) {
    const auto& a = cfg.model.arch;
    if (a.num_attention_heads % p.tp || a.num_key_value_heads % p.tp ||
        a.intermediate_size % p.tp || a.vocab_size % p.tp) {
      FT_THROW(ConfigError,
               "{}: parallel.tp = {} must divide model.arch.num_attention_heads ({}), "
               "num_key_value_heads ({}), intermediate_size ({}) and vocab_size ({})",
               origins.Of("parallel.tp"), p.tp, a.num_attention_heads, a.num_key_value_heads,
               a.intermediate_size, a.vocab_size);
    }
  }
  return cfg;
}

}  // namespace

Config LoadConfig(const std::string& yaml_path, const std::vector<std::string>& overrides,
                  const ConfigCheck& check) {
  if (yaml_path.empty()) return ParseConfig(nullptr, "", overrides, check);
  std::ifstream in(yaml_path);
  if (files::IsDirectory(yaml_path)) {
    FT_THROW(ConfigError, "{}: is a directory, not a YAML config file", yaml_path);
  }
  if (!in) {
    FT_THROW(ConfigError, "{}: cannot open config file ({}); check the --config path", yaml_path,
             std::strerror(errno));
  }
  std::stringstream text;
  text << in.rdbuf();
  const std::string yaml = text.str();
  return ParseConfig(&yaml, yaml_path, overrides, check);
}

Config LoadConfigText(const std::string& yaml_text, const std::string& origin,
                      const ConfigCheck& check) {
  return ParseConfig(&yaml_text, origin, {}, check);
}

std::string ConfigToYaml(const Config& cfg) {
  YAML::Emitter out;
  out << YAML::BeginMap;
  Emitter e(out);
  const_cast<Config&>(cfg).VisitFields(e);  // visitors only read here
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

std::string ConfigTable(const Config& cfg) {
  Flattener f, defaults;
  const_cast<Config&>(cfg).VisitFields(f);
  Config def;
  def.VisitFields(defaults);
  std::vector<Flattener::Row> changed;
  for (size_t i = 0; i < f.rows.size(); ++i) {
    if (i >= defaults.rows.size() || f.rows[i].value != defaults.rows[i].value) {
      changed.push_back(f.rows[i]);
    }
  }
  size_t w = 9;
  for (const auto& r : changed) w = std::max(w, r.key.size());
  std::string s = fmt::format("{:<{}} | {}\n{:-<{}}-+-{:-<20}\n", "parameter", w, "value", "", w,
                              "");
  for (const auto& r : changed) s += fmt::format("{:<{}} | {}\n", r.key, w, r.value);
  s += fmt::format("({} of {} keys differ from the defaults; the others are as runtime/config.h "
                   "documents them)\n",
                   changed.size(), f.rows.size());
  return s;
}

std::string RunPath(const Config& cfg, const std::string& p) {
  return files::Join(cfg.run.output_dir, p);  // p itself when absolute
}

}  // namespace ftune::runtime
