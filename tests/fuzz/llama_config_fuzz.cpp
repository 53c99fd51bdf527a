// Harness of models/llama_config: HF config.json (LlamaConfig::FromJson, after the same
// non-throwing parse FromFile does). An accepted config must survive ToJson -> FromJson unchanged,
// since `ftune export` writes what ToJson gives and later runs read it back.
#include "models/llama_config.h"
#include "tests/fuzz/fuzz_target.h"

// Input: the bytes of config.json.
FTUNE_FUZZ_TARGET(llama_config) {
  using ftune::models::LlamaConfig;
  using nlohmann::json;
  const json j = json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return 0;  // FromFile's IoError "not valid JSON"
  json out;
  ftune::fuzz::ExpectInputErrors([&] { out = LlamaConfig::FromJson(j, "config.json").ToJson(); });
  if (out.is_null()) return 0;
  // Outside ExpectInputErrors: the written config.json failing to load is a finding.
  FTUNE_FUZZ_CHECK(LlamaConfig::FromJson(out, "config.json (written)").ToJson() == out);
  return 0;
}
