// Input records of `ftune prepare`: one JSON object per line (JSON Lines).
//
// Four kinds, told apart by their keys (DESIGN.md "Data formats"):
//   text    {"text": "..."}                                   continued pretraining
//   qa      {"question": "...", "answer": "..."}
//   alpaca  {"instruction": "...", "input": "...", "output": "..."}  ("input" may be empty or absent)
//   chat    {"messages": [{"role": "...", "content": "..."}, ...], "tools"?: [...]}
//           a message needs a string "role"; its "content" is a string, or null / absent when
//           it has "tool_calls"; other keys (tool_calls, name, tool_call_id, reasoning_content,
//           ftune's "train": true|false) are passed to the chat template as they are
// A file's kind is that of its first valid record (or `data.format` when forced); a record
// of another kind in the same file is rejected as "mixed_kinds". Extra keys are allowed and
// are available to inline templates as `{key}` when their value is a string.
//
// Parsing never throws for bad input: it reports a reject reason (a stable name used in the
// prepare summary) and a human-readable detail.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace ftune::data {

enum class RecordKind { kText, kQa, kAlpaca, kChat };

const char* KindName(RecordKind kind);  // "text" | "qa" | "alpaca" | "chat"
// `data.format` -> kind; "auto" -> nullopt. Throws ConfigError for other strings.
std::optional<RecordKind> KindFromFormat(const std::string& format);

struct Message {
  std::string role;
  std::string content;  // "" when the content is not a string (null, a list of parts)
};

struct Record {
  RecordKind kind = RecordKind::kText;
  // Every top-level string field, in the object's key order (nlohmann sorts keys).
  std::vector<std::pair<std::string, std::string>> fields;
  std::vector<Message> messages;  // chat only
  // chat only: {"messages", "tools"?, "documents"?} with their keys in the line's order, as the
  // chat template sees them (data/chat_template.h)
  std::shared_ptr<const nlohmann::ordered_json> chat;

  const std::string* Field(std::string_view name) const;  // nullptr if absent
};

// Reject reasons (stable names shown in the summary).
namespace reject {
inline constexpr const char* kInvalidJson = "invalid_json";
inline constexpr const char* kInvalidUtf8 = "invalid_utf8";
inline constexpr const char* kNotObject = "not_an_object";
inline constexpr const char* kMissingField = "missing_field";
inline constexpr const char* kWrongType = "wrong_type";
inline constexpr const char* kUnknownKind = "unknown_kind";
inline constexpr const char* kMixedKinds = "mixed_kinds";
inline constexpr const char* kTemplate = "template_error";
// The chat template uses what ftune cannot render: prepare stops at the first such record.
inline constexpr const char* kTemplateUnsupported = "template_unsupported";
inline constexpr const char* kOverlong = "overlong_dropped";
inline constexpr const char* kNoTargets = "no_target_tokens";
inline constexpr const char* kEmptyFile = "empty_file";
}  // namespace reject

struct RecordError {
  const char* reason = nullptr;  // one of reject::k*
  std::string detail;
};

// Parses one line. `expected` is the file's kind (forced or detected); nullopt = accept any
// kind. On failure returns false and fills *err.
bool ParseRecord(std::string_view line, std::optional<RecordKind> expected, Record* out,
                 RecordError* err);

// The kind of the first line of `path` that parses as a record of a recognisable kind;
// nullopt when there is none (empty file, or no valid line). Reads only as far as needed.
std::optional<RecordKind> DetectFileKind(const std::string& path);

// True for a line holding only whitespace (skipped silently, not counted as a record).
bool IsBlankLine(std::string_view line);

}  // namespace ftune::data
