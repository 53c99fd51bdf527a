// The width of the loader's micro-batches (data/loader.h): unpacked batches are cut to their
// longest row rounded up to pad_to_multiple (at most seq_len), with the same content as the
// full-width batch of the same samples; packed batches stay seq_len wide.
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>

#include "data/loader.h"
#include "data/shards.h"
#include "parallel/error.h"
#include "parallel/files.h"

namespace ftune::data {
namespace {

constexpr int64_t kSeqLen = 256;

// Doc i has DocLen(i) tokens [1, 10 + i, ..., 2]; mask 1 after the first two tokens.
int64_t DocLen(int64_t i) { return i == 5 ? 300 : 5 + (i * 3) % 17; }

std::string MakeDataset(const std::string& name, int64_t docs) {
  const auto dir = files::Join(FTUNE_BINARY_DIR, "tests/scratch/loader_width_" + name);
  files::RemoveAll(dir);
  files::CreateDirectories(dir);
  DatasetMeta meta;
  meta.tokenizer_sha256 = "feed";
  meta.vocab_size = 1000;
  meta.bos_id = 1;
  meta.eos_ids = {2};
  meta.template_name = "synthetic";
  meta.sources_json = "[]";
  std::vector<int32_t> tok;
  std::vector<uint8_t> mask;
  std::vector<int64_t> off{0};
  for (int64_t d = 0; d < docs; ++d) {
    const int64_t n = DocLen(d);
    for (int64_t k = 0; k < n; ++k) {
      tok.push_back(k == 0 ? 1 : k == n - 1 ? 2 : int32_t(10 + d));
      mask.push_back(k >= 2);
    }
    off.push_back(int64_t(tok.size()));
  }
  const std::string file = ShardFileName("train", 0);
  WriteShard(dir + "/" + file, meta, "train", 0, tok, mask, off);
  Manifest m;
  m.fingerprint = "synthetic";
  m.meta = meta;
  m.train.shards.push_back({file, docs, int64_t(tok.size()), files::FileSize(dir + "/" + file)});
  m.train.num_docs = docs;
  m.train.num_tokens = int64_t(tok.size());
  WriteManifest(dir, m);
  return dir;
}

LoaderOptions Opts(const std::string& dir, int64_t multiple) {
  LoaderOptions o;
  o.dir = dir;
  o.seq_len = kSeqLen;
  o.micro_batch = 4;
  o.pad_to_multiple = multiple;
  o.shuffle = false;  // batch k holds documents 4k .. 4k+3
  return o;
}

int64_t Longest(int64_t k) {
  int64_t n = 0;
  for (int64_t d = 4 * k; d < 4 * k + 4; ++d) n = std::max(n, std::min(DocLen(d), kSeqLen));
  return n;
}

TEST(LoaderWidth, UnpackedBatchIsItsLongestRowRoundedUp) {
  const auto dir = MakeDataset("unpacked", 16);
  for (int64_t multiple : {1, 8, 64}) {
    Loader cut(Opts(dir, multiple));
    for (int64_t k = 0; k < 4; ++k) {
      const Batch b = cut.Next();
      const int64_t want = std::min(kSeqLen, (Longest(k) + multiple - 1) / multiple * multiple);
      EXPECT_EQ(b.tokens.sizes(), (std::vector<int64_t>{4, want})) << "multiple " << multiple;
      for (const auto& t : {b.targets, b.loss_mask, b.positions}) {
        EXPECT_EQ(t.sizes(), b.tokens.sizes()) << "multiple " << multiple;
      }
      EXPECT_FALSE(b.segment_ids.defined());
    }
  }
  // Batch 1 holds the 300-token document: seq_len wide whatever the multiple.
  Loader one(Opts(dir, 1));
  one.Next();
  EXPECT_EQ(one.Next().tokens.size(1), kSeqLen);
}

TEST(LoaderWidth, CutBatchIsThePrefixOfTheFullWidthBatch) {
  const auto dir = MakeDataset("prefix", 16);
  Loader cut(Opts(dir, 8));
  Loader full(Opts(dir, kSeqLen));  // rounds every batch up to seq_len: the old width
  for (int64_t k = 0; k < 4; ++k) {
    const Batch c = cut.Next(), f = full.Next();
    ASSERT_EQ(f.tokens.size(1), kSeqLen);
    const int64_t w = c.tokens.size(1);
    EXPECT_LT(w, k == 1 ? kSeqLen + 1 : 32) << k;
    EXPECT_TRUE(torch::equal(c.tokens, f.tokens.slice(1, 0, w))) << k;
    EXPECT_TRUE(torch::equal(c.targets, f.targets.slice(1, 0, w))) << k;
    EXPECT_TRUE(torch::equal(c.loss_mask, f.loss_mask.slice(1, 0, w))) << k;
    EXPECT_TRUE(torch::equal(c.positions, f.positions.slice(1, 0, w))) << k;
    // Nothing trained on was cut.
    EXPECT_EQ(f.loss_mask.slice(1, w).sum().item<float>(), 0.f) << k;
    EXPECT_EQ(c.num_targets, f.num_targets) << k;
    EXPECT_TRUE(torch::equal(c.sample_ids, f.sample_ids)) << k;
  }
  // The loader's position does not depend on the width: a restored loader goes on alike.
  EXPECT_EQ(cut.state().cursor, full.state().cursor);
  Loader again(Opts(dir, 8));
  again.Restore(cut.state());
  const Batch a = again.Next(), c = cut.Next();
  EXPECT_TRUE(torch::equal(a.tokens, c.tokens));
  EXPECT_TRUE(torch::equal(a.sample_ids, c.sample_ids));
}

TEST(LoaderWidth, ContextParallelRanksGetTheirChunksOfOneWidth) {
  const auto dir = MakeDataset("cp", 16);
  auto o = Opts(dir, 1);
  Loader one(o);
  o.cp_size = 2;  // the width is a multiple of 2 * 2 = 4 (pad_to_multiple 1)
  std::vector<std::unique_ptr<Loader>> ranks;
  for (int r = 0; r < 2; ++r) {
    o.cp_rank = r;
    ranks.push_back(std::make_unique<Loader>(o));
  }
  for (int64_t k = 0; k < 4; ++k) {
    const Batch whole = one.Next();
    const int64_t width = k == 1 ? kSeqLen : (Longest(k) + 3) / 4 * 4;  // batch 1: seq_len
    int64_t targets = 0;
    for (auto& l : ranks) {
      const Batch b = l->Next();
      EXPECT_EQ(b.tokens.sizes(), (std::vector<int64_t>{4, width / 2})) << k;
      targets += b.num_targets;
    }
    EXPECT_EQ(targets, whole.num_targets) << k;
  }
}

TEST(LoaderWidth, FillerRowsOnlyAndPackedRows) {
  const auto dir = MakeDataset("filler", 5);
  auto o = Opts(dir, 8);
  o.drop_last = false;  // batch 1: document 4 and three empty rows; batch 2 (epoch 1) again
  Loader l(o);
  EXPECT_EQ(l.Next().tokens.size(1), 16);  // documents 0-3: 5 to 14 tokens
  const Batch b = l.Next();
  EXPECT_EQ(b.tokens.size(1), 24);  // document 4 has 17 tokens
  EXPECT_EQ(b.sample_ids[1].item<int64_t>(), -1);
  o.packing = true;
  Loader packed(o);
  EXPECT_EQ(packed.Next().tokens.size(1), kSeqLen);
  o.packing = false;
  o.pad_to_multiple = 0;
  EXPECT_THROW(Loader bad(o), ConfigError);
}

}  // namespace
}  // namespace ftune::data
