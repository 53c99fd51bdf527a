// HDF5 shards and the manifest (data/shards.h): round trip, hyperslab reads, byte-identical
// rewrites, truncated and corrupt files.
#include "data/shards.h"

#include <gtest/gtest.h>
#include <hdf5.h>

#include <fstream>
#include <thread>

#include "parallel/error.h"
#include "parallel/files.h"

namespace ftune::data {
namespace {

std::string Scratch(const std::string& name) {
  auto dir = files::Join(FTUNE_BINARY_DIR, "tests/scratch/shards_" + name);
  files::RemoveAll(dir);
  files::CreateDirectories(dir);
  return dir;
}

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

DatasetMeta Meta() {
  DatasetMeta m;
  m.tokenizer_sha256 = "abc";
  m.vocab_size = 1000;
  m.bos_id = 1;
  m.eos_ids = {2};
  m.template_name = "qa";
  m.sources_json = R"([{"path":"x.jsonl","sha256":"00","bytes":3}])";
  return m;
}

void Sample(int64_t n, std::vector<int32_t>* tok, std::vector<uint8_t>* mask,
            std::vector<int64_t>* off) {
  tok->clear();
  mask->clear();
  *off = {0};
  for (int64_t i = 0; i < n; ++i) {
    tok->push_back(static_cast<int32_t>(i % 997));
    mask->push_back(i % 3 == 0);
    if (i % 10 == 9) off->push_back(i + 1);
  }
  if (off->back() != n) off->push_back(n);
}

TEST(Shards, RoundTripAndHyperslabs) {
  const auto dir = Scratch("roundtrip");
  std::vector<int32_t> tok;
  std::vector<uint8_t> mask;
  std::vector<int64_t> off;
  Sample(100005, &tok, &mask, &off);
  for (int compression : {0, 4}) {
    DatasetMeta meta = Meta();
    meta.compression = compression;
    const std::string path = dir + "/" + ShardFileName("train", compression);
    WriteShard(path, meta, "train", 0, tok, mask, off);
    EXPECT_FALSE(files::Exists(path + ".tmp"));
    ShardReader r(path);
    EXPECT_EQ(r.num_tokens(), 100005);
    EXPECT_EQ(r.doc_offsets(), off);
    EXPECT_EQ(r.tokenizer_sha256(), "abc");
    EXPECT_EQ(r.split(), "train");
    EXPECT_EQ(r.eos_id(), 2);
    std::vector<int32_t> t(777);
    std::vector<uint8_t> m(777);
    r.Read(65530, 777, t.data(), m.data());  // crosses a chunk boundary
    for (int i = 0; i < 777; ++i) {
      ASSERT_EQ(t[i], tok[65530 + i]);
      ASSERT_EQ(m[i], mask[65530 + i]);
    }
    std::vector<int32_t> all_t;
    std::vector<uint8_t> all_m;
    r.ReadAll(&all_t, &all_m);
    EXPECT_EQ(all_t, tok);
    EXPECT_EQ(all_m, mask);
  }
}

TEST(Shards, DocTasksRoundTripOrAbsent) {
  const auto dir = Scratch("tasks");
  std::vector<int32_t> tok;
  std::vector<uint8_t> mask;
  std::vector<int64_t> off;
  Sample(40, &tok, &mask, &off);  // 4 documents
  WriteShard(dir + "/plain.h5", Meta(), "test", 0, tok, mask, off);
  EXPECT_EQ(ShardReader(dir + "/plain.h5").doc_task(3), "");
  WriteShard(dir + "/tasks.h5", Meta(), "test", 0, tok, mask, off,
             {{"capitals", "even|odd"}, {1, -1, 0, 1}});
  ShardReader r(dir + "/tasks.h5");
  EXPECT_EQ(r.doc_task(0), "even|odd");
  EXPECT_EQ(r.doc_task(1), "");
  EXPECT_EQ(r.doc_task(2), "capitals");
  EXPECT_EQ(r.doc_task(3), "even|odd");
  // An id outside the label table is a corrupt shard.
  WriteShard(dir + "/bad.h5", Meta(), "test", 0, tok, mask, off, {{"a"}, {0, 1, 0, 0}});
  try {
    ShardReader bad(dir + "/bad.h5");
    FAIL() << "no error";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("bad.h5: /doc_task holds 1"), std::string::npos)
        << e.what();
  }
}

TEST(Shards, RewriteIsByteIdentical) {
  const auto dir = Scratch("identical");
  std::vector<int32_t> tok;
  std::vector<uint8_t> mask;
  std::vector<int64_t> off;
  Sample(5000, &tok, &mask, &off);
  WriteShard(dir + "/a.h5", Meta(), "test", 3, tok, mask, off);
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));  // a timestamp would differ
  WriteShard(dir + "/b.h5", Meta(), "test", 3, tok, mask, off);
  EXPECT_EQ(ReadBytes(dir + "/a.h5"), ReadBytes(dir + "/b.h5"));
}

TEST(Shards, TruncatedAndCorruptFilesNameTheFile) {
  const auto dir = Scratch("corrupt");
  std::vector<int32_t> tok;
  std::vector<uint8_t> mask;
  std::vector<int64_t> off;
  Sample(5000, &tok, &mask, &off);
  const std::string path = dir + "/train-00000.h5";
  WriteShard(path, Meta(), "train", 0, tok, mask, off);
  const std::string bytes = ReadBytes(path);

  {  // truncated
    std::ofstream(path, std::ios::binary) << bytes.substr(0, bytes.size() / 2);
    try {
      ShardReader r(path);
      FAIL() << "truncated shard accepted";
    } catch (const DataError& e) {
      EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    }
  }
  {  // garbage
    std::ofstream(path, std::ios::binary) << std::string(bytes.size(), 'x');
    EXPECT_THROW(ShardReader r(path), DataError);
  }
  {  // a valid HDF5 file that is not a shard
    std::vector<int64_t> bad_off = {0, 10, 5, 5000};
    WriteShard(path, Meta(), "train", 0, tok, mask, off);
    auto b = ReadBytes(path);
    std::string needle(reinterpret_cast<const char*>(off.data()), 8 * 4);
    auto at = b.find(needle);
    ASSERT_NE(at, std::string::npos);
    b.replace(at, needle.size(), std::string(reinterpret_cast<const char*>(bad_off.data()), 32));
    std::ofstream(path, std::ios::binary) << b;
    try {
      ShardReader r(path);
      FAIL() << "corrupt doc_offsets accepted";
    } catch (const DataError& e) {
      EXPECT_NE(std::string(e.what()).find("doc_offsets"), std::string::npos) << e.what();
    }
  }
}

TEST(Shards, ManifestRoundTripAndMissing) {
  const auto dir = Scratch("manifest");
  EXPECT_THROW(ReadManifest(dir), DataError);
  Manifest m;
  m.fingerprint = "f";
  m.meta = Meta();
  m.max_seq_len = 64;
  m.train.num_docs = 3;
  m.train.num_tokens = 30;
  m.train.shards.push_back({"train-00000.h5", 3, 30, 1234});
  WriteManifest(dir, m);
  Manifest r = ReadManifest(dir);
  EXPECT_EQ(r.fingerprint, "f");
  EXPECT_EQ(r.train.shards.at(0).bytes, 1234);
  EXPECT_EQ(r.test.shards.size(), 0u);
  EXPECT_EQ(r.meta.eos_ids, std::vector<int64_t>{2});
}

// ReadStringAttr read an array of strings into a buffer for one: a heap overflow (found with
// fuzz_shard under ASan). Any attribute that is not one fixed-length string is now an error.
TEST(Shards, StringAttributeArrayIsAnError) {
  const auto dir = Scratch("string_array");
  std::vector<int32_t> tok;
  std::vector<uint8_t> mask;
  std::vector<int64_t> off;
  Sample(100, &tok, &mask, &off);
  const std::string path = dir + "/train-00000.h5";
  WriteShard(path, Meta(), "train", 0, tok, mask, off);
  {
    std::lock_guard<std::mutex> lock(Hdf5Mutex());
    const hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    ASSERT_GE(file, 0);
    ASSERT_GE(H5Adelete(file, "split"), 0);
    const hid_t type = H5Tcopy(H5T_C_S1);
    H5Tset_size(type, 5);
    const hsize_t n = 4;
    const hid_t space = H5Screate_simple(1, &n, nullptr);
    const hid_t attr = H5Acreate2(file, "split", type, space, H5P_DEFAULT, H5P_DEFAULT);
    ASSERT_GE(H5Awrite(attr, type, "trainvalidtest_xyz_"), 0);
    H5Aclose(attr);
    H5Sclose(space);
    H5Tclose(type);
    H5Fclose(file);
  }
  try {
    ShardReader r(path);
    FAIL() << "an array of strings accepted as the split";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("'split' is not one fixed-length string"), std::string::npos)
        << e.what();
  }
}

// Integers of the manifest given as floats: json's get<int64_t>() truncated 2.5 and was undefined
// for 1e300 (found with fuzz_manifest under UBSan).
TEST(Shards, ManifestNumbersMustBeIntegers) {
  const auto dir = Scratch("manifest_ints");
  Manifest m;
  m.meta = Meta();
  m.train.shards.push_back({"train-00000.h5", 3, 30, 1234});
  WriteManifest(dir, m);
  const std::string path = dir + "/" + kManifestName;
  const std::string good = ReadBytes(path);
  auto expect = [&](const std::string& from, const std::string& to, const std::string& what) {
    std::string text = good;
    const size_t at = text.find(from);
    ASSERT_NE(at, std::string::npos) << from;
    std::ofstream(path, std::ios::binary) << text.replace(at, from.size(), to);
    try {
      ReadManifest(dir);
      ADD_FAILURE() << "accepted " << to;
    } catch (const DataError& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  expect("\"vocab_size\": 1000", "\"vocab_size\": 1e300", "vocab_size is 1e+300, not an integer");
  expect("\"bytes\": 1234", "\"bytes\": 12.5", "bytes is 12.5, not an integer");
  expect("\"compression\": 0", "\"compression\": 4294967296", "compression 4294967296 is not");
  expect("\"eos_ids\": [\n  2\n ]", "\"eos_ids\": [2.5]", "eos_ids holds 2.5");
}

}  // namespace
}  // namespace ftune::data
