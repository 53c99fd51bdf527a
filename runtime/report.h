// The files `ftune eval` leaves in the run directory:
//   eval.json            metrics of the model (and of the --compare model), machine-readable
//   eval_examples.jsonl  one object per evaluated example (a trained turn, runtime/evaluator.h):
//                        document index and turn, prompt, reference, task label (when the
//                        dataset has one, data.task_field), each model's answer, exact match
//                        and F1
//   report.md            summary table (side by side with --compare), exact match per task
//                        (when examples carry task labels), the loss-curve plot, and the first
//                        20 examples side by side
//   loss_curve.svg       training loss and eval loss against step, from metrics.jsonl
// Rank 0 only; no collectives. Files are written as NAME.tmp and renamed.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "runtime/evaluator.h"
#include "runtime/eval_metrics.h"

namespace ftune::runtime {

struct ModelEval {
  std::string label;  // "finetuned", "base"
  std::string path;   // where the model came from
  LossTotals loss;
  std::optional<GenerationResult> generation;  // absent when generation was not run
  double loss_seconds = 0;
};

struct EvalReport {
  std::string run_name;
  std::string data_dir;
  std::string normalize;          // eval.normalize
  int64_t test_examples = 0;      // documents in the test split (examples are their turns)
  int world_size = 1;
  ModelEval model;                // the evaluated (finetuned) model
  std::optional<ModelEval> base;  // --compare
};

// One model's metrics as JSON ({"eval_loss", "eval_ppl", "targets", "exact_match", "f1", ...};
// with task labels also "tasks": {label: {"examples", "exact", "exact_match"}}, unlabelled
// examples under "").
std::string ModelEvalJson(const ModelEval& m);

// Generation totals per task label ("" = unlabelled examples); empty when no example has a
// label (a dataset without task labels: no per-task breakdown).
std::map<std::string, GenerationTotals> TotalsPerTask(const GenerationResult& g);

// Writes eval.json, eval_examples.jsonl, report.md and (when `run_dir`/metrics.jsonl exists)
// loss_curve.svg into `run_dir`. Returns the path of report.md.
std::string WriteEvalReport(const EvalReport& r, const std::string& run_dir);

// The "## Training" paragraph of report.md from metrics.jsonl's step records (tokens/s, model
// TFLOP/s per device, MFU, peak host and device memory; medians and maxima); "" without steps.
std::string TrainingSection(const std::string& metrics_jsonl);

// A self-contained SVG line chart of the training loss ("loss") and eval loss ("eval_loss")
// records of a metrics.jsonl text (one JSON object per line; when the step counter goes back,
// only the last run's records are kept). Empty when there is nothing to plot.
std::string LossCurveSvg(const std::string& metrics_jsonl);

// Markdown table cell text: '|' escaped, newlines as <br>, long text cut at `max_chars`.
std::string MarkdownCell(const std::string& s, size_t max_chars = 200);

}  // namespace ftune::runtime
