// Prompt templates and the tokenization of one example.
//
// A template renders a Record into Segments: prompt text (not trained on by default) and
// response text (trained on). Named templates:
//   none         text records: the whole text is the response
//   qa           "### Question:\n{question}\n\n### Answer:" + response " {answer}"
//   alpaca       the two classic Alpaca prompts (with a "### Input:" block when `input` is
//                non-empty, without it otherwise) + response "{output}"
//   chat         the model's own chat template (data/chat_template.h: the tokenizer's, or
//                data.chat_template), rendered as transformers' apply_chat_template does; the
//                assistant turns (with their end-of-turn token) are the responses. Set with
//                UseChatTemplate before rendering chat records.
//   auto         by record kind: text -> none, qa -> qa, alpaca -> alpaca, chat -> chat
// (`llama3-chat`, a hard-coded Llama-3 template of earlier versions, is retired: it is refused
// with the reason, since the model's own template is what it is served with.)
// Anything else containing "{" is an inline template: `{field}` is replaced by the record's
// string field (`{{`/`}}` are literal braces). The response is the kind's response field
// (qa: answer, alpaca: output, text: text): if the template contains that placeholder, the
// text from it on is the response; otherwise the rendered template is the prompt and the
// field's value is appended as the response. Inline templates do not apply to chat records.
//
// Chat records are rendered whole and tokenized in one piece, exactly as
// apply_chat_template(tokenize=True) does (no BOS added: the template writes it), and the loss
// mask marks the tokens of the trained spans (TokenizeChat in data/chat_template.h).
// Tokenization of the other kinds (TokenizeExample): BOS first, then each segment encoded ON ITS OWN
// (Encode(text, add_special_tokens=false)) and concatenated, with EOS appended after each
// response (not for llama3-chat, whose <|eot_id|> ends each assistant turn). Encoding the
// segments separately makes the prompt/response boundary exact and identical at training and
// generation time; the cost is that the token at the boundary may differ from what encoding
// the whole string would give. SentencePiece tokenizers (kind "llama2-spm-bpe") prepend "▁"
// to every encoded text, so one leading space of a segment after the first is dropped before
// encoding (" Paris" -> "▁Paris", as in the joint encoding) instead of becoming "▁▁".
// loss mask: 1 on response tokens (incl. their EOS), 0 on BOS and prompt tokens; all 1 but
// BOS with train_on_prompt.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/chat_template.h"
#include "data/records.h"

namespace ftune::data {

class Tokenizer;

struct Segment {
  std::string text;
  bool response = false;
};

class Template {
 public:
  // `spec`: a name above or an inline template. Throws ConfigError for an unknown name.
  static Template Parse(const std::string& spec);

  // The name stored in shard attributes ("qa", ... or the inline text).
  const std::string& spec() const { return spec_; }
  // The concrete template used for `kind` ("auto" resolved), e.g. "qa".
  std::string ResolvedName(RecordKind kind) const;
  // Empty when the template can render records of `kind`, else why not.
  std::string CheckKind(RecordKind kind) const;
  // Renders `r`; false (with *error) when an inline placeholder names a missing field.
  bool Render(const Record& r, std::vector<Segment>* out, std::string* error) const;
  // Whether an EOS id follows each response for records of `kind`.
  bool AppendsEos(RecordKind kind) const;

  // The chat template that renders chat records.
  void UseChatTemplate(ChatTemplate chat) { chat_ = std::make_shared<ChatTemplate>(std::move(chat)); }
  const ChatTemplate* chat_template() const { return chat_.get(); }
  // Renders a chat record with the spans to train on; false (with *error: the template's
  // own message when it rejected the conversation) when it cannot be rendered, with
  // *unsupported set when the template uses what ftune cannot render (not this record's fault).
  bool RenderChat(const Record& r, bool train_on_prompt, ChatRender* out, std::string* error,
                  bool* unsupported = nullptr) const;

 private:
  enum class Named { kAuto, kNone, kQa, kAlpaca, kChat, kInline };
  Named Resolve(RecordKind kind) const;

  std::string spec_;
  Named named_ = Named::kAuto;
  std::shared_ptr<const ChatTemplate> chat_;
};

// One tokenized example: ids and the per-token loss mask (1 = trained on).
struct Example {
  std::vector<int32_t> tokens;
  std::vector<uint8_t> mask;
  void clear() {
    tokens.clear();
    mask.clear();
  }
};

struct TokenizeOptions {
  bool train_on_prompt = false;
  bool append_eos = true;  // Template::AppendsEos(kind)
};

// BOS + segments (see the header comment). Appends into *out after clearing it.
void TokenizeExample(const Tokenizer& tok, const std::vector<Segment>& segments,
                     const TokenizeOptions& opts, Example* out);

// The example as text with the untrained (mask 0) parts wrapped in [PROMPT]...[/PROMPT]
// (or, with `color`, trained text green and the rest dim, for a terminal),
// special tokens shown as their pieces: exactly what the model is trained on.
// With `color`, trained text is green and the rest dim (ANSI), for a terminal.
std::string PreviewExample(const Tokenizer& tok, const Example& ex, bool color = false);

}  // namespace ftune::data
