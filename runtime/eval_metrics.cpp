#include "runtime/eval_metrics.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>

#include "parallel/error.h"

namespace ftune::runtime {
namespace {

bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

bool IsAsciiPunct(char c) {
  const unsigned char u = static_cast<unsigned char>(c);
  return (u >= 33 && u <= 47) || (u >= 58 && u <= 64) || (u >= 91 && u <= 96) ||
         (u >= 123 && u <= 126);
}

std::string CollapseSpaces(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  bool pending_space = false;
  for (char c : s) {
    if (IsSpace(c)) {
      pending_space = !out.empty();
      continue;
    }
    if (pending_space) out.push_back(' ');
    pending_space = false;
    out.push_back(c);
  }
  return out;
}

}  // namespace

std::string NormalizeAnswer(const std::string& s, const std::string& mode) {
  bool lower = false, punct = false;
  if (mode == "lower") {
    lower = true;
  } else if (mode == "punct") {
    punct = true;
  } else if (mode == "lower,punct") {
    lower = punct = true;
  } else if (mode != "none") {
    FT_THROW(ConfigError, "eval.normalize: unknown mode '{}' (none | lower | punct | lower,punct)",
             mode);
  }
  std::string t;
  t.reserve(s.size());
  for (char c : s) {
    if (punct && IsAsciiPunct(c)) continue;
    if (lower && c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    t.push_back(c);
  }
  return CollapseSpaces(t);
}

std::vector<std::string> AnswerWords(const std::string& s, const std::string& mode) {
  const std::string n = NormalizeAnswer(s, mode);
  std::vector<std::string> words;
  size_t i = 0;
  while (i < n.size()) {
    size_t j = n.find(' ', i);
    if (j == std::string::npos) j = n.size();
    if (j > i) words.push_back(n.substr(i, j - i));
    i = j + 1;
  }
  return words;
}

bool ExactMatch(const std::string& prediction, const std::string& reference,
                const std::string& mode) {
  return NormalizeAnswer(prediction, mode) == NormalizeAnswer(reference, mode);
}

double TokenF1(const std::string& prediction, const std::string& reference,
               const std::string& mode) {
  const auto p = AnswerWords(prediction, mode);
  const auto r = AnswerWords(reference, mode);
  if (p.empty() && r.empty()) return 1.0;
  if (p.empty() || r.empty()) return 0.0;
  std::map<std::string, int64_t> counts;
  for (const auto& w : r) ++counts[w];
  int64_t common = 0;
  for (const auto& w : p) {
    auto it = counts.find(w);
    if (it != counts.end() && it->second > 0) {
      --it->second;
      ++common;
    }
  }
  if (common == 0) return 0.0;
  const double precision = static_cast<double>(common) / static_cast<double>(p.size());
  const double recall = static_cast<double>(common) / static_cast<double>(r.size());
  return 2.0 * precision * recall / (precision + recall);
}

double LossTotals::MeanNll() const {
  if (targets == 0) return std::numeric_limits<double>::quiet_NaN();
  return nll_sum / static_cast<double>(targets);
}

double LossTotals::Perplexity() const { return std::exp(MeanNll()); }

double GenerationTotals::ExactMatchRate() const {
  if (examples == 0) return std::numeric_limits<double>::quiet_NaN();
  return static_cast<double>(exact) / static_cast<double>(examples);
}

double GenerationTotals::MeanF1() const {
  if (examples == 0) return std::numeric_limits<double>::quiet_NaN();
  return f1_sum / static_cast<double>(examples);
}

}  // namespace ftune::runtime
