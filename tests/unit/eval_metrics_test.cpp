// Eval arithmetic on hand-computed cases: normalisation, exact match, token F1, perplexity,
// and the report's loss-curve SVG, markdown cells and per-task table.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "parallel/error.h"
#include "parallel/files.h"
#include "runtime/eval_metrics.h"
#include "runtime/metrics.h"
#include "runtime/trainer.h"
#include "runtime/report.h"

namespace ftune::runtime {
namespace {

TEST(Normalize, WhitespaceAlwaysCollapsedAndStripped) {
  EXPECT_EQ(NormalizeAnswer("  42 \n", "none"), "42");
  EXPECT_EQ(NormalizeAnswer("a \t b\n\nc", "none"), "a b c");
  EXPECT_EQ(NormalizeAnswer("Paris.", "none"), "Paris.");
  EXPECT_EQ(NormalizeAnswer("", "none"), "");
  EXPECT_EQ(NormalizeAnswer(" \n ", "none"), "");
}

TEST(Normalize, LowerAndPunct) {
  EXPECT_EQ(NormalizeAnswer("Paris", "lower"), "paris");
  EXPECT_EQ(NormalizeAnswer("Paris.", "lower"), "paris.");
  EXPECT_EQ(NormalizeAnswer("Paris.", "punct"), "Paris");
  EXPECT_EQ(NormalizeAnswer(" It's  ( 3 ) !", "lower,punct"), "its 3");
  EXPECT_EQ(NormalizeAnswer("Ünïcode!", "lower,punct"), "Ünïcode");  // non-ASCII untouched
  EXPECT_THROW(NormalizeAnswer("x", "upper"), ConfigError);
}

TEST(ExactMatch, AfterNormalisation) {
  EXPECT_TRUE(ExactMatch(" 42", "42", "none"));
  EXPECT_FALSE(ExactMatch("42.", "42", "none"));
  EXPECT_TRUE(ExactMatch("42.", "42", "punct"));
  EXPECT_FALSE(ExactMatch("Yes", "yes", "punct"));
  EXPECT_TRUE(ExactMatch("Yes!", "yes", "lower,punct"));
  EXPECT_TRUE(ExactMatch("", "  ", "none"));
}

TEST(TokenF1, HandComputed) {
  // pred {the, cat, sat}, ref {the, cat, sat, down}: P = 3/3, R = 3/4, F1 = 2*1*0.75/1.75.
  EXPECT_NEAR(TokenF1("the cat sat", "the cat sat down", "none"), 2 * 0.75 / 1.75, 1e-12);
  // Multiset: pred {a, a, b}, ref {a, b, b}: common = a + b = 2; P = R = 2/3; F1 = 2/3.
  EXPECT_NEAR(TokenF1("a a b", "a b b", "none"), 2.0 / 3.0, 1e-12);
  EXPECT_DOUBLE_EQ(TokenF1("x", "y", "none"), 0.0);
  EXPECT_DOUBLE_EQ(TokenF1("", "", "none"), 1.0);
  EXPECT_DOUBLE_EQ(TokenF1("", "y", "none"), 0.0);
  EXPECT_DOUBLE_EQ(TokenF1("y", "", "none"), 0.0);
  EXPECT_DOUBLE_EQ(TokenF1("The Cat.", "the cat", "lower,punct"), 1.0);
  // Case matters without "lower": pred {The, cat}, ref {the, cat}: P = R = 1/2.
  EXPECT_NEAR(TokenF1("The cat", "the cat", "none"), 0.5, 1e-12);
}

TEST(LossTotals, TokenWeightedMeanAndPerplexity) {
  // Two batches: 3 targets with NLL sum 3*ln 2, 1 target with NLL ln 16. Token-weighted mean =
  // (3 ln2 + 4 ln2) / 4 = 7/4 ln 2 (a mean of batch means would give (ln2 + 4 ln2)/2).
  LossTotals t;
  t.nll_sum = 3 * std::log(2.0) + std::log(16.0);
  t.targets = 4;
  EXPECT_NEAR(t.MeanNll(), 1.75 * std::log(2.0), 1e-12);
  EXPECT_NEAR(t.Perplexity(), std::pow(2.0, 1.75), 1e-12);
  // A uniform model over V tokens has perplexity V.
  LossTotals u;
  u.nll_sum = 10 * std::log(281.0);
  u.targets = 10;
  EXPECT_NEAR(u.Perplexity(), 281.0, 1e-9);
  EXPECT_TRUE(std::isnan(LossTotals{}.MeanNll()));
}

TEST(GenerationTotals, Rates) {
  GenerationTotals g;
  g.examples = 4;
  g.exact = 1;
  g.f1_sum = 0.5 + 1 + 0 + 0.25;
  EXPECT_DOUBLE_EQ(g.ExactMatchRate(), 0.25);
  EXPECT_DOUBLE_EQ(g.MeanF1(), 0.4375);
  EXPECT_TRUE(std::isnan(GenerationTotals{}.ExactMatchRate()));
}

TEST(Report, LossCurveSvgKeepsTheLastRun) {
  const std::string metrics =
      "{\"step\":1,\"loss\":5.0}\n{\"step\":2,\"loss\":4.0}\n"
      "{\"step\":1,\"loss\":9.0}\n{\"step\":2,\"loss\":3.0}\n"
      "{\"step\":2,\"eval_loss\":3.5,\"eval_ppl\":33.1}\n"
      "{\"step\":3,\"loss\":null}\nnot json\n";
  const std::string svg = LossCurveSvg(metrics);
  ASSERT_FALSE(svg.empty());
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_NE(svg.find("</svg>"), std::string::npos);
  EXPECT_EQ(svg.find("nan"), std::string::npos);
  // y axis spans the last run (3.0 .. 9.0 padded), not the first run's 4.0/5.0 only.
  EXPECT_NE(svg.find("eval loss"), std::string::npos);
  EXPECT_TRUE(LossCurveSvg("").empty());
  EXPECT_TRUE(LossCurveSvg("{\"step\":1}\n").empty());
}

// One model's generation result from (task, exact) pairs.
GenerationResult Answers(const std::vector<std::pair<std::string, bool>>& tasks_exact) {
  GenerationResult g;
  for (const auto& [task, exact] : tasks_exact) {
    ExampleAnswer a;
    a.index = static_cast<int64_t>(g.answers.size());
    a.prompt = "q" + std::to_string(a.index);
    a.reference = "r";
    a.answer = exact ? "r" : "x";
    a.task = task;
    a.exact = exact;
    a.f1 = exact ? 1 : 0;
    g.totals.examples += 1;
    g.totals.exact += exact;
    g.totals.f1_sum += a.f1;
    g.answers.push_back(a);
  }
  return g;
}

TEST(Report, ExactMatchPerTask) {
  const auto per = TotalsPerTask(Answers({{"b", true}, {"a", false}, {"b", false}, {"", true}}));
  ASSERT_EQ(per.size(), 3u);
  EXPECT_EQ(per.at("b").examples, 2);
  EXPECT_EQ(per.at("b").exact, 1);
  EXPECT_EQ(per.at("").exact, 1);  // the unlabelled ones
  EXPECT_TRUE(TotalsPerTask(Answers({{"", true}, {"", false}})).empty());

  const std::string dir = files::Join(FTUNE_BINARY_DIR, "tests/scratch/report_tasks");
  files::RemoveAll(dir);
  EvalReport r;
  r.run_name = "t";
  r.model.label = "finetuned";
  r.model.generation = Answers({{"caps", true}, {"caps", true}, {"parity", false}});
  r.base = ModelEval{};
  r.base->label = "base";
  r.base->generation = Answers({{"caps", false}, {"caps", true}, {"parity", false}});
  const std::string md_path = WriteEvalReport(r, dir);
  std::stringstream md;
  md << std::ifstream(md_path).rdbuf();
  EXPECT_NE(md.str().find("| task | examples | base | finetuned |\n| --- | ---: | ---: | ---: |\n"
                          "| caps | 2 | 50.0% (1/2) | 100.0% (2/2) |\n"
                          "| parity | 1 | 0.0% (0/1) | 0.0% (0/1) |\n"),
            std::string::npos)
      << md.str();
  const auto j = nlohmann::json::parse(std::ifstream(files::Join(dir, "eval.json")));
  EXPECT_EQ(j["model"]["tasks"]["caps"]["exact"], 2);
  EXPECT_EQ(j["base"]["tasks"]["caps"]["exact_match"], 0.5);
  std::ifstream ex(files::Join(dir, "eval_examples.jsonl"));
  std::string first;
  std::getline(ex, first);
  EXPECT_EQ(nlohmann::json::parse(first)["task"], "caps");

  // No labels: no per-task section, no "tasks" key.
  r.model.generation = Answers({{"", true}});
  r.base.reset();
  WriteEvalReport(r, dir);
  std::stringstream md2;
  md2 << std::ifstream(md_path).rdbuf();
  EXPECT_EQ(md2.str().find("per task"), std::string::npos);
  const auto j2 = nlohmann::json::parse(std::ifstream(files::Join(dir, "eval.json")));
  EXPECT_FALSE(j2["model"].contains("tasks"));
}

// Two models' answers per (document, turn), the base model missing one turn: the examples file
// keys them by both, and the report numbers multi-turn examples "document.turn".
TEST(Report, ExamplesPerTurn) {
  auto answer = [](int64_t index, int64_t turn, const std::string& text) {
    ExampleAnswer a;
    a.index = index;
    a.turn = turn;
    a.prompt = "p" + std::to_string(index) + "." + std::to_string(turn);
    a.reference = "r";
    a.answer = text;
    a.exact = text == "r";
    a.f1 = a.exact ? 1 : 0;
    return a;
  };
  const std::string dir = files::Join(FTUNE_BINARY_DIR, "tests/scratch/report_turns");
  files::RemoveAll(dir);
  EvalReport r;
  r.run_name = "t";
  r.model.generation = GenerationResult{};
  r.model.generation->answers = {answer(0, 0, "r"), answer(0, 1, "x"), answer(1, 0, "r")};
  r.base = ModelEval{};
  r.base->generation = GenerationResult{};
  r.base->generation->answers = {answer(0, 0, "x"), answer(1, 0, "x")};
  const std::string md_path = WriteEvalReport(r, dir);
  std::ifstream ex(files::Join(dir, "eval_examples.jsonl"));
  std::vector<nlohmann::json> lines;
  for (std::string line; std::getline(ex, line);) lines.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[1]["index"], 0);
  EXPECT_EQ(lines[1]["turn"], 1);
  EXPECT_EQ(lines[1]["prompt"], "p0.1");
  EXPECT_EQ(lines[1]["answer"], "x");
  EXPECT_FALSE(lines[1].contains("base_answer"));
  EXPECT_EQ(lines[2]["index"], 1);
  EXPECT_EQ(lines[2]["turn"], 0);
  EXPECT_EQ(lines[2]["base_answer"], "x");
  std::stringstream md;
  md << std::ifstream(md_path).rdbuf();
  EXPECT_NE(md.str().find("| 0.1 | p0.1 | r | – | ❌ x |"), std::string::npos) << md.str();
  EXPECT_NE(md.str().find("| 1.0 | p1.0 | r | ❌ x | ✅ r |"), std::string::npos) << md.str();
}

TEST(Report, MarkdownCell) {
  EXPECT_EQ(MarkdownCell("a|b\nc"), "a\\|b<br>c");
  EXPECT_EQ(MarkdownCell(""), "∅");
  EXPECT_EQ(MarkdownCell("abcdef", 3), "abc…");
}

// MFU in metrics.jsonl: the formula of `ftune bench train` (FLOPs per token of one tp shard x
// global tokens / step wall time incl. data wait / dp, over the peak), and the report's section.
TEST(Metrics, MfuAndMemoryPerStep) {
  ThroughputModel tm;
  tm.flops_per_token = 6e9;
  tm.dp = 4;
  tm.peak_flops = 989e12;
  EXPECT_DOUBLE_EQ(ModelFlopsPerDevice(tm, 32768, 0.5), 6e9 * 32768 / 0.5 / 4);
  EXPECT_EQ(KnownPeakTflops("NVIDIA H100 80GB HBM3", c10::kBFloat16), 989);
  EXPECT_EQ(KnownPeakTflops("NVIDIA H100 80GB HBM3", c10::kFloat), 0);
  EXPECT_EQ(KnownPeakTflops("cpu", c10::kBFloat16), 0);

  const std::string path = std::string(FTUNE_BINARY_DIR) + "/tests/scratch/step_logger.jsonl";
  files::CreateDirectories(files::Parent(path));
  std::remove(path.c_str());
  LogConfig lc;
  lc.every = 1000;
  {
    StepLogger logger(lc, path, tm);
    StepStats s;
    s.step = 1;
    s.loss = 2.5;
    s.tokens = 32768;
    s.seconds = 0.4;
    s.data_wait = 0.1;
    s.host_rss_max = int64_t(3) << 30;
    s.device_memory = {int64_t(10) << 30, int64_t(12) << 30, int64_t(11) << 30};
    logger.Log(s, 10);
    tm.peak_flops = 0;
    StepLogger cpu(lc, path, tm);
    s.step = 2;
    s.device_memory = {};
    cpu.Log(s, 10);
  }
  std::ifstream in(path);
  std::string a, b;
  std::getline(in, a);
  std::getline(in, b);
  const auto j = nlohmann::json::parse(a), k = nlohmann::json::parse(b);
  const double device_flops = 6e9 * 32768 / 0.5 / 4;
  EXPECT_DOUBLE_EQ(j["model_tflops_per_device"].get<double>(), device_flops / 1e12);
  EXPECT_DOUBLE_EQ(j["mfu"].get<double>(), device_flops / 989e12);
  EXPECT_EQ(j["host_rss_max_bytes"].get<int64_t>(), int64_t(3) << 30);
  EXPECT_EQ(j["device_peak_bytes"].get<int64_t>(), int64_t(11) << 30);
  EXPECT_EQ(j["device_reserved_bytes"].get<int64_t>(), int64_t(12) << 30);
  EXPECT_FALSE(k.contains("mfu"));  // no peak known: omitted, not 0
  EXPECT_FALSE(k.contains("device_peak_bytes"));

  std::ifstream again(path);
  std::stringstream text;
  text << again.rdbuf();
  const std::string md = TrainingSection(text.str());
  EXPECT_NE(md.find("## Training"), std::string::npos) << md;
  EXPECT_NE(md.find("peak host memory 3.00 GiB"), std::string::npos) << md;
  EXPECT_NE(md.find("peak device memory 11.00 GiB"), std::string::npos) << md;
  EXPECT_EQ(TrainingSection("{\"step\": 1, \"eval_loss\": 2}\n"), "");
}

}  // namespace
}  // namespace ftune::runtime
