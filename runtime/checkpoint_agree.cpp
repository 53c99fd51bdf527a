#include <fmt/ranges.h>  // fmt::join (in <fmt/ranges.h> since fmt 11)
#include <zlib.h>

#include <algorithm>
#include <cstring>

#include "runtime/checkpoint_internal.h"

namespace ftune::runtime::checkpoint_detail {

void Agree(parallel::Communicator& comm, int code, const std::string& msg,
           const std::string& what) {
  auto t = torch::zeros({comm.size()}, torch::kInt);
  t[comm.rank()] = code;
  comm.AllReduce(t, parallel::ReduceOp::kMax)->Wait();
  const int worst = t.max().item<int>();
  if (worst == kOk) return;
  std::vector<int> ranks;
  for (int r = 0; r < comm.size(); ++r) {
    if (t[r].item<int>() != kOk) ranks.push_back(r);
  }
  const std::string m = code != kOk ? msg
                                    : fmt::format("{} failed on rank(s) {} (see their messages)",
                                                  what, fmt::join(ranks, ", "));
  if (worst == kMismatch) throw ModelError(m);
  if (worst == kCorrupt) throw CorruptCheckpointError(m);
  throw IoError(m);
}

std::vector<uint32_t> CombineCrcs(parallel::Communicator& comm, const std::vector<int64_t>& mine,
                                  const std::vector<int64_t>& tensor_bytes) {
  auto n = torch::tensor({static_cast<int64_t>(mine.size())}, torch::kLong);
  auto counts_t = torch::zeros({comm.size()}, torch::kLong);
  comm.AllGather(n, counts_t)->Wait();
  std::vector<int64_t> counts(counts_t.data_ptr<int64_t>(),
                              counts_t.data_ptr<int64_t>() + comm.size());
  int64_t total = 0;
  for (int64_t c : counts) total += c;
  auto in = torch::empty({static_cast<int64_t>(mine.size())}, torch::kLong);
  if (!mine.empty()) std::memcpy(in.data_ptr<int64_t>(), mine.data(), mine.size() * 8);
  auto all = torch::empty({total}, torch::kLong);
  comm.AllGatherV(in, all, counts)->Wait();
  std::vector<std::array<int64_t, 4>> e(total / 4);
  std::memcpy(e.data(), all.data_ptr<int64_t>(), total * sizeof(int64_t));
  std::sort(e.begin(), e.end());
  std::vector<uint32_t> crc(tensor_bytes.size(), 0);
  std::vector<int64_t> done(tensor_bytes.size(), 0);
  for (const auto& [id, off, len, c] : e) {
    FT_CHECK(id >= 0 && id < static_cast<int64_t>(crc.size()), "crc entry of tensor {}", id);
    FT_CHECK(off == done[id], "tensor {}: crc run at byte {} but {} bytes are covered", id, off,
             done[id]);
    crc[id] = static_cast<uint32_t>(
        crc32_combine(crc[id], static_cast<uLong>(c), static_cast<z_off_t>(len)));
    done[id] += len;
  }
  for (size_t id = 0; id < crc.size(); ++id) {
    FT_CHECK(done[id] == tensor_bytes[id], "tensor {}: runs cover {} of {} bytes", id, done[id],
             tensor_bytes[id]);
  }
  return crc;
}

}  // namespace ftune::runtime::checkpoint_detail
