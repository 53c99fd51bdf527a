// Llama: config.json parsing, forward math, packing, chunked loss, HF import/export.
#include "models/llama.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "models/hf_io.h"
#include "models/llama_config.h"
#include "models/safetensors.h"
#include "parallel/error.h"
#include "parallel/files.h"

namespace files = ftune::files;
using ftune::ModelError;
using ftune::models::LlamaConfig;
using ftune::models::LlamaModel;
using nlohmann::json;

namespace {

std::string TempDir(const std::string& name) {
  auto d = files::Join(FTUNE_BINARY_DIR, "test_tmp/llama/" + name);
  files::RemoveAll(d);
  files::CreateDirectories(files::Parent(d));
  return d;
}

// A tiny HF config.json: GQA (4 heads, 2 kv heads), llama3 rope scaling whose thresholds put
// one frequency in each regime (kept, smoothed, divided) for head_dim 8.
json TinyJson(bool tied) {
  auto j = json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
    "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "initializer_range": 0.2,
    "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                     "high_freq_factor": 4.0, "original_max_position_embeddings": 128},
    "bos_token_id": 1, "eos_token_id": [2, 3], "torch_dtype": "float32"})");
  j["tie_word_embeddings"] = tied;
  return j;
}

LlamaConfig TinyConfig(bool tied = false, int64_t layers = 2) {
  auto j = TinyJson(tied);
  j["num_hidden_layers"] = layers;
  return LlamaConfig::FromJson(j, "tiny config.json");
}

std::shared_ptr<LlamaModel> TinyModel(bool tied = false, int64_t layers = 2, int64_t seed = 7) {
  return ftune::models::BuildLlama(TinyConfig(tied, layers), torch::kFloat, seed);
}

torch::Tensor RandomTokens(int64_t b, int64_t t, int64_t seed, int64_t vocab = 64) {
  auto gen = at::detail::createCPUGenerator(seed);
  return torch::randint(vocab, {b, t}, gen, torch::kLong);
}

std::string ErrorOf(const std::function<void()>& f) {
  try {
    f();
  } catch (const ftune::Error& e) {
    return e.what();
  }
  return "(no error)";
}

#define EXPECT_CONTAINS(haystack, needle)                          \
  EXPECT_NE(std::string(haystack).find(needle), std::string::npos) \
      << "'" << (needle) << "' not in: " << (haystack)

}  // namespace

// --- config.json ------------------------------------------------------------------------------
TEST(LlamaConfig, ParsesHfConfigWithLlama3RopeAndEosList) {
  auto c = TinyConfig();
  EXPECT_EQ(c.vocab_size, 64);
  EXPECT_EQ(c.num_key_value_heads, 2);
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_EQ(c.rope_scaling.rope_type, "llama3");
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 128);
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 8.0);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);

  // Defaults: kv heads = heads, head_dim = hidden / heads, rope_scaling null, eos an int,
  // the legacy "type" key.
  auto j = TinyJson(false);
  j.erase("num_key_value_heads");
  j["rope_scaling"] = nullptr;
  j["eos_token_id"] = 5;
  auto d = LlamaConfig::FromJson(j, "x");
  EXPECT_EQ(d.num_key_value_heads, 4);
  EXPECT_TRUE(d.rope_scaling.rope_type.empty());
  EXPECT_EQ(d.eos_token_ids, std::vector<int64_t>{5});
  j["head_dim"] = 16;
  EXPECT_EQ(LlamaConfig::FromJson(j, "x").head_dim, 16);
  j["rope_scaling"] = {{"type", "llama3"},
                       {"factor", 32.0},
                       {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 8192}};
  EXPECT_DOUBLE_EQ(LlamaConfig::FromJson(j, "x").rope_scaling.factor, 32.0);

  // ToJson round trip.
  auto back = LlamaConfig::FromJson(c.ToJson(), "roundtrip");
  EXPECT_EQ(back.ToJson(), c.ToJson());
}

TEST(LlamaConfig, ErrorsNameKeyAndFile) {
  auto j = TinyJson(false);
  j["architectures"] = {"MistralForCausalLM"};
  auto msg = ErrorOf([&] { LlamaConfig::FromJson(j, "/m/config.json"); });
  EXPECT_CONTAINS(msg, "MistralForCausalLM");
  EXPECT_CONTAINS(msg, "/m/config.json");

  j = TinyJson(false);
  j.erase("intermediate_size");
  msg = ErrorOf([&] { LlamaConfig::FromJson(j, "/m/config.json"); });
  EXPECT_CONTAINS(msg, "'intermediate_size'");
  EXPECT_CONTAINS(msg, "/m/config.json");

  j = TinyJson(false);
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  msg = ErrorOf([&] { LlamaConfig::FromJson(j, "/m/config.json"); });
  EXPECT_CONTAINS(msg, "yarn");

  j = TinyJson(false);
  j["rope_scaling"].erase("low_freq_factor");
  msg = ErrorOf([&] { LlamaConfig::FromJson(j, "/m/config.json"); });
  EXPECT_CONTAINS(msg, "low_freq_factor");

  j = TinyJson(false);
  j["hidden_size"] = "32";
  msg = ErrorOf([&] { LlamaConfig::FromJson(j, "/m/config.json"); });
  EXPECT_CONTAINS(msg, "'hidden_size'");

  j = TinyJson(false);
  j["num_key_value_heads"] = 3;
  msg = ErrorOf([&] { LlamaConfig::FromJson(j, "/m/config.json"); });
  EXPECT_CONTAINS(msg, "not divisible");
}

// transformers >= 5 writes rope_parameters (with rope_theta inside) and dtype; older versions
// rope_theta + rope_scaling (rope_type, or the key `type` before 4.43) and torch_dtype. The same
// weights under both formats give identical models.
json LegacyTwin(json j) {
  json rope = j["rope_parameters"];
  j.erase("rope_parameters");
  j["rope_theta"] = rope["rope_theta"];
  rope.erase("rope_theta");
  rope["type"] = rope["rope_type"];
  rope.erase("rope_type");
  j["rope_scaling"] = rope;
  j["torch_dtype"] = j["dtype"];
  j.erase("dtype");
  return j;
}

TEST(LlamaConfig, TransformersFiveAndLegacyFormatsGiveIdenticalLogits) {
  for (const char* name : {"hf_tiny_untied", "hf_tiny_tied"}) {
    const std::string src = files::Join(FTUNE_SOURCE_DIR, std::string("tests/fixtures/") + name);
    std::ifstream in(files::Join(src, "config.json"));
    const json v5 = json::parse(in);
    ASSERT_TRUE(v5.contains("rope_parameters")) << name << " is not a transformers-5 config";
    ASSERT_FALSE(v5.contains("rope_scaling") || v5.contains("rope_theta")) << name;
    const std::string dir = TempDir(std::string("legacy_") + name);
    files::CreateDirectories(dir);
    files::CopyFile(files::Join(src, "model.safetensors"), files::Join(dir, "model.safetensors"),
                    /*overwrite=*/true);
    std::ofstream(files::Join(dir, "config.json")) << LegacyTwin(v5).dump(2);

    auto a = ftune::models::LoadHf(src);
    auto b = ftune::models::LoadHf(dir);
    EXPECT_EQ(a.config.rope_scaling.rope_type, "llama3") << name;
    EXPECT_EQ(a.config.ToJson(), b.config.ToJson()) << name;
    EXPECT_TRUE(a.config.notes.warn.empty()) << name << ": " << a.config.notes.warn.front();
    EXPECT_TRUE(torch::equal(a.model->rotary().inv_freq(), b.model->rotary().inv_freq())) << name;
    torch::NoGradGuard ng;
    const auto tokens = RandomTokens(2, 24, 5);
    EXPECT_TRUE(torch::equal(a.model->Logits(a.model->ForwardHidden(tokens)),
                             b.model->Logits(b.model->ForwardHidden(tokens))))
        << name;
  }
}

// Nothing that changes the math is ignored: every key ftune does not implement, at a value that
// would change the model, is an error naming the file and the key.
TEST(LlamaConfig, KeysThatChangeTheMathAreErrors) {
  auto v5 = [] {
    auto j = TinyJson(false);
    j.erase("rope_scaling");
    j.erase("rope_theta");
    j["rope_parameters"] = {{"rope_type", "llama3"}, {"rope_theta", 500000.0}, {"factor", 8.0},
                            {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
                            {"original_max_position_embeddings", 128}};
    return j;
  };
  EXPECT_DOUBLE_EQ(LlamaConfig::FromJson(v5(), "x").rope_theta, 500000.0);
  const std::vector<std::pair<std::function<void(json&)>, std::string>> cases = {
      {[](json& j) { j["attention_bias"] = true; }, "'attention_bias'"},
      {[](json& j) { j["mlp_bias"] = true; }, "'mlp_bias'"},
      {[](json& j) { j["hidden_act"] = "gelu"; }, "'hidden_act'"},
      {[](json& j) { j["attention_dropout"] = 0.1; }, "'attention_dropout'"},
      {[](json& j) { j["sliding_window"] = 4096; }, "'sliding_window'"},
      {[](json& j) { j["partial_rotary_factor"] = 0.5; }, "'partial_rotary_factor'"},
      {[](json& j) { j["rope_parameters"]["partial_rotary_factor"] = 0.5; },
       "'partial_rotary_factor'"},
      {[](json& j) { j["quantization_config"] = {{"quant_method", "bitsandbytes"}}; },
       "'quantization_config'"},
      {[](json& j) { j["layer_types"] = {"full_attention", "sliding_attention"}; },
       "'layer_types'"},
      {[](json& j) { j["rope_parameters"]["rope_type"] = "yarn"; }, "rope_type 'yarn'"},
      {[](json& j) { j["rope_parameters"]["rope_type"] = "linear"; }, "rope_type 'linear'"},
      {[](json& j) { j["rope_parameters"].erase("factor"); }, "'factor'"},
      {[](json& j) { j["rope_parameters"]["mscale"] = 1.0; }, "'mscale'"},
      {[](json& j) {
         j["rope_parameters"] = {{"full_attention", j["rope_parameters"]},
                                 {"sliding_attention", {{"rope_type", "default"}}}};
       },
       "per-layer-type"},
      {[](json& j) { j["rope_theta"] = 10000.0; }, "disagree"},
      {[](json& j) {
         j["rope_scaling"] = j["rope_parameters"];
         j["rope_scaling"]["factor"] = 32.0;
       },
       "disagree"},
  };
  for (const auto& [edit, want] : cases) {
    auto j = v5();
    edit(j);
    const auto msg = ErrorOf([&] { LlamaConfig::FromJson(j, "/m/config.json"); });
    EXPECT_CONTAINS(msg, want);
    EXPECT_CONTAINS(msg, "/m/config.json");
  }
  // The values that do nothing are accepted, and both forms may stand together when they agree.
  auto j = v5();
  j["attention_bias"] = false;
  j["attention_dropout"] = 0;
  j["sliding_window"] = nullptr;
  j["layer_types"] = {"full_attention", "full_attention"};
  j["rope_theta"] = 500000.0;
  j["rope_scaling"] = j["rope_parameters"];
  EXPECT_EQ(LlamaConfig::FromJson(j, "x").rope_scaling.factor, 8.0);
}

// Every default assumed for an absent key is reported (the caller logs it once); a key ftune
// does not know is a warning.
TEST(LlamaConfig, AssumedDefaultsAndUnknownKeysAreReported) {
  auto j = TinyJson(false);
  j.erase("rms_norm_eps");
  j.erase("num_key_value_heads");
  j["my_custom_scale"] = 2.0;
  const auto c = LlamaConfig::FromJson(j, "/m/config.json");
  std::string info;
  for (const auto& line : c.notes.info) info += line + "\n";
  EXPECT_CONTAINS(info, "/m/config.json: 'rms_norm_eps' is absent: assuming 1e-06");
  EXPECT_CONTAINS(info, "'num_key_value_heads' is absent: assuming 4");
  ASSERT_EQ(c.notes.warn.size(), 1u);
  EXPECT_CONTAINS(c.notes.warn[0], "my_custom_scale");
  // A complete file (what ftune itself writes) needs no assumption about the math.
  const auto full = LlamaConfig::FromJson(TinyConfig().ToJson(), "x");
  EXPECT_TRUE(full.notes.warn.empty());
  for (const auto& line : full.notes.info) {
    EXPECT_EQ(line.find("rms_norm_eps"), std::string::npos) << line;
  }
}

TEST(LlamaConfig, FromInline) {
  ftune::models::ModelConfig mc;
  mc.arch.vocab_size = 100;
  mc.dtype = "bf16";
  auto c = LlamaConfig::FromInline(mc);
  EXPECT_EQ(c.vocab_size, 100);
  EXPECT_EQ(c.head_dim, mc.arch.hidden_size / mc.arch.num_attention_heads);
  EXPECT_EQ(c.torch_dtype, "bfloat16");
}

// --- module structure and init ----------------------------------------------------------------
TEST(Llama, ParameterNamesAreHfNames) {
  for (bool tied : {false, true}) {
    auto m = TinyModel(tied);
    std::vector<std::string> names;
    for (const auto& p : m->named_parameters()) {
      names.push_back(p.key());
      EXPECT_EQ(p.value().sizes().vec(), [&] {
        for (const auto& [n, s] : ftune::models::HfTensorShapes(m->config())) {
          if (n == p.key()) return s;
        }
        return std::vector<int64_t>{};
      }()) << p.key();
    }
    std::vector<std::string> want;
    for (const auto& [n, s] : ftune::models::HfTensorShapes(m->config())) want.push_back(n);
    EXPECT_EQ(names, want);
    EXPECT_EQ(std::count(names.begin(), names.end(), "lm_head.weight"), tied ? 0 : 1);
    EXPECT_EQ(names[1], "model.layers.0.self_attn.q_proj.weight");
  }
}

// /proc/self/status field in kB (VmRSS, VmHWM), or -1.
int64_t StatusKb(const std::string& key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key + ":", 0) == 0) return std::stoll(line.substr(key.size() + 1));
  }
  return -1;
}

// An unmaterialised model has the right shapes but costs neither memory nor init time: its
// construction writes no weight (peak resident memory stays flat). With libtorch's default
// Linear init each 268 MB layer below would be written once.
TEST(Llama, UnmaterialisedConstructionWritesNoWeights) {
  ftune::models::LlamaConfig cfg;
  cfg.vocab_size = 32000;
  cfg.hidden_size = 2048;
  cfg.intermediate_size = 8192;
  cfg.num_hidden_layers = 3;
  cfg.num_attention_heads = 16;
  cfg.num_key_value_heads = 16;
  cfg.head_dim = 128;
  cfg.tie_word_embeddings = false;
  const auto reset_peak = []() {  // VmHWM := VmRSS
    std::ofstream f("/proc/self/clear_refs");
    f << "5";
    f.flush();
    return static_cast<bool>(f);
  };
  if (!reset_peak()) GTEST_SKIP() << "cannot reset VmHWM (/proc/self/clear_refs)";
#if defined(__SANITIZE_ADDRESS__)
  // ASan's allocator writes shadow memory for every allocation (58 MB for these 0.9 GB): the
  // resident size no longer tells whether the weights were written.
  GTEST_SKIP() << "resident memory is not meaningful under AddressSanitizer";
#endif
  const int64_t rss0 = StatusKb("VmRSS");
  reset_peak();
  ftune::models::LlamaModel m(cfg, /*materialize=*/false);
  const int64_t peak_growth_mb = (StatusKb("VmHWM") - rss0) / 1024;
  int64_t params = 0;
  for (const auto& p : m.named_parameters()) {
    params += p.value().numel();
    EXPECT_EQ(p.value().sizes().vec(), [&] {
      for (const auto& [n, s] : ftune::models::HfTensorShapes(cfg)) {
        if (n == p.key()) return s;
      }
      return std::vector<int64_t>{};
    }()) << p.key();
  }
  EXPECT_GT(params, 900'000'000 / 4);  // > 0.9 GB of fp32 weights in all
  EXPECT_LT(peak_growth_mb, 32) << "constructing the unmaterialised model wrote weights";
}

TEST(Llama, InitIsDeterministic) {
  auto a = TinyModel(false, 2, 11), b = TinyModel(false, 2, 11), c = TinyModel(false, 2, 12);
  auto pa = a->named_parameters(), pb = b->named_parameters(), pc = c->named_parameters();
  for (const auto& p : pa) {
    EXPECT_TRUE(torch::equal(p.value(), pb[p.key()])) << p.key();
    if (p.key().find("norm") == std::string::npos) {
      EXPECT_FALSE(torch::equal(p.value(), pc[p.key()])) << p.key();
      EXPECT_NEAR(p.value().std().item<double>(), 0.2, 0.05) << p.key();
    } else {
      EXPECT_TRUE(torch::equal(p.value(), torch::ones_like(p.value()))) << p.key();
    }
  }
}

// --- forward math -----------------------------------------------------------------------------
namespace {

// llama3 inv_freq in double, straight from the formula of the Llama 3.1 release.
std::vector<double> Llama3InvFreq(const LlamaConfig& c) {
  std::vector<double> out;
  const auto& rs = c.rope_scaling;
  const double low_wl = rs.original_max_position_embeddings / rs.low_freq_factor;
  const double high_wl = rs.original_max_position_embeddings / rs.high_freq_factor;
  for (int64_t i = 0; i < c.head_dim; i += 2) {
    const double f = 1.0 / std::pow(c.rope_theta, double(i) / c.head_dim);
    const double wl = 2 * M_PI / f;
    if (wl < high_wl) {
      out.push_back(f);
    } else if (wl > low_wl) {
      out.push_back(f / rs.factor);
    } else {
      const double s = (rs.original_max_position_embeddings / wl - rs.low_freq_factor) /
                       (rs.high_freq_factor - rs.low_freq_factor);
      out.push_back((1 - s) * f / rs.factor + s * f);
    }
  }
  return out;
}

// One-layer Llama written out plainly in double: per-head loops, explicit pair rotation,
// explicit causal softmax. Returns logits (T, V) for one sequence.
torch::Tensor ReferenceLogits(LlamaModel& m, const torch::Tensor& tokens /*(T)*/) {
  const auto& c = m.config();
  auto P = m.named_parameters();
  auto w = [&](const std::string& n) { return P[n].detach().to(torch::kDouble); };
  const int64_t T = tokens.size(0), H = c.num_attention_heads, KV = c.num_key_value_heads,
                D = c.head_dim;
  auto rms = [&](const torch::Tensor& x, const torch::Tensor& g) {
    return x / torch::sqrt(x.pow(2).mean(-1, true) + c.rms_norm_eps) * g;
  };
  auto inv = Llama3InvFreq(c);
  auto rope = [&](torch::Tensor x /*(T, D)*/) {
    auto y = x.clone();
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t i = 0; i < D / 2; ++i) {
        const double a = t * inv[i], cs = std::cos(a), sn = std::sin(a);
        const double x1 = x[t][i].item<double>(), x2 = x[t][i + D / 2].item<double>();
        y[t][i] = x1 * cs - x2 * sn;
        y[t][i + D / 2] = x2 * cs + x1 * sn;
      }
    }
    return y;
  };
  auto x = w("model.embed_tokens.weight").index_select(0, tokens);  // (T, C)
  const std::string p = "model.layers.0.";
  auto xn = rms(x, w(p + "input_layernorm.weight"));
  auto q = xn.matmul(w(p + "self_attn.q_proj.weight").t());
  auto k = xn.matmul(w(p + "self_attn.k_proj.weight").t());
  auto v = xn.matmul(w(p + "self_attn.v_proj.weight").t());
  std::vector<torch::Tensor> heads;
  for (int64_t h = 0; h < H; ++h) {
    const int64_t g = h / (H / KV);
    auto qh = rope(q.slice(1, h * D, (h + 1) * D));
    auto kh = rope(k.slice(1, g * D, (g + 1) * D));
    auto vh = v.slice(1, g * D, (g + 1) * D);
    auto out = torch::zeros({T, D}, torch::kDouble);
    for (int64_t t = 0; t < T; ++t) {
      auto s =
          qh[t].unsqueeze(0).matmul(kh.slice(0, 0, t + 1).t()).squeeze(0) / std::sqrt(double(D));
      auto pr = torch::exp(s - s.max());
      pr = pr / pr.sum();
      out[t] = pr.unsqueeze(0).matmul(vh.slice(0, 0, t + 1)).squeeze(0);
    }
    heads.push_back(out);
  }
  x = x + torch::cat(heads, 1).matmul(w(p + "self_attn.o_proj.weight").t());
  auto hn = rms(x, w(p + "post_attention_layernorm.weight"));
  auto gate = hn.matmul(w(p + "mlp.gate_proj.weight").t());
  auto up = hn.matmul(w(p + "mlp.up_proj.weight").t());
  x = x + (gate / (1 + torch::exp(-gate)) * up).matmul(w(p + "mlp.down_proj.weight").t());
  x = rms(x, w("model.norm.weight"));
  return x.matmul(w("lm_head.weight").t());
}

}  // namespace

TEST(Llama, Llama3InvFreqMatchesFormula) {
  auto m = TinyModel();
  auto want = Llama3InvFreq(m->config());
  auto got = m->rotary().inv_freq();
  ASSERT_EQ(got.numel(), static_cast<int64_t>(want.size()));
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_NEAR(got[i].item<double>(), want[i], 1e-6 * want[i]) << i;
  }
  // The thresholds of TinyJson put the frequencies in all three regimes.
  // Wavelengths 2pi, 20pi, 200pi, 2000pi against thresholds 128/4 and 128/1.
  EXPECT_NEAR(got[0].item<double>(), 1.0, 1e-7);     // kept
  EXPECT_GT(got[1].item<double>(), 0.1 / 8 * 1.01);  // smoothed: strictly between
  EXPECT_LT(got[1].item<double>(), 0.1 * 0.99);
  EXPECT_NEAR(got[2].item<double>(), 1e-2 / 8.0, 1e-9);   // divided
  EXPECT_NEAR(got[3].item<double>(), 1e-3 / 8.0, 1e-10);  // divided
}

TEST(Llama, ForwardMatchesPlainComputation) {
  auto m = TinyModel(false, /*layers=*/1, 5);
  auto tokens = RandomTokens(1, 9, 1);
  torch::NoGradGuard ng;
  auto logits = m->Logits(m->ForwardHidden(tokens))[0].to(torch::kDouble);
  auto ref = ReferenceLogits(*m, tokens[0]);
  EXPECT_LT((logits - ref).abs().max().item<double>(), 1e-4 * (1 + ref.abs().max().item<double>()));
  EXPECT_GT(ref.abs().max().item<double>(), 0.5);  // the check is not vacuous
}

TEST(Llama, IsCausal) {
  auto m = TinyModel();
  auto a = RandomTokens(2, 10, 2);
  auto b = a.clone();
  b.slice(1, 6).copy_(RandomTokens(2, 4, 3));
  torch::NoGradGuard ng;
  auto la = m->Logits(m->ForwardHidden(a)), lb = m->Logits(m->ForwardHidden(b));
  EXPECT_TRUE(torch::allclose(la.slice(1, 0, 6), lb.slice(1, 0, 6), 0, 1e-6));
  EXPECT_FALSE(torch::allclose(la.slice(1, 6), lb.slice(1, 6), 0, 1e-3));
}

TEST(Llama, SegmentPackingEqualsSeparateRuns) {
  auto m = TinyModel();
  auto s1 = RandomTokens(1, 4, 4), s2 = RandomTokens(1, 6, 5);
  auto packed = torch::cat({s1, s2}, 1);
  ftune::models::ForwardOptions opt;
  opt.segment_ids = torch::tensor({0, 0, 0, 0, 1, 1, 1, 1, 1, 1}, torch::kInt).unsqueeze(0);
  opt.positions = torch::tensor({0, 1, 2, 3, 0, 1, 2, 3, 4, 5}, torch::kLong).unsqueeze(0);
  torch::NoGradGuard ng;
  auto hp = m->ForwardHidden(packed, opt);
  auto h1 = m->ForwardHidden(s1), h2 = m->ForwardHidden(s2);
  EXPECT_TRUE(torch::allclose(hp.slice(1, 0, 4), h1, 1e-5, 1e-5));
  EXPECT_TRUE(torch::allclose(hp.slice(1, 4), h2, 1e-5, 1e-5));
}

TEST(Llama, ChunkedLossEqualsUnchunked) {
  for (bool tied : {false, true}) {
    auto m = TinyModel(tied);
    auto tokens = RandomTokens(2, 12, 6);
    auto targets = RandomTokens(2, 12, 7);
    auto gen = at::detail::createCPUGenerator(8);
    auto mask = (torch::rand({2, 12}, gen) < 0.7).to(torch::kUInt8);
    const int64_t n = mask.sum().item<int64_t>();

    auto grads = [&](int64_t chunk) {
      m->zero_grad();
      auto l = ftune::models::CausalLmLoss(*m, tokens, targets, mask, {}, chunk);
      EXPECT_EQ(l.count.item<int64_t>(), n);
      l.loss_sum.backward();
      std::vector<torch::Tensor> g;
      for (const auto& p : m->parameters()) g.push_back(p.grad().clone());
      return std::make_pair(l.loss_sum.detach(), g);
    };
    auto [full, gfull] = grads(1 << 20);
    auto [chunked, gchunk] = grads(5);
    EXPECT_NEAR(full.item<double>(), chunked.item<double>(), 1e-4) << tied;
    for (size_t i = 0; i < gfull.size(); ++i) {
      EXPECT_TRUE(torch::allclose(gfull[i], gchunk[i], 1e-4, 1e-6)) << tied << " param " << i;
    }
    // And both equal the plain sum over masked positions.
    torch::NoGradGuard ng;
    auto logits = m->Logits(m->ForwardHidden(tokens)).reshape({-1, 64});
    auto ce = torch::nn::functional::cross_entropy(
        logits, targets.reshape({-1}),
        torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
    auto want = (ce * mask.reshape({-1}).to(torch::kFloat)).sum();
    EXPECT_NEAR(full.item<double>(), want.item<double>(), 1e-4);
  }
}

TEST(Llama, FusedCrossEntropyMatchesLinearThenCrossEntropy) {
  // CrossEntropySum's fused linear + cross-entropy (softmax - onehot built in place in backward)
  // against the unfused autograd graph: loss and both gradients, fp32, tied and untied.
  namespace F = torch::nn::functional;
  for (bool tied : {false, true}) {
    auto m = TinyModel(tied);
    auto gen = at::detail::createCPUGenerator(9);
    auto h = torch::randn({37, 32}, gen).requires_grad_(true);
    auto t = RandomTokens(1, 37, 10).reshape({-1});
    const auto& w = m->lm_head_weight();
    auto fused = m->CrossEntropySum(h, t) * 0.37;  // a non-unit upstream gradient
    auto got = torch::autograd::grad({fused}, {h, w});
    const auto& gh = got[0];
    const auto& gw = got[1];
    auto plain = F::cross_entropy(F::linear(h, w), t,
                                  F::CrossEntropyFuncOptions().reduction(torch::kSum)) * 0.37;
    auto ref = torch::autograd::grad({plain}, {h, w});
    EXPECT_NEAR(fused.item<double>(), plain.item<double>(), 1e-5 * plain.item<double>()) << tied;
    EXPECT_TRUE(torch::allclose(gh, ref[0], 1e-5, 1e-7)) << tied;
    EXPECT_TRUE(torch::allclose(gw, ref[1], 1e-5, 1e-7)) << tied;
    EXPECT_GT(gw.abs().max().item<double>(), 1e-4) << tied;  // not vacuously zero
  }
}

TEST(Llama, Bf16ForwardIsCloseToFp32) {
  auto m32 = TinyModel();
  auto m16 = ftune::models::BuildLlama(m32->config(), torch::kBFloat16, 7);
  auto tokens = RandomTokens(2, 8, 9);
  torch::NoGradGuard ng;
  auto l32 = m32->Logits(m32->ForwardHidden(tokens));
  auto h16 = m16->ForwardHidden(tokens);
  EXPECT_EQ(h16.scalar_type(), torch::kBFloat16);
  auto l16 = m16->Logits(h16).to(torch::kFloat);
  EXPECT_LT((l32 - l16).abs().max().item<double>(), 0.1 * (1 + l32.abs().max().item<double>()));
}

// --- HF import / export -----------------------------------------------------------------------
TEST(HfIo, ExportImportIsBitIdentical) {
  for (bool tied : {false, true}) {
    auto m = TinyModel(tied);
    auto dir = TempDir(tied ? "export_tied" : "export_untied");
    ftune::models::SaveHfOptions opt;
    opt.max_shard_bytes = tied ? (int64_t(1) << 30) : 20000;  // untied: several shards
    ftune::models::SaveHf(*m, m->config(), dir, opt);
    EXPECT_TRUE(files::Exists(files::Join(dir, "config.json")));
    EXPECT_TRUE(files::Exists(files::Join(dir, "generation_config.json")));
    EXPECT_FALSE(files::Exists(dir + ".tmp"));
    EXPECT_EQ(files::Exists(files::Join(dir, "model.safetensors.index.json")), !tied);
    EXPECT_EQ(files::Exists(files::Join(dir, "model.safetensors")), tied);

    auto loaded = ftune::models::LoadHf(dir);
    EXPECT_EQ(loaded.config.ToJson(), m->config().ToJson());
    auto pa = m->named_parameters(), pb = loaded.model->named_parameters();
    ASSERT_EQ(pa.size(), pb.size());
    for (const auto& p : pa) EXPECT_TRUE(torch::equal(p.value(), pb[p.key()])) << p.key();
    auto tokens = RandomTokens(2, 7, 10);
    torch::NoGradGuard ng;
    EXPECT_TRUE(torch::equal(m->Logits(m->ForwardHidden(tokens)),
                             loaded.model->Logits(loaded.model->ForwardHidden(tokens))));
  }
}

TEST(HfIo, Bf16ExportAndDtypeConversion) {
  auto m = ftune::models::BuildLlama(TinyConfig(), torch::kBFloat16, 3);
  auto dir = TempDir("export_bf16");
  ftune::models::SaveHf(*m, m->config(), dir);
  std::ifstream in(files::Join(dir, "config.json"));
  EXPECT_EQ(json::parse(in)["torch_dtype"], "bfloat16");
  auto ck = ftune::models::SafetensorsCheckpoint::Open(dir);
  EXPECT_EQ(ck.Info("model.norm.weight").dtype, torch::kBFloat16);
  auto as_bf16 = ftune::models::LoadHf(dir, torch::kBFloat16);
  auto as_f32 = ftune::models::LoadHf(dir, torch::kFloat);
  for (const auto& p : m->named_parameters()) {
    EXPECT_TRUE(torch::equal(p.value(), as_bf16.model->named_parameters()[p.key()]));
    EXPECT_EQ(as_f32.model->named_parameters()[p.key()].scalar_type(), torch::kFloat);
    EXPECT_TRUE(
        torch::equal(p.value().to(torch::kFloat), as_f32.model->named_parameters()[p.key()]));
  }
}

TEST(HfIo, RefusesNonEmptyDirUnlessOverwrite) {
  auto m = TinyModel(true, 1);
  auto dir = TempDir("overwrite");
  files::CreateDirectories(dir);
  std::ofstream(files::Join(dir, "keep.txt")) << "x";
  auto msg = ErrorOf([&] { ftune::models::SaveHf(*m, m->config(), dir); });
  EXPECT_CONTAINS(msg, "not empty");
  EXPECT_TRUE(files::Exists(files::Join(dir, "keep.txt")));
  ftune::models::SaveHfOptions opt;
  opt.overwrite = true;
  ftune::models::SaveHf(*m, m->config(), dir, opt);
  EXPECT_FALSE(files::Exists(files::Join(dir, "keep.txt")));
  EXPECT_TRUE(files::Exists(files::Join(dir, "model.safetensors")));
}

TEST(HfIo, CopiesTokenizerFiles) {
  auto m = TinyModel(true, 1);
  auto src = TempDir("tok_src");
  files::CreateDirectories(src);
  std::ofstream(files::Join(src, "tokenizer.json")) << "{\"t\":1}";
  std::ofstream(files::Join(src, "special_tokens_map.json")) << "{}";
  auto dir = TempDir("tok_dst");
  ftune::models::SaveHfOptions opt;
  opt.tokenizer_src_dir = src;
  ftune::models::SaveHf(*m, m->config(), dir, opt);
  EXPECT_TRUE(files::Exists(files::Join(dir, "tokenizer.json")));
  EXPECT_TRUE(files::Exists(files::Join(dir, "special_tokens_map.json")));
  EXPECT_FALSE(files::Exists(files::Join(dir, "tokenizer_config.json")));
}

TEST(HfIo, ShapeMismatchNamesTensorFileAndShapes) {
  auto m = TinyModel(false, 1);
  auto dir = TempDir("shape_mismatch");
  ftune::models::SaveHf(*m, m->config(), dir);
  auto j = m->config().ToJson();
  j["intermediate_size"] = 40;
  std::ofstream(files::Join(dir, "config.json")) << j.dump();
  auto msg = ErrorOf([&] { ftune::models::LoadHf(dir); });
  EXPECT_CONTAINS(msg, "model.layers.0.mlp.gate_proj.weight");
  EXPECT_CONTAINS(msg, "model.safetensors");
  EXPECT_CONTAINS(msg, "[40, 32]");
  EXPECT_CONTAINS(msg, "[48, 32]");
  EXPECT_CONTAINS(msg, "config.json");
}

TEST(HfIo, MissingAndUnexpectedReportedTogether) {
  auto m = TinyModel(false, 1);
  auto dir = TempDir("missing_unexpected");
  files::CreateDirectories(dir);
  std::ofstream(files::Join(dir, "config.json")) << m->config().ToJson().dump();
  ftune::models::NamedTensors ts;
  for (const auto& p : m->named_parameters()) {
    if (p.key() != "model.norm.weight" && p.key() != "lm_head.weight")
      ts.push_back({p.key(), p.value()});
  }
  ts.push_back({"model.extra.weight", torch::ones({3})});
  ts.push_back({"model.layers.0.self_attn.rotary_emb.inv_freq", torch::ones({4})});  // ignored
  ftune::models::WriteSafetensors(files::Join(dir, "model.safetensors"), ts);
  auto msg = ErrorOf([&] { ftune::models::LoadHf(dir); });
  EXPECT_CONTAINS(msg, "missing tensors (2)");
  EXPECT_CONTAINS(msg, "model.norm.weight");
  EXPECT_CONTAINS(msg, "lm_head.weight");
  EXPECT_CONTAINS(msg, "unexpected tensors (1)");
  EXPECT_CONTAINS(msg, "model.extra.weight");
  EXPECT_EQ(msg.find("inv_freq"), std::string::npos) << msg;
}

// ModelFromTensors (export, generate and eval from a checkpoint): every problem is reported
// before anything is copied, naming the source and the tensors; the happy path is exact.
TEST(HfIo, ModelFromTensorsChecksBeforeCopying) {
  auto m = TinyModel(false);
  ftune::models::NamedTensors all;
  for (const auto& p : m->named_parameters()) all.push_back({p.key(), p.value()});
  auto loaded = ftune::models::ModelFromTensors(m->config(), all, torch::kFloat, "ckpt X");
  for (const auto& p : loaded.model->named_parameters()) {
    EXPECT_TRUE(torch::equal(p.value(), m->named_parameters()[p.key()])) << p.key();
  }
  auto extra = all;
  extra.push_back({"model.extra.weight", torch::ones({3})});
  const auto load = [&](const ftune::models::NamedTensors& ts) {
    return ErrorOf(
        [&] { ftune::models::ModelFromTensors(m->config(), ts, torch::kFloat, "ckpt X"); });
  };
  auto msg = load(extra);
  EXPECT_CONTAINS(msg, "ckpt X: unexpected tensors (1): model.extra.weight");
  auto fewer = all;
  fewer.pop_back();
  msg = load(fewer);
  EXPECT_CONTAINS(msg, "ckpt X: missing tensors (1)");
}

// --- reference values from HF transformers (tests/fixtures/make_hf_reference.py) ---------------
TEST(HfReference, LogitsAndLossMatchTransformers) {
  int found = 0;
  for (const char* name : {"hf_tiny_untied", "hf_tiny_tied"}) {
    const std::string dir = files::Join(FTUNE_SOURCE_DIR, std::string("tests/fixtures/") + name);
    if (!files::Exists(files::Join(dir, "reference.safetensors"))) continue;
    ++found;
    auto loaded = ftune::models::LoadHf(dir);
    ftune::models::SafetensorsFile ref(files::Join(dir, "reference.safetensors"));
    auto tokens = ref.Get("tokens").to(torch::kLong);        // (B, T)
    auto want_logits = ref.Get("logits").to(torch::kFloat);  // (B, T, V)
    auto want_loss = ref.Get("loss_sum").to(torch::kFloat);  // sum of shifted token CE
    auto& m = *loaded.model;
    torch::NoGradGuard ng;
    auto logits = m.Logits(m.ForwardHidden(tokens));
    EXPECT_LT((logits - want_logits).abs().max().item<double>(), 1e-4) << name;
    auto targets = torch::roll(tokens, -1, 1);
    auto mask = torch::ones_like(tokens);
    mask.select(1, tokens.size(1) - 1).fill_(0);
    auto loss = ftune::models::CausalLmLoss(m, tokens, targets, mask, {}, 3);
    EXPECT_NEAR(loss.loss_sum.item<double>(), want_loss.item<double>(), 1e-4) << name;
    if (ref.Has("inv_freq")) {
      EXPECT_TRUE(torch::equal(m.rotary().inv_freq(), ref.Get("inv_freq").to(torch::kFloat)))
          << name;
    }
  }
  if (found == 0) {
    GTEST_SKIP()
        << "no HF reference fixtures in tests/fixtures/hf_tiny_*; generate them on a machine "
           "with torch + transformers: python3 tests/fixtures/make_hf_reference.py";
  }
}

TEST(Llama, LossWithNoTargetsIsZero) {
  auto m = TinyModel();
  auto tokens = RandomTokens(2, 5, 12);
  auto l = ftune::models::CausalLmLoss(*m, tokens, tokens, torch::zeros({2, 5}, torch::kUInt8));
  EXPECT_EQ(l.count.item<int64_t>(), 0);
  EXPECT_EQ(l.loss_sum.item<float>(), 0.0f);
  l.loss_sum.backward();  // a valid graph with zero gradients
  EXPECT_EQ(m->lm_head->weight.grad().abs().sum().item<float>(), 0.0f);
}
