// A model's chat template: found where transformers looks for it, rendered as
// apply_chat_template renders it (data/jinja.h), with the spans training learns from.
//
// Where the template comes from (ChatTemplate::Resolve):
//   1. `data.chat_template` / `--chat-template` when set: a .jinja file, or the name of one of
//      the tokenizer's named templates (tokenizer_config.json "chat_template": [{name, template}]);
//   2. else `chat_template.jinja` beside the tokenizer (transformers 5 writes it there);
//   3. else tokenizer_config.json's "chat_template" (a string, or the list's "default"; its
//      "tool_use" entry, when it has one, renders conversations that come with tools).
// The template sees what transformers passes: messages, tools, documents, add_generation_prompt,
// the special tokens of tokenizer_config.json (bos_token, eos_token, unk_token, pad_token, ...,
// additional_special_tokens) and any extra variables (`data.chat_template_kwargs`, e.g.
// enable_thinking=false, date_string=26 Jul 2024).
//
// Training spans (RenderForTraining): the byte ranges of the rendered text whose tokens are
// targets. By default the assistant turns: the template's {% generation %} blocks where it has
// them, else each assistant message's part of the text, found as TRL does by rendering the
// conversation up to the turn before it (with add_generation_prompt) and up to and including it,
// and taking the difference; so a turn's end-of-turn token (<|eot_id|>, <|im_end|>) is a target
// and the model learns to stop. A message's "train": true|false overrides its role's default;
// train_on_prompt trains every token. A template that renders earlier turns differently once
// later ones follow (so that the prefixes disagree) is refused with the turn it happened at.
//
// Thread safety: immutable after construction; every const method may run concurrently.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "data/jinja.h"

namespace ftune::data {

class Tokenizer;

// A rendered conversation and the byte ranges of it that are trained on, in order.
struct ChatRender {
  std::string text;
  std::vector<std::pair<size_t, size_t>> trained;
};

class ChatTemplate {
 public:
  // The template for `tokenizer_path` (a tokenizer.json file or its directory) as described
  // above. `choice` is data.chat_template ("" = the tokenizer's own). `kwargs` are
  // "name=value" strings (value parsed as JSON when it is JSON, else a string). Throws
  // DataError naming the files looked at and what to set when there is no template, and
  // ConfigError for a malformed kwarg.
  static ChatTemplate Resolve(const std::string& tokenizer_path, const std::string& choice,
                              const std::vector<std::string>& kwargs = {});
  // Whether the tokenizer at `tokenizer_path` ships a chat template (steps 2-3 above).
  static bool TokenizerHasTemplate(const std::string& tokenizer_path);

  // apply_chat_template(messages, tools=tools, documents=documents,
  //                     add_generation_prompt=..., **kwargs), tokenize=False.
  // `messages` is a JSON array; tools/documents may be null. Throws jinja::TemplateError.
  std::string Render(const jinja::Json& messages, const jinja::Json& tools,
                     const jinja::Json& documents, bool add_generation_prompt) const;

  // A training record ({"messages": [...], "tools"?: [...], "documents"?: [...]}) rendered
  // with the spans to train on (see the header comment). ftune's own per-message key "train"
  // is removed before the template sees the messages. Throws jinja::TemplateError (the
  // template rejected the conversation, or the prefixes disagree).
  ChatRender RenderForTraining(const jinja::Json& record, bool train_on_prompt) const;

  // Throws DataError when the template writes special-token markup (e.g. "<|eot_id|>",
  // "<start_of_turn>") that `tok` has no single token for: the markup would be trained as
  // plain text.
  void CheckTokenizer(const Tokenizer& tok) const;

  const std::string& source() const;  // the template text
  const std::string& origin() const;  // where it came from, e.g. ".../tokenizer_config.json"
  const jinja::Json& variables() const;  // special tokens + kwargs passed to every render

  // For tests: strftime_now returns this instead of the local time.
  void PinTime(std::string formatted_now);

 private:
  struct Impl;
  explicit ChatTemplate(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<Impl> impl_;
};

// The rendered text tokenized as apply_chat_template(tokenize=True) does (no BOS/EOS added: the
// template writes them), with mask 1 on every token that overlaps a trained span.
void TokenizeChat(const Tokenizer& tok, const ChatRender& render, std::vector<int32_t>* tokens,
                  std::vector<uint8_t>* mask);

}  // namespace ftune::data
