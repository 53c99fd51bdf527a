// Generation examples per trained turn (runtime/evaluator.h) under mpirun: a chat document with
// two assistant turns gives two examples, the second one's prompt holding the first answer; a
// question/answer document gives one; eval.max_samples counts turns; batches of one turn spread
// over the data-parallel ranks and every rank gets all answers, ordered by (document, turn).
#include <gtest/gtest.h>

#include <fstream>
#include <string>
#include <vector>

#include "data/shards.h"
#include "data/tokenizer.h"
#include "models/llama.h"
#include "models/llama_config.h"
#include "parallel/files.h"
#include "parallel/process_grid.h"
#include "runtime/config.h"
#include "runtime/evaluator.h"
#include "runtime/report.h"
#include "tests/mpi_test_env.h"

namespace ftune::runtime {
namespace {

using ftune::testing::TestWorld;

const std::string kHeader = "<|start_header_id|>";
const std::string kEndHeader = "<|end_header_id|>\n\n";
const std::string kEot = "<|eot_id|>";  // id 280 of the fixture tokenizer; an EOS id here

// A test document built from text pieces, each encoded on its own with its loss mask; `runs`
// records where each trained piece starts and ends (pieces are never trained back to back).
struct Doc {
  std::vector<int32_t> tokens;
  std::vector<uint8_t> mask;
  std::vector<std::pair<size_t, size_t>> runs;

  Doc& Add(const data::Tokenizer& tok, const std::string& text, bool trained) {
    const auto ids = tok.Encode(text, /*add_special_tokens=*/false);
    if (trained) runs.emplace_back(tokens.size(), tokens.size() + ids.size());
    tokens.insert(tokens.end(), ids.begin(), ids.end());
    mask.insert(mask.end(), ids.size(), trained ? 1 : 0);
    return *this;
  }
  // The prompt the evaluator gives turn `r`: every token before it, decoded as it decodes.
  std::string Prompt(const data::Tokenizer& tok, size_t r) const {
    const std::vector<int32_t> ids(tokens.begin(), tokens.begin() + runs[r].first);
    const std::string s = tok.Decode(ids, /*skip_special_tokens=*/true);
    const auto b = s.find_first_not_of(" \t\r\n");
    return b == std::string::npos ? "" : s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
  }
};

// Llama-3 style turns: user "Say N" / assistant "N zero", user "Again" / assistant "N again".
// The first answer's run ends "<|eot_id|>\n" (a newline trained after the end of turn, as
// Qwen's template has it); the reference must stop before the <|eot_id|>.
Doc ChatDoc(const data::Tokenizer& tok, int n) {
  const std::string user = kHeader + "user" + kEndHeader;
  const std::string assistant = kHeader + "assistant" + kEndHeader;
  Doc d;
  d.Add(tok, "<s>", false)
      .Add(tok, user + "Say " + std::to_string(n) + kEot + assistant, false)
      .Add(tok, std::to_string(n) + " zero" + kEot + "\n", true)
      .Add(tok, user + "Again" + kEot + assistant, false)
      .Add(tok, std::to_string(n) + " again" + kEot, true);
  return d;
}

Doc QaDoc(const data::Tokenizer& tok) {
  Doc d;
  d.Add(tok, "<s>", false)
      .Add(tok, "### Question:\nWhat is 1?\n\n### Answer:", false)
      .Add(tok, " one</s>", true);
  return d;
}

class EvaluatorTurns : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto& world = TestWorld();
    dir_ = new std::string(files::Join(FTUNE_BINARY_DIR, "tests/scratch/evaluator_turns"));
    const std::string tok_dir = files::Join(*dir_, "tokenizer");
    if (world.rank() == 0) {
      files::RemoveAll(*dir_);
      files::CreateDirectories(tok_dir);
      const std::string fixture = files::Join(FTUNE_SOURCE_DIR, "tests/fixtures/data/tokenizer");
      for (const char* f : {"tokenizer.json", "tokenizer_config.json"}) {
        files::CopyFile(files::Join(fixture, f), files::Join(tok_dir, f), /*overwrite=*/false);
      }
      // <|eot_id|> ends a turn: an EOS id, as Llama 3's generation_config.json makes it.
      std::ofstream(files::Join(tok_dir, "generation_config.json"))
          << "{\"eos_token_id\": [2, 280]}\n";
    }
    world.comm().Barrier()->Wait();
    tok_ = new data::Tokenizer(data::Tokenizer::FromPath(tok_dir));
    docs_ = new std::vector<Doc>{ChatDoc(*tok_, 0), QaDoc(*tok_), ChatDoc(*tok_, 2)};
    if (world.rank() == 0) {
      data::DatasetMeta meta;
      meta.tokenizer_sha256 = tok_->sha256();
      meta.vocab_size = tok_->vocab_size();
      meta.bos_id = 1;
      meta.eos_ids = {2};
      meta.template_name = "synthetic";
      meta.sources_json = "[]";
      data::Manifest m;
      m.fingerprint = "synthetic";
      m.meta = meta;
      m.max_seq_len = 128;
      // Shard 0: documents 0 (chat) and 1 (qa); shard 1: document 2 (chat).
      const std::vector<std::vector<int>> shards = {{0, 1}, {2}};
      for (size_t s = 0; s < shards.size(); ++s) {
        std::vector<int32_t> tokens;
        std::vector<uint8_t> mask;
        std::vector<int64_t> off{0};
        data::DocTasks tasks;
        tasks.names = {"chat", "qa"};
        for (int d : shards[s]) {
          const Doc& doc = (*docs_)[d];
          tokens.insert(tokens.end(), doc.tokens.begin(), doc.tokens.end());
          mask.insert(mask.end(), doc.mask.begin(), doc.mask.end());
          off.push_back(static_cast<int64_t>(tokens.size()));
          tasks.ids.push_back(d == 1 ? 1 : 0);
        }
        const std::string file = data::ShardFileName("test", static_cast<int64_t>(s));
        data::WriteShard(files::Join(*dir_, file), meta, "test", static_cast<int64_t>(s), tokens,
                         mask, off, tasks);
        const int64_t docs = static_cast<int64_t>(off.size()) - 1;
        const int64_t n = static_cast<int64_t>(tokens.size());
        m.test.shards.push_back({file, docs, n, files::FileSize(files::Join(*dir_, file))});
        m.test.num_docs += docs;
        m.test.num_tokens += n;
      }
      data::WriteManifest(*dir_, m);
    }
    world.comm().Barrier()->Wait();
  }
  static void TearDownTestSuite() {
    delete docs_;
    delete tok_;
    delete dir_;
  }

  // Generation on the dataset with a tiny random model, one turn per batch.
  GenerationResult Generate(int64_t max_samples) {
    Config cfg = LoadConfig("", {}, {});
    cfg.eval.batch_size = 1;
    cfg.eval.max_new_tokens = 2;
    cfg.model.arch.vocab_size = 288;
    cfg.model.arch.hidden_size = 32;
    cfg.model.arch.intermediate_size = 64;
    cfg.model.arch.num_hidden_layers = 1;
    cfg.model.arch.num_attention_heads = 4;
    cfg.model.arch.num_key_value_heads = 2;
    parallel::ProcessGrid grid(TestWorld().comm(), ftune::testing::TestGrid(-1, 1));
    auto model = models::BuildLlama(models::LlamaConfig::FromInline(cfg.model), torch::kFloat,
                                    cfg.model.init_seed);
    model->to(grid.device());
    model->eval();
    Evaluator evaluator(cfg, *dir_, *tok_, grid);
    EXPECT_EQ(evaluator.num_test_examples(), 3);  // documents
    return evaluator.Generate(*model, max_samples);
  }

  static std::string* dir_;
  static data::Tokenizer* tok_;
  static std::vector<Doc>* docs_;
};

std::string* EvaluatorTurns::dir_ = nullptr;
data::Tokenizer* EvaluatorTurns::tok_ = nullptr;
std::vector<Doc>* EvaluatorTurns::docs_ = nullptr;

TEST_F(EvaluatorTurns, OneExamplePerTrainedTurn) {
  const GenerationResult g = Generate(-1);
  struct Want {
    int64_t index, turn;
    std::string reference, task;
  };
  const std::vector<Want> want = {{0, 0, "0 zero", "chat"}, {0, 1, "0 again", "chat"},
                                  {1, 0, "one", "qa"},      {2, 0, "2 zero", "chat"},
                                  {2, 1, "2 again", "chat"}};
  ASSERT_EQ(g.answers.size(), want.size());
  EXPECT_EQ(g.totals.examples, static_cast<int64_t>(want.size()));
  for (size_t i = 0; i < want.size(); ++i) {
    const ExampleAnswer& a = g.answers[i];
    const Want& w = want[i];
    SCOPED_TRACE("document " + std::to_string(w.index) + " turn " + std::to_string(w.turn));
    EXPECT_EQ(a.index, w.index);
    EXPECT_EQ(a.turn, w.turn);
    EXPECT_EQ(a.reference, w.reference);
    EXPECT_EQ(a.task, w.task);
    EXPECT_EQ(a.prompt, (*docs_)[w.index].Prompt(*tok_, w.turn));
  }
  // The first turn's prompt is the conversation up to it; the second's holds the first answer
  // and the next question, not its own answer.
  EXPECT_NE(g.answers[0].prompt.find("Say 0"), std::string::npos) << g.answers[0].prompt;
  EXPECT_EQ(g.answers[0].prompt.find("zero"), std::string::npos) << g.answers[0].prompt;
  EXPECT_EQ(g.answers[0].prompt.find("Again"), std::string::npos) << g.answers[0].prompt;
  const std::string& second = g.answers[1].prompt;
  EXPECT_NE(second.find("Say 0"), std::string::npos) << second;
  EXPECT_NE(second.find("0 zero"), std::string::npos) << second;
  EXPECT_NE(second.find("Again"), std::string::npos) << second;
  EXPECT_EQ(second.find("again"), std::string::npos) << second;
  EXPECT_EQ(g.answers[2].prompt, "### Question:\nWhat is 1?\n\n### Answer:");

  // Per-task totals stay by the document's label, counting turns.
  const auto per = TotalsPerTask(g);
  ASSERT_EQ(per.size(), 2u);
  EXPECT_EQ(per.at("chat").examples, 4);
  EXPECT_EQ(per.at("qa").examples, 1);
}

TEST_F(EvaluatorTurns, MaxSamplesCountsTurns) {
  const GenerationResult g = Generate(3);
  ASSERT_EQ(g.answers.size(), 3u);
  EXPECT_EQ(g.answers[0].index, 0);
  EXPECT_EQ(g.answers[0].turn, 0);
  EXPECT_EQ(g.answers[1].index, 0);
  EXPECT_EQ(g.answers[1].turn, 1);
  EXPECT_EQ(g.answers[2].index, 1);
  EXPECT_EQ(g.answers[2].turn, 0);
  EXPECT_TRUE(Generate(0).answers.empty());
}

}  // namespace
}  // namespace ftune::runtime
