// Evaluation on the test split of a prepared dataset: loss/perplexity and generation metrics
// (exact match, token F1), for `ftune eval` and for evaluation during training.
//
// Loss. The test split is streamed through data::Loader (padding mode: one example per row,
// no shuffle, drop_last = false) in micro-batches of eval.batch_size rows; each batch's summed
// NLL over its target tokens (loss mask 1) comes from models::CausalLmLoss, so no more than one
// chunk of logits exists at a time. Rows are cut after the last target column of the batch
// (causal attention makes this exact). Loader chunk c (rows [c*B, (c+1)*B) of the split) is
// the same whatever the number of data-parallel ranks; the per-chunk sums are all-gathered and
// added in chunk order in double precision, so the result is token-weighted (never a mean of
// means) and does not depend on how the chunks were spread over ranks.
//
// Generation. The examples are the test split's trained turns: each maximal run of loss-mask-1
// tokens of a document is one example, so a question/answer document gives one and a chat document
// one per trained assistant turn (with data.train_on_prompt a whole document is one run, prompted
// with its BOS alone; a document with no trained token gives none). An example's prompt is every
// token of its document before the run (BOS + templated prompt, for a later turn the conversation
// so far with the earlier answers: exactly what training saw before it), its reference the run
// decoded without special tokens after the run is cut at its last EOS id (Tokenizer::eos_ids(),
// which holds generation_config.json's eos_token_id list; the end-of-turn token such as <|eot_id|>
// and whatever the template writes after it, e.g. Qwen's "\n" after <|im_end|>, are dropped, and so
// are EOS ids just before it), and its task the label prepare stored for the document
// (data.task_field, "" when none). The first eval.max_samples examples (-1 = all; turns, not
// documents) in dataset order (document, then turn) are split into batches of eval.batch_size;
// batch k runs on data-parallel rank k % dp. Every rank reads the documents up to the last example
// wanted to number the turns (tokens and mask; no compute). The prompt is completed by
// models::Generate (KV cache; greedy unless eval.temperature > 0) up to eval.max_new_tokens or any
// EOS id (the tokenizer's and the model config's: TokenGenerateOptions), decoded without special
// tokens, and compared with the reference (eval_metrics.h). Per-example results are all-gathered,
// so every rank returns all of them, ordered by (document index, turn).
//
// Layouts. The model may be whole on every rank, a tensor-parallel shard (every rank of a tp group
// runs the same batches; its logits are all-gathered, so the group samples the same tokens), or a
// ParallelModel under ZeRO-3 (layers gathered one at a time, also per generated token; the dp
// ranks generate their batches in lock step, ParallelModel::GenerationLockStep). Greedy answers
// and, since every batch is sampled from a generator seeded with run.seed whatever rank runs it,
// sampled answers are the same in every layout (up to floating-point reduction order).
//
// Collective: every rank of the grid constructs the Evaluator and calls each method in the same
// order.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "data/shards.h"
#include "data/tokenizer.h"
#include "models/llama.h"
#include "parallel/process_grid.h"
#include "runtime/config.h"
#include "runtime/eval_metrics.h"
#include "runtime/parallelize.h"

namespace ftune::runtime {

// One test example (a trained turn) prepared for generation.
struct EvalExample {
  int64_t index = 0;                // document index in the test split (dataset order)
  int64_t turn = 0;                 // which run of trained tokens of the document (0-based)
  std::vector<int32_t> prompt_ids;  // the document's tokens before the run (BOS + prompt)
  std::string prompt;               // prompt_ids decoded (special tokens skipped)
  std::string reference;            // the trained-on part decoded (special tokens skipped)
  std::string task;                 // the document's task label (data.task_field); "" = none
};

// One model's answer to one example.
struct ExampleAnswer {
  int64_t index = 0;  // document index in the test split
  int64_t turn = 0;   // trained turn of the document (EvalExample::turn)
  std::string prompt, reference, answer, task;
  bool exact = false;
  double f1 = 0;
};

struct GenerationResult {
  GenerationTotals totals;
  std::vector<ExampleAnswer> answers;  // every example, by (index, turn), on every rank
  double seconds = 0;
};

class Evaluator {
 public:
  // Opens the test split of `data_dir`. Throws before any compute: DataError when the directory
  // holds no complete dataset, when the test split is empty (with the settings that make one),
  // or when the dataset was prepared with another tokenizer than `tok` (naming both sha256s).
  Evaluator(const Config& cfg, const std::string& data_dir, const data::Tokenizer& tok,
            parallel::ProcessGrid& grid);

  // Mean NLL over the whole test split (see the header comment). Collective over the grid.
  // `model`: whole, or a tensor-parallel shard, or a ParallelModel's model between its
  // BeginForward and ReleaseAll; the ParallelModel overload makes that bracket itself.
  LossTotals Loss(models::LlamaModel& model);
  LossTotals Loss(ParallelModel& pm);

  // Generation metrics on the first `max_samples` examples (trained turns; -1 = all).
  // Collective over the grid. `model`: whole or a tensor-parallel shard (not ZeRO-3: use the
  // ParallelModel overload, which gathers its layers one at a time in lock step over dp).
  GenerationResult Generate(models::LlamaModel& model, int64_t max_samples);
  GenerationResult Generate(ParallelModel& pm, int64_t max_samples);

  int64_t num_test_examples() const { return manifest_.test.num_docs; }
  int64_t num_test_tokens() const { return manifest_.test.num_tokens; }
  const data::Manifest& manifest() const { return manifest_; }

 private:
  // The first `limit` examples (-1 = all), numbered from 0 in dataset order (document, then
  // turn), of which those whose number `keep` accepts; read from the shards document by
  // document (hyperslabs only) up to the last example counted.
  std::vector<EvalExample> ReadExamples(int64_t limit,
                                        const std::function<bool(int64_t)>& keep) const;
  // Generate with models::GenerateOptions::lock_step set to `lock_step` (empty: none); under a
  // lock step every dp rank runs as many batches as the one with the most (idle ones empty).
  GenerationResult GenerateWith(models::LlamaModel& model, int64_t max_samples,
                                const std::function<bool(bool)>& lock_step);

  const Config& cfg_;
  std::string dir_;
  const data::Tokenizer& tok_;
  parallel::ProcessGrid& grid_;
  data::Manifest manifest_;
};

// Evaluation during `ftune train` (eval.every): at every eval.every-th step, and at the last
// step (also when eval.every is 0), the test-split loss (and, with eval.generate, generation
// metrics on eval.max_samples examples) is computed and appended to <run>/metrics.jsonl as
// {"step", "eval_loss", "eval_ppl", ["exact_match", "f1"]}; the best step by eval loss is kept in
// <run>/best.json ({"step", "eval_loss", "eval_ppl"}, read back on resume). Disabled, with one log
// line, when the dataset has no test split. Collective over the grid; runs on the training
// layout (tensor-parallel shards, ZeRO-3 layers gathered one at a time), never whole models.
class TrainingEval {
 public:
  TrainingEval(const Config& cfg, const data::Tokenizer& tok, parallel::ProcessGrid& grid);
  ~TrainingEval();
  bool enabled() const { return evaluator_ != nullptr; }
  bool Due(int64_t step, int64_t total_steps) const;
  // Returns whether `step` is the best so far (then best.json names it).
  bool Run(ParallelModel& pm, int64_t step);

 private:
  // Rank 0: eval scalars (loss, perplexity, exact match overall and per task, F1) and the first
  // examples as text into <run>/tensorboard.
  void WriteTensorBoard(int64_t step, const LossTotals& loss, const GenerationResult* gen) const;

 public:

 private:
  const Config& cfg_;
  parallel::ProcessGrid& grid_;
  std::unique_ptr<Evaluator> evaluator_;
  double best_loss_;
};

// Checks that `model` can be evaluated with `tok` (its vocabulary covers the tokenizer's ids).
// `what` names the model in the error ("--model runs/x/final").
void CheckModelTokenizer(const models::LlamaModel& model, const data::Tokenizer& tok,
                         const std::string& what);

// The model at `path` for evaluation, whole on this rank, cast to `dtype`: an HF directory
// (config.json + safetensors), or an ftune training checkpoint (a step_N.h5 file, a checkpoint
// directory or a run directory: its newest usable checkpoint, runtime/checkpoint.h). A directory
// with neither config.json nor a complete step_N.h5 is a ModelError saying so. When
// `tokenizer_sha256` is non-empty, the model's tokenizer.json (the HF directory's, or the one
// the checkpoint's run used) must have that sha256, else DataError naming both.
// The one place model loading for eval goes through (extend it for new formats).
std::shared_ptr<models::LlamaModel> LoadModelForEval(const std::string& path,
                                                     c10::ScalarType dtype,
                                                     const std::string& tokenizer_sha256);

// Whether `cfg`'s layout keeps whole models on every rank (parallel.tp 1, parallel.zero < 3):
// then evaluation and generation load them with LoadModelForEval, as on one rank.
bool WholeModelLayout(const Config& cfg);

// What LoadShardedModel loaded.
struct ShardedModel {
  std::unique_ptr<ParallelModel> pm;
  std::string checkpoint;        // the checkpoint file used ("" for an HF directory)
  int64_t checkpoint_step = -1;
  std::string tokenizer_dir;     // a checkpoint's run's tokenizer directory ("" for HF)
  std::string config_yaml;       // a checkpoint's resolved run config ("" for HF)
  LoadNotes notes;               // an HF directory's config.json notes, for LogNotesOnce
};

// The model at `path` (an HF directory or an ftune checkpoint, as LoadModelForEval) laid out over
// `grid` as `cfg` trains it, for evaluation and generation: this rank's tensor-parallel shard
// (parallel.tp), under parallel.zero 3 only its 1/dp of that between uses; in model.dtype, on the
// grid's device, parameters only (no gradients or optimizer state). Each rank reads only the
// elements it keeps: from the memory-mapped safetensors, or from the checkpoint's /model datasets
// after the checkpoint was verified collectively (each rank checksums a 1/world slice of every
// tensor, as a collective export does; a damaged newest checkpoint falls back to the previous
// one). `tokenizer_sha256` as LoadModelForEval's; `what` names the model in messages
// ("--model X"). Collective over the grid.
ShardedModel LoadShardedModel(const std::string& path, const Config& cfg,
                              parallel::ProcessGrid& grid, const std::string& tokenizer_sha256,
                              const std::string& what);

}  // namespace ftune::runtime
