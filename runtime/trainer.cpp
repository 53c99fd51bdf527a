#include "runtime/trainer.h"

#include <chrono>
#include <cmath>
#include <map>

#include "runtime/layer_checkpoint.h"
#include "runtime/log.h"
#include "runtime/parallelize.h"
#include "runtime/lr_schedule.h"
#include "runtime/metrics.h"

namespace ftune::runtime {
namespace {

using Clock = std::chrono::steady_clock;
double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Parameters in registration order, grouped into units: the embedding, each
// decoder layer, and the head (final norm + lm_head). Norms and embeddings are
// excluded from weight decay; parameters whose gradient arrives in pieces
// (lm_head behind the chunked loss, a tied embedding) are marked late.
std::pair<std::vector<parallel::ParamSpec>, std::vector<std::vector<int>>> Partition(
    models::LlamaModel& model) {
  std::vector<parallel::ParamSpec> specs;
  std::map<std::string, std::vector<int>> by_unit;  // "0embed", "1layer.00007", "2head"
  const bool tied = model.config().tie_word_embeddings;
  const auto* tp = dynamic_cast<const TensorParallelLlama*>(&model);
  for (const auto& item : model.named_parameters(/*recurse=*/true)) {
    const std::string& name = item.key();
    parallel::ParamSpec s;
    s.model_parallel_shard = tp != nullptr && tp->layout().at(name).sharded();
    s.name = name;
    s.param = item.value();
    s.decay = name.find("norm") == std::string::npos && name.find("embed") == std::string::npos;
    s.late = name == "lm_head.weight" || (tied && name == "model.embed_tokens.weight");
    std::string unit = "2head";
    if (name.rfind("model.embed_tokens", 0) == 0) {
      unit = "0embed";
    } else if (name.rfind("model.layers.", 0) == 0) {
      const int layer = std::stoi(name.substr(13));
      unit = fmt::format("1layer.{:06d}", layer);
    }
    by_unit[unit].push_back(static_cast<int>(specs.size()));
    specs.push_back(s);
  }
  std::vector<std::vector<int>> units;
  for (auto& kv : by_unit) units.push_back(kv.second);
  return {specs, units};
}

}  // namespace

Trainer::Trainer(World& world, const Config& cfg, std::shared_ptr<models::LlamaModel> model,
                 parallel::ProcessGrid& grid, parallel::ParamSource source)
    : world_(world), cfg_(cfg), model_(std::move(model)), grid_(grid) {
  auto [specs, units] = Partition(*model_);
  parallel::DataParallelOptions opt;
  opt.zero = static_cast<int>(cfg_.parallel.zero);
  opt.bucket_mb = cfg_.parallel.bucket_mb;
  opt.source = std::move(source);
  dp_ = std::make_unique<parallel::DataParallel>(std::move(specs), std::move(units),
                                                 grid_.dp_comm(), opt);
  const auto& specs_ref = dp_->params();
  layer_units_.assign(model_->config().num_hidden_layers, -1);
  for (size_t p = 0; p < specs_ref.size(); ++p) {
    const auto& name = specs_ref[p].name;
    if (name == "model.embed_tokens.weight") {
      embed_unit_ = dp_->UnitOf(static_cast<int>(p));
    } else if (name.rfind("model.layers.", 0) == 0) {
      layer_units_[std::stoi(name.substr(13))] = dp_->UnitOf(static_cast<int>(p));
    } else if (name == "model.norm.weight") {
      head_unit_ = dp_->UnitOf(static_cast<int>(p));
    }
  }
  if (dp_->zero() == 3 || cfg_.train.activation_checkpointing) {
    model_->layer_runner = [this](int64_t layer, const torch::Tensor& x,
                                  const models::TensorHook& run) {
      return CheckpointedLayer(x, run, HooksFor(layer));
    };
  }
}

// ZeRO-3: a layer is gathered just before it computes (the next one is
// prefetched meanwhile) and released right after, in forward and in backward.
LayerHooks Trainer::HooksFor(int64_t layer) {
  if (dp_->zero() != 3) return {};
  const int u = layer_units_[layer];
  const int64_t n = static_cast<int64_t>(layer_units_.size());
  const int next = layer + 1 < n ? layer_units_[layer + 1] : -1;
  const int prev = layer > 0 ? layer_units_[layer - 1] : -1;
  auto* dp = dp_.get();
  LayerHooks h;
  h.before_forward = [dp, u, next]() {
    dp->WaitUnit(u);
    if (next >= 0) dp->GatherUnit(next);
  };
  h.after_forward = [dp, u]() { dp->ReleaseUnit(u); };
  h.before_backward = [dp, u, prev]() {
    dp->WaitUnit(u);
    if (prev >= 0) dp->GatherUnit(prev);
  };
  h.after_backward = [dp, u]() { dp->ReleaseUnit(u); };
  return h;
}

// ZeRO-3: the embedding and the head stay whole for a whole micro-batch (the
// head computes last in forward and first in backward; a tied embedding is
// used at both ends); the layers come and go through HooksFor.
void Trainer::GatherEnds() {
  if (dp_->zero() != 3) return;
  dp_->GatherUnit(embed_unit_);
  if (head_unit_ >= 0) dp_->GatherUnit(head_unit_);
  if (!layer_units_.empty()) dp_->GatherUnit(layer_units_[0]);
  dp_->WaitUnit(embed_unit_);
  if (head_unit_ >= 0) dp_->WaitUnit(head_unit_);
}

void Trainer::ReleaseEnds() {
  if (dp_->zero() != 3) return;
  dp_->ReleaseUnit(embed_unit_);
  if (head_unit_ >= 0) dp_->ReleaseUnit(head_unit_);
}

Trainer::~Trainer() = default;

torch::Tensor Trainer::MicroBatchLoss(const data::Batch& b, double inv_targets) {
  models::ForwardOptions opt;
  opt.positions = b.positions;
  opt.segment_ids = b.segment_ids;
  // Chunk the cross-entropy (recomputing logits in backward) only when this
  // rank's fp32 logits would exceed 1 GiB: below that, recomputing the lm_head
  // costs more time than the memory it saves.
  const int64_t local_vocab = model_->config().vocab_size / grid_.tp();
  const int64_t chunk = std::max<int64_t>(1024, (int64_t(1) << 30) / (4 * local_vocab));
  auto ls = models::CausalLmLoss(*model_, b.tokens, b.targets, b.loss_mask, opt, chunk);
  (ls.loss_sum * inv_targets).backward();
  return ls.loss_sum.detach().to(torch::kDouble);
}

StepStats Trainer::TrainStep(const std::vector<data::Batch>& micro, int64_t total_steps) {
  const auto t0 = Clock::now();
  const double comm0 = parallel::CommWaitSeconds();
  StepStats s;
  s.step = step_ + 1;
  // The loss denominator: target tokens of all micro-batches on all dp ranks.
  int64_t local_targets = 0, local_tokens = 0;
  for (const auto& b : micro) local_targets += b.num_targets, local_tokens += b.tokens.numel();
  auto counts = torch::tensor({local_targets, local_tokens}, torch::kLong);
  grid_.dp_comm().AllReduce(counts)->Wait();
  s.targets = counts[0].item<int64_t>();
  s.tokens = counts[1].item<int64_t>();
  if (s.targets == 0) {
    FT_THROW(DataError, "step {}: the global batch has no target tokens (every loss_mask is 0); "
             "check data.train_on_prompt and the template", s.step);
  }
  auto loss_sum = torch::zeros({}, torch::kDouble);
  for (size_t i = 0; i < micro.size(); ++i) {
    const bool last = i + 1 == micro.size();
    dp_->StartMicroBatch(last);
    GatherEnds();
    loss_sum += MicroBatchLoss(micro[i], 1.0 / static_cast<double>(s.targets));
    ReleaseEnds();
    if (last || dp_->zero() == 3) dp_->FinishGradSync();
  }
  // Loss and gradient norm of the whole job: [loss, replicated sq, tp-sharded sq]
  // reduced over dp, the sharded part over tp too. Under ZeRO-0 every dp rank
  // holds the whole (identical) gradient: count it once.
  auto sq = dp_->ShardGradSquaredNorms();
  if (dp_->zero() == 0) sq = sq / grid_.dp();
  auto stats = torch::cat({loss_sum.reshape({1}), sq});
  grid_.dp_comm().AllReduce(stats)->Wait();
  if (grid_.tp() > 1) {
    auto sharded = stats.slice(0, 2, 3).clone();
    grid_.tp_comm().AllReduce(sharded)->Wait();
    stats[2] = sharded[0];
  }
  s.loss = stats[0].item<double>() / static_cast<double>(s.targets);
  s.grad_norm = std::sqrt(stats[1].item<double>() + stats[2].item<double>());
  s.lr = LearningRate(cfg_.optim, s.step, total_steps);
  if (std::isfinite(s.loss) && std::isfinite(s.grad_norm)) {
    const double clip = cfg_.train.clip;
    const double scale = clip > 0 ? std::min(1.0, clip / (s.grad_norm + 1e-6)) : 1.0;
    dp_->Step({s.lr, cfg_.optim.beta1, cfg_.optim.beta2, cfg_.optim.eps, cfg_.optim.weight_decay,
               scale, s.step - bad_total_});
    bad_steps_ = 0;
    last_finite_loss_ = s.loss;
  } else {
    dp_->ZeroGrads();
    s.skipped = true;
    ++bad_total_;
    if (++bad_steps_ >= cfg_.train.max_bad_steps) {
      FT_THROW(Error, "step {}: {} consecutive steps with a non-finite loss or gradient norm "
               "(loss {}, grad norm {}); the last finite loss was {}. Lower optim.lr, enable "
               "train.clip, or check the data", s.step, bad_steps_, s.loss, s.grad_norm,
               last_finite_loss_);
    }
  }
  step_ = s.step;
  s.seconds = Since(t0);
  s.comm_wait = parallel::CommWaitSeconds() - comm0;
  return s;
}

void Trainer::Train(const std::function<data::Batch()>& next, int64_t total_steps,
                    const std::function<void(const StepStats&)>& on_step) {
  const int64_t seq = cfg_.data.max_seq_len;
  StepLogger logger(cfg_.log,
                    world_.rank() == 0 && cfg_.log.jsonl ? RunPath(cfg_, "metrics.jsonl") : "",
                    FlopsPerToken(seq), 0.0);
  while (step_ < total_steps) {
    const auto t0 = Clock::now();
    std::vector<data::Batch> micro;
    for (int64_t i = 0; i < cfg_.train.grad_accum; ++i) micro.push_back(next());
    const double wait = Since(t0);
    StepStats s = TrainStep(micro, total_steps);
    s.data_wait = wait;
    if (world_.rank() == 0) logger.Log(s, total_steps);
    if (on_step) on_step(s);
  }
}

void Trainer::GatherAll() {
  if (dp_->zero() != 3) return;
  for (int u = 0; u < dp_->num_units(); ++u) dp_->GatherUnit(u);  // all in flight at once
  for (int u = 0; u < dp_->num_units(); ++u) dp_->WaitUnit(u);
}

void Trainer::VisitParams(
    const std::function<void(const std::string&, const torch::Tensor&)>& fn) {
  const auto& params = dp_->params();
  if (dp_->zero() != 3) {
    for (const auto& p : params) fn(p.name, p.param);
    return;
  }
  std::vector<std::vector<int>> by_unit(dp_->num_units());
  for (size_t p = 0; p < params.size(); ++p) {
    by_unit[dp_->UnitOf(static_cast<int>(p))].push_back(static_cast<int>(p));
  }
  for (int u = 0; u < dp_->num_units(); ++u) {
    dp_->GatherUnit(u);
    dp_->WaitUnit(u);
    for (int p : by_unit[u]) fn(params[p].name, params[p].param);
    dp_->ReleaseUnit(u);
  }
}

void Trainer::ReleaseAll() {
  if (dp_->zero() != 3) return;
  for (int u = 0; u < dp_->num_units(); ++u) dp_->ReleaseUnit(u);
}

double Trainer::FlopsPerToken(int64_t seq_len) const {
  const auto& c = model_->config();
  int64_t n = 0;
  for (size_t p = 0; p < dp_->params().size(); ++p) {
    if (dp_->params()[p].name == "model.embed_tokens.weight" && !c.tie_word_embeddings) continue;
    int64_t k = 1;
    for (int64_t d : dp_->ShapeOf(static_cast<int>(p))) k *= d;
    n += k;
  }
  return 6.0 * n + 12.0 * c.num_hidden_layers * c.hidden_size * seq_len;
}

}  // namespace ftune::runtime
