// Harness of data/records and data/templates: JSONL records (text, qa, alpaca, chat) parsed for
// each expected kind, rendered with the auto and an inline template, and tokenized with the test
// fixture's tokenizer, as `ftune prepare` does with every line of its inputs.
#include "data/records.h"
#include "data/templates.h"
#include "data/tokenizer.h"
#include "tests/fuzz/fuzz_target.h"

namespace {

const ftune::data::Tokenizer& FixtureTokenizer() {
  static const auto tok =
      ftune::data::Tokenizer::FromPath(FTUNE_SOURCE_DIR "/tests/fixtures/data/tokenizer");
  return tok;
}

void RenderAndTokenize(const ftune::data::Template& tpl, const ftune::data::Record& r) {
  using namespace ftune::data;
  if (!tpl.CheckKind(r.kind).empty()) return;
  std::string error;
  Example ex;
  if (r.kind == RecordKind::kChat) {
    ChatRender chat;
    if (!tpl.RenderChat(r, false, &chat, &error)) return;
    TokenizeChat(FixtureTokenizer(), chat, &ex.tokens, &ex.mask);
  } else {
    std::vector<Segment> segments;
    if (!tpl.Render(r, &segments, &error)) return;
    TokenizeExample(FixtureTokenizer(), segments, {false, tpl.AppendsEos(r.kind)}, &ex);
  }
  FTUNE_FUZZ_CHECK(ex.tokens.size() == ex.mask.size());
  PreviewExample(FixtureTokenizer(), ex);
}

}  // namespace

// Input: the bytes of a .jsonl file.
FTUNE_FUZZ_TARGET(records) {
  using namespace ftune::data;
  static const Template kAuto = [] {
    Template t = Template::Parse("auto");  // chat records: the fixture tokenizer's template
    t.UseChatTemplate(ChatTemplate::Resolve(FTUNE_SOURCE_DIR "/tests/fixtures/data/tokenizer", ""));
    return t;
  }();
  static const Template kInline = Template::Parse("{{{instruction}}} {question}{input}\n{output}");
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  ftune::fuzz::ExpectInputErrors([&] {
    DetectFileKind(ftune::fuzz::WriteScratch("records.jsonl", text));
    const std::optional<RecordKind> kinds[] = {std::nullopt, RecordKind::kText, RecordKind::kQa,
                                               RecordKind::kAlpaca, RecordKind::kChat};
    for (size_t start = 0; start < text.size();) {
      size_t end = text.find('\n', start);
      if (end == std::string_view::npos) end = text.size();
      const std::string_view line = text.substr(start, end - start);
      start = end + 1;
      if (IsBlankLine(line)) continue;
      for (const auto& expected : kinds) {
        Record r;
        RecordError err;
        if (!ParseRecord(line, expected, &r, &err)) {
          FTUNE_FUZZ_CHECK(err.reason != nullptr);
          continue;
        }
        FTUNE_FUZZ_CHECK(!expected || r.kind == *expected);
        RenderAndTokenize(kAuto, r);
        RenderAndTokenize(kInline, r);
      }
    }
  });
  return 0;
}
