// Chat templates (data/chat_template.h): where the template is found, the spans training learns
// from, the loss mask of the joint tokenization, and the errors for a template a tokenizer
// cannot serve. The fixture tokenizer (tests/fixtures/data/tokenizer: SentencePiece-style, with
// the Llama-3 header tokens) carries a Llama-3-style template written for these tests.
#include <gtest/gtest.h>

#include <fstream>
#include <string>

#include "data/chat_template.h"
#include "data/tokenizer.h"
#include "parallel/error.h"
#include "parallel/files.h"

namespace ftune::data {
namespace {

using jinja::Json;

const std::string kTok = std::string(FTUNE_SOURCE_DIR) + "/tests/fixtures/data/tokenizer";

std::string Scratch(const std::string& name) {
  auto dir = files::Join(FTUNE_BINARY_DIR, "tests/scratch/chat_template_" + name);
  files::RemoveAll(dir);
  files::CreateDirectories(dir);
  return dir;
}

void Write(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

std::string Span(const ChatRender& r, size_t k) {
  return r.text.substr(r.trained.at(k).first, r.trained.at(k).second - r.trained.at(k).first);
}

const Json kConversation = Json::parse(R"({"messages": [
    {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say 1"},
    {"role": "assistant", "content": "1"}, {"role": "user", "content": "Again"},
    {"role": "assistant", "content": "1 again"}]})");

TEST(ChatTemplate, WhereTheTemplateComesFrom) {
  const std::string dir = Scratch("where");
  Write(dir + "/tokenizer_config.json", R"({"bos_token": {"content": "<B>"}, "eos_token": "<E>",
      "chat_template": [{"name": "default", "template": "D{{ bos_token }}{{ eos_token }}"},
                        {"name": "tool_use", "template": "T{{ tools | length }}"},
                        {"name": "rag", "template": "R{{ extra }}"}]})");
  const Json msgs = Json::array({{{"role", "user"}, {"content", "x"}}});
  EXPECT_EQ(ChatTemplate::Resolve(dir, "").Render(msgs, nullptr, nullptr, false), "D<B><E>");
  EXPECT_EQ(ChatTemplate::Resolve(dir, "").Render(msgs, Json::array({1, 2}), nullptr, false),
            "T2");
  EXPECT_EQ(ChatTemplate::Resolve(dir, "rag", {"extra=[1, 2]"}).Render(msgs, nullptr, nullptr,
                                                                      false),
            "R[1, 2]");
  EXPECT_EQ(ChatTemplate::Resolve(dir, "rag", {"extra=plain text"})
                .Render(msgs, nullptr, nullptr, false),
            "Rplain text");
  EXPECT_THROW(ChatTemplate::Resolve(dir, "rag", {"no_equals_sign"}), ConfigError);
  try {
    ChatTemplate::Resolve(dir, "nosuch");
    FAIL() << "no error";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("default, tool_use, rag"), std::string::npos) << e.what();
  }
  // A .jinja file as the choice; chat_template.jinja beside the tokenizer wins over the config.
  Write(dir + "/mine.jinja", "M{{ messages[0].content }}\n");
  EXPECT_EQ(ChatTemplate::Resolve(dir, dir + "/mine.jinja").Render(msgs, nullptr, nullptr, false),
            "Mx");
  Write(dir + "/chat_template.jinja", "J{{ add_generation_prompt }}");
  EXPECT_EQ(ChatTemplate::Resolve(dir, "").Render(msgs, nullptr, nullptr, true), "JTrue");
  EXPECT_TRUE(ChatTemplate::TokenizerHasTemplate(dir));

  // No template at all: the error says what to set.
  const std::string bare = Scratch("bare");
  Write(bare + "/tokenizer_config.json", R"({"bos_token": "<s>"})");
  EXPECT_FALSE(ChatTemplate::TokenizerHasTemplate(bare));
  try {
    ChatTemplate::Resolve(bare, "");
    FAIL() << "no error";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("data.chat_template"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(bare), std::string::npos) << e.what();
  }
}

TEST(ChatTemplate, AssistantTurnsWithTheirEndOfTurnAreTrained) {
  const auto tmpl = ChatTemplate::Resolve(kTok, "");
  const ChatRender r = tmpl.RenderForTraining(kConversation, false);
  ASSERT_EQ(r.trained.size(), 2u);
  EXPECT_EQ(Span(r, 0), "1<|eot_id|>");
  EXPECT_EQ(Span(r, 1), "1 again<|eot_id|>");
  EXPECT_EQ(r.text, tmpl.Render(kConversation["messages"], nullptr, nullptr, false));

  // Per message "train" (removed before the template sees the messages).
  Json c = kConversation;
  c["messages"][2]["train"] = false;
  c["messages"][1]["train"] = true;
  const ChatRender f = tmpl.RenderForTraining(c, false);
  EXPECT_EQ(f.text, r.text);
  ASSERT_EQ(f.trained.size(), 2u);
  EXPECT_EQ(Span(f, 0), "<|start_header_id|>user<|end_header_id|>\n\nSay 1<|eot_id|>");
  EXPECT_EQ(Span(f, 1), "1 again<|eot_id|>");

  // train_on_prompt: everything, less the messages marked false.
  const ChatRender all = tmpl.RenderForTraining(c, true);
  ASSERT_EQ(all.trained.size(), 2u);
  EXPECT_EQ(all.trained[0].first, 0u);
  EXPECT_EQ(all.text.substr(all.trained[0].second, all.trained[1].first - all.trained[0].second),
            "<|start_header_id|>assistant<|end_header_id|>\n\n1<|eot_id|>");
  EXPECT_EQ(all.trained[1].second, all.text.size());

  c["messages"][0]["train"] = "yes";
  EXPECT_THROW(tmpl.RenderForTraining(c, false), jinja::TemplateError);
}

TEST(ChatTemplate, GenerationBlocksAndTemplatesThatLookAhead) {
  const std::string dir = Scratch("gen");
  Write(dir + "/tokenizer_config.json", R"({"chat_template": "{% for m in messages %}[{{ m.role }}]{% if m.role == 'assistant' %}{% generation %}{{ m.content }}</s>{% endgeneration %}{% else %}{{ m.content }}{% endif %}{% endfor %}"})");
  const ChatRender g = ChatTemplate::Resolve(dir, "").RenderForTraining(kConversation, false);
  ASSERT_EQ(g.trained.size(), 2u);
  EXPECT_EQ(Span(g, 0), "1</s>");
  EXPECT_EQ(Span(g, 1), "1 again</s>");

  // A template that renders a turn differently once later turns follow (here: it marks the
  // last message) cannot be split into turns by prefixes: refused, naming the message.
  Write(dir + "/tokenizer_config.json", R"({"chat_template": "{% for m in messages %}{{ m.content }}{% if loop.last %}!{% endif %}|{% endfor %}"})");
  try {
    ChatTemplate::Resolve(dir, "").RenderForTraining(kConversation, false);
    FAIL() << "no error";
  } catch (const jinja::TemplateError& e) {
    EXPECT_NE(std::string(e.what()).find("messages[0]"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("generation"), std::string::npos) << e.what();
  }
}

TEST(ChatTemplate, MaskOfTheJointTokenization) {
  const auto tok = Tokenizer::FromPath(kTok);
  const auto tmpl = ChatTemplate::Resolve(kTok, "");
  const ChatRender r = tmpl.RenderForTraining(kConversation, false);
  std::vector<int32_t> ids;
  std::vector<uint8_t> mask;
  TokenizeChat(tok, r, &ids, &mask);
  EXPECT_EQ(ids, tok.Encode(r.text, false));  // exactly apply_chat_template(tokenize=True)
  ASSERT_EQ(ids.size(), mask.size());
  EXPECT_EQ(ids.front(), tok.bos_id());
  EXPECT_EQ(mask.front(), 0);
  EXPECT_EQ(ids.back(), tok.TokenToId("<|eot_id|>"));
  EXPECT_EQ(mask.back(), 1);
  // The trained tokens, run by run, decode to the assistant turns.
  std::vector<std::string> runs;
  for (size_t i = 0; i < ids.size();) {
    if (!mask[i]) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < ids.size() && mask[j]) ++j;
    runs.push_back(tok.Decode(std::vector<int32_t>(ids.begin() + i, ids.begin() + j), false));
    i = j;
  }
  EXPECT_EQ(runs, (std::vector<std::string>{"1<|eot_id|>", "1 again<|eot_id|>"}));
}

TEST(ChatTemplate, TokenizerWithoutTheTemplatesSpecialTokens) {
  const auto tok = Tokenizer::FromPath(kTok);
  ChatTemplate::Resolve(kTok, "").CheckTokenizer(tok);  // its own template: fine
  const std::string dir = Scratch("foreign");
  Write(dir + "/chatml.jinja",
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
        "{% endfor %}<start_of_turn><<SYS>>");
  try {
    ChatTemplate::Resolve(kTok, dir + "/chatml.jinja").CheckTokenizer(tok);
    FAIL() << "no error";
  } catch (const DataError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("<|im_start|>, <|im_end|>, <start_of_turn>"), std::string::npos) << what;
    EXPECT_EQ(what.find("<SYS>"), std::string::npos) << what;
    EXPECT_NE(what.find("chatml.jinja"), std::string::npos) << what;
  }
}

}  // namespace
}  // namespace ftune::data
