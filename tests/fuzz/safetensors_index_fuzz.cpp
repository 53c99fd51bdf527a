// Harness of models/safetensors' index reader (model.safetensors.index.json: weight_map of
// tensor name -> shard file) over a directory with two fixed, valid shards.
#include "tests/fuzz/safetensors_check.h"

namespace {

// The directory of the shards (written once per process); the index is the fuzz input.
const std::string& ShardDir() {
  static const std::string dir = [] {
    using ftune::fuzz::WriteScratch;
    const std::string index = WriteScratch("index/model.safetensors.index.json", "{}");
    const std::string dir = index.substr(0, index.rfind('/'));
    for (const char* shard : {"model-00001-of-00002", "model-00002-of-00002"}) {
      WriteScratch(std::string("index/") + shard + ".safetensors", "");  // removed at exit
    }
    ftune::models::WriteSafetensors(
        dir + "/model-00001-of-00002.safetensors",
        {{"model.embed_tokens.weight", torch::arange(12, torch::kFloat).reshape({4, 3})},
         {"model.norm.weight", torch::ones({3}, torch::kBFloat16)}});
    ftune::models::WriteSafetensors(
        dir + "/model-00002-of-00002.safetensors",
        {{"lm_head.weight", torch::arange(6, torch::kLong).reshape({2, 3})}});
    return dir;
  }();
  return dir;
}

}  // namespace

// Input: the bytes of model.safetensors.index.json.
FTUNE_FUZZ_TARGET(safetensors_index) {
  using namespace ftune::fuzz;
  const std::string& dir = ShardDir();
  WriteScratch("index/model.safetensors.index.json", {(const char*)data, size});
  ExpectInputErrors([&] {
    const auto ck = ftune::models::SafetensorsCheckpoint::Open(dir);
    ReadEverything(ck);
    for (const auto& name : ck.names()) FTUNE_FUZZ_CHECK(!ck.FileOf(name).empty());
  });
  return 0;
}
