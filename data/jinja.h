// A Jinja2 renderer for Hugging Face chat templates, self-contained (no Python on a GPU node).
//
// It implements the subset of Jinja2 that chat templates use, with the semantics transformers
// gives them (`apply_chat_template`): an ImmutableSandboxedEnvironment with trim_blocks and
// lstrip_blocks, the loopcontrols extension (break/continue), transformers' `{% generation %}`
// block, its `tojson` (json.dumps with ensure_ascii=False, no HTML escaping) and the globals
// `raise_exception` and `strftime_now`. Values follow Python: str() of True/None/1.0/lists and
// dicts (repr), code-point indexing and slicing of strings, str.strip()'s Unicode whitespace,
// floor division and modulo, and/or returning an operand, undefined names printing as "".
//
// What it cannot reproduce exactly it refuses: an unknown filter, test, method or statement,
// include/extends/import, case mapping of non-ASCII text, integers beyond int64, a comparison
// Python would refuse. A template is never rendered to a different string than Jinja2 gives:
// it either renders byte-identically (tests/e2e/chat_template_parity_test.sh, unit jinja_test)
// or throws TemplateError.
//
// Errors name the template, line and column: "chat_template:12:5: unknown filter 'foo'".
// raise_exception(msg) throws TemplateRaised (a TemplateError) carrying the template's message.
//
// Thread safety: a parsed Template is immutable; Render may run concurrently from any threads.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "parallel/error.h"

namespace ftune::data::jinja {

using Json = nlohmann::ordered_json;

// A template that cannot be parsed or rendered; what() names the template, line and column.
class TemplateError : public DataError {
 public:
  using DataError::DataError;
};

// The template uses something ftune does not implement (a filter, test, statement, or a value
// Python would print in a way ftune cannot reproduce): no record can rely on it.
class TemplateUnsupported : public TemplateError {
 public:
  using TemplateError::TemplateError;
};

// The template itself rejected its input: raise_exception("...") was called.
class TemplateRaised : public TemplateError {
 public:
  TemplateRaised(const std::string& what, std::string message)
      : TemplateError(what), message_(std::move(message)) {}
  const std::string& message() const { return message_; }  // the template's own words

 private:
  std::string message_;
};

struct RenderOptions {
  // strftime_now(format): the local time formatted with strftime. Tests pin it here.
  std::function<std::string(const std::string& format)> strftime_now;
};

struct RenderResult {
  std::string text;
  // Byte ranges [first, second) of `text` written inside {% generation %} blocks, in order.
  std::vector<std::pair<size_t, size_t>> generation;
};

class Template {
 public:
  // Parses `source` (the template text; `name` is used in error messages). Throws TemplateError.
  static Template Parse(std::string_view source, std::string name = "chat_template");

  // Renders with the JSON object `context` as the template's variables (plus the globals
  // above). Throws TemplateError (TemplateRaised for raise_exception).
  RenderResult Render(const Json& context, const RenderOptions& options = {}) const;

  // Whether the template has {% generation %} blocks (assistant spans marked by the template).
  bool has_generation_blocks() const;
  // Every literal the template can output: its text between tags and its string constants.
  std::vector<std::string> Literals() const;
  const std::string& name() const;

 private:
  struct Impl;
  explicit Template(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;
};

}  // namespace ftune::data::jinja
