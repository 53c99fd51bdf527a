#include "data/templates.h"

#include "data/tokenizer.h"
#include "parallel/error.h"

namespace ftune::data {
namespace {

constexpr const char* kAlpacaWithInput =
    "Below is an instruction that describes a task, paired with an input that provides "
    "further context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n";
constexpr const char* kAlpacaNoInput =
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n";

const char* ResponseField(RecordKind kind) {
  switch (kind) {
    case RecordKind::kText: return "text";
    case RecordKind::kQa: return "answer";
    case RecordKind::kAlpaca: return "output";
    case RecordKind::kChat: return "";
  }
  return "";
}

// Replaces {field} by the record's string fields; "{{" and "}}" are literal braces.
bool Substitute(const std::string& tmpl, const Record& r, std::string* out, std::string* error) {
  out->clear();
  for (size_t i = 0; i < tmpl.size(); ++i) {
    const char c = tmpl[i];
    if ((c == '{' || c == '}') && i + 1 < tmpl.size() && tmpl[i + 1] == c) {
      *out += c;
      ++i;
      continue;
    }
    if (c != '{') {
      *out += c;
      continue;
    }
    const size_t end = tmpl.find('}', i);
    if (end == std::string::npos) {
      *error = "template has an unclosed '{'";
      return false;
    }
    const std::string name = tmpl.substr(i + 1, end - i - 1);
    const std::string* v = r.Field(name);
    if (!v) {
      *error = fmt::format("template placeholder {{{}}} names no string field of the record",
                           name);
      return false;
    }
    *out += *v;
    i = end;
  }
  return true;
}

}  // namespace

Template Template::Parse(const std::string& spec) {
  Template t;
  t.spec_ = spec;
  if (spec == "auto") {
    t.named_ = Named::kAuto;
  } else if (spec == "none") {
    t.named_ = Named::kNone;
  } else if (spec == "qa") {
    t.named_ = Named::kQa;
  } else if (spec == "alpaca") {
    t.named_ = Named::kAlpaca;
  } else if (spec == "chat") {
    t.named_ = Named::kChat;
  } else if (spec == "llama3-chat") {
    FT_THROW(ConfigError,
             "data.template: 'llama3-chat' is retired: chat records are rendered with the "
             "model's own chat template (data.template: chat or auto), from the tokenizer's "
             "tokenizer_config.json / chat_template.jinja, or from a .jinja file named by "
             "data.chat_template");
  } else if (spec.find('{') != std::string::npos) {
    t.named_ = Named::kInline;
  } else {
    FT_THROW(ConfigError,
             "data.template: '{}' is not auto, none, qa, alpaca, chat or an inline "
             "template with {{field}} placeholders",
             spec);
  }
  return t;
}

Template::Named Template::Resolve(RecordKind kind) const {
  if (named_ != Named::kAuto) return named_;
  switch (kind) {
    case RecordKind::kText: return Named::kNone;
    case RecordKind::kQa: return Named::kQa;
    case RecordKind::kAlpaca: return Named::kAlpaca;
    case RecordKind::kChat: return Named::kChat;
  }
  return Named::kNone;
}

std::string Template::ResolvedName(RecordKind kind) const {
  switch (Resolve(kind)) {
    case Named::kNone: return "none";
    case Named::kQa: return "qa";
    case Named::kAlpaca: return "alpaca";
    case Named::kChat: return "chat";
    default: return spec_;
  }
}

std::string Template::CheckKind(RecordKind kind) const {
  const Named n = Resolve(kind);
  const bool ok = (n == Named::kNone && kind == RecordKind::kText) ||
                  (n == Named::kQa && kind == RecordKind::kQa) ||
                  (n == Named::kAlpaca && kind == RecordKind::kAlpaca) ||
                  (n == Named::kChat && kind == RecordKind::kChat) ||
                  (n == Named::kInline && kind != RecordKind::kChat);
  if (ok) return "";
  if (n == Named::kInline) return "inline templates do not apply to chat (messages) records";
  return fmt::format("template '{}' does not apply to {} records (use template: auto)", spec_,
                     KindName(kind));
}

bool Template::AppendsEos(RecordKind kind) const { return Resolve(kind) != Named::kChat; }

bool Template::Render(const Record& r, std::vector<Segment>* out, std::string* error) const {
  out->clear();
  const std::string msg = CheckKind(r.kind);
  if (!msg.empty()) {
    *error = msg;
    return false;
  }
  auto field = [&](const char* name) -> const std::string& {
    static const std::string kEmpty;
    const std::string* v = r.Field(name);
    return v ? *v : kEmpty;
  };
  switch (Resolve(r.kind)) {
    case Named::kNone:
      out->push_back({field("text"), true});
      return true;
    case Named::kQa:
      out->push_back({"### Question:\n" + field("question") + "\n\n### Answer:", false});
      out->push_back({" " + field("answer"), true});
      return true;
    case Named::kAlpaca: {
      std::string prompt;
      if (!Substitute(field("input").empty() ? kAlpacaNoInput : kAlpacaWithInput, r, &prompt,
                      error)) {
        return false;
      }
      out->push_back({std::move(prompt), false});
      out->push_back({field("output"), true});
      return true;
    }
    case Named::kChat:
      *error = "chat records are rendered by RenderChat";
      return false;
    case Named::kInline: {
      const std::string placeholder = fmt::format("{{{}}}", ResponseField(r.kind));
      const size_t at = spec_.find(placeholder);
      std::string prompt, response;
      if (at == std::string::npos) {
        if (!Substitute(spec_, r, &prompt, error)) return false;
        response = field(ResponseField(r.kind));
      } else if (!Substitute(spec_.substr(0, at), r, &prompt, error) ||
                 !Substitute(spec_.substr(at), r, &response, error)) {
        return false;
      }
      if (!prompt.empty()) out->push_back({std::move(prompt), false});
      out->push_back({std::move(response), true});
      return true;
    }
    case Named::kAuto:
      break;
  }
  *error = "unresolved template";
  return false;
}

bool Template::RenderChat(const Record& r, bool train_on_prompt, ChatRender* out,
                          std::string* error, bool* unsupported) const {
  if (unsupported) *unsupported = false;
  if (Resolve(r.kind) != Named::kChat || !r.chat) {
    *error = CheckKind(r.kind).empty() ? "not a chat record" : CheckKind(r.kind);
    return false;
  }
  if (!chat_) {
    *error = "no chat template was set up for chat records";
    return false;
  }
  try {
    *out = chat_->RenderForTraining(*r.chat, train_on_prompt);
  } catch (const jinja::TemplateRaised& e) {
    *error = "the chat template rejected the conversation: " + e.message();
    return false;
  } catch (const jinja::TemplateUnsupported& e) {
    *error = e.what();
    if (unsupported) *unsupported = true;
    return false;
  } catch (const jinja::TemplateError& e) {
    *error = e.what();
    return false;
  }
  return true;
}

void TokenizeExample(const Tokenizer& tok, const std::vector<Segment>& segments,
                     const TokenizeOptions& opts, Example* out) {
  out->clear();
  if (tok.bos_id() >= 0) {
    out->tokens.push_back(tok.bos_id());
    out->mask.push_back(0);
  }
  const bool spm = tok.kind() == "llama2-spm-bpe";
  const int32_t eos = tok.eos_ids().empty() ? -1 : tok.eos_ids().front();
  for (size_t i = 0; i < segments.size(); ++i) {
    const Segment& s = segments[i];
    std::string_view text = s.text;
    if (spm && i > 0 && !text.empty() && text.front() == ' ') text.remove_prefix(1);
    if (!text.empty()) tok.EncodeInto(text, false, &out->tokens);
    if (s.response && opts.append_eos && eos >= 0) out->tokens.push_back(eos);
    const uint8_t m = (s.response || opts.train_on_prompt) ? 1 : 0;
    out->mask.resize(out->tokens.size(), m);
  }
}

std::string PreviewExample(const Tokenizer& tok, const Example& ex, bool color) {
  std::string s;
  size_t i = 0;
  while (i < ex.tokens.size()) {
    size_t j = i;
    while (j < ex.tokens.size() && ex.mask[j] == ex.mask[i]) ++j;
    std::vector<int32_t> run(ex.tokens.begin() + i, ex.tokens.begin() + j);
    const std::string text = tok.Decode(run, /*skip_special_tokens=*/false);
    if (color) {
      s += (ex.mask[i] ? "\x1b[32m" : "\x1b[2m") + text + "\x1b[0m";
    } else if (ex.mask[i]) {
      s += text;
    } else {
      s += "[PROMPT]" + text + "[/PROMPT]";
    }
    i = j;
  }
  return s;
}

}  // namespace ftune::data
