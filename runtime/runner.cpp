#include "runtime/runner.h"

#include <algorithm>

#include "data/records.h"
#include "data/templates.h"
#include "data/tokenizer.h"
#include "models/generate.h"
#include "models/hf_io.h"
#include "parallel/error.h"
#include "runtime/log.h"
#include "runtime/model_setup.h"

namespace ftune {

struct Runner::Impl {
  data::Tokenizer tok;
  models::LoadedModel loaded;
  RunnerOptions opt;
  std::string model_dir;
};

namespace {

std::string Trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}

}  // namespace

Runner::Runner(const std::string& model_dir, const RunnerOptions& options)
    : impl_(std::make_unique<Impl>(Impl{
          data::Tokenizer::FromPath(options.tokenizer.empty() ? model_dir : options.tokenizer),
          models::LoadHf(model_dir, models::ParseDtype(options.dtype)), options, model_dir})) {
  // Warnings only: a program using Runner owns its stdout.
  runtime::LogNotesOnce(impl_->tok.notes(), /*info=*/false);
  runtime::LogNotesOnce(impl_->loaded.config.notes, /*info=*/false);
  if (options.template_name != "qa" && options.template_name != "alpaca" &&
      options.template_name != "none") {
    FT_THROW(ConfigError, "Runner: unknown template '{}' (qa | alpaca | none)",
             options.template_name);
  }
  if (impl_->tok.vocab_size() > impl_->loaded.config.vocab_size) {
    FT_THROW(ModelError, "tokenizer {} has {} ids but the model {} has vocab_size {}",
             impl_->tok.path(), impl_->tok.vocab_size(), model_dir,
             impl_->loaded.config.vocab_size);
  }
  impl_->loaded.model->eval();
}

Runner::~Runner() = default;
Runner::Runner(Runner&&) noexcept = default;
Runner& Runner::operator=(Runner&&) noexcept = default;

std::vector<int32_t> Runner::PromptIds(const std::string& prompt) const {
  std::vector<data::Segment> segments;
  if (impl_->opt.template_name == "none") {
    segments.push_back({prompt, false});
  } else {
    // Render the record as `prepare` does and keep the prompt part (everything before the
    // first response segment), so the ids match training exactly.
    data::Record r;
    if (impl_->opt.template_name == "qa") {
      r.kind = data::RecordKind::kQa;
      r.fields = {{"answer", ""}, {"question", prompt}};
    } else {
      r.kind = data::RecordKind::kAlpaca;
      r.fields = {{"input", ""}, {"instruction", prompt}, {"output", ""}};
    }
    std::string error;
    std::vector<data::Segment> all;
    if (!data::Template::Parse(impl_->opt.template_name).Render(r, &all, &error)) {
      FT_THROW(DataError, "Runner: cannot render the prompt: {}", error);
    }
    for (auto& s : all) {
      if (s.response) break;
      segments.push_back(std::move(s));
    }
  }
  data::Example ex;
  data::TokenizeExample(impl_->tok, segments, {}, &ex);
  return ex.tokens;
}

std::vector<std::string> Runner::operator()(const std::vector<std::string>& prompts) {
  std::vector<std::vector<int32_t>> ids;
  for (const auto& p : prompts) ids.push_back(PromptIds(p));
  models::GenerateOptions g = runtime::TokenGenerateOptions(impl_->tok, impl_->loaded.config);
  g.max_new_tokens = impl_->opt.max_new_tokens;
  g.temperature = impl_->opt.temperature;
  g.top_k = impl_->opt.top_k;
  g.top_p = impl_->opt.top_p;
  g.seed = impl_->opt.seed;
  const auto outs = models::Generate(*impl_->loaded.model, ids, g);
  std::vector<std::string> res;
  const int64_t v = impl_->tok.vocab_size();
  for (auto o : outs) {
    o.erase(std::remove_if(o.begin(), o.end(), [v](int32_t id) { return id < 0 || id >= v; }),
            o.end());
    res.push_back(Trim(impl_->tok.Decode(o, /*skip_special_tokens=*/true)));
  }
  return res;
}

std::string Runner::operator()(const std::string& prompt) {
  return (*this)(std::vector<std::string>{prompt}).front();
}

}  // namespace ftune
