// Records, templates and the tokenization of one example (data/records.h, data/templates.h).
#include <gtest/gtest.h>

#include "data/records.h"
#include "data/sha256.h"
#include "data/templates.h"
#include "data/tokenizer.h"
#include "parallel/error.h"

namespace ftune::data {
namespace {

const std::string kTok = std::string(FTUNE_SOURCE_DIR) + "/tests/fixtures/data/tokenizer";

Record Parse(const std::string& line, std::optional<RecordKind> expected = std::nullopt) {
  Record r;
  RecordError e;
  EXPECT_TRUE(ParseRecord(line, expected, &r, &e)) << line << ": " << e.detail;
  return r;
}

std::string Reject(const std::string& line, std::optional<RecordKind> expected = std::nullopt) {
  Record r;
  RecordError e;
  if (ParseRecord(line, expected, &r, &e)) return "ok";
  return e.reason;
}

TEST(Sha256, KnownVectors) {
  EXPECT_EQ(Sha256Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  std::string m(1000000, 'a');
  EXPECT_EQ(Sha256Hex(m), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Records, DetectsKinds) {
  EXPECT_EQ(Parse(R"({"text": "hi"})").kind, RecordKind::kText);
  EXPECT_EQ(Parse(R"({"question": "q", "answer": "a"})").kind, RecordKind::kQa);
  EXPECT_EQ(Parse(R"({"instruction": "i", "input": "", "output": "o"})").kind,
            RecordKind::kAlpaca);
  Record a = Parse(R"({"instruction": "i", "output": "o"})");
  ASSERT_NE(a.Field("input"), nullptr);
  EXPECT_EQ(*a.Field("input"), "");
  Record c = Parse(R"({"messages": [{"role": "user", "content": "hi"},
                                    {"role": "assistant", "content": "yo"}]})");
  EXPECT_EQ(c.kind, RecordKind::kChat);
  ASSERT_EQ(c.messages.size(), 2u);
  EXPECT_EQ(c.messages[1].content, "yo");
}

TEST(Records, RejectsBadLines) {
  EXPECT_EQ(Reject(R"({"text": "hi")"), "invalid_json");
  // A number beyond double's range is an invalid line, not an uncaught exception (fuzz_records;
  // the input is tests/fuzz/crashers/records/number_overflow).
  EXPECT_EQ(Reject(R"({"text": "hi", "n": 1e380})"), "invalid_json");
  EXPECT_EQ(Reject(R"({"question": "q", "answer": "a", "w": -1e400})"), "invalid_json");
  EXPECT_EQ(Reject("[1, 2]"), "not_an_object");
  EXPECT_EQ(Reject(R"({"question": "q"})"), "missing_field");
  EXPECT_EQ(Reject(R"({"question": "q", "answer": 4})"), "wrong_type");
  EXPECT_EQ(Reject(R"({"messages": "x"})"), "wrong_type");
  EXPECT_EQ(Reject(R"({"messages": [{"role": "user"}]})"), "missing_field");
  EXPECT_EQ(Reject(R"({"messages": []})"), "missing_field");
  EXPECT_EQ(Reject(R"({"foo": "bar"})"), "unknown_kind");
  EXPECT_EQ(Reject(R"({"foo": "bar"})", RecordKind::kQa), "missing_field");
  EXPECT_EQ(Reject(R"({"text": "hi"})", RecordKind::kQa), "mixed_kinds");
  EXPECT_EQ(Reject("{\"text\": \"\xff\xfe\"}"), "invalid_utf8");
  EXPECT_EQ(Reject("{\"text\": \"\xed\xa0\x80\"}"), "invalid_utf8");  // surrogate
  EXPECT_EQ(Reject("{\"text\": \"\xc0\xaf\"}"), "invalid_utf8");      // overlong
  EXPECT_EQ(Reject("{\"text\": \"caf\xc3\xa9 \xf0\x9f\x98\x80\"}"), "ok");
}

TEST(Templates, NamedTemplates) {
  std::vector<Segment> s;
  std::string err;
  auto qa = Template::Parse("auto");
  ASSERT_TRUE(qa.Render(Parse(R"({"question": "Capital?", "answer": "Paris"})"), &s, &err));
  ASSERT_EQ(s.size(), 2u);
  EXPECT_EQ(s[0].text, "### Question:\nCapital?\n\n### Answer:");
  EXPECT_FALSE(s[0].response);
  EXPECT_EQ(s[1].text, " Paris");
  EXPECT_TRUE(s[1].response);

  ASSERT_TRUE(qa.Render(Parse(R"({"instruction": "Add", "input": "1 2", "output": "3"})"), &s,
                        &err));
  EXPECT_NE(s[0].text.find("### Input:\n1 2\n\n### Response:\n"), std::string::npos);
  EXPECT_EQ(s[1].text, "3");
  ASSERT_TRUE(qa.Render(Parse(R"({"instruction": "Say hi", "input": "", "output": "hi"})"), &s,
                        &err));
  EXPECT_EQ(s[0].text.find("### Input:"), std::string::npos);
  EXPECT_NE(s[0].text.find("### Instruction:\nSay hi\n\n### Response:\n"), std::string::npos);

  // Chat records: the tokenizer's own chat template (the fixture's is Llama-3 style), the
  // assistant turns with their <|eot_id|> trained.
  const auto chat = Parse(R"({"messages": [{"role": "system", "content": "S"},
      {"role": "user", "content": "U"}, {"role": "assistant", "content": " A "},
      {"role": "user", "content": "U2"}, {"role": "assistant", "content": "A2"}]})");
  EXPECT_FALSE(qa.Render(chat, &s, &err));
  ChatRender cr;
  EXPECT_FALSE(qa.RenderChat(chat, false, &cr, &err));  // no chat template set up
  qa.UseChatTemplate(ChatTemplate::Resolve(kTok, ""));
  ASSERT_TRUE(qa.RenderChat(chat, false, &cr, &err)) << err;
  const std::string header = "<|start_header_id|>assistant<|end_header_id|>\n\n";
  EXPECT_EQ(cr.text,
            "<s><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nU<|eot_id|>" + header +
            "A<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nU2<|eot_id|>" + header +
            "A2<|eot_id|>");
  ASSERT_EQ(cr.trained.size(), 2u);
  EXPECT_EQ(cr.text.substr(cr.trained[0].first, cr.trained[0].second - cr.trained[0].first),
            "A<|eot_id|>");
  EXPECT_EQ(cr.text.substr(cr.trained[1].first), "A2<|eot_id|>");
  EXPECT_EQ(cr.trained[1].second, cr.text.size());
  EXPECT_THROW(Template::Parse("llama3-chat"), ConfigError);  // retired, with the reason

  auto none = Template::Parse("none");
  EXPECT_FALSE(none.CheckKind(RecordKind::kQa).empty());
  EXPECT_TRUE(none.CheckKind(RecordKind::kText).empty());
  EXPECT_THROW(Template::Parse("nonsense"), ConfigError);
}

TEST(Templates, Inline) {
  std::vector<Segment> s;
  std::string err;
  auto t = Template::Parse("Q: {question} ({source})\nA: {answer}!");
  ASSERT_TRUE(t.Render(Parse(R"({"question": "q1", "answer": "a1", "source": "wiki"})"), &s,
                       &err))
      << err;
  ASSERT_EQ(s.size(), 2u);
  EXPECT_EQ(s[0].text, "Q: q1 (wiki)\nA: ");
  EXPECT_EQ(s[1].text, "a1!");
  EXPECT_FALSE(t.Render(Parse(R"({"question": "q1", "answer": "a1"})"), &s, &err));
  EXPECT_NE(err.find("{source}"), std::string::npos);
  auto t2 = Template::Parse("Question {{literal}}: {question}\n");
  ASSERT_TRUE(t2.Render(Parse(R"({"question": "q", "answer": "a"})"), &s, &err));
  EXPECT_EQ(s[0].text, "Question {literal}: q\n");
  EXPECT_EQ(s[1].text, "a");
}

TEST(Tokenize, MaskBosEosAndPreview) {
  auto tok = Tokenizer::FromPath(kTok);
  ASSERT_EQ(tok.bos_id(), 1);
  ASSERT_EQ(tok.eos_ids().at(0), 2);
  std::vector<Segment> s{{"the q", false}, {" is it", true}};
  Example ex;
  TokenizeExample(tok, s, {}, &ex);
  ASSERT_EQ(ex.tokens.size(), ex.mask.size());
  EXPECT_EQ(ex.tokens.front(), 1);
  EXPECT_EQ(ex.mask.front(), 0);
  EXPECT_EQ(ex.tokens.back(), 2);
  EXPECT_EQ(ex.mask.back(), 1);
  // The response encoded alone equals the joint encoding's tail ("▁is" "▁it").
  auto prompt = tok.Encode("the q");
  auto resp = tok.Encode("is it");
  ASSERT_EQ(ex.tokens.size(), 1 + prompt.size() + resp.size() + 1);
  for (size_t i = 0; i < prompt.size(); ++i) EXPECT_EQ(ex.mask[1 + i], 0);
  for (size_t i = 0; i < resp.size(); ++i) {
    EXPECT_EQ(ex.tokens[1 + prompt.size() + i], resp[i]);
    EXPECT_EQ(ex.mask[1 + prompt.size() + i], 1);
  }
  const std::string preview = PreviewExample(tok, ex);
  EXPECT_EQ(preview.rfind("[PROMPT]", 0), 0u) << preview;
  EXPECT_NE(preview.find("the q[/PROMPT]"), std::string::npos) << preview;
  EXPECT_NE(preview.find("is it</s>"), std::string::npos) << preview;

  TokenizeOptions all;
  all.train_on_prompt = true;
  TokenizeExample(tok, s, all, &ex);
  EXPECT_EQ(ex.mask.front(), 0);
  for (size_t i = 1; i < ex.mask.size(); ++i) EXPECT_EQ(ex.mask[i], 1);

  // Chat: special tokens map to their ids, no extra EOS after <|eot_id|>.
  TokenizeOptions chat;
  chat.append_eos = false;
  std::vector<Segment> c{{"<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
                          "<|start_header_id|>assistant<|end_header_id|>\n\n",
                          false},
                         {"yo<|eot_id|>", true}};
  TokenizeExample(tok, c, chat, &ex);
  EXPECT_EQ(ex.tokens.back(), tok.TokenToId("<|eot_id|>"));
  EXPECT_EQ(ex.mask.back(), 1);
}

}  // namespace
}  // namespace ftune::data
