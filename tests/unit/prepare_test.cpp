// `prepare` in one process (data/prepare.h): summary counts and reject line numbers, split
// properties, strict mode, the output directory rules, shard sizes.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <map>
#include <set>

#include "data/prepare.h"
#include "data/shards.h"
#include "parallel/error.h"
#include "parallel/files.h"

namespace ftune::data {
namespace {
using nlohmann::json;

const std::string kFix = std::string(FTUNE_SOURCE_DIR) + "/tests/fixtures/data";

std::string Scratch(const std::string& name) {
  auto dir = files::Join(FTUNE_BINARY_DIR, "tests/scratch/prepare_" + name);
  files::RemoveAll(dir);
  files::CreateDirectories(dir);
  return dir;
}

PrepareOptions Opts(const std::string& out, std::vector<std::string> inputs) {
  PrepareOptions o;
  o.tokenizer_path = kFix + "/tokenizer";
  o.out_dir = out;
  for (auto& i : inputs) o.data.inputs.push_back(kFix + "/" + i);
  o.data.max_seq_len = 256;
  o.data.split.test_ratio = 0.25;
  return o;
}

// Every document of a split: (tokens, mask).
std::vector<std::pair<std::vector<int32_t>, std::vector<uint8_t>>> Docs(const std::string& dir,
                                                                      const std::string& split) {
  std::vector<std::pair<std::vector<int32_t>, std::vector<uint8_t>>> docs;
  Manifest m = ReadManifest(dir);
  for (const auto& s : m.split(split).shards) {
    ShardReader r(dir + "/" + s.file);
    EXPECT_EQ(r.split(), split);
    const auto& off = r.doc_offsets();
    for (size_t d = 0; d + 1 < off.size(); ++d) {
      std::vector<int32_t> t(off[d + 1] - off[d]);
      std::vector<uint8_t> k(t.size());
      r.Read(off[d], int64_t(t.size()), t.data(), k.data());
      docs.emplace_back(t, k);
    }
  }
  return docs;
}

TEST(Prepare, QaSummaryRejectsAndShards) {
  const auto out = Scratch("qa");
  auto o = Opts(out, {"qa.jsonl"});
  PrepareSummary s = Prepare(o, nullptr);
  EXPECT_EQ(s.records_read, 44);
  EXPECT_EQ(s.train.examples + s.test.examples, 40);
  EXPECT_GT(s.test.examples, 0);
  EXPECT_GT(s.train.examples, s.test.examples);
  ASSERT_EQ(s.rejected.count("invalid_json"), 1u);
  EXPECT_EQ(s.rejected["invalid_json"].first, std::vector<std::string>{kFix + "/qa.jsonl:5"});
  EXPECT_EQ(s.rejected["wrong_type"].count, 2);
  EXPECT_EQ(s.rejected["wrong_type"].first,
            (std::vector<std::string>{kFix + "/qa.jsonl:9", kFix + "/qa.jsonl:20"}));
  EXPECT_EQ(s.rejected["missing_field"].first, std::vector<std::string>{kFix + "/qa.jsonl:12"});

  // Files: shards, summary, manifest; no temporaries.
  EXPECT_TRUE(files::Exists(out + "/train-00000.h5"));
  EXPECT_TRUE(files::Exists(out + "/test-00000.h5"));
  EXPECT_TRUE(files::Exists(out + "/prepare_summary.json"));
  EXPECT_FALSE(files::Exists(out + "/.prepare-tmp"));
  Manifest m = ReadManifest(out);
  EXPECT_EQ(m.train.num_docs, s.train.examples);
  EXPECT_EQ(m.test.num_docs, s.test.examples);
  json sj = json::parse(std::ifstream(out + "/prepare_summary.json"));
  EXPECT_EQ(sj["kept"]["train"].get<int64_t>(), s.train.examples);
  EXPECT_EQ(sj["rejected"]["wrong_type"]["count"].get<int64_t>(), 2);

  // Every document: BOS first, EOS last and trained, prompt masked.
  for (const auto& split : {"train", "test"}) {
    for (const auto& [t, k] : Docs(out, split)) {
      EXPECT_EQ(t.front(), 1);
      EXPECT_EQ(k.front(), 0);
      EXPECT_EQ(t.back(), 2);
      EXPECT_EQ(k.back(), 1);
      EXPECT_EQ(k[1], 0);  // the prompt starts untrained
    }
  }
}

TEST(Prepare, AllKindsTrainOnPromptAndDeterministicSplit) {
  const auto out = Scratch("kinds");
  auto o = Opts(out, {"alpaca.jsonl", "chat.jsonl", "text.jsonl"});
  o.data.split.test_ratio = 0.3;
  PrepareSummary s = Prepare(o, nullptr);
  EXPECT_EQ(s.records_read, 8 + 7 + 10);
  EXPECT_EQ(s.train.examples + s.test.examples, 24);
  EXPECT_EQ(s.rejected["no_target_tokens"].count, 1);  // the chat without an assistant turn
  EXPECT_EQ(s.rejected["no_target_tokens"].first,
            std::vector<std::string>{kFix + "/chat.jsonl:7"});
  const auto train1 = Docs(out, "train");
  // Same seed -> same split, regardless of anything else; another seed -> another split.
  const auto out2 = Scratch("kinds2");
  auto o2 = Opts(out2, {"alpaca.jsonl", "chat.jsonl", "text.jsonl"});
  o2.data.split.test_ratio = 0.3;
  Prepare(o2, nullptr);
  EXPECT_EQ(Docs(out2, "train"), train1);
  o2.data.split.seed = 99;
  o2.out_dir = Scratch("kinds3");
  Prepare(o2, nullptr);
  EXPECT_NE(Docs(o2.out_dir, "train"), train1);

  o.data.train_on_prompt = true;
  o.out_dir = Scratch("kinds_all");
  PrepareSummary all = Prepare(o, nullptr);
  EXPECT_EQ(all.rejected.count("no_target_tokens"), 0u);
  for (const auto& [t, k] : Docs(o.out_dir, "train")) {
    for (size_t i = 1; i < k.size(); ++i) ASSERT_EQ(k[i], 1);
  }
}

// Every document's task label of a split, in order.
std::vector<std::string> DocTaskLabels(const std::string& dir, const std::string& split) {
  std::vector<std::string> labels;
  // Named: a range-for over ReadManifest(dir).split(...).shards reads the temporary after its end.
  const Manifest manifest = ReadManifest(dir);
  for (const auto& s : manifest.split(split).shards) {
    ShardReader r(dir + "/" + s.file);
    for (int64_t d = 0; d < r.num_docs(); ++d) labels.push_back(r.doc_task(d));
  }
  return labels;
}

TEST(Prepare, TaskLabelsFollowTheirExamplesAndNeverMoveThem) {
  const auto dir = Scratch("tasks");
  // Records n = 0..39: label "even"/"odd" by n, none for n % 5 == 0, a number (not a string,
  // so no label) for n == 7; the same records unlabelled in a second file.
  std::ofstream labelled(dir + "/labelled.jsonl"), plain(dir + "/plain.jsonl");
  for (int n = 0; n < 40; ++n) {
    json r = {{"question", fmt::format("Is {} even or odd?", n)},
              {"answer", n % 2 ? "odd" : "even"}};
    plain << r.dump() << "\n";
    if (n == 7) {
      r["task"] = 7;
    } else if (n % 5 != 0) {
      r["task"] = n % 2 ? "odd" : "even";
    }
    labelled << r.dump() << "\n";
  }
  labelled.close();
  plain.close();
  auto opts = [&](const std::string& out, const std::string& input) {
    PrepareOptions o = Opts(Scratch(out), {});
    o.data.inputs = {dir + "/" + input};
    o.data.split.test_ratio = 0.4;
    o.data.shard_tokens = 1024;  // several shards per split
    return o;
  };
  const auto lo = opts("tasks_labelled", "labelled.jsonl");
  const PrepareSummary s = Prepare(lo, nullptr);
  const auto po = opts("tasks_plain", "plain.jsonl");
  Prepare(po, nullptr);
  for (const char* split : {"train", "test"}) {
    EXPECT_EQ(Docs(lo.out_dir, split), Docs(po.out_dir, split)) << split;
    for (const auto& l : DocTaskLabels(po.out_dir, split)) EXPECT_EQ(l, "");
  }
  // Each document's label is its record's: "odd" exactly for the labelled odd answers.
  int64_t labelled_docs = 0;
  for (const char* split : {"train", "test"}) {
    const auto docs = Docs(lo.out_dir, split);
    const auto labels = DocTaskLabels(lo.out_dir, split);
    ASSERT_EQ(labels.size(), docs.size());
    std::map<std::string, int64_t> counts;
    for (const auto& l : labels) counts[l] += 1;
    const bool test = std::string(split) == "test";
    for (const char* t : {"even", "odd"}) {
      EXPECT_EQ(counts[t], test ? s.tasks.at(t).second : s.tasks.at(t).first) << split << t;
      labelled_docs += counts[t];
    }
  }
  EXPECT_EQ(labelled_docs, 40 - 8 - 1);
  EXPECT_EQ(s.tasks.size(), 2u);
  const json sj = json::parse(std::ifstream(lo.out_dir + "/prepare_summary.json"));
  EXPECT_EQ(sj["tasks"]["odd"]["train"].get<int64_t>(), s.tasks.at("odd").first);

  // data.task_field names the field; "" turns labels off.
  auto other = opts("tasks_off", "labelled.jsonl");
  other.data.task_field = "";
  EXPECT_TRUE(Prepare(other, nullptr).tasks.empty());
  for (const auto& l : DocTaskLabels(other.out_dir, "test")) EXPECT_EQ(l, "");
  other = opts("tasks_answer", "labelled.jsonl");
  other.data.task_field = "answer";
  EXPECT_EQ(Prepare(other, nullptr).tasks.size(), 2u);
}

TEST(Prepare, DuplicatesNeverCrossSplitsAndDedup) {
  const auto out = Scratch("dups");
  auto o = Opts(out, {"dups.jsonl"});
  o.data.split.test_ratio = 0.5;
  PrepareSummary s = Prepare(o, nullptr);
  EXPECT_EQ(s.train.examples + s.test.examples, 30);
  std::set<std::vector<int32_t>> train, test;
  for (auto& d : Docs(out, "train")) train.insert(d.first);
  for (auto& d : Docs(out, "test")) test.insert(d.first);
  for (const auto& t : test) EXPECT_EQ(train.count(t), 0u);
  EXPECT_EQ(train.size() + test.size(), 5u);

  o.out_dir = Scratch("dedup");
  o.data.split.dedup = true;
  s = Prepare(o, nullptr);
  EXPECT_EQ(s.train.examples + s.test.examples, 5);
  EXPECT_EQ(s.duplicates_removed, 25);

  o.out_dir = Scratch("count");
  o.data.split.test_count = 2;
  s = Prepare(o, nullptr);
  EXPECT_EQ(s.test.examples, 2);
  EXPECT_EQ(s.train.examples, 3);
}

TEST(Prepare, OverlongTruncateOrDropAndShardSize) {
  const auto out = Scratch("overlong");
  auto o = Opts(out, {"text.jsonl"});
  o.data.max_seq_len = 10;
  PrepareSummary t = Prepare(o, nullptr);
  EXPECT_GT(t.truncated, 0);
  EXPECT_LT(t.truncated, 10);
  EXPECT_EQ(t.train.examples + t.test.examples, 10);
  EXPECT_LE(std::max(t.train.max_len, t.test.max_len), 10);
  o.data.overlong = "drop";
  o.out_dir = Scratch("overlong_drop");
  PrepareSummary d = Prepare(o, nullptr);
  EXPECT_EQ(d.rejected["overlong_dropped"].count, t.truncated);
  EXPECT_EQ(d.truncated, 0);

  o = Opts(Scratch("shards"), {"qa.jsonl", "text.jsonl", "alpaca.jsonl"});
  o.data.shard_tokens = 1024;
  o.data.split.test_ratio = 0;
  PrepareSummary s = Prepare(o, nullptr);
  Manifest m = ReadManifest(o.out_dir);
  EXPECT_GT(m.train.shards.size(), 1u);
  EXPECT_TRUE(m.test.shards.empty());
  int64_t total = 0;
  for (const auto& sh : m.train.shards) {
    EXPECT_LE(sh.num_tokens, 1024);
    total += sh.num_tokens;
  }
  EXPECT_EQ(total, s.train.tokens);
}

TEST(Prepare, BadInputs) {
  const auto out = Scratch("bad");
  // Mixed kinds in one file: the first record's kind wins, the others are rejected.
  PrepareSummary s = Prepare(Opts(out, {"mixed.jsonl"}), nullptr);
  EXPECT_EQ(s.rejected["mixed_kinds"].count, 2);
  EXPECT_EQ(s.rejected["mixed_kinds"].first,
            (std::vector<std::string>{kFix + "/mixed.jsonl:2", kFix + "/mixed.jsonl:4"}));
  // Invalid UTF-8.
  auto o = Opts(out, {"bad_utf8.jsonl"});
  o.overwrite = true;
  s = Prepare(o, nullptr);
  EXPECT_EQ(s.rejected["invalid_utf8"].first,
            std::vector<std::string>{kFix + "/bad_utf8.jsonl:2"});
  // Empty file: reported, and alone it leaves zero records, which is always an error.
  o = Opts(out, {"empty.jsonl", "qa.jsonl"});
  o.overwrite = true;
  s = Prepare(o, nullptr);
  EXPECT_EQ(s.rejected["empty_file"].count, 1);
  o = Opts(Scratch("empty"), {"empty.jsonl"});
  EXPECT_THROW(Prepare(o, nullptr), DataError);
  EXPECT_FALSE(files::Exists(o.out_dir + "/manifest.json"));
  // A glob matching nothing; a glob matching several files.
  o = Opts(Scratch("glob"), {"nothing-*.jsonl"});
  try {
    Prepare(o, nullptr);
    FAIL();
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("nothing-*.jsonl"), std::string::npos);
  }
  EXPECT_EQ(ExpandInputs({kFix + "/[aq]*.jsonl"}),
            (std::vector<std::string>{kFix + "/alpaca.jsonl", kFix + "/qa.jsonl"}));
  // Zero records after filtering, a template that does not fit the records.
  o = Opts(Scratch("zero"), {"qa.jsonl"});
  o.data.max_seq_len = 8;
  o.data.overlong = "drop";
  EXPECT_THROW(Prepare(o, nullptr), DataError);
  o = Opts(Scratch("tmpl"), {"qa.jsonl"});
  o.data.template_name = "none";
  EXPECT_THROW(Prepare(o, nullptr), DataError);
}

// Chat templates that cannot serve the data: each a clear error, and no dataset written.
TEST(Prepare, ChatTemplateErrors) {
  const std::string dir = Scratch("chat_templates");
  auto write = [&](const std::string& name, const std::string& text) {
    std::ofstream(dir + "/" + name) << text;
    return dir + "/" + name;
  };
  auto expect_error = [&](PrepareOptions o, const std::vector<std::string>& parts) {
    try {
      Prepare(o, nullptr);
      ADD_FAILURE() << "no error";
    } catch (const DataError& e) {
      for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
    }
    EXPECT_FALSE(files::Exists(o.out_dir + "/manifest.json"));
    EXPECT_FALSE(files::Exists(o.out_dir + "/train-00000.h5"));
  };
  // A construct ftune cannot render: stops at the first record that reaches it, naming it.
  auto o = Opts(dir + "/out1", {"chat.jsonl"});
  o.data.chat_template = write("odd.jinja", "{% for m in messages %}{{ m.content }}"
                                            "{% if m.role == 'assistant' %}{{ m.content | center(9) }}"
                                            "{{ m.content | pprint }}{% endif %}{% endfor %}");
  expect_error(o, {kFix + "/chat.jsonl:1:", "template_unsupported", "'pprint' is not supported",
                   "odd.jinja:1:"});
  // A tokenizer without the template's special tokens: refused before any record is read.
  o.out_dir = dir + "/out2";
  o.data.chat_template = write("chatml.jinja", "{% for m in messages %}<|im_start|>{{ m.role }}\n"
                                               "{{ m.content }}<|im_end|>\n{% endfor %}");
  expect_error(o, {"<|im_start|>, <|im_end|>", "chatml.jinja", "no single token"});
  EXPECT_FALSE(files::Exists(o.out_dir));
  // A conversation the template rejects (raise_exception): skipped with its line, or, strict,
  // the error at that line.
  o.out_dir = dir + "/out3";
  o.data.chat_template = write("alternate.jinja",
      "{% for m in messages %}{% if m.role == 'user' and loop.index0 == 0 %}{{ raise_exception("
      "'the first message must be the system prompt') }}{% endif %}<|start_header_id|>"
      "{{ m.role }}<|end_header_id|>\n\n{{ m.content }}<|eot_id|>{% endfor %}");
  PrepareSummary s = Prepare(o, nullptr);
  ASSERT_EQ(s.rejected.count("template_error"), 1u);
  EXPECT_EQ(s.rejected["template_error"].first, std::vector<std::string>{kFix + "/chat.jsonl:7"});
  EXPECT_NE(s.rejected["template_error"].first_detail.find(
                "rejected the conversation: the first message must be the system prompt"),
            std::string::npos) << s.rejected["template_error"].first_detail;
  o.out_dir = dir + "/out4";
  o.data.strict = true;
  expect_error(o, {kFix + "/chat.jsonl:7:", "the first message must be the system prompt",
                   "data.strict"});
}

TEST(Prepare, StrictStopsAtTheFirstBadRecord) {
  auto o = Opts(Scratch("strict"), {"alpaca.jsonl", "qa.jsonl"});
  o.data.strict = true;
  try {
    Prepare(o, nullptr);
    FAIL();
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find(kFix + "/qa.jsonl:5: invalid_json"), std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(files::Exists(o.out_dir + "/manifest.json"));
  o.data.inputs = {kFix + "/empty.jsonl"};
  EXPECT_THROW(Prepare(o, nullptr), DataError);
}

TEST(Prepare, OutputDirectoryRules) {
  const auto out = Scratch("dir");
  auto o = Opts(out, {"qa.jsonl"});
  Prepare(o, nullptr);
  const auto first = Docs(out, "train");
  Prepare(o, nullptr);  // same dataset again: allowed
  auto other = Opts(out, {"text.jsonl"});
  try {
    Prepare(other, nullptr);
    FAIL() << "a different dataset was overwritten without --overwrite";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("--overwrite"), std::string::npos);
  }
  EXPECT_EQ(Docs(out, "train"), first);  // untouched
  other.overwrite = true;
  Prepare(other, nullptr);
  EXPECT_NE(Docs(out, "train"), first);

  // An interrupted run: shards without a manifest are not a dataset, and are cleared.
  files::Remove(out + "/manifest.json");
  std::ofstream(out + "/train-00007.h5.tmp") << "partial";
  EXPECT_THROW(ReadManifest(out), DataError);
  Prepare(o, nullptr);
  EXPECT_FALSE(files::Exists(out + "/train-00007.h5.tmp"));
  EXPECT_EQ(Docs(out, "train"), first);
}

TEST(Prepare, PreviewWritesNothing) {
  auto o = Opts(Scratch("preview"), {"qa.jsonl"});
  o.preview = 2;
  testing::internal::CaptureStdout();
  Prepare(o, nullptr);
  const std::string text = testing::internal::GetCapturedStdout();
  EXPECT_NE(text.find("[PROMPT]<s> ### Question:"), std::string::npos) << text;
  EXPECT_NE(text.find("[/PROMPT]"), std::string::npos) << text;
  EXPECT_FALSE(files::Exists(o.out_dir + "/manifest.json"));
}

}  // namespace
}  // namespace ftune::data
