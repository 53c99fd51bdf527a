#include <fmt/ranges.h>  // fmt::join (in <fmt/ranges.h> since fmt 11)

#include <algorithm>

#include "runtime/checkpoint_internal.h"
#include "runtime/parallelize.h"

namespace ftune::runtime {
namespace checkpoint_detail {

// The flat range [a, b) of a C-order tensor of `shape` (from dim `d` on, the
// outer indices fixed in `prefix`) as rectangles, in C order.
void Decompose(const std::vector<int64_t>& shape, size_t d, int64_t a, int64_t b,
               std::vector<hsize_t>& prefix, std::vector<Block>& out) {
  if (a >= b) return;
  const size_t nd = shape.size();
  auto emit = [&](int64_t lo,
                  int64_t n) {  // rows [lo, lo+n) of dim d, everything after it
    Block blk;
    blk.start = prefix;
    blk.count.assign(prefix.size(), 1);
    blk.start.push_back(lo);
    blk.count.push_back(n);
    for (size_t i = d + 1; i < nd; ++i) blk.start.push_back(0), blk.count.push_back(shape[i]);
    out.push_back(std::move(blk));
  };
  if (d + 1 == nd) {
    emit(a, b - a);
    return;
  }
  int64_t stride = 1;
  for (size_t i = d + 1; i < nd; ++i) stride *= shape[i];
  if (a % stride != 0) {  // head: part of row a / stride
    const int64_t r = a / stride;
    prefix.push_back(r);
    Decompose(shape, d + 1, a - r * stride, std::min(b - r * stride, stride), prefix, out);
    prefix.pop_back();
    a = (r + 1) * stride;
    if (a >= b) return;
  }
  if (b / stride > a / stride) emit(a / stride, b / stride - a / stride);  // whole rows
  if (b % stride != 0 && b / stride >= a / stride) {                       // tail
    const int64_t r = b / stride;
    prefix.push_back(r);
    Decompose(shape, d + 1, 0, b - r * stride, prefix, out);
    prefix.pop_back();
  }
}

// The contiguous runs (full flat order) of `blocks`, whose elements lie back to
// back in memory.
std::vector<Run> RunsOf(const std::vector<Block>& blocks, const std::vector<int64_t>& full) {
  std::vector<Run> runs;
  const size_t nd = full.size();
  std::vector<int64_t> stride(nd, 1);
  for (size_t i = nd - 1; i > 0; --i) stride[i - 1] = stride[i] * full[i];
  int64_t local = 0;
  for (const auto& b : blocks) {
    size_t j = nd - 1;  // dims after j span the whole tensor
    while (j > 0 && static_cast<int64_t>(b.count[j]) == full[j]) --j;
    int64_t len = 1;
    for (size_t i = j; i < nd; ++i) len *= b.count[i];
    std::vector<int64_t> idx(j, 0);  // odometer over dims [0, j)
    while (true) {
      int64_t off = 0;
      for (size_t i = 0; i < j; ++i) off += (b.start[i] + idx[i]) * stride[i];
      for (size_t i = j; i < nd; ++i) off += b.start[i] * stride[i];
      if (!runs.empty() && runs.back().full_offset + runs.back().count == off &&
          runs.back().local_offset + runs.back().count == local) {
        runs.back().count += len;
      } else {
        runs.push_back({off, local, len});
      }
      local += len;
      size_t i = j;
      while (i > 0) {
        if (++idx[i - 1] < static_cast<int64_t>(b.count[i - 1])) break;
        idx[i - 1] = 0;
        --i;
      }
      if (i == 0) break;
    }
  }
  return runs;
}

// Selects `blocks` (a rank's slice) in the file dataspace `fspace`.
void SelectBlocks(hid_t fspace, const std::vector<Block>& blocks, const std::string& ctx) {
  bool first = true;
  for (const auto& b : blocks) {
    H5_CHECK(IoError,
             H5Sselect_hyperslab(fspace, first ? H5S_SELECT_SET : H5S_SELECT_OR, b.start.data(),
                                 nullptr, b.count.data(), nullptr),
             ctx);
    first = false;
  }
}

// Writes (or reads) this rank's slice of dataset `ds`: the rectangles `blocks`
// of the file dataspace `fspace`, `count` elements back to back at `buf`. `buf`
// null: nothing (a rank that takes part in a collective transfer without
// elements).
void WriteSliceOf(hid_t ds, hid_t fspace, const std::vector<Block>& blocks, int64_t count,
                  const float* buf, hid_t dxpl, const std::string& ctx) {
  const bool any = buf != nullptr && count > 0;
  hsize_t n = any ? static_cast<hsize_t>(count) : 1;
  H5Id mspace(H5_CHECK(IoError, H5Screate_simple(1, &n, nullptr), ctx), H5Sclose);
  const float dummy = 0;
  if (any) {
    SelectBlocks(fspace, blocks, ctx);
  } else {
    H5_CHECK(IoError, H5Sselect_none(fspace), ctx);
    H5_CHECK(IoError, H5Sselect_none(mspace.get()), ctx);
  }
  H5_CHECK(IoError, H5Dwrite(ds, H5T_NATIVE_FLOAT, mspace.get(), fspace, dxpl, any ? buf : &dummy),
           ctx);
}
void ReadSliceOf(hid_t ds, hid_t fspace, const std::vector<Block>& blocks, int64_t count,
                 float* buf, hid_t dxpl, const std::string& ctx) {
  const bool any = buf != nullptr && count > 0;
  hsize_t n = any ? static_cast<hsize_t>(count) : 1;
  H5Id mspace(H5_CHECK(IoError, H5Screate_simple(1, &n, nullptr), ctx), H5Sclose);
  float dummy = 0;
  if (any) {
    SelectBlocks(fspace, blocks, ctx);
  } else {
    H5_CHECK(IoError, H5Sselect_none(fspace), ctx);
    H5_CHECK(IoError, H5Sselect_none(mspace.get()), ctx);
  }
  H5_CHECK(CorruptCheckpointError,
           H5Dread(ds, H5T_NATIVE_FLOAT, mspace.get(), fspace, dxpl, any ? buf : &dummy), ctx);
}

}  // namespace checkpoint_detail

using namespace checkpoint_detail;

std::unique_ptr<CheckpointManager::Plan> CheckpointManager::Plan::Make(
    parallel::DataParallel& dp, parallel::ProcessGrid& grid, const models::LlamaConfig& model_cfg,
    parallel::Communicator& comm) {
  auto plan = std::make_unique<Plan>();
  plan->views = dp.ShardViews();
  const auto layout = TensorParallelLayout(model_cfg, grid.tp(), grid.tp_rank());
  std::vector<int> view_of(dp.params().size(), -1);
  for (size_t v = 0; v < plan->views.size(); ++v) {
    FT_CHECK(view_of[plan->views[v].param] == -1, "parameter {} has two shard views",
             dp.params()[plan->views[v].param].name);
    view_of[plan->views[v].param] = static_cast<int>(v);
  }
  for (size_t p = 0; p < dp.params().size(); ++p) {
    Plan::Tensor t;
    t.name = dp.params()[p].name;
    auto it = layout.find(t.name);
    if (it == layout.end()) {
      FT_THROW(InternalError, "parameter {} is not in the tensor-parallel layout", t.name);
    }
    const ShardInfo& info = it->second;
    t.full_shape = info.full_shape;
    t.numel = 1;
    for (int64_t d : t.full_shape) t.numel *= d;
    const std::vector<int64_t> local = info.local_shape();
    FT_CHECK(local == dp.ShapeOf(static_cast<int>(p)),
             "parameter {}: local shape {} but the "
             "layout says {}",
             t.name, fmt::join(dp.ShapeOf(static_cast<int>(p)), "x"), fmt::join(local, "x"));
    t.view = view_of[p];
    t.owner = t.view >= 0 && (dp.zero() > 0 || grid.replica_rank() == 0) &&
              (info.sharded() || grid.tp_rank() == 0);
    if (t.view >= 0) {
      const auto& v = plan->views[t.view];
      std::vector<hsize_t> prefix;
      Decompose(local, 0, v.param_offset, v.param_offset + v.master.numel(), prefix, t.blocks);
      if (info.sharded()) {
        for (auto& b : t.blocks) b.start[info.dim] += info.offset;
      }
      t.runs = RunsOf(t.blocks, t.full_shape);
      t.count = v.master.numel();
      FT_CHECK(
          v.master.is_contiguous() && v.exp_avg.is_contiguous() && v.exp_avg_sq.is_contiguous(),
          "shard views of {} are not contiguous", t.name);
    }
    plan->total_bytes += 3 * t.numel * static_cast<int64_t>(sizeof(float));
    plan->tensors.push_back(std::move(t));
  }
  auto scattered = torch::zeros({static_cast<int64_t>(plan->tensors.size())}, torch::kInt);
  for (size_t i = 0; i < plan->tensors.size(); ++i) {
    scattered[i] = plan->tensors[i].runs.size() > 1 ? 1 : 0;
  }
  comm.AllReduce(scattered, parallel::ReduceOp::kMax)->Wait();
  for (size_t i = 0; i < plan->tensors.size(); ++i) {
    plan->tensors[i].contiguous = scattered[i].item<int>() == 0;
  }
  return plan;
}

}  // namespace ftune::runtime
