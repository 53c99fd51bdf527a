// Harness of runtime/config: a YAML config file and `--set key=value` overrides through
// LoadConfig, with the checks of `ftune train` on 4 ranks and of `ftune prepare`. An accepted
// config is written back with ConfigToYaml (what the run directory keeps) and must load again
// to the same YAML.
#include "runtime/config.h"
#include "tests/fuzz/fuzz_target.h"

// Input: the YAML file, then `--set` overrides, separated by NUL bytes.
FTUNE_FUZZ_TARGET(config) {
  using namespace ftune::runtime;
  const auto parts = ftune::fuzz::SplitParts(data, size);
  const std::string path = ftune::fuzz::WriteScratch("config.yaml", parts[0]);
  const std::vector<std::string> overrides(parts.begin() + 1, parts.end());
  for (const ConfigCheck& check : {ConfigCheck{4, true, true}, ConfigCheck{1, false, false}}) {
    std::string yaml;
    ftune::fuzz::ExpectInputErrors([&] {
      const Config cfg = LoadConfig(path, overrides, check);
      ConfigTable(cfg);
      yaml = ConfigToYaml(cfg);
    });
    if (yaml.empty()) continue;
    // Outside ExpectInputErrors: the written config failing to load is a finding.
    const std::string again = ftune::fuzz::WriteScratch("resolved.yaml", yaml);
    FTUNE_FUZZ_CHECK(ConfigToYaml(LoadConfig(again, {}, check)) == yaml);
  }
  return 0;
}
