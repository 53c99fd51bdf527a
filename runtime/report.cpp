#include "runtime/report.h"

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <sstream>
#include <utility>

#include "parallel/error.h"
#include "parallel/files.h"

namespace ftune::runtime {
namespace {

constexpr int kReportExamples = 20;

void WriteFileAtomic(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) FT_THROW(IoError, "cannot write {}", tmp);
    out << text;
    out.flush();
    if (!out) FT_THROW(IoError, "cannot write {} (disk full?)", tmp);
  }
  files::Rename(tmp, path);
}

nlohmann::json Num(double v) {  // NaN/inf are not JSON: null
  return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr);
}

std::string Fmt(double v, const char* f = "{:.4f}") {
  return std::isfinite(v) ? fmt::format(fmt::runtime(f), v) : std::string("n/a");
}

std::string Pct(double v) { return std::isfinite(v) ? fmt::format("{:.1f}%", 100 * v) : "n/a"; }

// An example: its document's index in the test split and its trained turn there.
using ExampleKey = std::pair<int64_t, int64_t>;

const ExampleAnswer* FindAnswer(const ModelEval& m, const ExampleKey& key) {
  if (!m.generation) return nullptr;
  const auto& a = m.generation->answers;
  auto it = std::lower_bound(a.begin(), a.end(), key,
                             [](const ExampleAnswer& x, const ExampleKey& k) {
                               return ExampleKey(x.index, x.turn) < k;
                             });
  return it != a.end() && ExampleKey(it->index, it->turn) == key ? &*it : nullptr;
}

std::string XmlEscape(const std::string& s) {
  std::string o;
  for (char c : s) {
    switch (c) {
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '&': o += "&amp;"; break;
      case '"': o += "&quot;"; break;
      default: o.push_back(c);
    }
  }
  return o;
}

// "Nice" tick values covering [lo, hi].
std::vector<double> Ticks(double lo, double hi, int want) {
  const double span = std::max(hi - lo, 1e-12);
  const double raw = span / want;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 5.0, 10.0}) {
    if (m * mag >= raw) {
      step = m * mag;
      break;
    }
  }
  std::vector<double> t;
  for (double v = std::ceil(lo / step) * step; v <= hi + 1e-9 * span; v += step) t.push_back(v);
  return t;
}

std::string ExactCell(const GenerationTotals& t) {
  return fmt::format("{} ({}/{})", Pct(t.ExactMatchRate()), t.exact, t.examples);
}

// "## Exact match per task": one row per task label (data.task_field) of the evaluated model's
// examples, base beside it with --compare; "" when no example has a label.
std::string PerTaskSection(const EvalReport& r) {
  if (!r.model.generation) return "";
  const auto model = TotalsPerTask(*r.model.generation);
  if (model.empty()) return "";
  std::map<std::string, GenerationTotals> base;
  if (r.base && r.base->generation) base = TotalsPerTask(*r.base->generation);
  const bool cmp = r.base.has_value();
  std::string md = "## Exact match per task\n\nTest examples grouped by their task label "
                   "(the records' `data.task_field`):\n\n";
  md += cmp ? "| task | examples | base | finetuned |\n| --- | ---: | ---: | ---: |\n"
            : "| task | examples | exact match |\n| --- | ---: | ---: |\n";
  for (const auto& [name, tot] : model) {
    md += fmt::format("| {} | {} | ", name.empty() ? "(no label)" : MarkdownCell(name),
                      tot.examples);
    if (cmp) {
      const auto it = base.find(name);
      md += (it == base.end() ? std::string("–") : ExactCell(it->second)) + " | ";
    }
    md += ExactCell(tot) + " |\n";
  }
  return md + "\n";
}

}  // namespace

std::string MarkdownCell(const std::string& s, size_t max_chars) {
  std::string t = s.size() > max_chars ? s.substr(0, max_chars) + "…" : s;
  std::string o;
  for (char c : t) {
    if (c == '|') {
      o += "\\|";
    } else if (c == '\n') {
      o += "<br>";
    } else if (c == '\r') {
      continue;
    } else {
      o.push_back(c);
    }
  }
  return o.empty() ? "∅" : o;
}

std::map<std::string, GenerationTotals> TotalsPerTask(const GenerationResult& g) {
  std::map<std::string, GenerationTotals> per;
  if (std::none_of(g.answers.begin(), g.answers.end(),
                   [](const ExampleAnswer& a) { return !a.task.empty(); })) {
    return per;
  }
  for (const auto& a : g.answers) {
    auto& t = per[a.task];
    ++t.examples;
    t.exact += a.exact ? 1 : 0;
    t.f1_sum += a.f1;
  }
  return per;
}

std::string ModelEvalJson(const ModelEval& m) {
  nlohmann::json j = {{"path", m.path},
                      {"eval_loss", Num(m.loss.MeanNll())},
                      {"eval_ppl", Num(m.loss.Perplexity())},
                      {"targets", m.loss.targets},
                      {"loss_examples", m.loss.samples},
                      {"loss_seconds", m.loss_seconds}};
  if (m.generation) {
    j["exact_match"] = Num(m.generation->totals.ExactMatchRate());
    j["exact"] = m.generation->totals.exact;
    j["f1"] = Num(m.generation->totals.MeanF1());
    j["generated_examples"] = m.generation->totals.examples;
    j["generation_seconds"] = m.generation->seconds;
    const auto per_task = TotalsPerTask(*m.generation);
    if (!per_task.empty()) {
      nlohmann::json t = nlohmann::json::object();
      for (const auto& [name, tot] : per_task) {
        t[name] = {{"examples", tot.examples},
                   {"exact", tot.exact},
                   {"exact_match", Num(tot.ExactMatchRate())}};
      }
      j["tasks"] = t;
    }
  }
  return j.dump();
}

std::string TrainingSection(const std::string& metrics_jsonl) {
  std::vector<double> tps, tflops, mfu;
  int64_t steps = 0, rss = 0, dev_peak = 0;
  std::istringstream in(metrics_jsonl);
  std::string line;
  int64_t last_step = -1;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object() || !j.contains("tokens_per_s") || !j.contains("step")) {
      continue;
    }
    const int64_t step = j["step"].get<int64_t>();
    if (step <= last_step) {  // a new run appended to the file: keep the last one only
      tps.clear(), tflops.clear(), mfu.clear();
      steps = rss = dev_peak = 0;
    }
    last_step = step;
    ++steps;
    tps.push_back(j["tokens_per_s"].get<double>());
    if (j.contains("model_tflops_per_device")) tflops.push_back(j["model_tflops_per_device"].get<double>());
    if (j.contains("mfu")) mfu.push_back(j["mfu"].get<double>());
    rss = std::max(rss, j.value("host_rss_max_bytes", int64_t(0)));
    dev_peak = std::max(dev_peak, j.value("device_peak_bytes", int64_t(0)));
  }
  if (steps == 0) return "";
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  std::string md = fmt::format(
      "## Training\n\n{} steps (from `metrics.jsonl`, medians over the steps): {:.0f} tokens/s",
      steps, median(tps));
  if (!tflops.empty()) md += fmt::format(", {:.3f} model TFLOP/s per device", median(tflops));
  md += mfu.empty() ? ", MFU not reported (no known device peak; `run.peak_tflops` sets one)"
                    : fmt::format(", MFU {:.1f} %", 100 * median(mfu));
  if (rss > 0) md += fmt::format("; peak host memory {:.2f} GiB (largest rank)", double(rss) / (1 << 30));
  if (dev_peak > 0) md += fmt::format("; peak device memory {:.2f} GiB", double(dev_peak) / (1 << 30));
  return md + ".\n\n";
}

std::string LossCurveSvg(const std::string& metrics_jsonl) {
  std::vector<std::pair<double, double>> train, eval;
  std::istringstream in(metrics_jsonl);
  std::string line;
  double last_step = -1;
  while (std::getline(in, line)) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception&) {
      continue;  // a line cut by a crash: skip it
    }
    if (!j.is_object() || !j.contains("step") || !j["step"].is_number()) continue;
    const double step = j["step"].get<double>();
    if (j.contains("loss") && j["loss"].is_number()) {
      if (step < last_step) {  // a new run appended to the file: keep the last one only
        train.clear();
        eval.clear();
      }
      last_step = step;
      train.emplace_back(step, j["loss"].get<double>());
    }
    if (j.contains("eval_loss") && j["eval_loss"].is_number()) {
      eval.emplace_back(step, j["eval_loss"].get<double>());
    }
  }
  if (train.empty() && eval.empty()) return "";

  double x0 = 1e300, x1 = -1e300, y0 = 1e300, y1 = -1e300;
  for (const auto* s : {&train, &eval}) {
    for (const auto& [x, y] : *s) {
      if (!std::isfinite(y)) continue;
      x0 = std::min(x0, x), x1 = std::max(x1, x);
      y0 = std::min(y0, y), y1 = std::max(y1, y);
    }
  }
  if (x1 <= x0) x1 = x0 + 1;
  if (y1 <= y0) y1 = y0 + 1;
  const double pad = 0.05 * (y1 - y0);
  y0 = std::max(0.0, y0 - pad), y1 += pad;
  const double W = 720, H = 420, L = 64, R = 20, T = 36, B = 48;
  auto px = [&](double x) { return L + (x - x0) / (x1 - x0) * (W - L - R); };
  auto py = [&](double y) { return H - B - (y - y0) / (y1 - y0) * (H - T - B); };

  std::string s = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" "
      "viewBox=\"0 0 {0} {1}\" font-family=\"sans-serif\" font-size=\"12\">\n"
      "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
      "<text x=\"{2}\" y=\"22\" font-size=\"15\">Loss per target token (nats)</text>\n",
      W, H, L);
  for (double v : Ticks(y0, y1, 5)) {
    s += fmt::format("<line x1=\"{0}\" x2=\"{1}\" y1=\"{2:.1f}\" y2=\"{2:.1f}\" stroke=\"#ddd\"/>"
                     "<text x=\"{3}\" y=\"{4:.1f}\" text-anchor=\"end\">{5:.3g}</text>\n",
                     L, W - R, py(v), L - 6, py(v) + 4, v);
  }
  for (double v : Ticks(x0, x1, 6)) {
    s += fmt::format("<line x1=\"{0:.1f}\" x2=\"{0:.1f}\" y1=\"{1}\" y2=\"{2}\" stroke=\"#eee\"/>"
                     "<text x=\"{0:.1f}\" y=\"{3}\" text-anchor=\"middle\">{4:.0f}</text>\n",
                     px(v), T, H - B, H - B + 16, v);
  }
  s += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" "
                   "stroke=\"#333\"/>\n<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">step</text>\n",
                   L, T, W - L - R, H - T - B, (L + W - R) / 2, H - 10);
  auto polyline = [&](const std::vector<std::pair<double, double>>& pts, const char* color,
                      bool dots) {
    std::string p;
    for (const auto& [x, y] : pts) {
      if (std::isfinite(y)) p += fmt::format("{:.1f},{:.1f} ", px(x), py(y));
    }
    std::string o = fmt::format("<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" "
                                "points=\"{}\"/>\n", color, p);
    if (dots) {
      for (const auto& [x, y] : pts) {
        if (std::isfinite(y)) {
          o += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"3\" fill=\"{}\"/>\n", px(x),
                           py(y), color);
        }
      }
    }
    return o;
  };
  const char* kTrain = "#1f77b4";
  const char* kEval = "#ff7f0e";
  s += polyline(train, kTrain, train.size() == 1);
  s += polyline(eval, kEval, true);
  const double lx = W - R - 150, ly = T + 16;
  s += fmt::format("<line x1=\"{0}\" x2=\"{1}\" y1=\"{2}\" y2=\"{2}\" stroke=\"{3}\" "
                   "stroke-width=\"2\"/><text x=\"{4}\" y=\"{5}\">{6}</text>\n",
                   lx, lx + 24, ly, kTrain, lx + 30, ly + 4, XmlEscape("training loss"));
  s += fmt::format("<line x1=\"{0}\" x2=\"{1}\" y1=\"{2}\" y2=\"{2}\" stroke=\"{3}\" "
                   "stroke-width=\"2\"/><text x=\"{4}\" y=\"{5}\">{6}</text>\n",
                   lx, lx + 24, ly + 18, kEval, lx + 30, ly + 22, XmlEscape("eval loss (test)"));
  s += "</svg>\n";
  return s;
}

std::string WriteEvalReport(const EvalReport& r, const std::string& run_dir) {
  files::CreateDirectories(run_dir);

  // eval.json
  nlohmann::json j = {{"run", r.run_name},
                      {"data_dir", r.data_dir},
                      {"test_examples", r.test_examples},
                      {"normalize", r.normalize},
                      {"world_size", r.world_size},
                      {"model", nlohmann::json::parse(ModelEvalJson(r.model))}};
  if (r.base) j["base"] = nlohmann::json::parse(ModelEvalJson(*r.base));
  WriteFileAtomic(files::Join(run_dir, "eval.json"), j.dump(2) + "\n");

  // eval_examples.jsonl: the union of both models' examples, by (index, turn).
  std::vector<ExampleKey> keys;
  bool multi_turn = false;  // some document has more than one trained turn
  for (const ModelEval* m : {&r.model, r.base ? &*r.base : nullptr}) {
    if (m && m->generation) {
      for (const auto& a : m->generation->answers) {
        keys.emplace_back(a.index, a.turn);
        multi_turn = multi_turn || a.turn > 0;
      }
    }
  }
  std::sort(keys.begin(), keys.end());
  keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
  std::string lines;
  for (const ExampleKey& key : keys) {
    const ExampleAnswer* a = FindAnswer(r.model, key);
    const ExampleAnswer* b = r.base ? FindAnswer(*r.base, key) : nullptr;
    const ExampleAnswer* any = a ? a : b;
    nlohmann::json e = {{"index", key.first},
                        {"turn", key.second},
                        {"prompt", any->prompt},
                        {"reference", any->reference}};
    if (!any->task.empty()) e["task"] = any->task;
    if (a) {
      e["answer"] = a->answer;
      e["exact"] = a->exact;
      e["f1"] = a->f1;
    }
    if (b) {
      e["base_answer"] = b->answer;
      e["base_exact"] = b->exact;
      e["base_f1"] = b->f1;
    }
    lines += e.dump() + "\n";
  }
  WriteFileAtomic(files::Join(run_dir, "eval_examples.jsonl"), lines);

  // loss_curve.svg
  std::string svg, training;
  if (files::Exists(files::Join(run_dir, "metrics.jsonl"))) {
    std::ifstream in(files::Join(run_dir, "metrics.jsonl"));
    std::stringstream ss;
    ss << in.rdbuf();
    svg = LossCurveSvg(ss.str());
    training = TrainingSection(ss.str());
  }
  if (!svg.empty()) WriteFileAtomic(files::Join(run_dir, "loss_curve.svg"), svg);

  // report.md
  const bool cmp = r.base.has_value();
  std::string md = fmt::format("# Evaluation report: {}\n\n", r.run_name);
  md += fmt::format("Test split: {} examples from `{}`; {} rank(s). Exact match compares answers "
                    "after normalisation `{}` (whitespace runs collapsed and stripped{}{}); F1 is "
                    "the token (word) F1 of the same normalised strings. Loss is the mean "
                    "negative log-likelihood per answer token (loss-masked tokens only), "
                    "perplexity its exponential.\n\n",
                    r.test_examples, r.data_dir, r.world_size, r.normalize,
                    r.normalize.find("lower") != std::string::npos ? ", lower-cased" : "",
                    r.normalize.find("punct") != std::string::npos ? ", punctuation removed" : "");
  md += cmp ? "| metric | base | finetuned |\n| --- | ---: | ---: |\n"
            : "| metric | model |\n| --- | ---: |\n";
  auto row = [&](const std::string& name, auto get) {
    md += "| " + name + " | ";
    if (cmp) md += get(*r.base) + " | ";
    md += get(r.model) + " |\n";
  };
  row("model", [](const ModelEval& m) { return "`" + MarkdownCell(m.path) + "`"; });
  row("eval loss", [](const ModelEval& m) { return Fmt(m.loss.MeanNll()); });
  row("perplexity", [](const ModelEval& m) { return Fmt(m.loss.Perplexity(), "{:.3f}"); });
  row("answer tokens scored", [](const ModelEval& m) { return std::to_string(m.loss.targets); });
  row("exact match", [](const ModelEval& m) {
    if (!m.generation) return std::string("not run");
    return ExactCell(m.generation->totals);
  });
  row("token F1", [](const ModelEval& m) {
    return m.generation ? Fmt(m.generation->totals.MeanF1(), "{:.3f}") : std::string("not run");
  });
  md += "\n";
  md += PerTaskSection(r);
  if (!svg.empty()) {
    md += "## Loss curves\n\nTraining loss per step and eval loss on the test split "
          "(from `metrics.jsonl`):\n\n![loss curves](loss_curve.svg)\n\n";
  } else {
    md += "## Loss curves\n\nNo `metrics.jsonl` with loss records in the run directory "
          "(the model was not trained in it).\n\n";
  }
  md += training;
  const int64_t shown = std::min<int64_t>(kReportExamples, keys.size());
  md += fmt::format("## Examples\n\nThe first {} of {} evaluated test examples (all of them are in "
                    "`eval_examples.jsonl`){}. ✅ = exact match after normalisation.\n\n",
                    shown, keys.size(),
                    multi_turn ? "; an example is one trained assistant turn, # is document.turn "
                                 "(the prompt is the conversation before it)"
                               : "");
  md += cmp ? "| # | prompt | reference | base answer | finetuned answer |\n"
              "| ---: | --- | --- | --- | --- |\n"
            : "| # | prompt | reference | answer |\n| ---: | --- | --- | --- |\n";
  auto cell = [](const ExampleAnswer* a) {
    if (!a) return std::string("–");
    return (a->exact ? "✅ " : "❌ ") + MarkdownCell(a->answer);
  };
  for (int64_t k = 0; k < shown; ++k) {
    const ExampleKey& key = keys[k];
    const ExampleAnswer* a = FindAnswer(r.model, key);
    const ExampleAnswer* b = cmp ? FindAnswer(*r.base, key) : nullptr;
    const ExampleAnswer* any = a ? a : b;
    const std::string number = multi_turn ? fmt::format("{}.{}", key.first, key.second)
                                          : std::to_string(key.first);
    md += fmt::format("| {} | {} | {} | ", number, MarkdownCell(any->prompt),
                      MarkdownCell(any->reference));
    if (cmp) md += cell(b) + " | ";
    md += cell(a) + " |\n";
  }
  WriteFileAtomic(files::Join(run_dir, "report.md"), md);
  return files::Join(run_dir, "report.md");
}

}  // namespace ftune::runtime
