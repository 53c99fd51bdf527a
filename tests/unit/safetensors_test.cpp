// safetensors reader/writer: round trips, sharding, slices, and every malformed-file case.
#include "models/safetensors.h"

#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "parallel/error.h"
#include "parallel/files.h"

namespace files = ftune::files;
using ftune::IoError;
using ftune::models::NamedTensors;
using ftune::models::SafetensorsCheckpoint;
using ftune::models::SafetensorsFile;

namespace {

std::string TempDir(const std::string& name) {
  auto d = files::Join(FTUNE_BINARY_DIR, "test_tmp/safetensors/" + name);
  files::RemoveAll(d);
  files::CreateDirectories(d);
  return d;
}

// Writes a raw safetensors file from a header JSON string and a data section.
void WriteRaw(const std::string& p, const std::string& header, const std::string& data,
              int64_t declared_len = -1) {
  std::ofstream out(p, std::ios::binary);
  uint64_t n = declared_len >= 0 ? static_cast<uint64_t>(declared_len) : header.size();
  for (int i = 0; i < 8; ++i) out.put(static_cast<char>((n >> (8 * i)) & 0xff));
  out << header << data;
}

// Expects opening `p` to throw IoError whose message contains every string in `parts`.
void ExpectBad(const std::string& p, std::vector<std::string> parts) {
  try {
    SafetensorsFile f(p);
    ADD_FAILURE() << "no error for " << p;
  } catch (const IoError& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find(p), std::string::npos) << msg;
    for (const auto& s : parts)
      EXPECT_NE(msg.find(s), std::string::npos) << "'" << s << "' not in: " << msg;
  }
}

NamedTensors Sample() {
  torch::manual_seed(3);
  return {{"a.f32", torch::randn({3, 5})},
          {"b.bf16", torch::randn({4, 6}).to(torch::kBFloat16)},
          {"c.f16", torch::randn({2, 3, 4}).to(torch::kHalf)},
          {"d.i64", torch::arange(7, torch::kLong)},
          {"e.empty", torch::zeros({0, 4})},
          {"f.scalar", torch::tensor(2.5f).reshape({})}};
}

}  // namespace

TEST(Safetensors, RoundTripF32Bf16F16) {
  auto dir = TempDir("roundtrip");
  auto ts = Sample();
  ftune::models::WriteSafetensors(files::Join(dir, "x.safetensors"), ts);
  EXPECT_FALSE(files::Exists(files::Join(dir, "x.safetensors.tmp")));
  SafetensorsFile f(files::Join(dir, "x.safetensors"));
  EXPECT_EQ(f.names().size(), ts.size());
  EXPECT_EQ(f.metadata().at("format"), "pt");
  for (const auto& [name, t] : ts) {
    auto got = f.Get(name);
    EXPECT_EQ(got.scalar_type(), t.scalar_type()) << name;
    EXPECT_EQ(got.sizes(), t.sizes()) << name;
    EXPECT_TRUE(torch::equal(got, t)) << name;
  }
  // The header is padded to 8 bytes so the data section is aligned.
  std::ifstream in(files::Join(dir, "x.safetensors"), std::ios::binary);
  uint64_t n = 0;
  in.read(reinterpret_cast<char*>(&n), 8);
  EXPECT_EQ(n % 8, 0u);
}

TEST(Safetensors, Slices) {
  auto dir = TempDir("slices");
  auto w = torch::arange(6 * 10, torch::kFloat).reshape({6, 10}).to(torch::kBFloat16);
  auto w3 = torch::randn({4, 6, 3});
  ftune::models::WriteSafetensors(files::Join(dir, "s.safetensors"), {{"w", w}, {"w3", w3}});
  SafetensorsFile f(files::Join(dir, "s.safetensors"));
  EXPECT_TRUE(torch::equal(f.GetSlice("w", 0, 2, 5), w.slice(0, 2, 5)));
  EXPECT_TRUE(torch::equal(f.GetSlice("w", 1, 3, 9), w.slice(1, 3, 9)));
  EXPECT_TRUE(torch::equal(f.GetSlice("w", 1, 0, 10), w));
  EXPECT_EQ(f.GetSlice("w", 0, 4, 4).size(0), 0);
  EXPECT_TRUE(torch::equal(f.GetSlice("w3", 1, 1, 4), w3.slice(1, 1, 4)));
  EXPECT_TRUE(torch::equal(f.GetSlice("w3", 0, 3, 4), w3.slice(0, 3, 4)));
  EXPECT_THROW(f.GetSlice("w", 0, 5, 7), IoError);
  EXPECT_THROW(f.GetSlice("w", 2, 0, 1), IoError);
  EXPECT_THROW(f.Get("nope"), IoError);
}

TEST(Safetensors, ShardingAndIndex) {
  auto dir = TempDir("sharded");
  NamedTensors ts;
  for (int i = 0; i < 5; ++i)
    ts.push_back({fmt::format("layer.{}.w", i), torch::full({10, 10}, float(i))});  // 400 B
  ts.push_back({"big", torch::ones({30, 10})});  // 1200 B > limit: a shard of its own
  auto written = ftune::models::WriteSafetensorsSharded(dir, ts, 1000);
  // 400+400 | 400+400 | 400 | 1200  -> 4 shards
  ASSERT_EQ(written.size(), 5u);
  EXPECT_EQ(written[0], "model-00001-of-00004.safetensors");
  EXPECT_EQ(written[4], "model.safetensors.index.json");
  for (const auto& name : files::ListDir(dir)) {
    EXPECT_FALSE(name.size() >= 4 && name.compare(name.size() - 4, 4, ".tmp") == 0) << name;
  }
  std::ifstream in(files::Join(dir, "model.safetensors.index.json"));
  auto index = nlohmann::json::parse(in);
  EXPECT_EQ(index["metadata"]["total_size"].get<int64_t>(), 5 * 400 + 1200);
  EXPECT_EQ(index["weight_map"]["big"], "model-00004-of-00004.safetensors");
  EXPECT_EQ(index["weight_map"]["layer.0.w"], "model-00001-of-00004.safetensors");
  EXPECT_EQ(index["weight_map"]["layer.2.w"], "model-00002-of-00004.safetensors");

  auto ck = SafetensorsCheckpoint::Open(dir);
  EXPECT_EQ(ck.names().size(), ts.size());
  for (const auto& [name, t] : ts) EXPECT_TRUE(torch::equal(ck.Get(name), t)) << name;
  EXPECT_TRUE(torch::equal(ck.GetSlice("big", 0, 10, 20), ts.back().second.slice(0, 10, 20)));
  EXPECT_NE(ck.FileOf("big").find("model-00004-of-00004"), std::string::npos);

  // Everything fits: one model.safetensors, no index.
  auto dir1 = TempDir("single");
  auto one = ftune::models::WriteSafetensorsSharded(dir1, ts, 1 << 20);
  ASSERT_EQ(one.size(), 1u);
  EXPECT_EQ(one[0], "model.safetensors");
  EXPECT_FALSE(files::Exists(files::Join(dir1, "model.safetensors.index.json")));
  auto ck1 = SafetensorsCheckpoint::Open(dir1);
  EXPECT_TRUE(torch::equal(ck1.Get("layer.3.w"), ts[3].second));
}

TEST(Safetensors, IndexNamingAMissingTensor) {
  auto dir = TempDir("badindex");
  ftune::models::WriteSafetensors(files::Join(dir, "model-00001-of-00001.safetensors"),
                                  {{"a", torch::ones({2})}});
  std::ofstream(files::Join(dir, "model.safetensors.index.json"))
      << R"({"metadata":{},"weight_map":{"a":"model-00001-of-00001.safetensors","zz":"model-00001-of-00001.safetensors"}})";
  try {
    SafetensorsCheckpoint::Open(dir);
    ADD_FAILURE() << "no error";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("'zz'"), std::string::npos) << e.what();
  }
  auto empty = TempDir("empty");
  EXPECT_THROW(SafetensorsCheckpoint::Open(empty), ftune::ModelError);
}

TEST(Safetensors, TruncatedFile) {
  auto dir = TempDir("truncated");
  std::ofstream(files::Join(dir, "t.safetensors"), std::ios::binary) << "abc";
  ExpectBad(files::Join(dir, "t.safetensors"), {"3 bytes", "truncated"});
  // A valid file cut short inside its data: the header's offsets now exceed the data section.
  const std::string cut = files::Join(dir, "cut.safetensors");
  ftune::models::WriteSafetensors(cut, {{"w", torch::ones({100})}});
  files::ResizeFile(cut, files::FileSize(cut) - 10);
  ExpectBad(cut, {"'w'", "outside the data section"});
}

TEST(Safetensors, HeaderLengthLargerThanFile) {
  auto dir = TempDir("hdrlen");
  WriteRaw(files::Join(dir, "h.safetensors"), "{}", "", 1000);
  ExpectBad(files::Join(dir, "h.safetensors"), {"header length 1000"});
  WriteRaw(files::Join(dir, "huge.safetensors"), "{}", "", int64_t(1) << 40);
  ExpectBad(files::Join(dir, "huge.safetensors"), {"header length"});
}

TEST(Safetensors, NotJsonOrNotObject) {
  auto dir = TempDir("json");
  WriteRaw(files::Join(dir, "j.safetensors"), "{not json", "");
  ExpectBad(files::Join(dir, "j.safetensors"), {"not valid JSON"});
  WriteRaw(files::Join(dir, "a.safetensors"), "[1,2]", "");
  ExpectBad(files::Join(dir, "a.safetensors"), {"not a JSON object"});
}

TEST(Safetensors, UnknownDtype) {
  auto dir = TempDir("dtype");
  WriteRaw(files::Join(dir, "d.safetensors"),
           R"({"w":{"dtype":"F8_E9M9","shape":[2],"data_offsets":[0,2]}})", "xx");
  ExpectBad(files::Join(dir, "d.safetensors"), {"'w'", "F8_E9M9"});
}

TEST(Safetensors, OffsetsOutOfRange) {
  auto dir = TempDir("offsets");
  WriteRaw(files::Join(dir, "o.safetensors"),
           R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", std::string(8, '\0'));
  ExpectBad(files::Join(dir, "o.safetensors"), {"'w'", "outside the data section"});
  WriteRaw(files::Join(dir, "r.safetensors"),
           R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", std::string(8, '\0'));
  ExpectBad(files::Join(dir, "r.safetensors"), {"'w'", "reversed"});
  WriteRaw(files::Join(dir, "n.safetensors"),
           R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}})", std::string(8, '\0'));
  ExpectBad(files::Join(dir, "n.safetensors"), {"'w'", "data_offsets"});
}

TEST(Safetensors, Overlapping) {
  auto dir = TempDir("overlap");
  WriteRaw(files::Join(dir, "o.safetensors"),
           R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
           R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
           std::string(12, '\0'));
  ExpectBad(files::Join(dir, "o.safetensors"), {"'a'", "'b'", "overlap"});
}

TEST(Safetensors, ShapeBytesMismatch) {
  auto dir = TempDir("mismatch");
  WriteRaw(files::Join(dir, "m.safetensors"),
           R"({"w":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,8]}})", std::string(8, '\0'));
  ExpectBad(files::Join(dir, "m.safetensors"), {"'w'", "[2, 3]", "12 bytes", "hold 8"});
  WriteRaw(files::Join(dir, "neg.safetensors"),
           R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,0]}})", "");
  ExpectBad(files::Join(dir, "neg.safetensors"), {"'w'", "negative"});
  WriteRaw(files::Join(dir, "miss.safetensors"), R"({"w":{"dtype":"F32","shape":[1]}})", "");
  ExpectBad(files::Join(dir, "miss.safetensors"), {"'w'", "data_offsets"});
}

// A zero dimension made the element count 0, so the size check never saw the other
// dimensions: their byte strides overflowed int64 in GetSlice (found by fuzz_safetensors).
TEST(Safetensors, ZeroDimensionDoesNotHideAnOverflowingShape) {
  auto dir = TempDir("zero_dim");
  WriteRaw(files::Join(dir, "z.safetensors"),
           R"({"z":{"dtype":"F32","shape":[0,4611686018427387904,4],"data_offsets":[0,0]}})", "");
  ExpectBad(files::Join(dir, "z.safetensors"), {"'z'", "too large"});
  WriteRaw(files::Join(dir, "ok.safetensors"),
           R"({"z":{"dtype":"F32","shape":[0,1024,4],"data_offsets":[0,0]}})", "");
  SafetensorsFile f(files::Join(dir, "ok.safetensors"));
  EXPECT_EQ(f.GetSlice("z", 1, 512, 1024).sizes().vec(), (std::vector<int64_t>{0, 512, 4}));
}

TEST(Safetensors, MetadataAllowed) {
  auto dir = TempDir("meta");
  WriteRaw(
      files::Join(dir, "m.safetensors"),
      R"({"__metadata__":{"format":"pt","x":"y"},"w":{"dtype":"F16","shape":[1],"data_offsets":[0,2]}})",
      std::string(2, '\0'));
  SafetensorsFile f(files::Join(dir, "m.safetensors"));
  EXPECT_EQ(f.metadata().at("x"), "y");
  EXPECT_EQ(f.names(), std::vector<std::string>{"w"});
  WriteRaw(files::Join(dir, "bad.safetensors"), R"({"__metadata__":{"x":1}})", "");
  ExpectBad(files::Join(dir, "bad.safetensors"), {"__metadata__"});
}
