#include "parallel/gather_strings.h"

#include <cstring>

namespace ftune::parallel {

std::vector<std::string> AllGatherStrings(Communicator& comm, const std::string& mine) {
  auto n = at::tensor({static_cast<int64_t>(mine.size())}, at::kLong);
  auto counts_t = at::zeros({comm.size()}, at::kLong);
  comm.AllGather(n, counts_t)->Wait();
  const std::vector<int64_t> counts(counts_t.data_ptr<int64_t>(),
                                    counts_t.data_ptr<int64_t>() + comm.size());
  int64_t total = 0;
  for (int64_t c : counts) total += c;
  auto in = at::empty({static_cast<int64_t>(mine.size())}, at::kByte);
  if (!mine.empty()) std::memcpy(in.data_ptr<uint8_t>(), mine.data(), mine.size());
  auto out = at::empty({total}, at::kByte);
  comm.AllGatherV(in, out, counts)->Wait();
  std::vector<std::string> res;
  const char* p = reinterpret_cast<const char*>(out.data_ptr<uint8_t>());
  for (int64_t c : counts) {
    res.emplace_back(p, c);
    p += c;
  }
  return res;
}

}  // namespace ftune::parallel
