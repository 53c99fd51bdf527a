#include "runtime/grid_generate.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <string>

#include "parallel/error.h"
#include "parallel/gather_strings.h"

namespace ftune::runtime {

void GenerateOnGrid(models::LlamaModel& model, ParallelModel* pm, parallel::ProcessGrid& grid,
                    const std::vector<std::vector<int32_t>>& inputs, int64_t batch_size,
                    models::GenerateOptions opt, const AnswerFn& emit) {
  FT_CHECK(batch_size > 0, "batch size {} must be positive", batch_size);
  FT_CHECK(pm == nullptr || &pm->model() == &model, "the model must be the ParallelModel's");
  using Ids = std::vector<std::vector<int32_t>>;
  const int64_t n = static_cast<int64_t>(inputs.size()), bs = batch_size;
  // Generation is not sharded over cp: every replica of the weights (dp x cp) takes batches.
  const int64_t batches = (n + bs - 1) / bs, dp = grid.replicas();
  const int64_t rounds = (batches + dp - 1) / dp;
  if (pm != nullptr) {
    pm->BeginForward();
    opt.lock_step = pm->GenerationLockStep();
  }
  for (int64_t r = 0; r < rounds; ++r) {
    const int64_t mine = r * dp + grid.replica_rank();
    Ids out;
    if (mine < batches) {
      const Ids ids(inputs.begin() + mine * bs, inputs.begin() + std::min(n, (mine + 1) * bs));
      out = models::Generate(model, ids, opt);
    } else if (opt.lock_step) {
      models::Generate(model, {}, opt);  // the others' forwards gather layers from this rank too
    }
    // The round's answers on every rank (control traffic: a few ids per answer).
    std::vector<Ids> round(1, std::move(out));
    if (dp > 1) {
      const auto all =
          parallel::AllGatherStrings(grid.dp_control(), nlohmann::json(round[0]).dump());
      round.clear();
      for (const auto& s : all) round.push_back(nlohmann::json::parse(s).get<Ids>());
    }
    for (int64_t d = 0; d < static_cast<int64_t>(round.size()) && r * dp + d < batches; ++d) {
      for (size_t i = 0; i < round[d].size(); ++i) {
        emit((r * dp + d) * bs + static_cast<int64_t>(i), round[d][i]);
      }
    }
  }
  if (pm != nullptr) pm->ReleaseAll();
}

}  // namespace ftune::runtime
