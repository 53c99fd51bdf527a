#include "runtime/evaluator.h"

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <optional>
#include <tuple>
#include <utility>

#include "data/loader.h"
#include "data/sha256.h"
#include "models/generate.h"
#include "models/hf_io.h"
#include "parallel/context_parallel.h"
#include "parallel/error.h"
#include "parallel/files.h"
#include "parallel/gather_strings.h"
#include "runtime/checkpoint.h"
#include "runtime/model_setup.h"
#include "runtime/log.h"
#include "runtime/report.h"
#include "runtime/tensorboard.h"

namespace ftune::runtime {
namespace {

double SecondsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::string Trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}

// Ids the tokenizer can decode (a model's vocabulary may be padded past the tokenizer's).
std::string DecodeText(const data::Tokenizer& tok, std::vector<int32_t> ids) {
  const int64_t v = tok.vocab_size();
  ids.erase(std::remove_if(ids.begin(), ids.end(), [v](int32_t id) { return id < 0 || id >= v; }),
            ids.end());
  return Trim(tok.Decode(ids, /*skip_special_tokens=*/true));
}

// [begin, end) of each maximal run of trained tokens (mask 1) of a document, in order.
std::vector<std::pair<int64_t, int64_t>> TrainedRuns(const std::vector<uint8_t>& mask) {
  std::vector<std::pair<int64_t, int64_t>> runs;
  const int64_t n = static_cast<int64_t>(mask.size());
  for (int64_t i = 0; i < n;) {
    if (!mask[i]) {
      ++i;
      continue;
    }
    const int64_t begin = i;
    while (i < n && mask[i]) ++i;
    runs.emplace_back(begin, i);
  }
  return runs;
}

// A turn's reference ids without its end: everything from its last EOS id on (the end-of-turn
// token and what the template writes after it, e.g. "\n" after <|im_end|>), and EOS ids just
// before that.
void CutAtLastEos(const std::vector<int32_t>& eos_ids, std::vector<int32_t>* ids) {
  const auto is_eos = [&](int32_t id) {
    return std::find(eos_ids.begin(), eos_ids.end(), id) != eos_ids.end();
  };
  const auto last = std::find_if(ids->rbegin(), ids->rend(), is_eos);
  if (last != ids->rend()) ids->erase(std::prev(last.base()), ids->end());
  while (!ids->empty() && is_eos(ids->back())) ids->pop_back();
}

using parallel::AllGatherStrings;

bool IsStepFile(const std::string& name, bool* complete) {
  if (name.rfind("step_", 0) != 0) return false;
  const auto ends = [&](const std::string& suf) {
    return name.size() >= suf.size() && name.compare(name.size() - suf.size(), suf.size(), suf) == 0;
  };
  if (ends(".h5")) {
    *complete = true;
    return true;
  }
  if (ends(".tmp")) {
    *complete = false;
    return true;
  }
  return false;
}

}  // namespace

Evaluator::Evaluator(const Config& cfg, const std::string& data_dir, const data::Tokenizer& tok,
                     parallel::ProcessGrid& grid)
    : cfg_(cfg), dir_(data_dir), tok_(tok), grid_(grid), manifest_(data::ReadManifest(data_dir)) {
  if (manifest_.test.num_docs == 0) {
    FT_THROW(DataError, "{}: the test split is empty, so there is nothing to evaluate on: set "
             "data.split.test_ratio > 0 (or data.split.test_count > 0) and re-run ftune prepare "
             "(with --overwrite)", dir_);
  }
  if (manifest_.meta.tokenizer_sha256 != tok.sha256()) {
    FT_THROW(DataError, "{} was prepared with another tokenizer (sha256 {}) than the model's {} "
             "(sha256 {}): re-run ftune prepare with this tokenizer, or evaluate a model that "
             "uses the dataset's", dir_, manifest_.meta.tokenizer_sha256, tok.path(),
             tok.sha256());
  }
}

LossTotals Evaluator::Loss(models::LlamaModel& model) {
  data::LoaderOptions lo;
  lo.dir = dir_;
  lo.split = "test";
  lo.seq_len = cfg_.data.max_seq_len;
  lo.micro_batch = cfg_.eval.batch_size;
  lo.packing = false;
  lo.pad_to_multiple = cfg_.data.pad_to_multiple;
  lo.seed = cfg_.data.shuffle_seed;
  lo.dp_rank = grid_.dp_rank();
  lo.dp_size = grid_.dp();
  lo.expected_tokenizer_sha256 = tok_.sha256();
  lo.shuffle = false;
  lo.drop_last = false;
  data::Loader loader(lo);
  const int64_t dp = grid_.dp(), cp = grid_.cp(), cp_rank = grid_.cp_rank();
  const int64_t steps = loader.samples_per_epoch() / (cfg_.eval.batch_size * dp);

  torch::NoGradGuard no_grad;
  const auto dev = model.device();
  auto local = torch::zeros({std::max<int64_t>(steps, 1), 3}, torch::kDouble);
  auto acc = local.accessor<double, 2>();
  for (int64_t k = 0; k < steps; ++k) {
    data::Batch b = loader.Next();
    // Columns after the batch's last target change no earlier logit (causal): drop them. A batch
    // of filler rows only still runs (one column, nothing counted): the forward may hold
    // collectives (ZeRO-3 layers gathered as in training, tensor parallelism) that every rank
    // must make.
    int64_t t =
        b.num_targets == 0 ? 1 : (b.loss_mask.sum(0) > 0).nonzero().max().item<int64_t>() + 1;
    // Context parallelism: 2 * cp equal chunks (max_seq_len is a multiple of 2 * cp), each
    // rank its own two; the rows are counted once, by cp rank 0.
    t = (t + 2 * cp - 1) / (2 * cp) * (2 * cp);
    auto cut = [&](const torch::Tensor& x) {
      return parallel::ShardSequence(x.slice(1, 0, t), cp, cp_rank, /*dim=*/1);
    };
    models::ForwardOptions fo;
    fo.positions = cut(b.positions).to(dev);
    if (cp > 1) fo.cp = &grid_.cp_comm();
    auto mask = cut(b.loss_mask);
    auto ls = models::CausalLmLoss(model, cut(b.tokens).to(dev), cut(b.targets).to(dev),
                                   mask.to(dev), fo);
    acc[k][0] = ls.loss_sum.item<double>();
    acc[k][1] = static_cast<double>(ls.count.item<int64_t>());
    acc[k][2] = cp_rank == 0 ? (b.loss_mask.sum(1) > 0).sum().item<double>() : 0.0;
  }
  // Chunk c = k * dp + r is row block c of the split whatever dp is: add in chunk order (and
  // within a chunk, the cp ranks' parts in cp order). Replica index = dp rank * cp + cp rank.
  auto all = torch::zeros({dp * cp, local.size(0), 3}, torch::kDouble);
  grid_.dp_control().AllGather(local, all)->Wait();  // host sums: control traffic
  auto a = all.accessor<double, 3>();
  LossTotals tot;
  for (int64_t k = 0; k < steps; ++k) {
    for (int64_t r = 0; r < dp * cp; ++r) {
      tot.nll_sum += a[r][k][0];
      tot.targets += static_cast<int64_t>(a[r][k][1]);
      tot.samples += static_cast<int64_t>(a[r][k][2]);
    }
  }
  return tot;
}

std::vector<EvalExample> Evaluator::ReadExamples(int64_t limit,
                                                 const std::function<bool(int64_t)>& keep) const {
  std::vector<EvalExample> out;
  int64_t number = 0;  // of the next turn in dataset order
  int64_t first_doc = 0;
  const auto more = [&] { return limit < 0 || number < limit; };
  for (const auto& shard : manifest_.test.shards) {
    if (!more()) break;
    data::ShardReader reader(files::Join(dir_, shard.file));
    const auto& off = reader.doc_offsets();
    for (int64_t d = 0; d < reader.num_docs() && more(); ++d) {
      const int64_t n = off[d + 1] - off[d];
      std::vector<int32_t> tokens(n);
      std::vector<uint8_t> mask(n);
      reader.Read(off[d], n, tokens.data(), mask.data());
      const auto runs = TrainedRuns(mask);
      for (size_t r = 0; r < runs.size() && more(); ++r, ++number) {
        if (!keep(number)) continue;
        EvalExample ex;
        ex.index = first_doc + d;
        ex.turn = static_cast<int64_t>(r);
        // At least BOS as the prompt (a document trained from its first token on).
        const int64_t begin = std::max<int64_t>(runs[r].first, 1);
        const int64_t end = std::max(begin, runs[r].second);
        ex.prompt_ids.assign(tokens.begin(), tokens.begin() + begin);
        std::vector<int32_t> ref(tokens.begin() + begin, tokens.begin() + end);
        CutAtLastEos(tok_.eos_ids(), &ref);
        ex.prompt = DecodeText(tok_, ex.prompt_ids);
        ex.reference = DecodeText(tok_, ref);
        ex.task = reader.doc_task(d);
        out.push_back(std::move(ex));
      }
    }
    first_doc += shard.num_docs;
  }
  return out;
}

LossTotals Evaluator::Loss(ParallelModel& pm) {
  pm.BeginForward();
  const LossTotals tot = Loss(pm.model());
  pm.ReleaseAll();
  return tot;
}

GenerationResult Evaluator::Generate(models::LlamaModel& model, int64_t max_samples) {
  return GenerateWith(model, max_samples, {});
}

GenerationResult Evaluator::Generate(ParallelModel& pm, int64_t max_samples) {
  pm.BeginForward();  // ZeRO-3: embedding and head whole throughout, layers gathered per forward
  GenerationResult res = GenerateWith(pm.model(), max_samples, pm.GenerationLockStep());
  pm.ReleaseAll();
  return res;
}

GenerationResult Evaluator::GenerateWith(models::LlamaModel& model, int64_t max_samples,
                                         const std::function<bool(bool)>& lock_step) {
  const auto t0 = std::chrono::steady_clock::now();
  // Generation is not sharded over cp: every replica of the weights (dp x cp) takes batches.
  const int64_t bs = cfg_.eval.batch_size, dp = grid_.replicas(), rank = grid_.replica_rank();
  // Batch k (examples [k*bs, (k+1)*bs) in dataset order) runs on replica k % dp.
  const auto examples = ReadExamples(max_samples, [&](int64_t i) { return (i / bs) % dp == rank; });

  models::GenerateOptions opt = TokenGenerateOptions(tok_, model.config());
  opt.temperature = cfg_.eval.temperature;
  opt.top_k = cfg_.eval.top_k;
  opt.top_p = cfg_.eval.top_p;
  opt.seed = static_cast<uint64_t>(cfg_.run.seed);
  opt.lock_step = lock_step;

  nlohmann::json local = nlohmann::json::array();
  if (lock_step) {
    // Every dp rank takes part in every forward: as many rounds as the rank with the most
    // batches. Where the idle rounds go changes nothing (the lock step pairs forwards).
    const int64_t batches = (static_cast<int64_t>(examples.size()) + bs - 1) / bs;
    auto most = torch::tensor({batches}, torch::kLong);
    grid_.dp_control().AllReduce(most, parallel::ReduceOp::kMax)->Wait();
    for (int64_t idle = most.item<int64_t>() - batches; idle > 0; --idle) {
      models::Generate(model, {}, opt);
    }
  }
  for (size_t first = 0; first < examples.size(); first += bs) {
    const size_t last = std::min(examples.size(), first + static_cast<size_t>(bs));
    std::vector<std::vector<int32_t>> prompts;
    int64_t longest = 0;
    for (size_t i = first; i < last; ++i) {
      prompts.push_back(examples[i].prompt_ids);
      longest = std::max<int64_t>(longest, examples[i].prompt_ids.size());
    }
    opt.max_new_tokens = std::max<int64_t>(
        0, std::min(cfg_.eval.max_new_tokens,
                    model.config().max_position_embeddings - longest));
    const auto outs = models::Generate(model, prompts, opt);
    for (size_t i = first; i < last; ++i) {
      const auto& ex = examples[i];
      const std::string answer = DecodeText(tok_, outs[i - first]);
      local.push_back({{"index", ex.index},
                       {"turn", ex.turn},
                       {"prompt", ex.prompt},
                       {"reference", ex.reference},
                       {"task", ex.task},
                       {"answer", answer},
                       {"exact", ExactMatch(answer, ex.reference, cfg_.eval.normalize)},
                       {"f1", TokenF1(answer, ex.reference, cfg_.eval.normalize)}});
    }
  }

  GenerationResult res;
  for (const auto& s : AllGatherStrings(grid_.dp_control(), local.dump())) {
    for (const auto& j : nlohmann::json::parse(s)) {
      ExampleAnswer a;
      a.index = j["index"].get<int64_t>();
      a.turn = j["turn"].get<int64_t>();
      a.prompt = j["prompt"].get<std::string>();
      a.reference = j["reference"].get<std::string>();
      a.task = j["task"].get<std::string>();
      a.answer = j["answer"].get<std::string>();
      a.exact = j["exact"].get<bool>();
      a.f1 = j["f1"].get<double>();
      res.answers.push_back(std::move(a));
    }
  }
  std::sort(res.answers.begin(), res.answers.end(),
            [](const ExampleAnswer& x, const ExampleAnswer& y) {
              return std::tie(x.index, x.turn) < std::tie(y.index, y.turn);
            });
  for (const auto& a : res.answers) {
    ++res.totals.examples;
    res.totals.exact += a.exact ? 1 : 0;
    res.totals.f1_sum += a.f1;
  }
  res.seconds = SecondsSince(t0);
  return res;
}

TrainingEval::TrainingEval(const Config& cfg, const data::Tokenizer& tok,
                           parallel::ProcessGrid& grid)
    : cfg_(cfg), grid_(grid), best_loss_(std::numeric_limits<double>::infinity()) {
  const std::string dir = RunPath(cfg, cfg.data.dir);
  const auto m = data::ReadManifest(dir);
  if (m.test.num_docs == 0) {
    LogInfo("eval during training is off: {} has no test split (data.split.test_ratio)", dir);
    return;
  }
  evaluator_ = std::make_unique<Evaluator>(cfg, dir, tok, grid);
  const std::string best = RunPath(cfg, "best.json");
  if (files::Exists(best)) {  // resumed run: keep the best step found so far
    try {
      std::ifstream in(best);
      const auto j = nlohmann::json::parse(in);
      if (j.contains("eval_loss") && j["eval_loss"].is_number()) best_loss_ = j["eval_loss"].get<double>();
    } catch (const nlohmann::json::exception&) {
    }
  }
}

TrainingEval::~TrainingEval() = default;

bool TrainingEval::Due(int64_t step, int64_t total_steps) const {
  if (!evaluator_) return false;
  return step == total_steps || (cfg_.eval.every > 0 && step % cfg_.eval.every == 0);
}

void TrainingEval::WriteTensorBoard(int64_t step, const LossTotals& loss,
                                    const GenerationResult* gen) const {
  TensorBoardWriter& tb = RunTensorBoard(RunPath(cfg_, "tensorboard"));
  tb.AddScalar("eval/loss", loss.MeanNll(), step);
  tb.AddScalar("eval/perplexity", loss.Perplexity(), step);
  if (gen == nullptr) return;
  tb.AddScalar("eval/exact_match", gen->totals.ExactMatchRate(), step);
  tb.AddScalar("eval/f1", gen->totals.MeanF1(), step);
  std::map<std::string, std::pair<int64_t, int64_t>> tasks;  // task -> (exact, examples)
  for (const auto& a : gen->answers) {
    if (a.task.empty()) continue;
    tasks[a.task].first += a.exact ? 1 : 0;
    tasks[a.task].second += 1;
  }
  for (const auto& [task, n] : tasks) {
    tb.AddScalar("eval/exact_match/" + task, double(n.first) / double(n.second), step);
  }
  std::string md = "| # | prompt | reference | answer | exact |\n| --- | --- | --- | --- | --- |\n";
  const size_t shown = std::min<size_t>(gen->answers.size(), 20);
  for (size_t i = 0; i < shown; ++i) {
    const auto& a = gen->answers[i];
    md += fmt::format("| {}.{} | {} | {} | {} | {} |\n", a.index, a.turn, MarkdownCell(a.prompt, 300),
                      MarkdownCell(a.reference, 200), MarkdownCell(a.answer, 200),
                      a.exact ? "yes" : "no");
  }
  tb.AddText("eval/examples", md, step);
}

bool TrainingEval::Run(ParallelModel& pm, int64_t step) {
  const auto t0 = std::chrono::steady_clock::now();
  const LossTotals loss = evaluator_->Loss(pm);
  nlohmann::json j = {{"step", step}, {"eval_loss", loss.MeanNll()},
                      {"eval_ppl", loss.Perplexity()}, {"eval_targets", loss.targets}};
  std::string gen_text;
  std::optional<GenerationResult> gen;
  if (cfg_.eval.generate && cfg_.eval.max_samples != 0) {
    gen = evaluator_->Generate(pm, cfg_.eval.max_samples);
    const auto& g = *gen;
    j["exact_match"] = g.totals.ExactMatchRate();
    j["f1"] = g.totals.MeanF1();
    j["eval_examples"] = g.totals.examples;
    gen_text = fmt::format(" | exact match {:.1f}% | F1 {:.3f}", 100 * g.totals.ExactMatchRate(),
                           g.totals.MeanF1());
  }
  j["eval_s"] = SecondsSince(t0);
  const bool best = loss.MeanNll() < best_loss_;
  if (best) best_loss_ = loss.MeanNll();
  LogInfo("eval at step {}: loss {:.4f} | ppl {:.3f}{}{} ({:.1f} s)", step, loss.MeanNll(),
          loss.Perplexity(), gen_text, best ? " | best so far" : "", SecondsSince(t0));
  if (grid_.world().rank() != 0) return best;
  {
    std::ofstream out(RunPath(cfg_, "metrics.jsonl"), std::ios::app);
    out << j.dump() << '\n';
  }
  if (cfg_.log.tensorboard) WriteTensorBoard(step, loss, gen ? &*gen : nullptr);
  if (best) {
    const std::string path = RunPath(cfg_, "best.json");
    {
      std::ofstream out(path + ".tmp", std::ios::trunc);
      out << nlohmann::json({{"step", step}, {"eval_loss", loss.MeanNll()},
                             {"eval_ppl", loss.Perplexity()}})
                 .dump(2)
          << '\n';
    }
    files::Rename(path + ".tmp", path);
  }
  return best;
}

void CheckModelTokenizer(const models::LlamaModel& model, const data::Tokenizer& tok,
                         const std::string& what) {
  if (model.config().vocab_size < tok.vocab_size()) {
    FT_THROW(DataError, "{} has vocab_size {} but the tokenizer {} has {} ids: the model was not "
             "made for this tokenizer", what, model.config().vocab_size, tok.path(),
             tok.vocab_size());
  }
}

namespace {

bool IsHfDir(const std::string& path) {
  return files::IsDirectory(path) && files::Exists(files::Join(path, "config.json"));
}

// An HF directory's tokenizer.json must be the dataset's (when both are known).
void CheckHfTokenizer(const std::string& path, const std::string& tokenizer_sha256) {
  if (tokenizer_sha256.empty() || !files::Exists(files::Join(path, "tokenizer.json"))) return;
  const std::string sha = data::Sha256File(files::Join(path, "tokenizer.json"));
  if (sha != tokenizer_sha256) {
    FT_THROW(DataError, "model {} comes with another tokenizer (tokenizer.json sha256 {}) "
             "than the dataset was prepared with (sha256 {}): prepare the data with the "
             "model's tokenizer (tokenizer.path) or evaluate a model that uses it",
             path, sha, tokenizer_sha256);
  }
}

// A checkpoint's run's tokenizer must be the dataset's (when both are known).
void CheckCheckpointTokenizer(const CheckpointMeta& meta, const std::string& tokenizer_sha256) {
  const std::string tok_json = files::Join(meta.tokenizer_dir, "tokenizer.json");
  if (tokenizer_sha256.empty() || !files::Exists(tok_json)) return;
  const std::string sha = data::Sha256File(tok_json);
  if (sha != tokenizer_sha256) {
    FT_THROW(DataError, "checkpoint {} was trained with another tokenizer ({}, sha256 {}) "
             "than the dataset was prepared with (sha256 {})", meta.path, tok_json,
             sha, tokenizer_sha256);
  }
}

// `path` is not an HF directory: when it is a directory, it must hold a complete step_N.h5
// (itself or its checkpoints/), else a ModelError saying what it holds.
void CheckCheckpointDir(const std::string& path) {
  bool complete = false, any = false;
  for (const std::string& d : {path, files::Join(path, "checkpoints")}) {
    if (!files::IsDirectory(d)) continue;
    for (const auto& name : files::ListDir(d)) {
      bool c = false;
      if (IsStepFile(name, &c)) {
        any = true;
        complete = complete || c;
      }
    }
  }
  if (files::IsDirectory(path) && !complete) {
    FT_THROW(ModelError, "{} holds no complete checkpoint ({}) and is not an HF model "
             "directory (no config.json): pass an HF directory (e.g. <run>/final) or a "
             "checkpoint directory holding a finished step_N.h5", path,
             any ? "only unfinished step_N.h5.tmp files" : "no step_N.h5 file");
  }
}

}  // namespace

std::shared_ptr<models::LlamaModel> LoadModelForEval(const std::string& path,
                                                     c10::ScalarType dtype,
                                                     const std::string& tokenizer_sha256) {
  if (!files::Exists(path)) FT_THROW(IoError, "model {} does not exist", path);
  if (IsHfDir(path)) {
    CheckHfTokenizer(path, tokenizer_sha256);
    auto loaded = models::LoadHf(path, dtype);
    LogNotesOnce(loaded.config.notes);
    return loaded.model;
  }
  // An ftune training checkpoint: a step_N.h5 file, a checkpoint directory or a run directory.
  CheckCheckpointDir(path);
  const auto ck = ReadNewestCheckpointModel(path, "model");
  const CheckpointMeta& meta = ck.meta;
  CheckCheckpointTokenizer(meta, tokenizer_sha256);
  const auto cfg = models::LlamaConfig::FromJson(nlohmann::json::parse(meta.model_config_json),
                                                 meta.path + " /state model_config");
  auto model = models::ModelFromTensors(cfg, ck.tensors, dtype, "checkpoint " + meta.path).model;
  LogInfo("loaded checkpoint {} (step {}) for evaluation", meta.path, meta.state.step);
  return model;
}

bool WholeModelLayout(const Config& cfg) { return cfg.parallel.tp == 1 && cfg.parallel.zero < 3; }

ShardedModel LoadShardedModel(const std::string& path, const Config& cfg,
                              parallel::ProcessGrid& grid, const std::string& tokenizer_sha256,
                              const std::string& what) {
  const auto dtype = models::ParseDtype(cfg.model.dtype);
  if (!files::Exists(path)) FT_THROW(IoError, "{}: {} does not exist", what, path);
  ShardedModel out;
  ModelShard shard;
  parallel::ParamSource source;
  if (IsHfDir(path)) {
    CheckHfTokenizer(path, tokenizer_sha256);
    models::HfWeights hf = models::OpenHf(path);  // checks names and shapes, reads none
    out.notes = hf.config.notes;
    shard = UnmaterialisedShard(hf.config, dtype, grid);
    source = SafetensorsSource(hf.tensors, shard.layout);
  } else {
    CheckCheckpointDir(path);
    const CheckpointMeta meta = VerifyNewestCheckpointModel(grid.world(), path, what);
    CheckCheckpointTokenizer(meta, tokenizer_sha256);
    const auto mc = models::LlamaConfig::FromJson(nlohmann::json::parse(meta.model_config_json),
                                                  meta.path + " /state model_config");
    shard = UnmaterialisedShard(mc, dtype, grid);
    auto reader = std::make_shared<CheckpointModelReader>(meta.path);
    source = [reader, layout = shard.layout](const parallel::ParamSpec& spec, int64_t begin,
                                             at::Tensor dst) {
      reader->Read(spec.name, layout.at(spec.name), begin, dst);
    };
    out.checkpoint = meta.path;
    out.checkpoint_step = meta.state.step;
    out.tokenizer_dir = meta.tokenizer_dir;
    out.config_yaml = meta.config_yaml;
  }
  out.pm = std::make_unique<ParallelModel>(shard.model, grid, cfg, std::move(source),
                                           /*params_only=*/true);
  out.pm->model().eval();
  return out;
}

}  // namespace ftune::runtime
