// The chat template renderer (data/jinja.h) against Python's jinja2 in transformers' settings:
// tests/fixtures/chat/engine_cases.jsonl holds small templates, one construct each, with the
// output jinja2 gave (or that it raised), written by tests/chat/make_engine_cases.py.
#include <gtest/gtest.h>

#include <fstream>
#include <set>
#include <string>

#include "data/jinja.h"

namespace ftune::data::jinja {
namespace {

const std::string kCases =
    std::string(FTUNE_SOURCE_DIR) + "/tests/fixtures/chat/engine_cases.jsonl";

// Cases ftune refuses on purpose (a clear error instead of a possibly different string):
// Unicode case mapping needs tables ftune does not carry.
const std::set<std::string> kRefused = {"str.case_unicode"};

TEST(Jinja, EngineCasesMatchPythonJinja2) {
  std::ifstream in(kCases);
  ASSERT_TRUE(in) << kCases;
  std::string line;
  int rendered = 0, raised = 0, refused = 0;
  while (std::getline(in, line)) {
    const Json c = Json::parse(line);
    const std::string name = c["name"].get<std::string>();
    std::string got, error;
    try {
      got = Template::Parse(c["template"].get<std::string>(), name).Render(c["context"]).text;
    } catch (const TemplateError& e) {
      error = e.what();
    }
    if (kRefused.count(name)) {
      EXPECT_NE(error.find("not supported"), std::string::npos) << name << ": " << error;
      ++refused;
    } else if (c.value("error", false)) {
      EXPECT_FALSE(error.empty()) << name << " rendered " << Json(got).dump()
                                  << " where jinja2 raises";
      ++raised;
    } else {
      EXPECT_EQ(error, "") << name;
      EXPECT_EQ(got, c["expected"].get<std::string>())
          << name << "\ntemplate: " << Json(c["template"]).dump();
      ++rendered;
    }
  }
  std::printf("engine cases: %d rendered as jinja2 does, %d raised as jinja2 does, %d refused\n",
              rendered, raised, refused);
  EXPECT_GT(rendered, 200);
  EXPECT_GT(raised, 10);
}

TEST(Jinja, ErrorsNameLineAndColumn) {
  try {
    Template::Parse("line one\n{% if x %}\n  {{ y | nosuch }}\n{% endif %}", "t.jinja")
        .Render(Json{{"x", true}});
    FAIL() << "no error";
  } catch (const TemplateError& e) {
    EXPECT_NE(std::string(e.what()).find("t.jinja:3:"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("nosuch"), std::string::npos) << e.what();
  }
  try {
    Template::Parse("ok\n{% include 'other.jinja' %}", "t.jinja");
    FAIL() << "no error";
  } catch (const TemplateError& e) {
    EXPECT_NE(std::string(e.what()).find("t.jinja:2:"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("'include' is not supported"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(Template::Parse("{% for x in y %}no end"), TemplateError);
  EXPECT_THROW(Template::Parse("{{ 'unterminated }}"), TemplateError);
}

TEST(Jinja, RaiseExceptionCarriesTheTemplatesMessage) {
  const auto t = Template::Parse(
      "{% if messages[0].role != 'user' %}{{ raise_exception('Conversation must start with "
      "user') }}{% endif %}ok");
  EXPECT_EQ(t.Render(Json::parse(R"({"messages": [{"role": "user"}]})")).text, "ok");
  try {
    t.Render(Json::parse(R"({"messages": [{"role": "assistant"}]})"));
    FAIL() << "no error";
  } catch (const TemplateRaised& e) {
    EXPECT_EQ(e.message(), "Conversation must start with user");
  }
}

TEST(Jinja, GenerationSpansAndLiterals) {
  const auto t = Template::Parse(
      "{% for m in messages %}<{{ m.role }}>{% if m.role == 'assistant' %}{% generation %}"
      "{{ m.content }}<|end|>{% endgeneration %}{% else %}{{ m.content }}{% endif %}"
      "{% endfor %}");
  EXPECT_TRUE(t.has_generation_blocks());
  const auto r = t.Render(Json::parse(R"({"messages": [{"role": "user", "content": "hi"},
      {"role": "assistant", "content": "yo"}, {"role": "user", "content": "x"},
      {"role": "assistant", "content": "z"}]})"));
  EXPECT_EQ(r.text, "<user>hi<assistant>yo<|end|><user>x<assistant>z<|end|>");
  ASSERT_EQ(r.generation.size(), 2u);
  EXPECT_EQ(r.text.substr(r.generation[0].first, r.generation[0].second - r.generation[0].first),
            "yo<|end|>");
  EXPECT_EQ(r.text.substr(r.generation[1].first), "z<|end|>");
  const auto lits = t.Literals();
  EXPECT_NE(std::find(lits.begin(), lits.end(), "<|end|>"), lits.end());
  EXPECT_NE(std::find(lits.begin(), lits.end(), "assistant"), lits.end());
  EXPECT_FALSE(Template::Parse("{{ x }}").has_generation_blocks());
}

TEST(Jinja, StrftimeNowIsPinnable) {
  RenderOptions o;
  o.strftime_now = [](const std::string& fmt) { return "[" + fmt + "]"; };
  EXPECT_EQ(Template::Parse("{{ strftime_now('%d %b %Y') }}").Render(Json::object(), o).text,
            "[%d %b %Y]");
  // Without a pin it is the local time: a 4-digit year.
  EXPECT_EQ(Template::Parse("{{ strftime_now('%Y') }}").Render(Json::object()).text.size(), 4u);
}

TEST(Jinja, JsonContextKeepsNumberTypesAndKeyOrder) {
  const Json ctx = Json::parse(R"({"tool": {"z": 1.0, "a": [1, 2.5e-7, true, null], "m": "é"}})");
  EXPECT_EQ(Template::Parse("{{ tool | tojson }}").Render(ctx).text,
            R"({"z": 1.0, "a": [1, 2.5e-07, true, null], "m": "é"})");
  EXPECT_EQ(Template::Parse("{{ tool }}").Render(ctx).text,
            "{'z': 1.0, 'a': [1, 2.5e-07, True, None], 'm': 'é'}");
}

}  // namespace
}  // namespace ftune::data::jinja
