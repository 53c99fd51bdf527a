// The arithmetic of evaluation, free of models and MPI: answer normalisation, exact match,
// token-level F1 and perplexity. Every function is pure and thread-safe.
//
// Normalisation (eval.normalize), applied to both prediction and reference before comparing:
//   always   ASCII whitespace runs become one space, leading/trailing whitespace is removed
//   lower    ASCII letters are lower-cased
//   punct    ASCII punctuation (!"#$%&'()*+,-./:;<=>?@[\]^_`{|}~) is removed, then whitespace
//            is normalised again
// Non-ASCII bytes are left as they are. Modes: "none" | "lower" | "punct" | "lower,punct".
//
// Token F1 (SQuAD style): both normalised strings are split at spaces into words; precision =
// common / predicted words, recall = common / reference words, counting each word as often as it
// occurs in both (multiset intersection); F1 = 2PR / (P + R). Two empty answers score 1, one
// empty answer 0.
//
// Loss: the mean negative log-likelihood per target token is nll_sum / targets (token-weighted
// over the whole test split, never a mean of per-batch means); perplexity = exp(mean NLL).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ftune::runtime {

// Throws ConfigError for an unknown mode.
std::string NormalizeAnswer(const std::string& s, const std::string& mode);
std::vector<std::string> AnswerWords(const std::string& s, const std::string& mode);
bool ExactMatch(const std::string& prediction, const std::string& reference,
                const std::string& mode);
double TokenF1(const std::string& prediction, const std::string& reference,
               const std::string& mode);

// Sums of a loss pass, reducible by addition across ranks and batches.
struct LossTotals {
  double nll_sum = 0;   // sum of per-token negative log-likelihoods (nats)
  int64_t targets = 0;  // target tokens (loss mask 1)
  int64_t samples = 0;  // examples (rows) that had at least one target

  double MeanNll() const;     // nll_sum / targets; NaN when targets == 0
  double Perplexity() const;  // exp(MeanNll())
};

// Sums of a generation pass.
struct GenerationTotals {
  int64_t examples = 0;
  int64_t exact = 0;     // exact matches after normalisation
  double f1_sum = 0;     // sum of token F1 over examples

  double ExactMatchRate() const;  // exact / examples; NaN when examples == 0
  double MeanF1() const;          // f1_sum / examples; NaN when examples == 0
};

}  // namespace ftune::runtime
