#include "data/chat_template.h"

#include <fstream>
#include <sstream>

#include "data/tokenizer.h"
#include "parallel/error.h"
#include "parallel/files.h"

namespace ftune::data {
namespace {

using jinja::Json;

std::string ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) FT_THROW(IoError, "cannot open {}", path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

Json ReadJsonFile(const std::string& path) {
  Json j = Json::parse(ReadText(path), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) FT_THROW(DataError, "{}: not a JSON object", path);
  return j;
}

std::string TokenizerDir(const std::string& tokenizer_path) {
  return files::IsDirectory(tokenizer_path) ? tokenizer_path : files::Parent(tokenizer_path);
}

// A special token's text: a string, or an AddedToken object's "content".
std::optional<std::string> TokenText(const Json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) {
    return v["content"].get<std::string>();
  }
  return std::nullopt;
}

// The special tokens transformers passes to the template (its special_tokens_map).
void AddSpecialTokens(const Json& cfg, Json* vars) {
  for (const char* key : {"bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                          "cls_token", "mask_token"}) {
    if (!cfg.contains(key)) continue;
    if (auto t = TokenText(cfg[key])) (*vars)[key] = *t;
  }
  if (cfg.contains("additional_special_tokens") && cfg["additional_special_tokens"].is_array()) {
    Json list = Json::array();
    for (const auto& v : cfg["additional_special_tokens"]) {
      if (auto t = TokenText(v)) list.push_back(*t);
    }
    if (!list.empty()) (*vars)["additional_special_tokens"] = list;
  }
}

// Named templates of tokenizer_config.json ({"name": ..., "template": ...} list), by name.
std::vector<std::pair<std::string, std::string>> NamedTemplates(const Json& cfg,
                                                                 const std::string& file) {
  std::vector<std::pair<std::string, std::string>> out;
  if (!cfg.contains("chat_template")) return out;
  const Json& t = cfg["chat_template"];
  if (t.is_string()) {
    out.emplace_back("default", t.get<std::string>());
  } else if (t.is_array()) {
    for (const auto& e : t) {
      if (!e.is_object() || !e.contains("name") || !e.contains("template") ||
          !e["name"].is_string() || !e["template"].is_string()) {
        FT_THROW(DataError, "{}: chat_template is a list whose entries must be "
                 "{{\"name\": ..., \"template\": ...}}", file);
      }
      out.emplace_back(e["name"].get<std::string>(), e["template"].get<std::string>());
    }
  } else if (!t.is_null()) {
    FT_THROW(DataError, "{}: chat_template must be a string or a list of named templates", file);
  }
  return out;
}

Json ParseKwarg(const std::string& kv) {
  const size_t eq = kv.find('=');
  if (eq == std::string::npos || eq == 0) {
    FT_THROW(ConfigError, "data.chat_template_kwargs: '{}' is not name=value (e.g. "
             "enable_thinking=false)", kv);
  }
  const std::string value = kv.substr(eq + 1);
  Json v = Json::parse(value, nullptr, /*allow_exceptions=*/false);
  if (v.is_discarded()) v = value;  // a plain string
  return v;
}

// Markup that must be one token of the tokenizer: "<|...|>", "<｜...｜>", and "<name>" /
// "</name>" whose name has an underscore ("<start_of_turn>", "<tool_call>").
std::vector<std::string> MarkupTokens(const std::string& text) {
  std::vector<std::string> out;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '<' || (i > 0 && text[i - 1] == '<')) continue;
    const size_t close = text.find('>', i + 1);
    if (close == std::string::npos) break;
    const std::string inner = text.substr(i + 1, close - i - 1);
    if (inner.empty() || inner.find_first_of(" \t\n<") != std::string::npos) continue;
    if (close + 1 < text.size() && text[close + 1] == '>') continue;
    const bool pipes = inner.size() >= 2 && inner.front() == '|' && inner.back() == '|';
    const std::string fw = "\xef\xbd\x9c";  // U+FF5C FULLWIDTH VERTICAL LINE
    const bool fw_pipes = inner.size() >= 6 && inner.compare(0, 3, fw) == 0 &&
                          inner.compare(inner.size() - 3, 3, fw) == 0;
    std::string name = inner[0] == '/' ? inner.substr(1) : inner;
    bool ident = !name.empty() && name.find('_') != std::string::npos;
    for (char c : name) {
      ident &= std::isalnum(static_cast<unsigned char>(c)) || c == '_';
    }
    if (pipes || fw_pipes || ident) out.push_back(text.substr(i, close - i + 1));
  }
  return out;
}

}  // namespace

struct ChatTemplate::Impl {
  std::string source, origin;
  std::optional<jinja::Template> tmpl;
  // tokenizer_config.json's "tool_use" template, used as transformers does when tools are given
  std::optional<jinja::Template> tool_tmpl;
  Json variables = Json::object();
  std::string pinned_now;

  jinja::RenderResult Render(const Json& messages, const Json& tools, const Json& documents,
                             bool add_generation_prompt) const {
    Json ctx = variables;
    ctx["messages"] = messages;
    ctx["tools"] = tools;
    ctx["documents"] = documents;
    ctx["add_generation_prompt"] = add_generation_prompt;
    jinja::RenderOptions opt;
    if (!pinned_now.empty()) {
      const std::string now = pinned_now;
      opt.strftime_now = [now](const std::string&) { return now; };
    }
    return (tool_tmpl && !tools.is_null() ? *tool_tmpl : *tmpl).Render(ctx, opt);
  }
};

bool ChatTemplate::TokenizerHasTemplate(const std::string& tokenizer_path) {
  const std::string dir = TokenizerDir(tokenizer_path);
  if (files::IsFile(files::Join(dir, "chat_template.jinja"))) return true;
  const std::string cfg_path = files::Join(dir, "tokenizer_config.json");
  if (!files::IsFile(cfg_path)) return false;
  return !NamedTemplates(ReadJsonFile(cfg_path), cfg_path).empty();
}

ChatTemplate ChatTemplate::Resolve(const std::string& tokenizer_path, const std::string& choice,
                                   const std::vector<std::string>& kwargs) {
  auto impl = std::make_shared<Impl>();
  const std::string dir = TokenizerDir(tokenizer_path);
  const std::string cfg_path = files::Join(dir, "tokenizer_config.json");
  const std::string jinja_path = files::Join(dir, "chat_template.jinja");
  Json cfg = Json::object();
  if (files::IsFile(cfg_path)) cfg = ReadJsonFile(cfg_path);
  const std::string map_path = files::Join(dir, "special_tokens_map.json");
  AddSpecialTokens(cfg, &impl->variables);
  if (files::IsFile(map_path)) AddSpecialTokens(ReadJsonFile(map_path), &impl->variables);
  const auto named = NamedTemplates(cfg, cfg_path);

  if (!choice.empty()) {
    if (files::IsFile(choice)) {
      impl->source = ReadText(choice);
      impl->origin = choice;
    } else {
      for (const auto& [name, text] : named) {
        if (name == choice) {
          impl->source = text;
          impl->origin = fmt::format("{} (chat_template '{}')", cfg_path, name);
        }
      }
      if (impl->origin.empty()) {
        std::string names;
        for (const auto& [name, text] : named) names += (names.empty() ? "" : ", ") + name;
        FT_THROW(DataError, "data.chat_template: '{}' is neither a file nor a named template of "
                 "{} ({}): give the path of a .jinja file or one of the names", choice, cfg_path,
                 names.empty() ? "it has none" : "it has: " + names);
      }
    }
  } else if (files::IsFile(jinja_path)) {
    impl->source = ReadText(jinja_path);
    impl->origin = jinja_path;
  } else {
    for (const auto& [name, text] : named) {
      if (name == "default") {
        impl->source = text;
        impl->origin = cfg_path;
      }
    }
    for (const auto& [name, text] : named) {
      if (name == "tool_use" && !impl->origin.empty()) {
        impl->tool_tmpl = jinja::Template::Parse(text, cfg_path + " (chat_template 'tool_use')");
      }
    }
    if (impl->origin.empty() && !named.empty()) {
      FT_THROW(DataError, "{}: chat_template lists named templates but none is named 'default': "
               "set data.chat_template to one of them", cfg_path);
    }
    if (impl->origin.empty()) {
      FT_THROW(DataError, "no chat template for the tokenizer in {} (neither chat_template.jinja "
               "nor a chat_template in tokenizer_config.json): use the tokenizer of a chat/instruct "
               "model, or set data.chat_template (--chat-template) to a .jinja file", dir);
    }
  }
  for (const auto& kv : kwargs) {
    const size_t eq = kv.find('=');
    Json v = ParseKwarg(kv);
    impl->variables[kv.substr(0, eq)] = std::move(v);
  }
  impl->tmpl = jinja::Template::Parse(impl->source, impl->origin);
  return ChatTemplate(std::move(impl));
}

std::string ChatTemplate::Render(const Json& messages, const Json& tools, const Json& documents,
                                 bool add_generation_prompt) const {
  return impl_->Render(messages, tools, documents, add_generation_prompt).text;
}

ChatRender ChatTemplate::RenderForTraining(const Json& record, bool train_on_prompt) const {
  const Json& in_messages = record.at("messages");
  Json messages = Json::array();
  std::vector<std::optional<bool>> flags;
  for (const auto& m : in_messages) {
    Json copy = m;
    std::optional<bool> flag;
    if (copy.is_object() && copy.contains("train")) {
      if (!copy["train"].is_boolean()) {
        throw jinja::TemplateError(fmt::format("messages[{}].train must be true or false",
                                               flags.size()));
      }
      flag = copy["train"].get<bool>();
      copy.erase("train");
    }
    flags.push_back(flag);
    messages.push_back(std::move(copy));
  }
  const Json tools = record.contains("tools") ? record["tools"] : Json(nullptr);
  const Json documents = record.contains("documents") ? record["documents"] : Json(nullptr);
  const jinja::RenderResult full = impl_->Render(messages, tools, documents, false);
  ChatRender out;
  out.text = full.text;

  bool any_flag = false;
  for (const auto& f : flags) any_flag |= f.has_value();
  if (impl_->tmpl->has_generation_blocks() && !any_flag && !train_on_prompt) {
    out.trained = full.generation;
    return out;
  }

  // Each message's byte range, from renders of the conversation's prefixes.
  auto prefix_end = [&](size_t n, bool gen_prompt, size_t at) -> std::optional<size_t> {
    if (n == 0 && !gen_prompt) return 0;
    Json prefix(messages.begin(), messages.begin() + static_cast<std::ptrdiff_t>(n));
    std::string text;
    try {
      text = impl_->Render(prefix, tools, documents, gen_prompt).text;
    } catch (const jinja::TemplateError& e) {
      throw jinja::TemplateError(fmt::format(
          "rendering the conversation up to message {} failed (ftune finds each turn's tokens "
          "by rendering the conversation's beginnings): {}", at, e.what()));
    }
    if (full.text.compare(0, text.size(), text) != 0) return std::nullopt;
    return text.size();
  };
  const size_t n = messages.size();
  std::vector<size_t> ends(n + 1, 0);
  for (size_t i = 1; i <= n; ++i) {
    auto e = prefix_end(i, false, i - 1);
    if (!e) {
      throw jinja::TemplateError(fmt::format(
          "the template renders messages[{}] differently once later messages follow, so the "
          "tokens of each turn cannot be told apart; use a template with {{% generation %}} "
          "blocks (data.chat_template) or data.train_on_prompt", i - 1));
    }
    ends[i] = std::max(*e, ends[i - 1]);
  }
  std::vector<std::pair<size_t, size_t>> ranges(n);
  for (size_t i = 0; i < n; ++i) {
    size_t begin = ends[i];
    const Json& m = messages[i];
    const bool assistant = m.is_object() && m.contains("role") && m["role"] == "assistant";
    if (assistant) {
      // Exclude the assistant header the generation prompt writes.
      if (auto g = prefix_end(i, true, i); g && *g >= ends[i] && *g <= ends[i + 1]) begin = *g;
    }
    ranges[i] = {begin, ends[i + 1]};
  }
  if (impl_->tmpl->has_generation_blocks() && !train_on_prompt) {
    // Generation blocks mark the spans; per-message flags drop or add whole messages.
    for (const auto& g : full.generation) {
      size_t owner = n;
      for (size_t i = 0; i < n; ++i) {
        if (g.first >= ends[i] && g.second <= ends[i + 1]) owner = i;
      }
      if (owner < n && flags[owner].has_value() && !*flags[owner]) continue;
      out.trained.push_back(g);
    }
    for (size_t i = 0; i < n; ++i) {
      const Json& m = messages[i];
      const bool assistant = m.is_object() && m.contains("role") && m["role"] == "assistant";
      if (flags[i].value_or(false) && !assistant) out.trained.push_back(ranges[i]);
    }
    std::sort(out.trained.begin(), out.trained.end());
    return out;
  }
  if (train_on_prompt) {
    // Everything, less the messages marked "train": false.
    size_t at = 0;
    for (size_t i = 0; i < n; ++i) {
      if (flags[i].has_value() && !*flags[i]) {
        if (ends[i] > at) out.trained.emplace_back(at, ends[i]);
        at = ends[i + 1];
      }
    }
    if (out.text.size() > at) out.trained.emplace_back(at, out.text.size());
    return out;
  }
  for (size_t i = 0; i < n; ++i) {
    const Json& m = messages[i];
    const bool assistant = m.is_object() && m.contains("role") && m["role"] == "assistant";
    if (flags[i].value_or(assistant) && ranges[i].second > ranges[i].first) {
      out.trained.push_back(ranges[i]);
    }
  }
  return out;
}

void ChatTemplate::CheckTokenizer(const Tokenizer& tok) const {
  std::vector<std::string> missing;
  for (const auto& lit : impl_->tmpl->Literals()) {
    for (const auto& m : MarkupTokens(lit)) {
      if (std::find(missing.begin(), missing.end(), m) != missing.end()) continue;
      if (tok.Encode(m, false).size() != 1) missing.push_back(m);
    }
  }
  for (const auto& [key, v] : impl_->variables.items()) {
    if (!v.is_string() || key.size() < 6 || key.compare(key.size() - 6, 6, "_token") != 0) continue;
    const std::string t = v.get<std::string>();
    if (!t.empty() && tok.TokenToId(t) < 0 &&
        std::find(missing.begin(), missing.end(), t) == missing.end()) {
      missing.push_back(t);
    }
  }
  if (missing.empty()) return;
  std::string list;
  for (const auto& m : missing) list += (list.empty() ? "" : ", ") + m;
  FT_THROW(DataError, "the chat template ({}) writes {} but the tokenizer {} has no single token "
           "for {}: training would learn the markup as plain text. Use the tokenizer the "
           "template was written for, or a template for this tokenizer (data.chat_template)",
           impl_->origin, list, tok.path(), missing.size() == 1 ? "it" : "them");
}

const std::string& ChatTemplate::source() const { return impl_->source; }
const std::string& ChatTemplate::origin() const { return impl_->origin; }
const Json& ChatTemplate::variables() const { return impl_->variables; }
void ChatTemplate::PinTime(std::string formatted_now) { impl_->pinned_now = std::move(formatted_now); }

namespace {

// How many bytes of `text` at `pos` the token with bytes `piece` covers; npos when it does not
// fit. Exactly its bytes where they are there (byte-level BPE); else as a SentencePiece-style
// normalizer made them: a space or "▁" of the piece stands for a space or a "▁" of the text (the
// normalizer replaced spaces by "▁", and an added token matched on normalized text, such as
// Gemma's "▁▁", keeps its "▁"), and a leading one may be the dummy prefix, in no text at all.
size_t MatchTokenText(const std::string& text, size_t pos, const std::string& piece) {
  if (text.compare(pos, piece.size(), piece) == 0) return piece.size();
  static const std::string kMeta = "\xe2\x96\x81";  // U+2581, SentencePiece's space
  auto walk = [&](size_t i) -> size_t {
    size_t j = pos;
    while (i < piece.size()) {
      const bool space = piece[i] == ' ' || piece.compare(i, 3, kMeta) == 0;
      if (space) {
        if (j < text.size() && text[j] == ' ') {
          j += 1;
        } else if (text.compare(j, 3, kMeta) == 0) {
          j += 3;
        } else {
          return std::string::npos;
        }
        i += piece[i] == ' ' ? 1 : 3;
      } else {
        if (j >= text.size() || text[j] != piece[i]) return std::string::npos;
        ++i, ++j;
      }
    }
    return j - pos;
  };
  size_t n = walk(0);
  if (n != std::string::npos) return n;
  if (!piece.empty() && piece[0] == ' ') return walk(1);  // the dummy prefix
  if (piece.compare(0, 3, kMeta) == 0) return walk(3);
  return std::string::npos;
}

}  // namespace

void TokenizeChat(const Tokenizer& tok, const ChatRender& render, std::vector<int32_t>* tokens,
                  std::vector<uint8_t>* mask) {
  tokens->clear();
  mask->clear();
  tok.EncodeInto(render.text, /*add_special_tokens=*/false, tokens);
  mask->reserve(tokens->size());
  const std::string& text = render.text;
  size_t pos = 0, span = 0;
  for (int32_t id : *tokens) {
    const std::string bytes = tok.TokenBytes(id);
    size_t len = MatchTokenText(text, pos, bytes);
    if (len == std::string::npos) {
      FT_THROW(DataError, "cannot map token {} ('{}') back to the rendered chat text at byte {}: "
               "the tokenizer changes the text (normalization) in a way ftune cannot align the "
               "loss mask with", id, tok.IdToPiece(id), pos);
    }
    const size_t begin = pos, end = pos + len;
    while (span < render.trained.size() && render.trained[span].second <= begin) ++span;
    bool trained = false;
    if (span < render.trained.size()) {
      const auto& s = render.trained[span];
      trained = len > 0 ? (begin < s.second && end > s.first)
                        : (begin >= s.first && begin < s.second);
    }
    mask->push_back(trained ? 1 : 0);
    pos = end;
  }
  if (pos != text.size()) {
    FT_THROW(DataError, "the chat text's tokens cover {} of its {} bytes: cannot align the loss "
             "mask", pos, text.size());
  }
}

}  // namespace ftune::data
