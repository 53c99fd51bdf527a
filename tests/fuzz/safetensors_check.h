// The check both safetensors harnesses run on what the reader accepted.
#pragma once

#include <algorithm>
#include <cstring>
#include <utility>

#include "models/safetensors.h"
#include "tests/fuzz/fuzz_target.h"

namespace ftune::fuzz {

// Reads every tensor of `file` (a SafetensorsFile or SafetensorsCheckpoint) whole and sliced
// along dims 0 and 1; each slice must hold the same bytes as that part of the whole tensor.
template <class File>
void ReadEverything(const File& file) {
  for (const auto& name : file.names()) {
    const auto& info = file.Info(name);
    const torch::Tensor whole = file.Get(name);
    FTUNE_FUZZ_CHECK(whole.numel() == info.numel());
    FTUNE_FUZZ_CHECK(whole.numel() * int64_t(whole.element_size()) == info.end - info.begin);
    const int64_t rank = int64_t(info.shape.size());
    for (int64_t dim = 0; dim < std::min<int64_t>(rank, 2); ++dim) {
      const int64_t n = info.shape[dim];
      using Range = std::pair<int64_t, int64_t>;
      for (const auto& [b, e] : {Range{0, n}, Range{n / 2, n}, Range{0, n / 3}}) {
        const torch::Tensor slice = file.GetSlice(name, dim, b, e);
        const torch::Tensor expect = whole.narrow(dim, b, e - b).contiguous();
        FTUNE_FUZZ_CHECK(slice.sizes() == expect.sizes());
        FTUNE_FUZZ_CHECK(expect.numel() == 0 ||
                         std::memcmp(slice.data_ptr(), expect.data_ptr(),
                                     size_t(expect.numel()) * expect.element_size()) == 0);
      }
    }
  }
}

}  // namespace ftune::fuzz
