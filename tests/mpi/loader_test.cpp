// The streaming loader (data/loader.h) under mpirun: every sample exactly once per epoch
// over the ranks (and at 1, 2, 3, 4 simulated dp ranks in one process), resume under another
// dp size, packing rows, tokenizer and shard errors.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "data/loader.h"
#include "data/shards.h"
#include "parallel/error.h"
#include "parallel/files.h"
#include "tests/mpi_test_env.h"

namespace ftune::data {
namespace {

constexpr int64_t kDocs = 101;
constexpr int64_t kVocab = 5000;

int64_t DocLen(int64_t i) { return 3 + (i * 7) % 11; }

// Doc i: [1, 100 + i, 1000 + i, 1000 + i, ..., 2]; mask 0 on the first two tokens.
// Written by rank 0 into 3 shards; every rank waits for it.
std::string MakeDataset(const std::string& name) {
  auto& world = testing::TestWorld();
  const auto dir = files::Join(FTUNE_BINARY_DIR, "tests/scratch/loader_" + name);
  if (world.rank() == 0) {
    files::RemoveAll(dir);
    files::CreateDirectories(dir);
    DatasetMeta meta;
    meta.tokenizer_sha256 = "feed";
    meta.vocab_size = kVocab;
    meta.bos_id = 1;
    meta.eos_ids = {2};
    meta.template_name = "synthetic";
    meta.sources_json = "[]";
    Manifest m;
    m.fingerprint = "synthetic";
    m.meta = meta;
    int64_t doc = 0;
    for (int s = 0; s < 3; ++s) {
      std::vector<int32_t> tok;
      std::vector<uint8_t> mask;
      std::vector<int64_t> off{0};
      for (; doc < kDocs * (s + 1) / 3; ++doc) {
        const int64_t n = DocLen(doc);
        for (int64_t k = 0; k < n; ++k) {
          tok.push_back(k == 0 ? 1 : k == 1 ? int32_t(100 + doc) : k == n - 1 ? 2 : int32_t(1000 + doc));
          mask.push_back(k >= 2);
        }
        off.push_back(int64_t(tok.size()));
      }
      const std::string file = ShardFileName("train", s);
      WriteShard(dir + "/" + file, meta, "train", s, tok, mask, off);
      m.train.shards.push_back(
          {file, int64_t(off.size()) - 1, int64_t(tok.size()), files::FileSize(dir + "/" + file)});
      m.train.num_docs += int64_t(off.size()) - 1;
      m.train.num_tokens += int64_t(tok.size());
    }
    WriteManifest(dir, m);
  }
  world.comm().Barrier()->Wait();
  return dir;
}

LoaderOptions Opts(const std::string& dir, int rank, int size, int64_t B = 4, int64_t T = 16) {
  LoaderOptions o;
  o.dir = dir;
  o.seq_len = T;
  o.micro_batch = B;
  o.seed = 7;
  o.dp_rank = rank;
  o.dp_size = size;
  o.prefetch = 3;
  return o;
}

std::vector<int64_t> Ids(const Batch& b) {
  return std::vector<int64_t>(b.sample_ids.data_ptr<int64_t>(),
                              b.sample_ids.data_ptr<int64_t>() + b.sample_ids.numel());
}

// One epoch over `size` simulated ranks: the global sample sequence in batch order.
std::vector<int64_t> SimulatedEpoch(const std::string& dir, int size, int64_t B) {
  std::vector<std::unique_ptr<Loader>> loaders;
  for (int r = 0; r < size; ++r) loaders.push_back(std::make_unique<Loader>(Opts(dir, r, size, B)));
  const int64_t used = loaders[0]->samples_per_epoch();
  EXPECT_EQ(used, kDocs / (B * size) * (B * size));
  std::vector<int64_t> seq;
  for (int64_t k = 0; k < used / (B * size); ++k) {
    for (auto& l : loaders) {
      auto ids = Ids(l->Next());
      seq.insert(seq.end(), ids.begin(), ids.end());
    }
  }
  return seq;
}

TEST(Loader, EverySampleOncePerEpochAcrossRealRanks) {
  auto& world = testing::TestWorld();
  const auto dir = MakeDataset("ranks");
  const int64_t B = 3;
  Loader loader(Opts(dir, world.rank(), world.world_size(), B));
  const int64_t used = loader.samples_per_epoch();
  const int64_t steps = used / (B * world.world_size());
  ASSERT_GT(steps, 0);
  std::vector<int64_t> mine;
  for (int64_t k = 0; k < steps; ++k) {
    Batch b = loader.Next();
    // The batch is cut to its longest row, rounded up to 8 (LoaderOptions::pad_to_multiple).
    int64_t longest = 0;
    for (int64_t r = 0; r < B; ++r) {
      longest = std::max(longest, std::min<int64_t>(DocLen(b.sample_ids[r].item<int64_t>()), 16));
    }
    const int64_t width = std::min<int64_t>(16, (longest + 7) / 8 * 8);
    ASSERT_EQ(b.tokens.sizes(), (std::vector<int64_t>{B, width}));
    for (int64_t r = 0; r < B; ++r) {
      const int64_t s = b.sample_ids[r].item<int64_t>();
      // Content: the document of sample s, shifted targets, response-only mask.
      EXPECT_EQ(b.tokens[r][0].item<int64_t>(), 1);
      EXPECT_EQ(b.tokens[r][1].item<int64_t>(), 100 + s);
      EXPECT_EQ(b.targets[r][0].item<int64_t>(), 100 + s);
      const int64_t n = std::min<int64_t>(DocLen(s), 17);
      for (int64_t t = 0; t < width; ++t) {
        EXPECT_EQ(b.loss_mask[r][t].item<float>(), (t + 1 >= 2 && t + 1 < n) ? 1.f : 0.f);
        EXPECT_EQ(b.positions[r][t].item<int64_t>(), t);
      }
    }
    EXPECT_FALSE(b.segment_ids.defined());
    EXPECT_EQ(b.num_targets, int64_t(b.loss_mask.sum().item<float>()));
    auto ids = Ids(b);
    mine.insert(mine.end(), ids.begin(), ids.end());
  }
  EXPECT_EQ(loader.state().epoch, 0);
  EXPECT_EQ(loader.state().cursor, used);
  auto in = torch::tensor(mine, torch::kLong);
  auto all = torch::empty({int64_t(mine.size()) * world.world_size()}, torch::kLong);
  world.comm().AllGather(in, all)->Wait();
  std::set<int64_t> seen(all.data_ptr<int64_t>(), all.data_ptr<int64_t>() + all.numel());
  EXPECT_EQ(int64_t(seen.size()), used);  // no sample twice
  EXPECT_GE(*seen.begin(), 0);
  EXPECT_LT(*seen.rbegin(), kDocs);
  // The next batch starts epoch 1 with another order.
  Batch next = loader.Next();
  EXPECT_EQ(loader.state().epoch, 1);
  EXPECT_EQ(loader.state().cursor, B * world.world_size());
}

TEST(Loader, SameGlobalOrderAtOneToFourRanks) {
  const auto dir = MakeDataset("simulated");
  const auto one = SimulatedEpoch(dir, 1, 4);
  EXPECT_EQ(std::set<int64_t>(one.begin(), one.end()).size(), one.size());
  for (int size : {2, 3, 4}) {
    const auto seq = SimulatedEpoch(dir, size, 4);
    EXPECT_EQ(std::set<int64_t>(seq.begin(), seq.end()).size(), seq.size()) << size;
    // The same permutation, cut at another batch boundary.
    ASSERT_LE(seq.size(), one.size() + 4 * size);
    for (size_t i = 0; i < std::min(seq.size(), one.size()); ++i) ASSERT_EQ(seq[i], one[i]);
  }
}

TEST(Loader, ResumeUnderAnotherDpSize) {
  const auto dir = MakeDataset("resume");
  const int64_t B = 4;
  std::vector<int64_t> seen;
  std::vector<std::unique_ptr<Loader>> two;
  for (int r = 0; r < 2; ++r) two.push_back(std::make_unique<Loader>(Opts(dir, r, 2, B)));
  for (int k = 0; k < 5; ++k) {
    for (auto& l : two) {
      auto ids = Ids(l->Next());
      seen.insert(seen.end(), ids.begin(), ids.end());
    }
  }
  const LoaderState st = two[0]->state();
  EXPECT_EQ(st.cursor, 5 * B * 2);
  EXPECT_EQ(two[1]->state().cursor, st.cursor);
  std::vector<std::unique_ptr<Loader>> three;
  for (int r = 0; r < 3; ++r) {
    three.push_back(std::make_unique<Loader>(Opts(dir, r, 3, B)));
    three.back()->Restore(st);
  }
  while (true) {
    for (auto& l : three) {
      auto ids = Ids(l->Next());
      seen.insert(seen.end(), ids.begin(), ids.end());
    }
    if (three[0]->state().cursor + B * 3 > three[0]->samples_per_epoch()) break;
  }
  EXPECT_EQ(three[0]->state().epoch, 0);
  EXPECT_EQ(std::set<int64_t>(seen.begin(), seen.end()).size(), seen.size());
  // Exactly the uninterrupted single-rank order's prefix.
  const auto one = SimulatedEpoch(dir, 1, 4);
  for (size_t i = 0; i < std::min(seen.size(), one.size()); ++i) ASSERT_EQ(seen[i], one[i]);
  EXPECT_GE(seen.size() + B * 3, size_t(kDocs / B * B) - B);
  // Restoring a state reproduces its batches exactly.
  Loader a(Opts(dir, 0, 1, B)), b(Opts(dir, 0, 1, B));
  for (int k = 0; k < 30; ++k) a.Next();  // crosses into epoch 1
  b.Restore(a.state());
  for (int k = 0; k < 3; ++k) EXPECT_EQ(Ids(a.Next()), Ids(b.Next()));
}

TEST(Loader, PackingRows) {
  const auto dir = MakeDataset("packing");
  auto o = Opts(dir, 0, 1, 2, 15);
  o.packing = true;
  Loader l(o);
  int64_t tokens = 0;
  for (int64_t i = 0; i < kDocs; ++i) tokens += DocLen(i);
  EXPECT_EQ(l.num_samples(), (tokens + 15) / 16);
  EXPECT_EQ(l.samples_per_epoch(), l.num_samples() / 2 * 2);
  std::set<int64_t> docs_seen;
  for (int64_t k = 0; k < l.samples_per_epoch() / 2; ++k) {
    Batch b = l.Next();
    ASSERT_TRUE(b.segment_ids.defined());
    for (int64_t r = 0; r < 2; ++r) {
      for (int64_t t = 0; t < 15; ++t) {
        const int64_t tok = b.tokens[r][t].item<int64_t>();
        const int64_t seg = b.segment_ids[r][t].item<int64_t>();
        const int64_t pos = b.positions[r][t].item<int64_t>();
        if (t == 0) {
          EXPECT_EQ(seg, 0);
          EXPECT_EQ(pos, 0);
        } else if (seg != b.segment_ids[r][t - 1].item<int64_t>()) {
          EXPECT_EQ(pos, 0);
          EXPECT_TRUE(tok == 1 || tok == 2) << tok;  // a document's BOS, or the last row's pad
          EXPECT_EQ(b.loss_mask[r][t - 1].item<float>(), 0.f);  // no loss across the boundary
        } else {
          EXPECT_EQ(pos, b.positions[r][t - 1].item<int64_t>() + 1);
        }
        if (tok >= 100 && tok < 100 + kDocs) docs_seen.insert(tok - 100);
        const int64_t tgt = b.targets[r][t].item<int64_t>();
        if (tgt >= 100 && tgt < 100 + kDocs) docs_seen.insert(tgt - 100);
        if (b.loss_mask[r][t].item<float>() > 0) {
          EXPECT_NE(b.targets[r][t].item<int64_t>(), 1);
        }
      }
    }
  }
  // All but the documents of the dropped last row (at most 16 tokens, documents >= 3 tokens).
  EXPECT_GE(docs_seen.size(), size_t(kDocs - 6));
}

TEST(Loader, DropLastFalseFillsEmptyRows) {
  const auto dir = MakeDataset("nodrop");
  auto o = Opts(dir, 0, 1, 8);
  o.drop_last = false;
  o.shuffle = false;
  Loader l(o);
  EXPECT_EQ(l.samples_per_epoch(), 104);
  std::vector<int64_t> ids;
  for (int k = 0; k < 13; ++k) {
    auto v = Ids(l.Next());
    ids.insert(ids.end(), v.begin(), v.end());
  }
  for (int64_t i = 0; i < kDocs; ++i) EXPECT_EQ(ids[i], i);
  for (int64_t i = kDocs; i < 104; ++i) EXPECT_EQ(ids[i], -1);
}

TEST(Loader, TokenizerMismatchAndBrokenShards) {
  auto& world = testing::TestWorld();
  const auto dir = MakeDataset("errors");
  auto o = Opts(dir, 0, 1);
  o.expected_tokenizer_sha256 = "beef";
  try {
    Loader l(o);
    FAIL() << "tokenizer mismatch accepted";
  } catch (const DataError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("feed"), std::string::npos) << msg;
    EXPECT_NE(msg.find("beef"), std::string::npos) << msg;
  }
  world.comm().Barrier()->Wait();
  const std::string shard = dir + "/train-00001.h5";
  if (world.rank() == 0) {
    std::ifstream in(shard, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), {});
    std::ofstream(shard, std::ios::binary) << bytes.substr(0, bytes.size() - 100);
  }
  world.comm().Barrier()->Wait();
  try {
    Loader l(Opts(dir, 0, 1));
    FAIL() << "truncated shard accepted";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find(shard), std::string::npos) << e.what();
  }
  world.comm().Barrier()->Wait();
  if (world.rank() == 0) files::Remove(dir + "/manifest.json");
  world.comm().Barrier()->Wait();
  EXPECT_THROW(Loader l(Opts(dir, 0, 1)), DataError);
}

}  // namespace
}  // namespace ftune::data
