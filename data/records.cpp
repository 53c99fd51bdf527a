#include "data/records.h"

#include <fstream>
#include <nlohmann/json.hpp>

#include "data/utf8.h"
#include "parallel/error.h"

namespace ftune::data {

const char* KindName(RecordKind kind) {
  switch (kind) {
    case RecordKind::kText: return "text";
    case RecordKind::kQa: return "qa";
    case RecordKind::kAlpaca: return "alpaca";
    case RecordKind::kChat: return "chat";
  }
  return "?";
}

std::optional<RecordKind> KindFromFormat(const std::string& format) {
  if (format == "auto") return std::nullopt;
  if (format == "text") return RecordKind::kText;
  if (format == "qa") return RecordKind::kQa;
  if (format == "alpaca") return RecordKind::kAlpaca;
  if (format == "chat") return RecordKind::kChat;
  FT_THROW(ConfigError, "data.format: '{}' is not one of auto, text, qa, alpaca, chat", format);
}

const std::string* Record::Field(std::string_view name) const {
  for (const auto& [k, v] : fields) {
    if (k == name) return &v;
  }
  return nullptr;
}

bool IsBlankLine(std::string_view line) {
  for (char c : line) {
    if (c != ' ' && c != '\t' && c != '\r' && c != '\n') return false;
  }
  return true;
}

namespace {

using nlohmann::json;

bool Fail(RecordError* err, const char* reason, std::string detail) {
  err->reason = reason;
  err->detail = std::move(detail);
  return false;
}

const char* TypeName(const json& j) { return j.type_name(); }

std::optional<RecordKind> KindOfObject(const json& j) {
  if (j.contains("messages")) return RecordKind::kChat;
  if (j.contains("instruction") || j.contains("output")) return RecordKind::kAlpaca;
  if (j.contains("question") || j.contains("answer")) return RecordKind::kQa;
  if (j.contains("text")) return RecordKind::kText;
  return std::nullopt;
}

// Checks that `key` holds a string (required or, when !required, absent = "").
bool RequireString(const json& j, const char* key, bool required, RecordError* err) {
  auto it = j.find(key);
  if (it == j.end()) {
    if (!required) return true;
    return Fail(err, reject::kMissingField, fmt::format("missing field \"{}\"", key));
  }
  if (!it->is_string()) {
    return Fail(err, reject::kWrongType,
                fmt::format("field \"{}\" must be a string, not {}", key, TypeName(*it)));
  }
  return true;
}

bool CheckKind(const json& j, RecordKind kind, Record* out, RecordError* err) {
  switch (kind) {
    case RecordKind::kText:
      return RequireString(j, "text", true, err);
    case RecordKind::kQa:
      return RequireString(j, "question", true, err) && RequireString(j, "answer", true, err);
    case RecordKind::kAlpaca:
      return RequireString(j, "instruction", true, err) &&
             RequireString(j, "input", false, err) && RequireString(j, "output", true, err);
    case RecordKind::kChat: {
      auto it = j.find("messages");
      if (it == j.end()) return Fail(err, reject::kMissingField, "missing field \"messages\"");
      if (!it->is_array()) {
        return Fail(err, reject::kWrongType,
                    fmt::format("field \"messages\" must be an array, not {}", TypeName(*it)));
      }
      if (it->empty()) return Fail(err, reject::kMissingField, "\"messages\" is empty");
      size_t i = 0;
      for (const auto& m : *it) {
        if (!m.is_object()) {
          return Fail(err, reject::kWrongType,
                      fmt::format("messages[{}] must be an object, not {}", i, TypeName(m)));
        }
        auto role = m.find("role");
        if (role == m.end()) {
          return Fail(err, reject::kMissingField, fmt::format("messages[{}] has no \"role\"", i));
        }
        if (!role->is_string()) {
          return Fail(err, reject::kWrongType,
                      fmt::format("messages[{}].role must be a string, not {}", i,
                                  TypeName(*role)));
        }
        auto content = m.find("content");
        const bool tool_calls = m.contains("tool_calls");
        if (content == m.end() && !tool_calls) {
          return Fail(err, reject::kMissingField,
                      fmt::format("messages[{}] has no \"content\"", i));
        }
        if (content != m.end() && !content->is_string() && !content->is_array() &&
            !(content->is_null() && tool_calls)) {
          return Fail(err, reject::kWrongType,
                      fmt::format("messages[{}].content must be a string{}, not {}", i,
                                  tool_calls ? " or null" : "", TypeName(*content)));
        }
        if (m.contains("train") && !m["train"].is_boolean()) {
          return Fail(err, reject::kWrongType,
                      fmt::format("messages[{}].train must be true or false, not {}", i,
                                  TypeName(m["train"])));
        }
        out->messages.push_back({role->get<std::string>(),
                                 content != m.end() && content->is_string()
                                     ? content->get<std::string>()
                                     : std::string()});
        ++i;
      }
      return true;
    }
  }
  return false;
}

}  // namespace

bool ParseRecord(std::string_view line, std::optional<RecordKind> expected, Record* out,
                 RecordError* err) {
  *out = Record{};
  if (!IsValidUtf8(line)) return Fail(err, reject::kInvalidUtf8, "line is not valid UTF-8");
  json j = json::parse(line.begin(), line.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    // Re-parse with exceptions only to get the parser's position and message.
    // Any json::exception: a number beyond double's range ("1e380") is out_of_range (406), not
    // a parse_error, and escaped as an uncaught exception (found by fuzz_records).
    try {
      json again = json::parse(line.begin(), line.end());
    } catch (const json::exception& e) {
      return Fail(err, reject::kInvalidJson, e.what());
    }
    return Fail(err, reject::kInvalidJson, "invalid JSON");
  }
  if (!j.is_object()) {
    return Fail(err, reject::kNotObject,
                fmt::format("a record must be a JSON object, not {}", TypeName(j)));
  }
  auto detected = KindOfObject(j);
  if (!detected && expected) detected = expected;  // name the missing field of the forced kind
  if (!detected) {
    return Fail(err, reject::kUnknownKind,
                "no \"text\", \"question\"/\"answer\", \"instruction\"/\"output\" or "
                "\"messages\" field");
  }
  RecordKind kind = *detected;
  if (expected && *expected != kind) {
    // Report a record of another kind as mixed, unless it is simply missing the expected
    // kind's fields in a way the check below names better.
    RecordError probe;
    Record tmp;
    if (CheckKind(j, kind, &tmp, &probe)) {
      return Fail(err, reject::kMixedKinds,
                  fmt::format("a {} record in a file of {} records", KindName(kind),
                              KindName(*expected)));
    }
    kind = *expected;
  }
  out->kind = kind;
  if (!CheckKind(j, kind, out, err)) return false;
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.value().is_string()) out->fields.emplace_back(it.key(), it.value().get<std::string>());
  }
  if (kind == RecordKind::kAlpaca && !out->Field("input")) out->fields.emplace_back("input", "");
  if (kind == RecordKind::kChat) {
    // Again with the keys in the line's order: templates print messages and tools as they are.
    const auto o = nlohmann::ordered_json::parse(line.begin(), line.end());
    auto chat = std::make_shared<nlohmann::ordered_json>(nlohmann::ordered_json::object());
    for (const char* key : {"messages", "tools", "documents"}) {
      if (o.contains(key)) (*chat)[key] = o[key];
    }
    out->chat = std::move(chat);
  }
  return true;
}

std::optional<RecordKind> DetectFileKind(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) FT_THROW(IoError, "cannot open {}", path);
  std::string line;
  while (std::getline(in, line)) {
    if (IsBlankLine(line)) continue;
    Record r;
    RecordError e;
    if (ParseRecord(line, std::nullopt, &r, &e)) return r.kind;
  }
  return std::nullopt;
}

}  // namespace ftune::data
