// `prepare` under mpirun (data/prepare.h): the output is byte-identical to the 1-rank output,
// with the split, dedup, reject line numbers and strict errors independent of the rank count.
#include <gtest/gtest.h>

#include <fstream>

#include "data/prepare.h"
#include "data/shards.h"
#include "parallel/error.h"
#include "parallel/files.h"
#include "tests/mpi_test_env.h"

namespace ftune::data {
namespace {

const std::string kFix = std::string(FTUNE_SOURCE_DIR) + "/tests/fixtures/data";

std::string Root() { return files::Join(FTUNE_BINARY_DIR, "tests/scratch/prepare_mpi"); }

std::string ReadBytes(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Rank 0 writes three inputs (with bad lines and duplicates); all ranks wait.
std::vector<std::string> MakeInputs() {
  auto& world = testing::TestWorld();
  const std::string in = Root() + "/inputs";
  if (world.rank() == 0) {
    files::RemoveAll(Root());
    files::CreateDirectories(in);
    std::ofstream qa(in + "/a_qa.jsonl"), alp(in + "/b_alpaca.jsonl"), txt(in + "/c_text.jsonl");
    for (int i = 0; i < 300; ++i) {
      if (i % 37 == 5) qa << "{\"question\": \"broken\n";
      else if (i % 53 == 7) qa << "{\"question\": \"q\", \"answer\": 1}\n";
      else qa << "{\"question\": \"What is " << i % 120 << " times two?\", \"answer\": \"" << 2 * (i % 120) << "\"}\n";
      alp << "{\"instruction\": \"Echo " << i << "\", \"input\": \"" << (i % 3 ? "" : "x")
          << "\", \"output\": \"" << std::string(i % 40, 'a') << "\"}\n";
      if (i % 10 == 0) txt << "\n";
      txt << "{\"text\": \"the end " << std::string(i % 50, 'e') << "\"}\n";
    }
  }
  world.comm().Barrier()->Wait();
  return {in + "/*.jsonl"};
}

PrepareOptions Opts(const std::string& out, const std::vector<std::string>& inputs) {
  PrepareOptions o;
  o.tokenizer_path = kFix + "/tokenizer";
  o.out_dir = out;
  o.data.inputs = inputs;
  o.data.max_seq_len = 48;
  o.data.shard_tokens = 4096;
  o.data.split.test_ratio = 0.2;
  return o;
}

void ExpectSameDirectory(const std::string& a, const std::string& b) {
  const std::vector<std::string> names = files::ListDir(a);  // sorted
  ASSERT_EQ(names, files::ListDir(b));
  EXPECT_GE(names.size(), 4u);
  for (const auto& n : names) {
    EXPECT_EQ(ReadBytes(files::Join(a, n)), ReadBytes(files::Join(b, n))) << n << " differs";
  }
}

TEST(PrepareMpi, ByteIdenticalToOneRank) {
  auto& world = testing::TestWorld();
  const auto inputs = MakeInputs();
  for (bool count_mode : {false, true}) {
    auto o = Opts(Root() + "/parallel", inputs);
    if (count_mode) {
      o.data.split.test_count = 25;
      o.data.split.dedup = true;
      o.data.compression = 3;
      o.data.overlong = "drop";
    }
    PrepareSummary s = Prepare(o, &world.comm());
    if (world.rank() == 0) {
      auto single = o;
      single.out_dir = Root() + "/single";
      PrepareSummary s1 = Prepare(single, nullptr);
      EXPECT_EQ(s.ToJson(), s1.ToJson());
      ExpectSameDirectory(o.out_dir, single.out_dir);
      EXPECT_EQ(s.records_read, 900);
      EXPECT_GT(s.rejected["invalid_json"].count, 0);
      if (count_mode) {
        EXPECT_EQ(s.test.examples, 25);
        EXPECT_GT(s.duplicates_removed, 0);
      }
      files::RemoveAll(single.out_dir);
    }
    world.comm().Barrier()->Wait();
    if (world.rank() == 0) files::RemoveAll(o.out_dir);
    world.comm().Barrier()->Wait();
  }
}

TEST(PrepareMpi, StrictErrorIsTheSameOnEveryRank) {
  auto& world = testing::TestWorld();
  const auto inputs = MakeInputs();
  auto o = Opts(Root() + "/strict", inputs);
  o.data.strict = true;
  std::string msg;
  try {
    Prepare(o, &world.comm());
  } catch (const DataError& e) {
    msg = e.what();
  }
  EXPECT_NE(msg.find("a_qa.jsonl:6: invalid_json"), std::string::npos) << msg;
  EXPECT_FALSE(files::Exists(o.out_dir + "/manifest.json"));
}

TEST(PrepareMpi, ZeroRecordsFailsOnEveryRank) {
  auto& world = testing::TestWorld();
  auto o = Opts(Root() + "/zero", {kFix + "/empty.jsonl"});
  EXPECT_THROW(Prepare(o, &world.comm()), DataError);
  world.comm().Barrier()->Wait();
  EXPECT_FALSE(files::Exists(o.out_dir + "/manifest.json"));
}

}  // namespace
}  // namespace ftune::data
