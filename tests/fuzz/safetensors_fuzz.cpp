// Harness of models/safetensors' file reader: the 8-byte header length, the header JSON (dtypes,
// shapes, data_offsets, __metadata__) and the data section. See safetensors_check.h.
#include "tests/fuzz/safetensors_check.h"

// Input: the bytes of one .safetensors file.
FTUNE_FUZZ_TARGET(safetensors) {
  using namespace ftune::fuzz;
  const std::string path = WriteScratch("model.safetensors", {(const char*)data, size});
  ExpectInputErrors([&] {
    ftune::models::SafetensorsFile file(path);
    ReadEverything(file);
  });
  return 0;
}
